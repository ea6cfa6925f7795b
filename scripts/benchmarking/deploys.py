"""Deploy to serving, timed: a project rendered from this template, set up
and deployed with its own scripts/provision and scripts/deploy on a throwaway
server (the test suite's VPS container, tests/vps/), first as a whole, then
after a one-line change. What travels to the server is read from the
server's network counter, so it counts everything the deploy sends: files,
image layers, SSH's own bytes."""

from __future__ import annotations

import re
import secrets
import sys
import time
from pathlib import Path

from .docker import run

TESTS = Path(__file__).resolve().parents[2] / "tests"
sys.path.insert(0, str(TESTS))
from conftest import prepare_images, render  # noqa: E402
from vpshost import Vps, script, site_release, vps_image  # noqa: E402


def received_bytes(vps: Vps) -> int:
    """What the server's network interface has received so far."""
    return int(run("docker", "exec", vps.name, "cat", "/sys/class/net/eth0/statistics/rx_bytes").strip())


def layers(output: str) -> dict[str, int]:
    """The app image's layers the server pulled and those it had, as deploy reports them."""
    match = re.search(r"(\d+) layer\(s\) pulled, (\d+) already here", output)
    if not match:
        return {}
    return {"layers_pulled": int(match.group(1)), "layers_present": int(match.group(2))}


class Deploys:
    """Provision a fresh server, deploy the project, change one line, deploy again."""

    def __init__(self, framework: str, workdir: Path):
        self.framework = framework
        self.workdir = workdir / f"deploy-{framework}"
        self.vps: Vps | None = None
        self.slug = ""
        self.figures: dict[str, dict] = {}

    def git(self, *args: str) -> str:
        identity = ("-c", "user.name=Benchmark", "-c", "user.email=benchmark@example.com")
        return run("git", "-C", str(self.project), *identity, *args).strip()

    def timed_script(self, step: str, name: str, *args: str) -> None:
        before = received_bytes(self.vps)
        started = time.monotonic()
        result = script(self.vps, (self.project, None), name, *args)
        seconds = time.monotonic() - started
        self.figures[step] = {
            "seconds": seconds,
            "received_mb": (received_bytes(self.vps) - before) / 1e6,
            **layers(result.stdout),
        }
        print(f"deploy {self.framework}: {step} {self.figures[step]}", flush=True)

    def run(self) -> dict[str, dict]:
        # A name of its own: the builds' cache holds nothing of it yet, as
        # for a new project (a cached step run again gives other layers).
        suffix = secrets.token_hex(3)
        self.slug = f"deploy_benchmark_{suffix}"
        self.project = render(
            self.workdir / "project", framework=self.framework, project_name=f"Deploy Benchmark {suffix}"
        )
        prepare_images(self.project)
        self.git("init", "--quiet")
        self.git("add", "--all")
        self.git("commit", "--quiet", "--message", "The generated project")
        (self.workdir / "vps").mkdir()
        self.vps = Vps(self.workdir / "vps", vps_image())
        self.vps.start()
        self.timed_script("provision", "provision", "root@vps")
        self.timed_script("first_deploy", "deploy", "vps")
        views = next(self.project.glob("*/views.py"))
        views.write_text(views.read_text() + "\n# benchmark: a one-line change\n")
        self.git("commit", "--quiet", "--all", "--message", "A one-line change")
        release = self.git("rev-parse", "--short=12", "HEAD")
        self.timed_script("change_deploy", "deploy", "vps")
        serving = site_release(self.vps)
        if serving != release:
            raise RuntimeError(f"after the deploy of {release}, the server serves {serving}")
        return self.figures

    def down(self) -> None:
        """The server and the releases' images built here."""
        if self.vps:
            self.vps.stop()
        if self.slug:
            # By name: an image id may carry other names too.
            listed = run("docker", "image", "ls", "--filter", f"reference={self.slug}",
                         "--format", "{{.Repository}}:{{.Tag}}")  # fmt: skip
            if listed.split():
                run("docker", "image", "rm", *listed.split())
