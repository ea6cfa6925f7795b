"""The deploy toolkit's laptop side, fast: no Docker engine, no server.

The rendered scripts run for real, with a fake `ssh` (and `docker`) first on
PATH: small scripts that record what they were asked to do and answer like a
provisioned server, so that each test sees exactly what would have gone over
SSH.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from conftest import like_a_terminal, render
from fakelaptop import APP_DIR, Fake

SCRIPTS = ["provision", "deploy", "rollback", "backup", "restore", "logs", "status"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    # The scripts are the same for both frameworks.
    return render(tmp_path_factory.mktemp("cli") / "project")


@pytest.fixture
def fake(project, tmp_path) -> Fake:
    return Fake(project, tmp_path)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a refused command prints on stderr."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_the_usage_and_exits_0(fake, script):
    for args in (["--help"], ["-h"], ["host", "--help"]):
        result = fake.run(script, *args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"Usage: scripts/{script} "), result.stdout
        assert result.stderr == ""
    assert fake.lines("argv") == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_without_a_host_each_script_says_so_in_one_line(fake, script):
    result = fake.run(script)
    assert error_line(result) == f"{script}: name the server (see --help)"
    assert result.returncode == 2, "a command line that cannot work"
    assert fake.lines("argv") == []


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("deploy", ["host", "--nope"], "unknown option --nope (see --help)"),
        ("status", ["-x", "host"], "unknown option -x (see --help)"),
        ("deploy", ["host", "--keep"], "--keep needs a value"),
        ("provision", ["host", "--ssh-key"], "--ssh-key needs a value"),
        ("backup", ["host", "--to"], "--to needs a value"),
        ("deploy", ["host", "--keep", "five"], "--keep needs a positive number"),
        ("deploy", ["host", "--keep", "0"], "--keep needs a positive number"),
        ("deploy", ["--health-timeout", "-1", "host"], "--health-timeout needs a positive number"),
        ("rollback", ["host", "--health-timeout", "3m"], "--health-timeout needs a positive number"),
        ("deploy", ["host", "image", "extra"], "too many arguments (see --help)"),
        ("status", ["host", "extra"], "too many arguments (see --help)"),
        ("provision", ["host", "extra"], "too many arguments (see --help)"),
        ("restore", ["host"], "name the dump to restore (see --help)"),
    ],
)
def test_a_bad_command_line_is_refused_in_one_line_before_any_ssh(fake, script, args, message):
    result = fake.run(script, *args)
    assert error_line(result) == f"{script}: {message}"
    assert result.returncode == 2, "a command line that cannot work"
    assert fake.lines("argv") == []


def test_options_and_arguments_reach_the_server_in_any_order(fake):
    result = fake.run("logs", "-n", "5", "host", "app", "--no-follow", "nginx", "--since", "10m")
    assert result.returncode == 0, result.stderr
    logs = f"{APP_DIR}/scripts/server.sh compose logs --tail 5 --since 10m app nginx "
    assert fake.server_commands == [logs]

    result = fake.run("rollback", "host", "rel1", "--health-timeout", "30")
    assert result.returncode == 0, result.stderr
    result = fake.run("rollback", "host")
    assert result.returncode == 0, result.stderr
    assert fake.server_commands[1:] == [
        f"{APP_DIR}/scripts/server.sh rollback rel1 --health-timeout 30 ",
        f"{APP_DIR}/scripts/server.sh rollback ",
    ]


def test_backup_downloads_into_the_directory_given(fake, tmp_path):
    result = fake.run("backup", "host", "--to", str(tmp_path / "dumps"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "dumps" / "my_app-1.dump").read_text() == "the dump\n"
    assert "--> dumped" in result.stdout


@pytest.mark.parametrize("tag", ["bad id!", ".hidden", "a" * 129, "ghcr.io/owner/repo:" + "a" * 129])
def test_deploy_refuses_a_bad_release_id_before_any_ssh(fake, tag):
    release = tag.rpartition(":")[2]
    message = f"deploy: not a usable release id (image tag): {release}"
    assert error_line(fake.run("deploy", "host", tag)) == message
    assert fake.lines("argv") == []


def test_deploy_takes_a_128_character_release_id(fake):
    tag = "r" * 127 + "9"
    result = fake.run("deploy", "host", tag)
    assert result.returncode == 0, result.stderr
    assert fake.server_commands[-1].endswith(
        f" deploy {APP_DIR} {tag} --keep 5 --health-timeout 180 --source uploaded "
    )


def test_deploy_trace_traces_here_and_on_the_server(fake):
    result = fake.run("deploy", "host", "rel1", "--keep", "3")
    assert result.returncode == 0, result.stderr
    untraced = fake.server_commands
    assert untraced and not any("DEPLOY_TRACE" in command for command in untraced)
    assert "+ " not in result.stderr

    (fake.log / "commands").unlink()
    result = fake.run("deploy", "host", "rel1", "--keep", "3", DEPLOY_TRACE="1")
    assert result.returncode == 0, result.stderr
    assert fake.server_commands == [f"env DEPLOY_TRACE=1 {command}" for command in untraced]
    deploy = f" deploy {APP_DIR} rel1 --keep 3 --health-timeout 180 --source uploaded "
    assert fake.server_commands[-1].startswith("env DEPLOY_TRACE=1 bash -c ")
    assert fake.server_commands[-1].endswith(deploy)
    # set -x on the laptop: the commands of the script itself are shown.
    assert "+ deploy:" in result.stderr and "parse_args" in result.stderr


def test_provision_ships_server_sh_with_its_modules(fake, project, tmp_path):
    keys = []
    for i in range(2):
        keys += ["--ssh-key", str(tmp_path / f"id{i}.pub")]
        (tmp_path / f"id{i}.pub").write_text(f"ssh-ed25519 AAAA{i} me@laptop\n")
    result = fake.run("provision", "root@host", *keys, "--swap", "0", DEPLOY_TRACE="1")
    assert result.returncode == 0, result.stderr

    with tarfile.open(fileobj=io.BytesIO((fake.log / "shipped.tar").read_bytes())) as tar:
        shipped = {os.path.normpath(member.name): member for member in tar.getmembers() if member.isfile()}
        modules = sorted(path.name for path in (project / "scripts" / "server").glob("*.sh"))
        assert "release-id.sh" in modules
        expected = ["server.sh", "key-0.pub", "key-1.pub"] + [f"server/{module}" for module in modules]
        assert sorted(shipped) == sorted(expected)
        for module in modules:
            content = tar.extractfile(shipped[f"server/{module}"]).read()
            assert content == (project / "scripts" / "server" / module).read_bytes(), module

    # Run from the temporary directory, as root (no sudo), traced.
    run = [command for command in fake.lines("commands") if "./server.sh" in command]
    assert len(run) == 1
    assert " /tmp/stage /tmp/stage env DEPLOY_TRACE=1 bash ./server.sh provision --project my_app " in run[0]
    # The monitoring overlay's database password is generated on the server too.
    keys = " --key-file key-0.pub --key-file key-1.pub "
    assert run[0].endswith(" --swap 0 --secret MONITORING_DB_PASSWORD" + keys)


def test_restore_reads_the_answer_piped_to_it_and_uploads_apart(fake, tmp_path):
    dump = tmp_path / "my_app-1.dump"
    dump.write_bytes(b"PGDMP and the rest")
    result = fake.run("restore", "host", str(dump), input="yes\n")
    assert result.returncode == 0, result.stderr
    assert (fake.log / "stdin").read_bytes() == b"PGDMP and the rest", "only the upload reads stdin"
    assert fake.server_commands[-1].endswith("/scripts/server.sh restore uploaded/my_app-1.dump ")


def test_restore_refuses_a_local_file_that_is_no_dump_before_any_ssh(fake, tmp_path):
    dump = tmp_path / "notes.txt"
    dump.write_text("not a dump")
    message = error_line(fake.run("restore", "--yes", "host", str(dump)))
    assert (
        message
        == f"restore: {dump} is not a pg_dump custom-format file (scripts/backup makes them): nothing changed"
    )
    assert fake.lines("argv") == []


def control_master_target(fake: Fake) -> str:
    [master] = [line for line in fake.lines("argv") if "ControlMaster=yes" in line]
    return master.split()[-1]


def test_an_ssh_config_that_logs_in_as_root_does_not_make_deploys_run_as_root(fake, tmp_path):
    # On a laptop the local user is not root: ssh -G's "user root" then
    # comes from the SSH config.
    local = tmp_path / "local"
    local.mkdir()
    (local / "id").write_text('#!/bin/sh\n[ "$1" = -un ] && echo alice || exec /usr/bin/id "$@"\n')
    (local / "id").chmod(0o755)
    result = fake.run("status", "host", FAKE_SSH_USER="root", PATH=f"{local}{os.pathsep}{fake.env['PATH']}")
    assert result.returncode == 0, result.stderr
    assert control_master_target(fake) == "deploy@host"
    assert (
        "your SSH config logs in to host as root; using deploy (DEPLOY_USER=root to override)"
        in result.stderr
    )


def test_a_refused_login_points_to_provision(fake):
    message = error_line(fake.run("deploy", "host", "rel1", FAKE_SSH_DENY="1"))
    assert message.startswith("deploy: cannot connect to deploy@host over SSH: ")
    assert message.endswith(
        "Permission denied (publickey,password).; a new server needs scripts/provision root@host first"
    )


def test_update_template_outside_git_fails_clearly(project):
    result = subprocess.run(
        [str(project / "scripts" / "update-template")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("update-template: not a git repository: copier update needs one"), (
        result.stderr
    )
    assert "already at the newest" not in result.stdout


# Bash 4 and later only: the laptop scripts keep to macOS's bash 3.2.
BASH_4_ONLY = re.compile(
    r"\b(mapfile|readarray|coproc)\b|declare -[aAgilnrux]*[An]|local -[An]|\$\{\w+(,,|\^\^|@[QEPAa])|;;&|\|&"
)


def test_the_laptop_scripts_keep_to_bash_3_2(project):
    laptop = [path for path in (project / "scripts").iterdir() if path.is_file() and path.name != "server.sh"]
    assert len(laptop) >= 9
    found = [
        f"{path.name}:{number}: {line.strip()}"
        for path in laptop
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if not line.lstrip().startswith("#") and BASH_4_ONLY.search(line)
    ]
    assert found == []
    assert BASH_4_ONLY.search("mapfile -t lines < file") and BASH_4_ONLY.search('echo "${name,,}"')


def test_cert_expiry_with_a_host_runs_on_the_server(fake):
    result = fake.run("cert-expiry", "--warn", "20", "host")
    assert result.returncode == 0, result.stderr
    remote = [command for command in fake.lines("commands") if "cert-expiry" in command]
    assert remote == [f"{APP_DIR}/scripts/cert-expiry --warn 20 "]
    assert fake.run("cert-expiry", "--warn", "soon", "host").returncode == 2
    assert fake.run("cert-expiry", "host", "other").returncode == 2


def test_deploy_pulls_a_registry_image_pinned_by_digest(fake):
    digest = "sha256:" + "ab" * 32
    result = fake.run("deploy", "host", f"ghcr.io/acme/shop:1a2b3c@{digest}")
    assert result.returncode == 0, result.stderr
    assert fake.server_commands[-1].endswith(
        f" deploy {APP_DIR} 1a2b3c --keep 5 --health-timeout 180"
        f" --source ghcr.io/acme/shop:1a2b3c@{digest} --pull ghcr.io/acme/shop:1a2b3c@{digest} "
    )
    assert fake.run("deploy", "host", f"shop@{digest}").returncode == 2


def test_deploy_builds_for_the_servers_architecture(fake):
    """An arm64 laptop deploying to an amd64 server, and the reverse."""
    result = fake.run("deploy", "host", "rel1", FAKE_UNAME="aarch64")
    assert error_line(result) == (
        "deploy: my_app:rel1 is built for linux/amd64, but the server runs linux/arm64:"
        " build it with --platform linux/arm64"
    )
    arm64 = fake.run("deploy", "host", "rel1", FAKE_UNAME="aarch64", FAKE_PLATFORM="linux/arm64")
    assert arm64.returncode == 0, arm64.stderr
    assert error_line(fake.run("deploy", "host", "rel1", FAKE_UNAME="riscv64")) == (
        "deploy: the server runs on riscv64, which this deploy builds no image for"
    )


def test_deploy_ships_the_image_to_each_other_swarm_node_through_the_server(fake):
    nodes = "worker1 10.0.0.6\nworker2 10.0.0.7"
    result = fake.run("deploy", "vps", "rel1", FAKE_SWARM_NODES=nodes)
    assert result.returncode == 0, result.stderr
    through_the_server = re.compile(r"ProxyCommand=ssh .*ControlPath=\S+/master -W %h:%p deploy@vps ")
    for name, address in (("worker1", "10.0.0.6"), ("worker2", "10.0.0.7")):
        assert f"--> shipping my_app:rel1 to node {name} ({address})" in result.stdout
        calls = [line for line in fake.lines("argv") if f"deploy@{address}" in line]
        # Asked for its image, then sent it; each time through the server's
        # shared connection, never straight to the node.
        assert len(calls) == 2, calls
        assert all(through_the_server.search(call) for call in calls), calls
        # Its host key checked against those the server recorded when it joined.
        pinned = re.compile(r"StrictHostKeyChecking=yes -o UserKnownHostsFile=\S+/nodes.known_hosts ")
        assert all(pinned.search(call) for call in calls), calls
        assert not any("ControlPath" in call.split("ProxyCommand=")[0] for call in calls), calls
    assert fake.lines("docker").count("save my_app:rel1") == 2
    assert f"cat {APP_DIR}/nodes.known_hosts " in fake.lines("commands")
    # The manager has it already: the deploy's own stream carries no image.
    assert "--> image my_app:rel1 is already on the server" in result.stdout


def test_a_single_server_deploy_asks_for_no_nodes(fake):
    result = fake.run("deploy", "vps", "rel1")
    assert result.returncode == 0, result.stderr
    assert not any("docker node" in command for command in fake.lines("commands"))
    assert "to node" not in result.stdout


def test_ctrl_c_during_the_stream_says_interrupted_not_lost(fake):
    """A terminal's Ctrl-C reaches the script and its ssh processes at once:
    ssh exits 255 and the shared connection is gone, as when the network
    drops, but the reason given is the interrupt."""
    deploy = subprocess.Popen(
        [str(fake.project / "scripts" / "deploy"), "vps", "rel1"],
        cwd=fake.project,
        env={**fake.env, "FAKE_SSH_STREAM_INT": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=like_a_terminal,
    )
    deadline = time.monotonic() + 20
    while not (fake.log / "streaming").exists():
        assert deploy.poll() is None and time.monotonic() < deadline, deploy.communicate()
        time.sleep(0.05)
    os.killpg(deploy.pid, signal.SIGINT)
    _, stderr = deploy.communicate(timeout=20)
    assert deploy.returncode != 0
    assert stderr.strip().splitlines()[-1].startswith("deploy: interrupted here; what the server"), stderr
    assert "lost the SSH connection" not in stderr
