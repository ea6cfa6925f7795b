"""The throwaway VPS of tests/test_deploy.py, and what its tests measure with.

Vps: a container that behaves like a fresh server (tests/vps/Dockerfile),
reached over SSH. Scenario: the steps of the module's one scenario done so
far. Images of releases built for them; a switch run under load
(tests/siteload.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from conftest import free_port, prepare_images
from siteload import SITE_HEADERS, Load

VPS_DIR = Path(__file__).parent / "vps"


def vps_image() -> str:
    """The throwaway server's image (tests/vps/), built (from cache after the first time); its tag."""
    prepare_images(VPS_DIR)
    run("docker", "build", "--quiet", "--tag", "template-test-vps", str(VPS_DIR))
    return "template-test-vps"


def run(*command: str, check: bool = True, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=check, timeout=timeout, text=True, capture_output=True, **kwargs)


class Vps:
    """The throwaway server: its container, ports and SSH settings."""

    def __init__(self, workdir: Path, image: str):
        self.name = f"tt-vps-{uuid.uuid4().hex[:8]}"
        self.volume = f"{self.name}-docker"
        self.image = image
        self.workdir = workdir
        self.key = workdir / "id_ed25519"
        self.ssh_config = workdir / "ssh_config"

    def start(self) -> None:
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(self.key))
        run(
            "docker", "run", "--detach", "--name", self.name, "--hostname", "vps",
            "--privileged", "--cgroupns=private", "--tmpfs", "/run", "--tmpfs", "/run/lock",
            "--volume", f"{self.volume}:/var/lib/docker",
            # SSH; HTTP (nginx); 443 and 8081, for containers that publish a
            # port the firewall must let through, or keep closed.
            "--publish", "127.0.0.1::22", "--publish", "127.0.0.1::80",
            "--publish", "127.0.0.1::443", "--publish", "127.0.0.1::8081",
            self.image,
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

    def ssh_command(self, user: str, command: str) -> list[str]:
        return ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", f"{user}@vps", command]

    def ssh(self, user: str, command: str, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("input", "")
        return run(*self.ssh_command(user, command), **kwargs)

    def container_logs(self) -> str:
        return run("docker", "logs", "--tail", "50", self.name, check=False).stdout

    def journal(self) -> str:
        return self.ssh("root", "journalctl --no-pager -n 80", check=False).stdout

    def nginx_errors(self) -> str:
        """The last warnings and errors of every nginx container on the
        server (compose's or a swarm's), which say why a request failed."""
        command = (
            "for c in $(docker ps --all --quiet --filter name=nginx); do"
            " docker logs --since 15m \"$c\" 2>&1 | grep -E '\\[(warn|error|crit|alert)\\]';"
            " done | tail -n 40"
        )
        return self.ssh("root", command, check=False).stdout


def push_to_a_registry_on(vps: Vps, image: str, registry_dir: Path, name: str = "") -> None:
    """Push IMAGE (as NAME, if given) to a registry inside the VPS, published
    on its loopback as 127.0.0.1:5000 (where the server pulls from), through
    an SSH tunnel."""
    registry_image = "template-test-registry"
    prepare_images(registry_dir)
    run("docker", "build", "--quiet", "--tag", registry_image, str(registry_dir))
    save = subprocess.Popen(["docker", "save", registry_image], stdout=subprocess.PIPE)
    vps.ssh("deploy", "docker load", input=None, stdin=save.stdout)
    save.wait()
    vps.ssh("deploy", f"docker run --detach --name registry --publish 127.0.0.1:5000:5000 {registry_image}")

    local_port = free_port()
    forward = f"127.0.0.1:{local_port}:127.0.0.1:5000"
    tunnel = subprocess.Popen(
        ["ssh", "-F", str(vps.ssh_config), "-N", "-L", forward, "deploy@vps"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    pushed = f"127.0.0.1:{local_port}/{name or image}"
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
        run("docker", "tag", image, pushed)
        run("docker", "push", "--quiet", pushed)
    finally:
        tunnel.terminate()
        tunnel.wait()
        run("docker", "image", "rm", pushed, check=False)


@dataclass
class Scenario:
    """The steps done so far, and what they leave for the next ones."""

    done: list[str] = field(default_factory=list)
    dump: Path | None = None  # the backup downloaded here
    rows: str = ""  # TABLE_DIGEST at the backup
    counter: str = ""  # COUNTER at the backup
    rel_b: str = ""  # the release deploy built from the working tree
    # relB's stylesheet URL and content, noted before the switch to relC.
    rel_b_css: tuple[str, bytes] = field(default=("", b""), repr=False)

    def starts_after(self, step: str) -> None:
        if not self.done or self.done[-1] != step:
            last = self.done[-1] if self.done else "nothing"
            pytest.fail(
                f"this test starts from the server as step '{step}' left it, but the last step done is "
                f"'{last}': run the whole module, in order (see its docstring)",
                pytrace=False,
            )


def script(
    vps: Vps, project, name: str, *args: str, check: bool = True, **kwargs
) -> subprocess.CompletedProcess:
    """Run the rendered project's scripts/NAME against the VPS."""
    root, _ = project
    env = {**os.environ, "DEPLOY_SSH_CONFIG": str(vps.ssh_config)}
    kwargs.setdefault("input", "")
    result = run(str(root / "scripts" / name), *args, check=False, env=env, cwd=root, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"scripts/{name} {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


def reason(result: subprocess.CompletedProcess) -> str:
    """The one-line reason a script gives when it fails: its last line on stderr."""
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else ""


def psql(vps: Vps, project, sql: str) -> str:
    _, slug = project
    command = (
        f"/srv/{slug}/scripts/server.sh compose exec -T db "
        """sh -c 'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -q -tA -v ON_ERROR_STOP=1'"""
    )
    return vps.ssh("deploy", command, input=sql).stdout.strip()


def site_release(vps: Vps) -> str:
    response = requests.get(f"http://127.0.0.1:{vps.port(80)}/healthz", headers=SITE_HEADERS, timeout=10)
    response.raise_for_status()
    return response.json()["release"]


def stylesheet(vps: Vps) -> tuple[str, bytes]:
    """The stylesheet URL the home page names (a content-hashed file name), and what it answers now."""
    base = f"http://127.0.0.1:{vps.port(80)}"
    page = requests.get(f"{base}/", headers=SITE_HEADERS, timeout=10)
    page.raise_for_status()
    links = re.findall(r'<link rel="stylesheet" href="([^"]+)"', page.text)
    assert len(links) == 1, f"expected one stylesheet on the home page, found {links}"
    url = links[0].removeprefix(f"http://localhost:{vps.port(80)}").removeprefix("http://localhost")
    return url, css(vps, url)


def css(vps: Vps, url: str) -> bytes:
    response = requests.get(f"http://127.0.0.1:{vps.port(80)}{url}", headers=SITE_HEADERS, timeout=10)
    assert response.status_code == 200, f"{url}: HTTP {response.status_code}"
    return response.content


def stop_moment(result: subprocess.CompletedProcess, release: str, started: float) -> float:
    """When the old containers of RELEASE stopped (epoch seconds), as the
    server printed it right after announcing their drain."""
    lines = result.stdout.splitlines()
    drain = f"--> draining {release}: requests in flight finish, then its containers stop"
    assert drain in lines, f"no drain of {release} in the output:\n{result.stdout}"
    stopped = lines[lines.index(drain) + 1]
    match = re.fullmatch(
        rf"    stopped [1-9][0-9]* container\(s\) of {re.escape(release)} "
        r"at ([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3})Z",
        stopped,
    )
    assert match, f"not the line that says when the old containers stopped: {stopped!r}"
    moment = datetime.fromisoformat(match[1]).replace(tzinfo=UTC).timestamp()
    # Same kernel clock here and on the VPS container: the moment falls in the run.
    assert started <= moment <= time.time(), f"the stop moment {match[1]}Z is outside the script's run"
    return moment


def ufw_status(text: str) -> tuple[str, dict[str, str], set[str]]:
    """`ufw status verbose`, parsed: its status, default policy by direction
    (incoming: deny...), and the IPv4 rules that allow anyone in."""
    lines = text.splitlines()
    status = lines[0].removeprefix("Status: ")
    defaults = next(line for line in lines if line.startswith("Default: "))
    policies = {direction: policy for policy, direction in re.findall(r"(\w+) \((\w+)\)", defaults)}
    table = next(number for number, line in enumerate(lines) if line.startswith("--"))
    rules = [re.split(r"\s{2,}", line.strip()) for line in lines[table + 1 :]]
    return status, policies, {rule[0] for rule in rules if rule[1:] == ["ALLOW IN", "Anywhere"]}


def switch_under_load(
    old: str, vps: Vps, project, name: str, *args: str
) -> tuple[subprocess.CompletedProcess, Load]:
    """Run scripts/NAME, which switches from release OLD to another, under
    load that goes on until AROUND seconds after OLD's containers stopped;
    check the load (Load.check)."""
    with Load(vps.port(80), vps.nginx_errors) as load:
        started = time.time()
        result = script(vps, project, name, *args)
        stopped = stop_moment(result, old, started)
        load.run_until(stopped + Load.AROUND + 0.5)
    load.check(stopped)
    return result, load


def build_release(context: Path, image: str, release: str) -> None:
    """The production image of the project in CONTEXT, as release RELEASE."""
    run(
        "docker", "build", "--quiet", "--target", "production", "--build-arg", f"APP_RELEASE={release}",
        "--tag", image, str(context),
    )  # fmt: skip


def build_from(directory: Path, image: str, dockerfile: str) -> None:
    """IMAGE from a Dockerfile of a few lines (FROM another release), in DIRECTORY."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(dockerfile)
    run("docker", "build", "--quiet", "--tag", image, str(directory))
