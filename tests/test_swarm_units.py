"""The swarm path (issue 15) without a swarm: compose.swarm.yaml as `docker
stack config` reads it (the docker CLI only, no engine), kept in step with
compose.yaml, and server/swarm.sh's builders in milliseconds, against a fake
`docker` on PATH that records what it is asked. The stack itself, on a real
swarm of two VPS containers, is tests/test_swarm.py's.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import FRAMEWORKS, compose_config, render

SCRIPTS = Path(__file__).resolve().parent.parent / "template" / "scripts"

# What server/swarm.sh sets before `docker stack deploy` (besides .env's values).
STACK_NAMES = {
    "APP_RELEASE": "r1",
    "MIGRATE_RELEASE": "r1",
    "SECRET_KEY_SECRET": "s1",
    "DATABASE_URL_SECRET": "s2",
    "POSTGRES_PASSWORD_SECRET": "s3",
    "APP_DB_PASSWORD_SECRET": "s4",
    "CELERY_BROKER_URL_SECRET": "s5",
    "VALKEY_PASSWORD_SECRET": "s6",
    "DB_HEALTHCHECK_CONFIG": "c1",
    "NGINX_CONF_CONFIG": "c2",
    "NGINX_SITE_CONFIG": "c3",
}
# Secrets the app reads from a file on a swarm, instead of a variable.
AS_FILES = {"SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL"}


@pytest.fixture(scope="module", params=[(f, jobs) for f in FRAMEWORKS for jobs in (False, True)], ids=str)
def project(request, tmp_path_factory) -> Path:
    framework, jobs = request.param
    return render(tmp_path_factory.mktemp("swarm") / "p", framework=framework, background_jobs=jobs)


def stack_config(project: Path, **env: str) -> dict:
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "POSTGRES_USER": "u"}
    result = subprocess.run(
        ["docker", "stack", "config", "--compose-file", "compose.swarm.yaml"],
        cwd=project, capture_output=True, text=True, env={**clean, "POSTGRES_DB": "d", **env},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_docker_stack_reads_the_swarm_file_as_the_issue_asks(project):
    stack = stack_config(project, **STACK_NAMES)
    services = stack["services"]
    app = services["app"]["deploy"]
    assert app["update_config"]["order"] == "start-first"
    assert app["update_config"]["failure_action"] == "rollback"
    assert app["update_config"]["monitor"] == "30s"
    assert app["endpoint_mode"] == "dnsrr"
    assert app["placement"]["preferences"] == [{"spread": "node.id"}]
    assert services["migrate"]["deploy"]["mode"] == "replicated-job"
    (port,) = services["nginx"]["ports"]
    assert (port["mode"], port["target"], port["published"]) == ("host", 80, 80)
    slug = yaml.safe_load((project / ".copier-answers.yml").read_text())["project_slug"]
    assert services["db"]["deploy"]["placement"]["constraints"] == [f"node.labels.{slug}.db == true"]
    assert services["db"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    assert all(secret.get("external") for secret in stack["secrets"].values())
    if "scheduler" in services:
        assert services["scheduler"]["deploy"]["replicas"] == 1
        assert services["scheduler"]["deploy"]["update_config"]["order"] == "stop-first"
        assert services["worker"]["deploy"]["replicas"] == 2


def test_the_stack_refuses_to_start_without_the_names_server_sh_sets(project):
    names = dict(STACK_NAMES)
    del names["SECRET_KEY_SECRET"]
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **names}
    result = subprocess.run(
        ["docker", "stack", "config", "--compose-file", "compose.swarm.yaml"],
        cwd=project, capture_output=True, text=True, env={**clean, "POSTGRES_USER": "u", "POSTGRES_DB": "d"},
    )  # fmt: skip
    assert result.returncode != 0
    assert "SECRET_KEY_SECRET" in result.stderr


def test_the_app_reads_the_same_settings_on_a_swarm_as_on_one_server(project):
    """compose.swarm.yaml restates compose.yaml's services: the app's settings
    must not drift apart (secrets come from files there)."""
    single = set(compose_config(project)["services"]["app"]["environment"])
    swarm = set(stack_config(project, **STACK_NAMES)["services"]["app"]["environment"])
    expected = {name for name in single if name not in AS_FILES} | {f"{n}_FILE" for n in AS_FILES & single}
    assert swarm == expected


def bash(script: str, tmp_path: Path, docker: str = "exit 1") -> subprocess.CompletedProcess:
    """Run SCRIPT with server.sh's functions defined, in a project
    directory, with a fake docker that logs each call (and its stdin) to calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "docker"
    fake.write_text(
        f'#!/bin/bash\nprintf "%s\\n" "$*" >>"{tmp_path}/calls"\n'
        f'[ -t 0 ] || {{ [ "${{@: -1}}" != - ] || cat >>"{tmp_path}/stdin"; }}\n{docker}\n'
    )
    fake.chmod(0o755)
    app_dir = tmp_path / "my_app"
    (app_dir / "db").mkdir(parents=True, exist_ok=True)
    (app_dir / "nginx" / "templates").mkdir(parents=True, exist_ok=True)
    for name in ("db/healthcheck.sh", "nginx/nginx.conf", "nginx/templates/default.conf.template"):
        (app_dir / name).write_text(f"# {name}\n")
    (app_dir / "compose.swarm.yaml").write_text("services:\n  app:\n")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "DEPLOY_APP_DIR": str(app_dir), "HOME": str(tmp_path)}
    prelude = f'set -Eeuo pipefail; . "{SCRIPTS}/server.sh"; COMMAND=test; project_dir; '
    return subprocess.run(["bash", "-c", prelude + script], capture_output=True, text=True, env=env)


