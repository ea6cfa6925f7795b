"""Provision's SSH keys, unit by unit (no Docker engine, no server): CI's
deploy key goes into the deploy user's authorized_keys behind `restrict`.

The server side runs for real from template/scripts/server.sh (sourced by
tests/fakeserver.py), with the user-management commands that need root
replaced by shell functions; the laptop side is the rendered
scripts/provision with a fake `ssh` first on PATH.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import ROOT, prepare_images, render
from fakeserver import Server

CI = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICIci+key/0= github-actions deploy"
ADMIN = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAdmin+key/1= me@laptop"
OTHER = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYother= other@laptop"


@pytest.fixture
def server(tmp_path) -> Server:
    return Server(tmp_path)


def authorize(server: Server, authorized: Path, options: str, *files: Path) -> int:
    result = server.call(f"authorize_keys {shlex.join([str(authorized), options, *map(str, files)])}")
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def keyfile(tmp_path: Path, name: str, *lines: str) -> Path:
    path = tmp_path / name
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_a_ci_key_is_added_restricted_once(server, tmp_path):
    authorized = tmp_path / "authorized_keys"
    ci = keyfile(tmp_path, "ci.pub", CI)
    assert authorize(server, authorized, "restrict", ci) == 1
    assert authorized.read_text() == f"restrict {CI}\n"
    assert authorize(server, authorized, "restrict", ci) == 0
    assert authorized.read_text() == f"restrict {CI}\n"


def test_a_ci_key_already_there_gets_restrict_in_front_of_its_own_options(server, tmp_path):
    blob = CI.split()[1]
    authorized = keyfile(
        tmp_path, "authorized_keys",
        ADMIN,
        CI,
        f'from="192.0.2.0/24" ssh-ed25519 {blob} old comment',
        f"no-pty,restrict ssh-ed25519 {blob}",
    )  # fmt: skip
    assert authorize(server, authorized, "restrict", keyfile(tmp_path, "ci.pub", CI)) == 2
    assert authorized.read_text().splitlines() == [
        ADMIN,
        f"restrict {CI}",
        f'restrict,from="192.0.2.0/24" ssh-ed25519 {blob} old comment',
        f"no-pty,restrict ssh-ed25519 {blob}",
    ]
    assert authorize(server, authorized, "restrict", keyfile(tmp_path, "ci.pub", CI)) == 0


def test_keys_without_options_are_added_but_never_loosen_a_restricted_one(server, tmp_path):
    authorized = keyfile(tmp_path, "authorized_keys", f"restrict {CI}")
    # A cloud image's root keys: a line with options is not a key to copy.
    root = keyfile(tmp_path, "root_keys", ADMIN, f'no-pty,command="echo log in as debian" {OTHER}', CI)
    given = keyfile(tmp_path, "given.pub", ADMIN.replace("me@laptop", "same key, other comment"))
    assert authorize(server, authorized, "", root, tmp_path / "missing.pub", given) == 1
    assert authorized.read_text() == f"restrict {CI}\n{ADMIN}\n"


# id, useradd, usermod, getent, install -o/-g and chown need root and a real
# user: functions stand in for them, around a home directory in tmp_path.
STUBS = """
id() {{ case $1 in -nG) echo "deploy docker" ;; *) return 0 ;; esac; }}
getent() {{ [ "$2" = root ] && echo "root:x:0:0::{root}:/bin/sh" || echo "$2:x:1000:1000::{home}:/bin/sh"; }}
install() {{
    local args=()
    while [ $# -gt 0 ]; do case $1 in -o | -g) shift ;; *) args+=("$1") ;; esac; shift; done
    command install "${{args[@]}}"
}}
chown() {{ :; }}
CHANGES=0
"""


def test_provision_user_restricts_ci_keys_before_it_copies_the_admins(server, tmp_path):
    home, root = tmp_path / "home", tmp_path / "root"
    (root / ".ssh").mkdir(parents=True)
    # The admin's own keys include the CI key (ssh-copy-id'd to root once).
    (root / ".ssh" / "authorized_keys").write_text(f"{ADMIN}\n{CI}\n")
    keyfile(server.app_dir, "ci-key-0.pub", CI)
    keyfile(server.app_dir, "key-0.pub", OTHER)
    stubs = STUBS.format(root=root, home=home)
    call = stubs + "provision_user deploy key-0.pub --restricted ci-key-0.pub"

    first = server.call(call)
    assert first.returncode == 0, first.stderr
    restricted = "1 CI key(s) allowed for deploy, restricted (no forwarding, no terminal)"
    assert f"    changed  {restricted}\n" in first.stdout
    assert "    changed  2 SSH key(s) allowed for deploy\n" in first.stdout
    authorized = home / ".ssh" / "authorized_keys"
    assert authorized.read_text() == f"restrict {CI}\n{ADMIN}\n{OTHER}\n"
    assert oct(authorized.stat().st_mode & 0o777) == "0o600"

    second = server.call(call)
    assert second.returncode == 0, second.stderr
    assert "changed" not in second.stdout, second.stdout
    assert "    ok       CI keys of deploy, restricted\n" in second.stdout
    assert authorized.read_text() == f"restrict {CI}\n{ADMIN}\n{OTHER}\n"


def test_cmd_provision_hands_ci_key_files_to_provision_user_restricted(server):
    spy = "provision_user() { printf '%s\\n' \"$@\"; exit 0; }; id() { echo 0; }; "
    spy += "provision_docker() { :; }; ensure_packages() { :; }; "
    result = server.call(
        spy + "cmd_provision --project shop --domain example.com --key-file k.pub --ci-key-file c.pub"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-4:] == ["deploy", "k.pub", "--restricted", "c.pub"]


# --- the laptop side: scripts/provision --ci-key ----------------------------

# Records each remote command; saves what `tar -xf` would unpack; answers as
# root on a server.
FAKE_SSH = r"""#!/usr/bin/env bash
command=${*: -1}
printf '%s\n' "$command" >>"$FAKE_LOG/commands"
case $command in
    *"tar -xf"*) cat >"$FAKE_LOG/shipped.tar" ;;
    "id -u ") echo 0 ;;
    "mktemp -d ") echo /tmp/stage ;;
