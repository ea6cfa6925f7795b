"""scripts/upgrade-postgres: a generated project moves its data to a new
PostgreSQL major after changing `postgres_version` in a template update.

Uses the synthetic 1.0.0 and 1.1.0 template releases of the `template_repo`
fixture (conftest.py, tests/updating.py).
"""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import Stack, prepare_images
from updating import ENV, V1, V2, commit_all, generate, git, run


def psql(stack: Stack, sql: str) -> str:
    result = stack.compose(
        "exec",
        "-T",
        "db",
        "sh",
        "-c",
        'psql -X -q -A -t -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"',
        input=sql,
    )
    return result.stdout.strip()


@pytest.mark.docker
def test_postgres_major_change_keeps_the_data(template_repo, tmp_path):
    """A project with data on PostgreSQL 17 changes postgres_version to 18: the
    update warns and leaves the database alone; scripts/upgrade-postgres dumps,
    restores into 18 on a fresh volume, verifies, and keeps the old cluster. A
    restore that fails puts the old cluster back, and a second run succeeds."""
    project = generate(template_repo, tmp_path / "project", V1, postgres_version=17)
    prepare_images(project)
    stack = Stack(project)
    env = {**ENV, "COMPOSE_PROJECT_NAME": stack.name, "HTTP_PORT": str(stack.http_port)}
    try:
        stack.compose("up", "--detach", "--wait", "db")
        psql(
            stack,
            """
            CREATE TABLE note (id serial PRIMARY KEY, body text NOT NULL UNIQUE);
            INSERT INTO note (body) VALUES ('first'), ('zweite Notiz, äöü'), ('third');
            CREATE TABLE empty_table (id int);
            CREATE ROLE reader;
            GRANT SELECT ON note TO reader;
            -- pg_dump's documented blind spot: a CHECK constraint that reads another
            -- table fails on restore when that table's rows are loaded later.
            CREATE TABLE zz_allowed (name text PRIMARY KEY);
            INSERT INTO zz_allowed VALUES ('yes');
            CREATE FUNCTION is_allowed(text) RETURNS boolean LANGUAGE sql
                AS 'SELECT EXISTS (SELECT FROM public.zz_allowed WHERE name = $1)';
            CREATE TABLE guarded (name text CHECK (is_allowed(name)));
            INSERT INTO guarded VALUES ('yes');
        """,
        )

        update = run(
            "scripts/update-template",
            "--vcs-ref",
            V2,
            "--data",
            "postgres_version=18",
            cwd=project,
            check=False,
        )
        assert update.returncode == 0, update.stdout + update.stderr
        assert "postgres_version changed, 17 -> 18" in update.stderr
        assert "scripts/upgrade-postgres" in update.stderr
        assert "image: postgres:18" in (project / "compose.yaml").read_text()
        # The update touched files only: the database still runs on 17, data intact.
        assert psql(stack, "SHOW server_version_num").startswith("17")
        commit_all(project, "Update the template, PostgreSQL 18")
        prepare_images(project)

        failed = run("scripts/upgrade-postgres", "--yes", cwd=project, env=env, check=False)
        assert failed.returncode != 0, failed.stdout + failed.stderr
        assert "holds PostgreSQL 17 again, as before" in failed.stderr, failed.stdout + failed.stderr
        assert clusters(stack) == ["17 PG_VERSION"]

        # Fix the cause on 17, the way a team would: the old compose.yaml, for a moment.
        git(project, "checkout", "HEAD~1", "--", "compose.yaml")
        stack.compose("up", "--detach", "--wait", "db")
        psql(stack, "DROP TABLE guarded; DROP FUNCTION is_allowed")
        stack.compose("stop", "db")
        git(project, "checkout", "HEAD", "--", "compose.yaml")

        upgrade = run("scripts/upgrade-postgres", "--yes", cwd=project, env=env, check=False)
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        assert "verified: 3 tables, as many rows as before" in upgrade.stdout

        assert psql(stack, "SHOW server_version_num").startswith("18")
        assert (
            psql(stack, "SELECT string_agg(body, '|' ORDER BY id) FROM note")
            == "first|zweite Notiz, äöü|third"
        )
        assert psql(stack, "INSERT INTO note (body) VALUES ('fourth') RETURNING id") == "4"
        assert psql(stack, "SELECT has_table_privilege('reader', 'note', 'SELECT')") == "t"
        assert clusters(stack) == ["18 18/docker/PG_VERSION"]
        backups = backup_volumes(stack)
        assert len(backups) == 2 and all(
            re.fullmatch(rf"{stack.name}_db-data-pg17-\d{{14}}", b) for b in backups
        )

        again = run("scripts/upgrade-postgres", "--yes", cwd=project, env=env, check=False)
        assert again.returncode == 0 and "already holds PostgreSQL 18: nothing to upgrade" in again.stdout
    finally:
        stack.down()
        for volume in backup_volumes(stack):
            subprocess.run(["docker", "volume", "rm", volume], capture_output=True, check=False)
    gone = run("scripts/upgrade-postgres", "--yes", cwd=project, env=env, check=False)
    assert gone.returncode == 0 and "no db-data volume" in gone.stdout


def clusters(stack: Stack) -> list[str]:
    """The PostgreSQL clusters in the db-data volume: "MAJOR PATH/PG_VERSION"."""
    result = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--volume",
            f"{stack.name}_db-data:/volume:ro",
            "--entrypoint",
            "sh",
            "postgres:18",
            "-c",
            "for f in /volume/PG_VERSION /volume/*/docker/PG_VERSION; do"
            ' [ -s "$f" ] && echo "$(cat "$f") ${f#/volume/}"; done; true',
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.split("\n")[:-1]


def backup_volumes(stack: Stack) -> list[str]:
    return subprocess.run(
        [
            "docker",
            "volume",
            "ls",
            "--quiet",
            "--filter",
            f"label=upgrade-postgres.from={stack.name}_db-data",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


def test_upgrade_postgres_help(template_repo, tmp_path):
    project = generate(template_repo, tmp_path / "project", V1)
    result = run("scripts/upgrade-postgres", "--help", cwd=project)
    assert "Usage: scripts/upgrade-postgres" in result.stdout and "--yes" in result.stdout
    assert run("scripts/upgrade-postgres", "--bogus", cwd=project, check=False).returncode == 2
