"""Offsite backups for real: a rendered Flask project on a throwaway VPS
(tests/vpshost.py) backs up to a restic rest-server, the VPS is destroyed
with its volumes, and a new one gets everything back from offsite.

One scenario for the whole module, in steps, each test starting from where
the one before it left the server (the `scenario` fixture fails a test
clearly when its step did not run):

  backup        provisioned and deployed, 500 rows and uploaded files; the
                nightly timer's service makes a snapshot; status shows it
  drill         scripts/backup --verify restores it into a scratch database
  wrong password  a restore from offsite refused, nothing changed
  unreachable   the timer fails, status says why, the failure hook posts
  rollback with data  a deploy dumps the database before its migrations;
                rows lost after it come back with scripts/rollback --with-data
  disaster      the VPS and its volumes gone; a new VPS provisioned with the
                saved .env, deployed, restored from offsite: the same rows
                and the same files

The rest-server and a webhook recorder run beside the VPS on a Docker
network of their own; restic's image travels to the VPS as the deploy
scripts' images do (docker save | ssh docker load).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, prepare_images, render
from vpshost import Scenario, Vps, build_release, psql, reason, run, script, site_release, vps_image

pytestmark = pytest.mark.docker

RESTIC_IMAGE = re.search(
    r"^RESTIC_IMAGE=(\S+)$", (ROOT / "template/scripts/server/offsite.sh").read_text(), re.MULTILINE
)[1]
REST_SERVER_IMAGE = "restic/rest-server:0.14.0"
RECORDER_IMAGE = "python:3.14-slim"
TABLE_DIGEST = (
    "SELECT count(*) || ' ' || md5(string_agg(id || ':' || payload, ',' ORDER BY id)) FROM offsite_rows;"
)
MEDIA_DIGEST = "cd /srv/media && find . -type f ! -path './.restoring/*' | sort | xargs sha256sum"
# Prints each POST's body: the failure hook's webhook.
RECORDER = """
import http.server
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        print("POST", self.path, body, flush=True)
        self.send_response(204)
        self.end_headers()
http.server.HTTPServer(("", 8080), Hook).serve_forever()
"""


class Offsite:
    """The module's world: the network, the rest-server, the recorder, the
    project, and the VPS of the moment."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.network = f"tt-offsite-{uuid.uuid4().hex[:8]}"
        self.containers: list[str] = []
        self.vps: Vps | None = None
        self.project: tuple[Path, str] = (Path(), "")
        self.scenario = Scenario()
        self.saved_env = ""
        self.digest = ""
        self.media = ""

    def start(self) -> None:
        images = self.workdir / "images"
        images.mkdir()
        for image in (RESTIC_IMAGE, REST_SERVER_IMAGE, RECORDER_IMAGE):
            (images / "Dockerfile").write_text(f"FROM {image}\n")
            prepare_images(images)
        run("docker", "network", "create", self.network)
        self.rest = self.container("rest", "--env", "DISABLE_AUTHENTICATION=1", REST_SERVER_IMAGE)
        self.recorder = self.container("hook", RECORDER_IMAGE, "python", "-u", "-c", RECORDER)
        suffix = uuid.uuid4().hex[:6]
        root = render(self.workdir / "project", project_name=f"Offsite Check {suffix}")
        prepare_images(root)
        git = ("git", "-C", str(root), "-c", "user.name=Test", "-c", "user.email=test@example.com")
        run(*git, "init", "--quiet")
        run(*git, "add", "--all")
        run(*git, "commit", "--quiet", "--message", "The generated project")
        self.project = (root, f"offsite_check_{suffix}")

    def container(self, role: str, *args: str) -> str:
        name = f"{self.network}-{role}"
        run("docker", "run", "--detach", "--name", name, "--network", self.network, *args)
        self.containers.append(name)
        return name

    def address(self, container: str) -> str:
        field = f'{{{{(index .NetworkSettings.Networks "{self.network}").IPAddress}}}}'
        return run("docker", "inspect", "--format", field, container).stdout.strip()

    def new_vps(self) -> Vps:
        self.vps = Vps(self.workdir / f"vps-{uuid.uuid4().hex[:6]}", vps_image())
        self.vps.workdir.mkdir()
        self.vps.start()
        run("docker", "network", "connect", self.network, self.vps.name)
        return self.vps

    def load_restic(self) -> None:
        """restic's image onto the VPS, as scripts/deploy ships images."""
        if not (self.workdir / "restic.tar.gz").exists():
            run("bash", "-c", f"docker save {RESTIC_IMAGE} | gzip -1 >{self.workdir / 'restic.tar.gz'}")
        with (self.workdir / "restic.tar.gz").open("rb") as image:
            self.vps.ssh("deploy", "gunzip | docker load", input=None, stdin=image)

    def env(self, settings: str) -> None:
        """Lines appended to the server's .env (later ones win)."""
        _, slug = self.project
        self.vps.ssh("deploy", f"cat >>/srv/{slug}/.env", input=settings)

    def server(self, command: str, **kwargs):
        _, slug = self.project
        return self.vps.ssh("deploy", f"/srv/{slug}/scripts/server.sh {command}", **kwargs)

    def stop(self) -> None:
        if self.vps:
            self.vps.stop()
        for name in self.containers:
            run("docker", "rm", "--force", "--volumes", name, check=False)
        run("docker", "network", "rm", self.network, check=False)
        _, slug = self.project
        images = run(
            "docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", check=False
        ).stdout.split()
        ours = [image for image in images if slug and slug in image]
        if ours:
            run("docker", "image", "rm", "--force", *ours, check=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory, request) -> Iterator[Offsite]:
    world = Offsite(tmp_path_factory.mktemp("offsite"))
    failed_before = request.session.testsfailed
    try:
        world.start()
        yield world
    finally:
        if world.vps and request.session.testsfailed > failed_before:
            print(f"\n--- journal of the VPS ---\n{world.vps.journal()}")
        world.stop()