def write_env(tmp_path: Path, text: str) -> None:
    (tmp_path / "my_app").mkdir(exist_ok=True)
    (tmp_path / "my_app" / ".env").write_text(text)


def test_load_dotenv_reads_values_as_compose_does(tmp_path):
    write_env(
        tmp_path,
        "# a comment\n\nSERVER_NAMES=example.com localhost\nQUOTED=\"a b\"\nSINGLE='c d'\n"
        "export EXPORTED=1\n# COMMENTED=no\nEMPTY=\nLAST=x=y",
    )
    result = bash(
        'load_dotenv .env; printf "%s|" "$SERVER_NAMES" "$QUOTED" "$SINGLE" "$EXPORTED" "$EMPTY" "$LAST" '
        '"${COMMENTED:-unset}"',
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "example.com localhost|a b|c d|1||x=y|unset|"


def test_secrets_are_named_after_their_content_and_sent_on_stdin(tmp_path):
    write_env(
        tmp_path,
        "SECRET_KEY=k1\nPOSTGRES_USER=u\nPOSTGRES_PASSWORD=pw-superuser\nPOSTGRES_DB=d\n"
        "APP_DB_USER=app\nAPP_DB_PASSWORD=pw-app\n",
    )
    first = bash(
        'swarm_environment; printf "%s %s %s" "$SECRET_KEY_SECRET" "$DATABASE_URL_SECRET" "$DB_REPLICAS"',
        tmp_path,
    )
    assert first.returncode == 0, first.stderr
    secret_key, database_url, replicas = first.stdout.split()
    assert secret_key.startswith("my_app_secret_key_") and len(secret_key) == len("my_app_secret_key_") + 12
    assert database_url.startswith("my_app_database_url_")
    assert replicas == "1"
    calls = (tmp_path / "calls").read_text()
    # The values travel on stdin, never on a command line `ps` shows.
    assert "pw-app" not in calls and "k1" not in calls
    assert "postgresql://app:pw-app@db:5432/d" in (tmp_path / "stdin").read_text()

    write_env(tmp_path, (tmp_path / "my_app" / ".env").read_text().replace("k1", "k2"))
    second = bash('swarm_environment; printf "%s" "$SECRET_KEY_SECRET"', tmp_path)
    assert second.stdout != secret_key, "a changed value must get a new secret"


def test_a_managed_database_runs_no_db_task_and_localhost_is_refused(tmp_path):
    base = "SECRET_KEY=k\nPOSTGRES_PASSWORD=p\nPOSTGRES_DB=d\nAPP_DB_PASSWORD=a\n"
    write_env(tmp_path, base + "DATABASE_URL=postgresql://x:y@db.example.net:5432/d\n")
    managed = bash('swarm_environment; printf "%s" "$DB_REPLICAS"', tmp_path)
    assert managed.returncode == 0, managed.stderr
    assert managed.stdout == "0"
    write_env(tmp_path, base + "DATABASE_URL=postgresql://x:y@127.0.0.1:5432/d\n")
    local = bash("swarm_environment", tmp_path)
    assert local.returncode == 1
    assert local.stderr.strip().splitlines()[-1].startswith("test: DATABASE_URL in .env names this machine")


@pytest.mark.parametrize(
    ("tasks", "state"),
    [
        ("3 complete", "complete"),
        ("3 failed\\n3 failed\\n3 running", "running"),
        ("3 failed\\n3 failed\\n3 failed", "failed"),
        ("2 complete\\n3 failed\\n3 failed\\n3 failed", "failed"),
        ("2 complete\\n3 starting", "running"),
    ],
)
def test_the_release_job_is_judged_on_its_current_run(tmp_path, tasks, state):
    """Iteration 3, which may be tried 3 times: an earlier run's success counts for nothing."""
    write_env(tmp_path, "SECRET_KEY=k\n")
    docker = (
        'case "$*" in\n'
        "  *JobIteration.Index*my_app_migrate) echo 3 ;;\n"
        "  *MaxAttempts*) echo 3 ;;\n"
        f'  "service ps"*) printf "{tasks}\\n" | cut -d " " -f 2 | nl -w1 -s " " | sed "s/ .*//" ;;\n'
        "esac\n"
    )
    # docker inspect TASK answers the task's line: TASK is its number.
    docker += f'if [ "$1" = inspect ]; then printf "{tasks}\\n" | sed -n "${{@: -1}}p"; fi\n'
    result = bash("job_state migrate", tmp_path, docker)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == state


@pytest.mark.parametrize(
    ("cidr", "network"),
    [
        ("10.0.0.5/24", "10.0.0.0/24"),
        ("172.21.3.9/16", "172.21.0.0/16"),
        ("192.168.1.77/32", "192.168.1.77/32"),
    ],
)
def test_the_swarm_ports_open_to_the_nodes_network_only(tmp_path, cidr, network):
    write_env(tmp_path, "SECRET_KEY=k\n")
    result = bash(f"swarm_network {cidr}", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == network
