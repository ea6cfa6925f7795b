"""The development loop of a rendered project, as its README tells it: the dev
stack on an unprivileged port that answers on 127.0.0.1, migrations made in
the container landing on the host as the host user's files, debugpy listening,
breakpoint() reaching pdb, and pytest without its settings stopping with one
line. The render-level checks (no engine needed) come first."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from conftest import FRAMEWORKS, Stack, compose_config, free_port, prepare_images, render


@pytest.fixture(scope="module", params=FRAMEWORKS)
def project(request, tmp_path_factory) -> Path:
    return render(tmp_path_factory.mktemp(request.param) / "project", framework=request.param)


def env_values(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_local_runs_use_an_unprivileged_port_and_servers_keep_80(project):
    assert env_values(project / ".env")["HTTP_PORT"] == "8080"
    assert env_values(project / ".env.example")["HTTP_PORT"] == "80"
    # scripts/provision writes a server's .env itself.
    assert "\nHTTP_PORT=80\n" in (project / "scripts/server/provision.sh").read_text()


def test_only_development_answers_to_127_0_0_1(project):
    production = compose_config(project, "compose.yaml")["services"]
    development = compose_config(project, "compose.yaml", "compose.override.yaml")["services"]
    names = development["nginx"]["environment"]["SERVER_NAMES"]
    assert names.split() == ["example.com", "localhost", "127.0.0.1"]
    assert "127.0.0.1" not in production["nginx"]["environment"]["SERVER_NAMES"].split()
    if "SERVER_NAMES" in production["app"]["environment"]:  # Django checks the Host header too
        assert development["app"]["environment"]["SERVER_NAMES"] == names


def test_local_database_url_matches_the_compose_database(project):
    """`uv run --env-file .env` expands the ${...} in .env, as compose does."""
    env = env_values(project / ".env")
    expanded = re.sub(r"\$\{(\w+)\}", lambda match: env[match.group(1)], env["DATABASE_URL"])
    user, password, database = env["APP_DB_USER"], env["APP_DB_PASSWORD"], env["POSTGRES_DB"]
    assert expanded == f"postgresql://{user}:{password}@127.0.0.1:5432/{database}"
    published = compose_config(project, "compose.yaml", "compose.override.yaml")["services"]["db"]["ports"]
    assert [(port["host_ip"], port["published"]) for port in published] == [("127.0.0.1", "5432")]


def test_editor_files_point_at_the_dev_service(project):
    # JSON with comments, as VS Code reads it.
    def jsonc(path: Path):
        lines = path.read_text().splitlines()
        return json.loads("\n".join(line for line in lines if not line.strip().startswith("//")))

    launch = jsonc(project / ".vscode/launch.json")["configurations"][0]
    assert (launch["type"], launch["request"], launch["connect"]["port"]) == ("debugpy", "attach", 5678)
    assert launch["pathMappings"] == [{"localRoot": "${workspaceFolder}", "remoteRoot": "/app"}]
    container = jsonc(project / ".devcontainer/devcontainer.json")
    files = [str(Path(".devcontainer", file)) for file in container["dockerComposeFile"]]
    services = compose_config(project, *files)["services"]
    assert services[container["service"]]["image"] == "my_app-dev"
    mounts = [volume["target"] for volume in services[container["service"]]["volumes"]]
    assert container["workspaceFolder"] == "/app" and "/app" in mounts, mounts


# A model added to the app, and the command the README gives for its migration.
NEW_MODEL = {
    "flask": (
        "\n\nclass Note(db.Model):\n"
        '    __tablename__ = "note"\n\n'
        "    id: Mapped[int] = mapped_column(primary_key=True)\n"
        "    text: Mapped[str]\n"
    ),
    "django": "\n\nclass Note(models.Model):\n    text = models.TextField()\n",
}
COMPOSE_PROGRESS = re.compile(r"\s*(Network|Volume|Container) ")
MAKE_MIGRATION = {
    "flask": ["flask", "db", "migrate", "-m", "add note"],
    "django": ["python", "manage.py", "makemigrations"],
}


@pytest.mark.docker
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_dev_loop(tmp_path, framework):
    project = render(tmp_path / "project", framework=framework)
    prepare_images(project)
    # A host user other than the image's 10001 (a laptop's 1000, say); root
    # here can make one, anyone else is one already.
    uid = 4242 if os.getuid() == 0 else os.getuid()
    if os.getuid() == 0:
        subprocess.run(["chown", "-R", f"{uid}:{uid}", str(project)], check=True)
    migrations = project / ("migrations/versions" if framework == "flask" else "my_app/migrations")
    before = set(migrations.glob("*.py"))
    stack = Stack(project, files=("compose.yaml", "compose.override.yaml"))
    ports = {name: free_port() for name in ("APP_PORT", "POSTGRES_PORT", "DEBUGPY_PORT")}
    stack.env.update({name: str(port) for name, port in ports.items()})
    try:
        build = stack.compose("build", "app", check=False)
        assert build.returncode == 0, build.stdout + build.stderr

        # As `uv run pytest` in a fresh shell: the project's packages, none of its settings.
        bare = ["env", "-u", "DATABASE_URL", "-u", "SECRET_KEY", "-u", "DJANGO_SETTINGS_MODULE", "pytest"]
        result = stack.compose("run", "--rm", "--no-deps", "app", *bare, check=False)
        output = result.stdout + result.stderr
        # Everything but compose's own progress lines (networks, volumes) is pytest's.
        lines = [line for line in output.splitlines() if line.strip() and not COMPOSE_PROGRESS.match(line)]
        assert result.returncode == pytest.ExitCode.USAGE_ERROR, output
        assert lines == [
            "ERROR: pytest needs DATABASE_URL and SECRET_KEY: run the tests in the container "
            "(docker compose run --rm app pytest), or start the database (docker compose up -d db) "
            "and run uv run --env-file .env pytest"
        ], output

        # pdb by default: breakpoint() stops at a prompt on the container's terminal.
        pdb = stack.compose(
            "run",
            "--rm",
            "--no-deps",
            "-T",
            "app",
            "python",
            "-c",
            "breakpoint(); print('went on')",
            input="p 6 * 7\nc\n",
            check=False,
        )
        assert pdb.returncode == 0 and "42" in pdb.stdout and "went on" in pdb.stdout, pdb.stdout + pdb.stderr

        # With DEBUGPY=1 the development server runs under debugpy, listening for an editor.
        stack.env["DEBUGPY"] = "1"
        stack.up()
        for host in ("127.0.0.1", "localhost"):
            response = requests.get(f"http://{host}:{stack.http_port}/healthz", timeout=10)
            assert response.status_code == 200 and response.json()["status"] == "ok", (host, response.text)
        with socket.create_connection(("127.0.0.1", ports["DEBUGPY_PORT"]), timeout=5):
            pass
        processes = stack.compose("exec", "-T", "app", "cat", "/proc/1/cmdline").stdout.split("\0")
        assert processes[:3] == ["python", "-m", "debugpy"], processes

        with (project / "my_app" / "models.py").open("a") as models:
            models.write(NEW_MODEL[framework])
        made = stack.compose("run", "--rm", "app", *MAKE_MIGRATION[framework], check=False)
        assert made.returncode == 0, made.stdout + made.stderr
        new = set(migrations.glob("*.py")) - before
        assert len(new) == 1, (sorted(p.name for p in new), made.stdout + made.stderr)
        (migration,) = new
        assert "note" in migration.read_text().lower()
        assert (migration.stat().st_uid, migration.stat().st_gid) == (uid, uid)
    finally:
        stack.down()
