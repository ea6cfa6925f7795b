"""The development loop of a rendered project, as its README tells it: the dev
stack on an unprivileged port that answers on 127.0.0.1, migrations made in
the container landing on the host as the host user's files, debugpy listening,
and pytest without its settings stopping with one line."""

from __future__ import annotations

import os
import re
import socket
import subprocess

import pytest
import requests

from conftest import FRAMEWORKS, Stack, free_port, prepare_images, render

pytestmark = pytest.mark.docker

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

        stack.up()
        for host in ("127.0.0.1", "localhost"):
            response = requests.get(f"http://{host}:{stack.http_port}/healthz", timeout=10)
            assert response.status_code == 200 and response.json()["status"] == "ok", (host, response.text)
        with socket.create_connection(("127.0.0.1", ports["DEBUGPY_PORT"]), timeout=5):
            pass  # debugpy listens for an editor to attach

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