def provision_and_deploy(world: Offsite, *provision_args: str) -> None:
    script(world.vps, world.project, "provision", *provision_args, "root@vps")
    world.load_restic()
    result = script(world.vps, world.project, "deploy", "vps")
    assert "Deployed" in result.stdout, result.stdout


def test_the_nightly_backup_makes_an_offsite_snapshot(world):
    vps = world.new_vps()
    provision_and_deploy(world)
    _, slug = world.project
    world.env(
        f"\nRESTIC_REPOSITORY=rest:http://{world.address(world.rest)}:8000/{slug}\n"
        "RESTIC_PASSWORD=a long and secret passphrase\n"
        "OFFSITE_CONNECT_TIMEOUT=10\n"
        f"BACKUP_FAILURE_WEBHOOK=http://{world.address(world.recorder)}:8080/backup-failed\n"
    )
    psql(
        vps,
        world.project,
        "CREATE TABLE offsite_rows (id int PRIMARY KEY, payload text NOT NULL);"
        "INSERT INTO offsite_rows SELECT g, md5(g::text) FROM generate_series(1, 500) g;",
    )
    world.server(
        "compose exec -T app sh -c 'mkdir -p /srv/media/uploads && cat >/srv/media/uploads/notes.txt"
        " && head -c 200000 /dev/urandom >/srv/media/uploads/photo.bin'",
        input="uploaded before the disaster\n",
    )
    world.digest = psql(vps, world.project, TABLE_DIGEST)
    world.media = world.server(f'compose exec -T app sh -c "{MEDIA_DIGEST}"').stdout
    assert world.digest.startswith("500 ") and world.media.count("\n") == 2, world.media

    # The nightly timer's service, started now, as systemd would.
    vps.ssh("root", f"systemctl start {slug}-backup.service")
    journal = vps.ssh("root", f"journalctl --no-pager -u {slug}-backup.service").stdout
    assert "offsite: created the repository, encrypted with RESTIC_PASSWORD" in journal, journal
    assert "offsite: pruned, keeping 7 daily, 4 weekly, 6 monthly" in journal, journal
    snapshots = run("docker", "exec", world.rest, "sh", "-c", f"ls /data/{slug}/snapshots").stdout.split()
    assert len(snapshots) == 1, snapshots
    status = script(vps, world.project, "status", "vps").stdout
    assert re.search(rf"^offsite   snapshot {snapshots[0][:8]} \(0 h old\) at rest:http://", status, re.M), (
        status
    )
    world.saved_env = vps.ssh("deploy", f"cat /srv/{slug}/.env").stdout
    world.scenario.done.append("backup")


def test_the_restore_drill_restores_into_a_scratch_database(world):
    world.scenario.starts_after("backup")
    result = script(world.vps, world.project, "backup", "--verify", "vps")
    assert re.search(r"public\.offsite_rows +live +500 +backup +500 +same", result.stdout), result.stdout
    assert "verified: the backup restores, and its" in result.stdout
    assert "uploaded files: 2 in the archive, which reads whole" in result.stdout
    _, slug = world.project
    databases = psql(world.vps, world.project, "SELECT string_agg(datname, ' ') FROM pg_database;")
    assert f"{slug}_verify" not in databases.split(), "the scratch database is dropped"
    world.scenario.done.append("drill")


