"""The deploy toolkit, for real: scripts/provision, deploy, rollback, backup,
restore, logs and status of a rendered project, run against a throwaway VPS.

The VPS is a container that behaves like one (tests/vps/Dockerfile): Debian
with systemd as PID 1 and sshd, privileged so that the Docker engine which
provision installs can run containers, with /var/lib/docker on a volume. The
scripts reach it over SSH on 127.0.0.1 with a key generated here. Its engine
pulls nothing: images travel by `docker save | ssh docker load` (the scripts'
no-registry path), except one release pushed to a registry inside the VPS
(the CI path: the server pulls).

One VPS serves the whole module, and the tests run in order, each starting
from where the previous one left the server: provision, first deploy, backup,
zero-downtime deploy (built from the working tree), broken release, registry
deploy, rollback, restore.
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Self

import pytest
import requests
from conftest import free_port, prepare_images, render

pytestmark = pytest.mark.docker

VPS_DIR = Path(__file__).parent / "vps"
VPS_IMAGE = "template-test-vps"
# A request to the site through nginx (SERVER_NAMES keeps localhost).
SITE_HEADERS = {"Host": "localhost"}


def run(*command: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=check, timeout=timeout, text=True, capture_output=True, **kwargs)


class Vps:
    """The throwaway server: its container, ports and SSH settings."""

    def __init__(self, workdir: Path):
        self.name = f"tt-vps-{uuid.uuid4().hex[:8]}"
        self.volume = f"{self.name}-docker"
        self.workdir = workdir
        self.key = workdir / "id_ed25519"
        self.ssh_config = workdir / "ssh_config"

    def start(self) -> None:
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(self.key))
        run(
            "docker", "run", "--detach", "--name", self.name, "--hostname", "vps",
            "--privileged", "--cgroupns=private", "--tmpfs", "/run", "--tmpfs", "/run/lock",
            "--volume", f"{self.volume}:/var/lib/docker",
            # SSH; HTTP (nginx); 8081, for a container that publishes a port
            # the firewall must keep closed.
            "--publish", "127.0.0.1::22", "--publish", "127.0.0.1::80", "--publish", "127.0.0.1::8081",
            VPS_IMAGE,
        )  # fmt: skip
        run("docker", "cp", f"{self.key}.pub", f"{self.name}:/root/.ssh/authorized_keys")
        run("docker", "exec", self.name, "chown", "root:root", "/root/.ssh/authorized_keys")
        self.ssh_config.write_text(
            "Host vps\n"
            "  HostName 127.0.0.1\n"
            f"  Port {self.port(22)}\n"
            f"  IdentityFile {self.key}\n"
            "  IdentitiesOnly yes\n"
            "  StrictHostKeyChecking accept-new\n"
            f"  UserKnownHostsFile {self.workdir / 'known_hosts'}\n"
            "  LogLevel ERROR\n"
        )
        deadline = time.monotonic() + 90
        while self.ssh("root", "systemctl is-system-running --wait", check=False).returncode == 255:
            if time.monotonic() > deadline:
                raise AssertionError(f"no SSH on the VPS container:\n{self.container_logs()}")
            time.sleep(1)

    def stop(self) -> None:
        run("docker", "rm", "--force", "--volumes", self.name, check=False)
        run("docker", "volume", "rm", "--force", self.volume, check=False)

    def port(self, container_port: int) -> int:
        address = run("docker", "port", self.name, f"{container_port}/tcp").stdout.splitlines()[0]
        return int(address.rsplit(":", 1)[1])

    def ssh(self, user: str, command: str, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("input", "")
        return run("ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", f"{user}@vps", command, **kwargs)

    def container_logs(self) -> str:
        return run("docker", "logs", "--tail", "50", self.name, check=False).stdout

    def journal(self) -> str:
        return self.ssh("root", "journalctl --no-pager -n 80", check=False).stdout


@pytest.fixture(scope="module")
def vps(tmp_path_factory, request):
    prepare_images(VPS_DIR)
    run("docker", "build", "--quiet", "--tag", VPS_IMAGE, str(VPS_DIR))
    server = Vps(tmp_path_factory.mktemp("vps"))
    failed_before = request.session.testsfailed
    try:
        server.start()
        yield server
    finally:
        if request.session.testsfailed > failed_before:
            print(f"\n--- journal of the VPS ---\n{server.journal()}")
        server.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A rendered project in a git repository, with releases built as images:
    relA, relC, and `broken`, whose /healthz answers 404 (so its Docker
    healthcheck fails) while it would serve anything else. The second release
    is the one `scripts/deploy HOST` builds itself, named after the commit."""
    suffix = uuid.uuid4().hex[:6]
    root = render(tmp_path_factory.mktemp("deploy") / "project", project_name=f"Deploy Check {suffix}")
    slug = f"deploy_check_{suffix}"
    prepare_images(root)
    git = ("git", "-C", str(root), "-c", "user.name=Test", "-c", "user.email=test@example.com")
    run(*git, "init", "--quiet")
    run(*git, "add", "--all")
    run(*git, "commit", "--quiet", "--message", "The generated project")
    for release in ("relA", "relC"):
        run(
            "docker", "build", "--quiet", "--target", "production", "--build-arg", f"APP_RELEASE={release}",
            "--tag", f"{slug}:{release}", str(root),
        )  # fmt: skip
    broken = tmp_path_factory.mktemp("broken")
    (broken / "Dockerfile").write_text(
        f"FROM {slug}:relA\n"
        "ENV APP_RELEASE=broken\n"
        # The production healthcheck, checked often so that the test is quick.
        "HEALTHCHECK --interval=2s --timeout=2s --start-period=2s --retries=2 CMD "
        '["python", "-c", "import sys, urllib.request; '
        "sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)\"]\n"
        'CMD ["python", "-m", "http.server", "8000"]\n'
    )
    run("docker", "build", "--quiet", "--tag", f"{slug}:broken", str(broken))
    yield root, slug
    images = run("docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout.split()
    ours = [image for image in images if slug in image]
    if ours:
        run("docker", "image", "rm", "--force", *ours, check=False)


@pytest.fixture(scope="module")
def state() -> dict:
    """What one test leaves for the next (the backup, the data it holds)."""
    return {}


def script(
    vps: Vps, project, name: str, *args: str, check: bool = True, **kwargs
) -> subprocess.CompletedProcess:
    root, _ = project
    env = {**os.environ, "DEPLOY_SSH_CONFIG": str(vps.ssh_config)}
    kwargs.setdefault("input", "")
    result = run(str(root / "scripts" / name), *args, check=False, env=env, cwd=root, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"scripts/{name} {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def psql(vps: Vps, project, sql: str) -> str:
    _, slug = project
    command = (
        f"/srv/{slug}/scripts/server.sh compose exec -T db "
        """sh -c 'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -q -tA -v ON_ERROR_STOP=1'"""
    )
    return vps.ssh("deploy", command, input=sql).stdout.strip()


TABLE_DIGEST = (
    "SELECT count(*) || ' ' || md5(string_agg(id || ':' || payload, ',' ORDER BY id)) FROM deploy_rows;"
)
COUNTER = "SELECT value FROM counter WHERE name = 'home';"


def site_release(vps: Vps) -> str:
    response = requests.get(f"http://127.0.0.1:{vps.port(80)}/healthz", headers=SITE_HEADERS, timeout=10)
    response.raise_for_status()
    return response.json()["release"]


class Load:
    """Bounded load through nginx while a script runs: a few threads, each
    sending at most MAX_REQUESTS requests, all stopped after MAX_SECONDS at the
    latest. Records every failure (an error or a status other than 200) and
    the releases that /healthz reported."""

    THREADS = 4
    MAX_REQUESTS = 10_000
    MAX_SECONDS = 300
    PATHS = ("/healthz", "/", "/static/css/site.css")

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.releases: collections.Counter[str] = collections.Counter()
        self.threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(self.THREADS)]

    def worker(self) -> None:
        deadline = time.monotonic() + self.MAX_SECONDS
        with requests.Session() as session:
            for number in range(self.MAX_REQUESTS):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                path = self.PATHS[number % len(self.PATHS)]
                try:
                    response = session.get(self.url + path, headers=SITE_HEADERS, timeout=15)
                    failure = None if response.status_code == 200 else f"{path}: HTTP {response.status_code}"
                    release = response.json()["release"] if path == "/healthz" and not failure else None
                except requests.RequestException as error:
                    failure, release = f"{path}: {error!r}", None
                with self.lock:
                    if failure:
                        self.failures.append(f"{time.strftime('%H:%M:%S')} {failure}")
                    else:
                        self.ok += 1
                    if release:
                        self.releases[release] += 1
                time.sleep(0.01)

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(1)  # requests right after the switch count too
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def summary(self) -> str:
        return (
            f"{self.ok} ok, {len(self.failures)} failed, releases {dict(self.releases)}: {self.failures[:10]}"
        )


def test_provision_sets_the_server_up_and_is_idempotent(vps, project):
    _, slug = project
    first = script(vps, project, "provision", "root@vps")
    assert "    changed  " in first.stdout
    assert "Docker engine" in first.stdout

    second = script(vps, project, "provision", "root@vps")
    assert "provision: 0 changed" in second.stdout, second.stdout
    assert "    changed  " not in second.stdout, second.stdout

    checks = vps.ssh(
        "root",
        "sshd -T; ufw status verbose; fail2ban-client status sshd;"
        f" stat -c '%a %U' /srv/{slug}/.env; id -nG deploy;"
        " docker info --format 'log={{.LoggingDriver}} live-restore={{.LiveRestoreEnabled}}';"
        f" systemctl is-enabled {slug}-backup.timer; cat /etc/docker/daemon.json",
    ).stdout
    assert "passwordauthentication no" in checks
    assert "kbdinteractiveauthentication no" in checks
    assert "Status: active" in checks and "Default: deny (incoming)" in checks
    for port in (22, 80, 443):
        assert f"{port}/tcp" in checks
    assert "Status for the jail: sshd" in checks
    assert "600 deploy" in checks
    assert "docker" in checks.split("600 deploy", 1)[1].splitlines()[1].split()
    assert "log=json-file live-restore=true" in checks
    assert '"max-size": "10m"' in checks
    assert "enabled" in checks
    # The deploy user logs in with the key, and runs Docker.
    assert vps.ssh("deploy", "docker version --format '{{.Server.Version}}'").stdout.strip()


def test_first_deploy_uploads_the_images_and_starts_the_stack(vps, project, state):
    result = script(vps, project, "deploy", "vps", "relA")
    assert "docker save | gzip | ssh docker load" in result.stdout
    assert "Deployed relA" in result.stdout
    assert site_release(vps) == "relA"

    status = script(vps, project, "status", "vps").stdout
    assert "release   relA" in status
    assert '"release":"relA"' in status
    logs = script(vps, project, "logs", "--no-follow", "--tail", "5", "vps", "app").stdout
    assert "app-" in logs

    psql(
        vps,
        project,
        "CREATE TABLE deploy_rows (id int PRIMARY KEY, payload text NOT NULL);"
        "INSERT INTO deploy_rows SELECT g, md5(g::text) FROM generate_series(1, 1000) g;",
    )
    requests.get(f"http://127.0.0.1:{vps.port(80)}/", headers=SITE_HEADERS, timeout=10).raise_for_status()


def test_containers_get_no_port_but_80_and_443_through_the_firewall(vps, project):
    # A container publishing 8081, as a compose file might publish the
    # database by mistake: Docker's forwarding bypasses ufw's own rules.
    vps.ssh("deploy", "docker run --detach --rm --name probe --publish 8081:80 nginx:1.30")
    try:
        time.sleep(2)
        inside = vps.ssh("deploy", "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8081/").stdout
        assert inside == "200", "the probe container does not serve"
        probe = f"http://127.0.0.1:{vps.port(8081)}/"
        with pytest.raises(requests.RequestException):
            requests.get(probe, timeout=3)
        # Without provision's DOCKER-USER rules, ufw alone lets it through...
        vps.ssh("root", "iptables -F DOCKER-USER")
        assert requests.get(probe, timeout=5).status_code == 200
        # ...and ufw puts them back whenever it loads its rules.
        vps.ssh("root", "ufw reload")
        with pytest.raises(requests.RequestException):
            requests.get(probe, timeout=3)
    finally:
        vps.ssh("root", "ufw reload; docker rm --force probe", check=False)
    assert site_release(vps) == "relA"


def test_backup_on_demand_and_scheduled(vps, project, state, tmp_path):
    _, slug = project
    result = script(vps, project, "backup", "--to", str(tmp_path), "vps")
    dumps = list(tmp_path.glob(f"{slug}-*.dump"))
    assert len(dumps) == 1, result.stdout
    assert dumps[0].read_bytes().startswith(b"PGDMP"), "not a pg_dump custom-format file"
    state["dump"] = dumps[0]
    state["rows"] = psql(vps, project, TABLE_DIGEST)
    state["counter"] = psql(vps, project, COUNTER)
    assert state["rows"].startswith("1000 ")

    # The daily timer's service, started now, as systemd would.
    vps.ssh("root", f"systemctl start {slug}-backup.service")
    listing = vps.ssh("deploy", f"ls /srv/{slug}/backups").stdout.split()
    assert len([name for name in listing if name.endswith(".dump")]) == 2, listing


def test_deploy_under_load_has_zero_downtime_and_keeps_the_data(vps, project, state):
    root, slug = project
    # No IMAGE: deploy builds this working tree as release <commit>.
    release = state["relB"] = run("git", "-C", str(root), "rev-parse", "--short=12", "HEAD").stdout.strip()
    with Load(vps.port(80)) as load:
        result = script(vps, project, "deploy", "vps")
    assert f"building {slug}:{release}" in result.stdout
    assert f"Deployed {release}" in result.stdout
    assert not load.failures, load.summary()
    assert {"relA", release} <= set(load.releases), f"the load did not span the switch: {load.summary()}"
    assert {site_release(vps) for _ in range(10)} == {release}
    assert psql(vps, project, TABLE_DIGEST) == state["rows"]
    assert int(psql(vps, project, COUNTER)) > int(state["counter"])


def test_a_release_that_never_turns_healthy_gets_no_traffic(vps, project, state):
    with Load(vps.port(80)) as load:
        result = script(vps, project, "deploy", "vps", "broken", check=False)
    assert result.returncode != 0
    reason = result.stderr.strip().splitlines()[-1]
    assert "never turned healthy" in reason and f"{state['relB']} keeps serving" in reason, result.stderr
    assert not load.failures, load.summary()
    assert "broken" not in load.releases, load.summary()
    assert {site_release(vps) for _ in range(10)} == {state["relB"]}


def test_deploy_from_a_registry(vps, project, tmp_path):
    """The CI path: the image is pushed to a registry, and the server pulls it
    by its immutable tag. The registry runs inside the VPS, published on its
    loopback; this machine pushes to it through an SSH tunnel."""
    _, slug = project
    prepare_images(VPS_DIR / "registry")
    registry_image = f"{slug}-registry"
    run("docker", "build", "--quiet", "--tag", registry_image, str(VPS_DIR / "registry"))
    save = subprocess.Popen(["docker", "save", registry_image], stdout=subprocess.PIPE)
    vps.ssh("deploy", "docker load", input=None, stdin=save.stdout)
    save.wait()
    vps.ssh("deploy", f"docker run --detach --name registry --publish 127.0.0.1:5000:5000 {registry_image}")

    local_port = free_port()
    tunnel = subprocess.Popen(
        ["ssh", "-F", str(vps.ssh_config), "-N", "-L", f"127.0.0.1:{local_port}:127.0.0.1:5000", "deploy@vps"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    pushed = f"127.0.0.1:{local_port}/{slug}:relC"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"http://127.0.0.1:{local_port}/v2/", timeout=3).raise_for_status()
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        run("docker", "tag", f"{slug}:relC", pushed)
        run("docker", "push", "--quiet", pushed)
    finally:
        tunnel.terminate()
        tunnel.wait()
        run("docker", "image", "rm", pushed, check=False)

    result = script(vps, project, "deploy", "vps", f"127.0.0.1:5000/{slug}:relC")
    assert "pulling 127.0.0.1:5000" in result.stdout
    assert "uploading" not in result.stdout
    assert site_release(vps) == "relC"
    images = vps.ssh("deploy", "docker image ls --format '{{.Repository}}:{{.Tag}}'").stdout.split()
    assert f"{slug}:relC" in images and f"127.0.0.1:5000/{slug}:relC" not in images
    vps.ssh("deploy", "docker rm --force registry")


def test_rollback_under_load_returns_to_the_previous_release(vps, project, state):
    release_b = state["relB"]
    with Load(vps.port(80)) as load:
        result = script(vps, project, "rollback", "vps")
    assert "Rolled back" in result.stdout
    assert not load.failures, load.summary()
    assert {"relC", release_b} <= set(load.releases), load.summary()
    assert {site_release(vps) for _ in range(10)} == {release_b}

    _, slug = project
    log = vps.ssh("deploy", f"cat /srv/{slug}/releases.log").stdout.splitlines()
    assert [line.split("\t")[1:3] for line in log] == [
        ["deploy", "relA"],
        ["deploy", release_b],
        ["deploy", "relC"],
        ["rollback", release_b],
    ]
    status = script(vps, project, "status", "vps").stdout
    assert f"release   {release_b}" in status and "rollback  relC" in status


def test_restore_gives_back_the_backed_up_rows(vps, project, state):
    psql(
        vps, project, "DELETE FROM deploy_rows WHERE id % 3 = 0; UPDATE deploy_rows SET payload = 'changed';"
    )
    changed = psql(vps, project, TABLE_DIGEST)
    assert changed != state["rows"]

    refused = script(vps, project, "restore", "vps", str(state["dump"]), input="no\n", check=False)
    assert refused.returncode != 0 and "nothing changed" in refused.stderr
    assert psql(vps, project, TABLE_DIGEST) == changed

    script(vps, project, "restore", "--yes", "vps", str(state["dump"]))
    assert psql(vps, project, TABLE_DIGEST) == state["rows"]
    assert psql(vps, project, COUNTER) == state["counter"]
    # The stack kept running, on the same release.
    assert site_release(vps) == state["relB"]


def test_every_script_has_help(project):
    root, _ = project
    for name in ("provision", "deploy", "rollback", "backup", "restore", "logs", "status"):
        result = run(str(root / "scripts" / name), "--help")
        assert result.stdout.startswith(f"Usage: scripts/{name}"), name
        missing = run(str(root / "scripts" / name), check=False, input="")
        assert missing.returncode != 0 and len(missing.stderr.strip().splitlines()) == 1, (
            name,
            missing.stderr,
        )


def test_a_django_project_deploys_the_same_way(vps, project, tmp_path):
    """The scripts do not depend on the framework; the release step does
    (`manage.py release`), and so do /healthz's JSON and the static files. One
    Django release, deployed, then deployed again under load: the same
    zero-downtime switch, with Django's containers."""
    _, flask_slug = project
    # One site per server here: the Flask stack gives port 80 back.
    down = vps.ssh("deploy", f"/srv/{flask_slug}/scripts/server.sh compose down", check=False)
    assert down.returncode == 0, down.stdout + down.stderr
    suffix = uuid.uuid4().hex[:6]
    root = render(tmp_path / "django", framework="django", project_name=f"Deploy Django {suffix}")
    slug = f"deploy_django_{suffix}"
    django = (root, slug)
    prepare_images(root)
    try:
        run(
            "docker", "build", "--quiet", "--target", "production", "--build-arg", "APP_RELEASE=relD",
            "--tag", f"{slug}:relD", str(root),
        )  # fmt: skip
        script(vps, django, "provision", "root@vps")
        script(vps, django, "deploy", "vps", "relD")
        assert site_release(vps) == "relD"

        with Load(vps.port(80)) as load:
            result = script(vps, django, "deploy", "vps", "relD")
        assert "image deploy_django" in result.stdout and "is already on the server" in result.stdout
        assert "release step" in result.stdout and "beside relD" in result.stdout
        assert not load.failures, load.summary()
        assert load.releases["relD"] > 10, load.summary()
        assert '"release": "relD"' in script(vps, django, "status", "vps").stdout
    finally:
        run("docker", "image", "rm", "--force", f"{slug}:relD", check=False)
