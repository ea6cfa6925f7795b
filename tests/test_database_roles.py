"""The app's database role: the production stack's app connects as a role that
owns its schema and nothing more, the superuser stays with the db container,
and a database initialised before that role existed gets it on the next start.

One stack per framework serves every test in this module, in order: the
upgrade test, which takes the role away and lets the stack put it back, is last.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

from conftest import FRAMEWORKS, Stack, booted, render

pytestmark = pytest.mark.docker

# Runs in the app container, with the app's own DATABASE_URL: prints one JSON
# object, each statement's SQLSTATE (None when it succeeded).
AS_THE_APP = """
import json, os, psycopg

def attempt(statement):
    try:
        with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
            conn.execute(statement)
    except psycopg.Error as error:
        return error.sqlstate
    return None

with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
    user, superuser, createrole, createdb = conn.execute(
        "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
print(json.dumps({
    "user": user,
    "superuser": superuser,
    "createrole": createrole,
    "createdb": createdb,
    "create role": attempt("CREATE ROLE intruder"),
    "copy to program": attempt("COPY (SELECT 1) TO PROGRAM 'id'"),
    "create database": attempt("CREATE DATABASE intruder"),
    "create table": attempt("CREATE TABLE probe (id int); DROP TABLE probe"),
}))
"""

INSUFFICIENT_PRIVILEGE = "42501"


@pytest.fixture(scope="module", params=FRAMEWORKS)
def stack(request, tmp_path_factory):
    project = render(tmp_path_factory.mktemp(request.param) / "project", framework=request.param)
    with booted(project, request) as stack:
        yield stack


def env_value(stack: Stack, name: str) -> str:
    match = re.search(rf"^{name}=(.*)$", (stack.project / ".env").read_text(), re.MULTILINE)
    assert match, f".env has no {name}"
    return match.group(1)


def as_the_app(stack: Stack) -> dict:
    result = stack.compose("exec", "-T", "app", "python", "-c", AS_THE_APP)
    return json.loads(result.stdout)


def superuser_sql(stack: Stack, sql: str) -> str:
    """Run SQL in the db container as POSTGRES_USER; returns psql's unaligned output."""
    script = 'psql -X -q -A -t -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"'
    return stack.compose("exec", "-T", "db", "sh", "-c", script, input=sql).stdout.strip()


def owners(stack: Stack) -> set[str]:
    """The owners of the public schema and of every table and sequence in it."""
    return set(
        superuser_sql(
            stack,
            """
            SELECT nspowner::regrole FROM pg_namespace WHERE nspname = 'public'
            UNION
            SELECT relowner::regrole FROM pg_class
            WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'S', 'v');
            """,
        ).splitlines()
    )


def visits(stack: Stack) -> int:
    response = stack.get("/")
    assert response.status_code == 200
    match = re.search(r'id="visits">(\d+)<', response.text)
    assert match, "the home page shows no visit counter"
    return int(match.group(1))


def test_the_app_connects_as_its_own_role(stack: Stack):
    app_user, superuser = env_value(stack, "APP_DB_USER"), env_value(stack, "POSTGRES_USER")
    assert app_user != superuser
    url = stack.compose("exec", "-T", "app", "printenv", "DATABASE_URL").stdout.strip()
    assert url.startswith(f"postgresql://{app_user}:{env_value(stack, 'APP_DB_PASSWORD')}@db:5432/")
    assert env_value(stack, "POSTGRES_PASSWORD") not in stack.compose("exec", "-T", "app", "env").stdout


def test_the_app_role_cannot_create_roles_or_run_programs(stack: Stack):
    got = as_the_app(stack)
    assert got["user"] == env_value(stack, "APP_DB_USER")
    assert (got["superuser"], got["createrole"], got["createdb"]) == (False, False, False)
    assert got["create role"] == INSUFFICIENT_PRIVILEGE
    assert got["copy to program"] == INSUFFICIENT_PRIVILEGE
    assert got["create database"] == INSUFFICIENT_PRIVILEGE
    # Its own schema stays its own: it creates and drops tables there.
    assert got["create table"] is None


def test_the_app_role_owns_the_schema_it_migrated(stack: Stack):
    assert owners(stack) == {env_value(stack, "APP_DB_USER")}
    migrate = stack.compose("ps", "--all", "--format", "json", "migrate").stdout
    assert '"ExitCode":0' in migrate.replace(" ", "")
    assert stack.get("/readyz").status_code == 200
    assert visits(stack) + 1 == visits(stack)


def backend_network(stack: Stack) -> dict:
    inspect = ["docker", "network", "inspect", f"{stack.name}_backend"]
    return json.loads(subprocess.run(inspect, check=True, capture_output=True, text=True).stdout)[0]


def test_the_backend_network_has_no_way_out(stack: Stack):
    network = backend_network(stack)
    assert network["Internal"] is True
    attached = {container["Name"].split("-")[1] for container in network["Containers"].values()}
    assert attached == {"db", "app"}, "running containers on the backend network"


def test_what_the_superuser_creates_in_the_schema_goes_to_the_app(stack: Stack):
    """A restore runs as the superuser: the app may use what it creates at
    once, and owns it after the db's next healthcheck (every 10 seconds)."""
    superuser_sql(stack, "CREATE TABLE restored (id int); INSERT INTO restored VALUES (1);")
    use = (
        "import os, psycopg; "
        'print(psycopg.connect(os.environ["DATABASE_URL"]).execute("SELECT id FROM restored").fetchall())'
    )
    assert stack.compose("exec", "-T", "app", "python", "-c", use).stdout.strip() == "[(1,)]"
    deadline = time.monotonic() + 30
    while owners(stack) != {env_value(stack, "APP_DB_USER")}:
        assert time.monotonic() < deadline, f"still owned by {owners(stack)}"
        time.sleep(1)
    superuser_sql(stack, "DROP TABLE restored;")


def test_a_missing_app_password_fails_with_what_to_add(stack: Stack, tmp_path):
    env = tmp_path / "old.env"
    env.write_text(
        re.sub(r"^APP_DB_(USER|PASSWORD)=.*\n", "", (stack.project / ".env").read_text(), flags=re.M)
    )
    result = stack.compose("--env-file", str(env), "config", "--quiet", check=False)
    assert result.returncode != 0
    assert "APP_DB_PASSWORD is not set in .env; add a new random one" in result.stderr


def test_a_database_from_before_the_role_gets_it_on_the_next_start(stack: Stack):
    """The state a project updated from a single superuser starts in: no app
    role, everything owned by the superuser. The one-time step after the
    update (CHANGELOG, docs/deploy.md), `docker compose down` then `up`, puts
    the role in place before migrations and makes the backend network internal."""
    before = visits(stack)
    app_user, superuser = env_value(stack, "APP_DB_USER"), env_value(stack, "POSTGRES_USER")
    stack.compose("stop", "nginx", "app")
    superuser_sql(
        stack,
        f'REASSIGN OWNED BY "{app_user}" TO "{superuser}";'
        f'DROP OWNED BY "{app_user}"; DROP ROLE "{app_user}";',
    )
    assert superuser_sql(stack, f"SELECT count(*) FROM pg_roles WHERE rolname = '{app_user}'") == "0"
    assert owners(stack) == {superuser}

    stack.compose("down")
    stack.up()

    assert owners(stack) == {app_user}
    assert backend_network(stack)["Internal"] is True
    got = as_the_app(stack)
    assert (got["user"], got["superuser"], got["create role"]) == (app_user, False, INSUFFICIENT_PRIVILEGE)
    assert stack.get("/readyz").status_code == 200
    assert visits(stack) == before + 1, "the data from before the update is still there"