esac
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return render(tmp_path_factory.mktemp("provision") / "project")


def provision(project: Path, tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    log, bin_dir = tmp_path / "log", tmp_path / "bin"
    log.mkdir()
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPLOY_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", FAKE_LOG=str(log))
    result = subprocess.run([str(project / "scripts" / "provision"), *args], cwd=project, env=env, input="",
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    return result, log


def test_provision_ships_ci_keys_apart_and_names_them_on_the_server(project, tmp_path):
    ci, mine = keyfile(tmp_path, "deploy_key.pub", CI), keyfile(tmp_path, "id.pub", ADMIN)
    result, log = provision(project, tmp_path, "--ci-key", str(ci), "root@host", "--ssh-key", str(mine))
    assert result.returncode == 0, result.stderr
    with tarfile.open(fileobj=io.BytesIO((log / "shipped.tar").read_bytes())) as tar:
        shipped = {os.path.normpath(m.name): tar.extractfile(m).read().decode() for m in tar if m.isfile()}
    assert shipped["ci-key-0.pub"] == f"{CI}\n" and shipped["key-0.pub"] == f"{ADMIN}\n"
    run = [command for command in (log / "commands").read_text().splitlines() if "./server.sh" in command]
    assert len(run) == 1
    assert run[0].endswith(" --key-file key-0.pub --ci-key-file ci-key-0.pub ")


def test_provision_refuses_a_private_key_as_ci_key(project, tmp_path):
    private = keyfile(tmp_path, "deploy_key", "-----BEGIN OPENSSH PRIVATE KEY-----", "b3BlbnNzaC1rZXk=")
    result, log = provision(project, tmp_path, "root@host", "--ci-key", str(private))
    assert result.returncode == 2, "a command line that cannot work"
    assert result.stderr == f"provision: {private} is not an SSH public key\n"
    assert not (log / "commands").exists(), "refused before connecting"


# --- a real sshd: what `restrict` leaves a deploy -----------------------------


def sh(*command: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("input", "")
    return subprocess.run(command, capture_output=True, text=True, timeout=60, **kwargs)


@pytest.mark.docker
def test_a_restricted_key_runs_what_deploys_run_and_forwards_nothing(tmp_path):
    """sshd in the test VPS image (tests/vps), the deploy user's
    authorized_keys written by authorize_keys: the same key before and after
    provision restricts it. Restricted, it still opens lib.sh's shared
    connection, runs commands and streams stdin (docker load); it gets no
    terminal and no TCP forwarding, which it had before."""
    vps = ROOT / "tests" / "vps"
    prepare_images(vps)
    assert sh("docker", "build", "--quiet", "--tag", "template-test-vps", str(vps)).returncode == 0
    name = f"tt-sshd-{uuid.uuid4().hex[:8]}"
    sshd = "mkdir -p /run/sshd && ssh-keygen -A && exec /usr/sbin/sshd -D -e"
    started = sh("docker", "run", "--detach", "--rm", "--name", name, "--publish", "127.0.0.1::22",
                 "template-test-vps", "sh", "-c", sshd)  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        key = tmp_path / "deploy_key"
        assert sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ci", "-f", str(key)).returncode == 0
        user = "useradd -m -s /bin/bash deploy && install -d -m 700 -o deploy -g deploy ~deploy/.ssh"
        assert sh("docker", "exec", name, "sh", "-c", user).returncode == 0
        assert sh("docker", "cp", str(ROOT / "template" / "scripts"), f"{name}:/srv/scripts").returncode == 0
        assert sh("docker", "cp", f"{key}.pub", f"{name}:/srv/ci.pub").returncode == 0

        def authorize(options: str) -> str:
            keys = "~deploy/.ssh/authorized_keys"
            script = f". /srv/scripts/server.sh && authorize_keys {keys} '{options}' /srv/ci.pub"
            result = sh("docker", "exec", name, "bash", "-c", f"{script} && chown deploy: {keys}")
            assert result.returncode == 0, result.stderr
            return result.stdout.strip()

        port = sh("docker", "port", name, "22/tcp").stdout.split(":")[-1].strip()
        config = tmp_path / "ssh_config"
        config.write_text(
            f"Host vps\n  HostName 127.0.0.1\n  Port {port}\n  User deploy\n  IdentityFile {key}\n"
            f"  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking accept-new\n"
            f"  UserKnownHostsFile {tmp_path / 'known_hosts'}\n  ControlPath {tmp_path / 'master'}\n"
        )
        ssh = ["ssh", "-F", str(config)]

        assert authorize("") == "1"
        deadline = time.monotonic() + 30
        while (up := sh(*ssh, "vps", "true")).returncode != 0:
            assert time.monotonic() < deadline, up.stderr
            time.sleep(0.5)
        # Unrestricted, the key forwards TCP (-W: what -L does) and gets a terminal.
        assert sh(*ssh, "-W", "127.0.0.1:22", "vps").stdout.startswith("SSH-2.0-")
        assert sh(*ssh, "-tt", "vps", "tty").stdout.startswith("/dev/pts/")

        assert authorize("restrict") == "1"
        master = sh(*ssh, "-o", "ControlMaster=yes", "-o", "ControlPersist=yes", "-f", "-N", "vps")
        assert master.returncode == 0, master.stderr
        try:
            assert sh(*ssh, "vps", "id -un").stdout == "deploy\n"
            assert sh(*ssh, "vps", "wc -c", input="x" * 1_000_000).stdout.strip() == "1000000"
            assert sh(*ssh, "-tt", "vps", "tty").stdout.strip() == "not a tty"
            forward = sh(*ssh, "-W", "127.0.0.1:22", "vps")
            assert forward.returncode == 255 and "refused" in forward.stderr, forward.stderr
        finally:
            sh(*ssh, "-O", "exit", "vps")
        assert authorize("restrict") == "0"
    finally:
        sh("docker", "rm", "--force", name)


# --- the server's .env ---------------------------------------------------------

# Only root gives files away: the shim installs them as the user running the test.
AS_ANYONE = (
    "install() { local args=(); while [ $# -gt 0 ]; do case $1 in -o | -g) shift 2 ;; "
    '*) args+=("$1") && shift ;; esac; done; command install "${args[@]}"; }; chown() { :; }; CHANGES=0; '
)


def test_provision_generates_every_secret_compose_yaml_requires(server, tmp_path):
    app_dir = tmp_path / "shop"
    result = server.call(AS_ANYONE + f'provision_app_dir shop example.com "$(id -un)" {app_dir} ""')
    assert result.returncode == 0, result.stderr
    assert "changed  " + str(app_dir / ".env") + " generated, with new secrets" in result.stdout
    env = dict(line.split("=", 1) for line in (app_dir / ".env").read_text().splitlines() if "=" in line)
    assert env["POSTGRES_USER"] == env["POSTGRES_DB"] == "shop"
    assert env["APP_DB_USER"] == "shop_app"
    for secret in ("SECRET_KEY", "POSTGRES_PASSWORD", "APP_DB_PASSWORD"):
        assert len(env[secret]) >= 40 and int(env[secret], 16), secret
    assert env["APP_DB_PASSWORD"] != env["POSTGRES_PASSWORD"]
    # Every variable compose.yaml refuses to run without is in the generated .env.
    compose = (render(tmp_path / "project") / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", compose))
    assert {"SECRET_KEY", "POSTGRES_PASSWORD", "APP_DB_PASSWORD"} <= required
    assert required <= set(env)


# The domain's DNS, and the server's addresses: 203.0.113.7 is the public one.
DNS = (
    'getent() { case $2 in example.com) echo "$DOMAIN_AT STREAM example.com" ;;'
    " 203.0.113.7) echo '203.0.113.7 STREAM' ;; esac; }; "
    'hostname() { echo "$INTERFACES"; }; '
)


@pytest.mark.parametrize(
    ("domain_at", "interfaces", "address", "https"),
    [
        ("203.0.113.7", "203.0.113.7 10.0.0.5", "", True),
        # 1:1 NAT: the public address is on no interface, but provision used it.
        ("203.0.113.7", "10.0.0.5", "203.0.113.7", True),
        ("192.0.2.1", "203.0.113.7", "203.0.113.7", False),
    ],
)
def test_https_is_on_from_the_start_when_the_domain_resolves_here(
    server, tmp_path, domain_at, interfaces, address, https
):
    app_dir = tmp_path / "shop"
    setup = f"DOMAIN_AT={domain_at} INTERFACES='{interfaces}'; "
    result = server.call(
        AS_ANYONE + DNS + setup + f'provision_app_dir shop example.com "$(id -un)" {app_dir} "" "{address}"'
    )
    assert result.returncode == 0, result.stderr
    lines = (app_dir / ".env").read_text().splitlines()
    assert ("COMPOSE_FILE=compose.yaml:compose.tls.yaml" in lines) is https
    assert ("# COMPOSE_FILE=compose.yaml:compose.tls.yaml" in lines) is not https
    state = "on: example.com resolves here" if https else "off: example.com does not resolve here"
    assert f"generated, with new secrets; HTTPS {state}" in result.stdout


def test_unattended_upgrades_covers_dockers_repository_when_the_engine_comes_from_it(server, tmp_path):
    apt = tmp_path / "apt"
    (apt / "apt.conf.d").mkdir(parents=True)
    (apt / "sources.list.d").mkdir()
    call = f"APT_ETC={apt} provision_docker_updates"
    conf = apt / "apt.conf.d" / "51unattended-upgrades-docker"

    assert server.call(AS_ANYONE + call).returncode == 0
    assert not conf.exists(), "the distribution's engine: its updates are already covered"

    (apt / "sources.list.d" / "docker.sources").write_text("URIs: https://download.docker.com/linux/debian\n")
    assert "changed  unattended-upgrades covers" in server.call(AS_ANYONE + call).stdout
    assert 'Unattended-Upgrade::Origins-Pattern { "origin=Docker,label=Docker CE"; };' in conf.read_text()
    assert "ok       unattended-upgrades covers" in server.call(AS_ANYONE + call).stdout


def test_provision_generates_the_other_secrets_compose_yaml_requires(server, tmp_path):
    """scripts/provision names them (a broker's password, with background jobs)."""
    app_dir = tmp_path / "shop"
    call = f'provision_app_dir shop example.com "$(id -un)" {app_dir} "" "" "VALKEY_PASSWORD OTHER_PASSWORD"'
    assert server.call(AS_ANYONE + call).returncode == 0
    env = dict(line.split("=", 1) for line in (app_dir / ".env").read_text().splitlines() if "=" in line)
    assert len(env["VALKEY_PASSWORD"]) == 40 and int(env["VALKEY_PASSWORD"], 16)
    assert len({env["VALKEY_PASSWORD"], env["OTHER_PASSWORD"], env["APP_DB_PASSWORD"]}) == 3