def test_a_wrong_password_is_refused_and_changes_nothing(world):
    world.scenario.starts_after("drill")
    _, slug = world.project
    psql(world.vps, world.project, "INSERT INTO offsite_rows VALUES (501, 'written after the backup');")
    world.env("RESTIC_PASSWORD=not the password\n")
    try:
        refused = script(world.vps, world.project, "restore", "--yes", "--from-offsite", "vps", check=False)
    finally:
        world.vps.ssh("deploy", f"sed -i '$d' /srv/{slug}/.env")
    assert refused.returncode != 0
    assert reason(refused) == (
        f"restore: RESTIC_PASSWORD in .env does not open the repository at "
        f"rest:http://{world.address(world.rest)}:8000/{slug}: nothing changed"
    ), refused.stderr
    assert psql(world.vps, world.project, "SELECT count(*) FROM offsite_rows;") == "501"
    psql(world.vps, world.project, "DELETE FROM offsite_rows WHERE id = 501;")
    world.scenario.done.append("wrong password")


def test_an_unreachable_repository_fails_the_timer_and_is_reported(world):
    world.scenario.starts_after("wrong password")
    vps, (_, slug) = world.vps, world.project
    # A port nobody listens on, on the rest-server's address.
    world.env(f"RESTIC_REPOSITORY=rest:http://{world.address(world.rest)}:9/{slug}\n")
    try:
        failed = vps.ssh("root", f"systemctl start {slug}-backup.service", check=False)
        assert failed.returncode != 0, "the backup timer's service did not fail"
        status = script(vps, world.project, "status", "vps", check=False)
    finally:
        vps.ssh("deploy", f"sed -i '$d' /srv/{slug}/.env")
    assert status.returncode != 0
    assert "the last offsite backup failed: no answer from the restic repository at" in reason(status)
    # systemd starts the hook as the unit fails; it posts to the recorder.
    deadline = time.monotonic() + 60
    while "POST /backup-failed" not in (posts := run("docker", "logs", world.recorder).stdout):
        assert time.monotonic() < deadline, vps.ssh("root", "journalctl --no-pager -n 30").stdout
        time.sleep(1)
    assert f"{slug}-backup.service failed on vps at " in posts, posts
    assert "no answer from the restic repository" in posts, posts
    world.scenario.done.append("unreachable")


def test_rollback_with_data_restores_the_dump_taken_before_the_migrations(world):
    world.scenario.starts_after("unreachable")
    vps, (root, slug) = world.vps, world.project
    first = site_release(vps)
    # Another release (the same code, under another release id) runs the release step.
    build_release(root, f"{slug}:relM", "relM")
    deployed = script(vps, world.project, "deploy", "vps", "relM")
    assert re.search(
        rf"for scripts/rollback --with-data: backups/{slug}-\S+-before-migrations-of-relM\.dump",
        deployed.stdout,
    )
    # The migration that went wrong, played by hand.
    psql(vps, world.project, "DELETE FROM offsite_rows WHERE id > 100;")
    cancelled = script(vps, world.project, "rollback", "--with-data", "vps", check=False, input="no\n")
    assert reason(cancelled) == "rollback: cancelled: nothing changed", cancelled.stderr
    assert site_release(vps) == "relM"
    rolled = script(vps, world.project, "rollback", "--with-data", "--yes", "vps")
    assert re.search(rf"restoring {slug}-\S+-before-migrations-of-relM\.dump", rolled.stdout), rolled.stdout
    assert site_release(vps) == first
    assert psql(vps, world.project, TABLE_DIGEST) == world.digest
    world.scenario.done.append("rollback with data")


def test_a_new_server_gets_everything_back_from_offsite(world):
    world.scenario.starts_after("rollback with data")
    root, slug = world.project
    world.vps.stop()
    env_file = world.workdir / "production.env"
    env_file.write_text(world.saved_env)
    started = time.monotonic()
    vps = world.new_vps()
    provision_and_deploy(world, "--env-file", str(env_file))
    assert psql(vps, world.project, "SELECT to_regclass('offsite_rows') IS NULL;") == "t", (
        "a new, empty database"
    )
    deployed = time.monotonic()
    result = script(vps, world.project, "restore", "--yes", "--from-offsite", "vps")
    restored = time.monotonic()
    assert "fetching snapshot latest from rest:http://" in result.stdout
    assert psql(vps, world.project, TABLE_DIGEST) == world.digest
    assert world.server(f'compose exec -T app sh -c "{MEDIA_DIGEST}"').stdout == world.media
    print(
        f"disaster recovery: new server provisioned and deployed in {deployed - started:.0f}s,"
        f" restored from offsite in {restored - deployed:.0f}s"
    )
    world.scenario.done.append("disaster")
