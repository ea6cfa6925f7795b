"""The stacks the benchmark boots: a project rendered from this template (with
its framework's development server beside it, the naive setup), and the peer,
nickjj/docker-flask-example at a pinned commit."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import variants
from .docker import app_layers_mb, run, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from conftest import Stack, free_port, prepare_images, render  # noqa: E402

PEER_REPOSITORY = "nickjj/docker-flask-example"
PEER_COMMIT = "0f36a9d7965e652c4b675053c8ccdf2de2170d7f"
# wrk keeps 32 connections from one address: nginx's per-client limit (20 by
# default, .env's LIMIT_CONNECTIONS_PER_CLIENT) would answer part of them 429.
OUR_SETTINGS = {"LIMIT_CONNECTIONS_PER_CLIENT": "256"}


@dataclass
class Target:
    stack: str  # "flask", "django", "flask runserver", "peer"
    path: str  # what is asked for: "/healthz", "/", "static"
    route: str  # "direct" to the app server, or through "nginx"
    network: str
    url: str
    host: str
    sample_memory: bool = False  # docker stats halfway through the run

    @property
    def series(self) -> str:
        return f"{self.stack} {self.path} {self.route}"


def stylesheet(page: str) -> str:
    """The path of the first stylesheet a page links to (its URL may hold the host)."""
    match = re.search(r'href="(?:https?://[^/"]+)?(/[^"]+\.css(?:\?[^"]*)?)"', page)
    if not match:
        raise RuntimeError(f"the home page links no stylesheet: no static file to measure:\n{page[:2000]}")
    return match.group(1)


class Ours:
    """A project rendered from this template, built without cache and booted."""

    def __init__(self, framework: str, workdir: Path, variant: str | None = None):
        self.framework = framework
        self.variant = variant
        self.name = f"{framework}+{variant}" if variant else framework
        self.project = workdir / self.name
        self.stack: Stack | None = None
        self.devserver = f"bench-{framework}-devserver-{secrets.token_hex(3)}"
        self.timings: dict[str, float] = {}

    def boot_cold(self) -> None:
        started = time.monotonic()
        if self.variant:
            # The template's project as rendered for its own stack: the
            # template may change on disk meanwhile, the variant must not.
            shutil.copytree(self.project.parent / self.framework, self.project, symlinks=True)
        else:
            render(self.project, framework=self.framework)
        self.timings["copy_s"] = time.monotonic() - started
        prepare_images(self.project)  # base images: already present, so this is quick
        files = ("compose.yaml",)
        settings = dict(OUR_SETTINGS)
        if self.variant:
            environment = variants.apply(self.variant, self.project)
            (self.project / "compose.benchmark.yaml").write_text(variants.override(environment))
            variant = variants.VARIANTS[self.variant]
            files += (*variant.get("files", ()), "compose.benchmark.yaml")
            settings.update(variant.get("env", {}))
            settings.update({name: str(free_port()) for name in variant.get("free_ports", ())})
        started = time.monotonic()
        self.stack = Stack(self.project, files)
        # Its own image tag (compose.yaml's is the project's name and APP_RELEASE):
        # stacks side by side must not take each other's images.
        self.stack.env.update(settings, APP_RELEASE=f"benchmark-{self.name.replace('+', '-')}")
        # A variant's image is the template's: built from cache.
        build = ("build",) if self.variant else ("build", "--no-cache")
        self.timings["build_cold_s"] = timed(lambda: self.compose(*build))
        self.timings["up_cold_s"] = timed(self.stack.up)
        # Without the time prepare_images took: base images are meant to be present.
        self.timings["copy_to_healthy_s"] = self.timings["copy_s"] + time.monotonic() - started

    def compose(self, *args: str) -> str:
        try:
            return self.stack.compose(*args).stdout
        except subprocess.CalledProcessError as error:
            raise RuntimeError(f"`docker compose {' '.join(args)}` failed:\n{error.stderr[-3000:]}") from None

    def rebuild_warm(self) -> None:
        views = self.project / self.project.name.replace("-", "_") / "views.py"
        views = views if views.exists() else next(self.project.glob("*/views.py"))
        views.write_text(views.read_text() + "\n# benchmark: a one-line change\n")
        self.timings["build_warm_s"] = timed(lambda: self.compose("build", "app"))
        self.timings["up_warm_s"] = timed(self.stack.up)

    def app_layers_mb(self) -> float:
        app = json.loads(self.stack.compose("config", "--format", "json").stdout)["services"]["app"]["image"]
        python = (self.project / ".python-version").read_text().strip()
        return app_layers_mb(app, f"python:{python}-slim")

    def metrics_us(self) -> float:
        """What counting one request takes, in microseconds: record_request
        timed in the app's container, with its own metrics directory."""
        package = next(p.parent.name for p in self.project.glob("*/observability.py"))
        script = (
            "import os, tempfile, timeit\n"
            "os.environ['PROMETHEUS_MULTIPROC_DIR'] = tempfile.mkdtemp()\n"
            f"from {package}.observability import record_request\n"
            "call = lambda: record_request('/healthz', 'GET', 200, 0.001)\n"
            "call()\n"
            "print(min(timeit.repeat(call, number=20000, repeat=5)) / 20000 * 1e6)\n"
        )
        return float(self.compose("exec", "-T", "app", "python", "-c", script).strip())

    def start_devserver(self) -> None:
        """The framework's development server on the app's image and networks, no nginx."""
        command = (
            ["flask", "run", "--host", "0.0.0.0", "--port", "8000"]
            if self.framework == "flask"
            else ["python", "manage.py", "runserver", "--noreload", "0.0.0.0:8000"]
        )
        self.stack.compose("run", "--detach", "--no-deps", "--name", self.devserver, "app", *command)
        for _ in range(60):
            probe = subprocess.run(
                ["docker", "exec", self.devserver, "python", "-c", PROBE, "http://127.0.0.1:8000/healthz"],
                capture_output=True,
                check=False,
            )
            if probe.returncode == 0:
                return
            time.sleep(1)
        raise RuntimeError(f"the {self.framework} development server never answered /healthz within 60 s")

    def targets(self, devserver: bool) -> list[Target]:
        network = f"{self.stack.name}_web"
        static = stylesheet(self.stack.get("/").text)
        found = []
        for route, base in (("direct", "http://app:8000"), ("nginx", "http://nginx")):
            for path in ("/healthz", "/"):
                found.append(
                    Target(
                        self.name,
                        path,
                        route,
                        network,
                        base + path,
                        "localhost",
                        route == "nginx" and path == "/",
                    )
                )
        found.append(Target(self.name, "static", "nginx", network, "http://nginx" + static, "localhost"))
        if devserver:
            for path in ("/healthz", "/"):
                url = f"http://{self.devserver}:8000{path}"
                found.append(Target(f"{self.framework} devserver", path, "direct", network, url, "localhost"))
        return found

    @property
    def compose_project(self) -> str:
        return self.stack.name

    def down(self) -> None:
        subprocess.run(["docker", "rm", "--force", self.devserver], capture_output=True, check=False)
        if self.stack:
            self.stack.down()


PROBE = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)"


class Peer:
    """nickjj/docker-flask-example at PEER_COMMIT, with its production settings
    (its .env.example's commented defaults): 4 sync Gunicorn workers on 2 cores, no proxy."""

    base_image = "python:3.14.5-slim-trixie"

    def __init__(self, mirror: Path, workdir: Path):
        self.mirror = mirror
        self.project = workdir / "peer"
        self.name = "peer"
        self.compose_name = f"benchpeer{secrets.token_hex(3)}"
        self.env: dict[str, str] = {}
        self.timings: dict[str, float] = {}

    def compose(self, *args: str, timeout: float = 1800) -> str:
        return run("docker", "compose", *args, cwd=self.project, env=self.env, timeout=timeout)

    def boot_cold(self) -> None:
        self.project.mkdir(parents=True)
        archive = subprocess.run(
            ["git", f"--git-dir={self.mirror}", "archive", PEER_COMMIT], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", self.project], input=archive, check=True)
        # Production: its .env.example's commented defaults, which the
        # uncommented development lines would override, so those are left out.
        (self.project / ".env").write_text(
            f"export SECRET_KEY={secrets.token_hex(32)}\n"
            "export POSTGRES_USER=hello\nexport POSTGRES_PASSWORD=password\n"
            "export COMPOSE_PROFILES=postgres,redis,web\n"
            f"export DOCKER_WEB_PORT_FORWARD=127.0.0.1:{free_port()}\n"
        )
        # Its entrypoint copies the built assets into ./public as UID 1000.
        (self.project / "public").chmod(0o777)
        prepare_images(self.project)
        # Images it copies files from (uv), which prepare's scan of FROM lines misses.
        copied = re.findall(r"^COPY\s.*--from=(\S+:\S+)", (self.project / "Dockerfile").read_text(), re.M)
        with tempfile.TemporaryDirectory() as context:
            Path(context, "Dockerfile").write_text("".join(f"FROM {image}\n" for image in copied))
            prepare_images(Path(context))
        self.env = {**os.environ, "COMPOSE_PROJECT_NAME": self.compose_name}
        self.timings["build_cold_s"] = timed(lambda: self.compose("build", "--no-cache"))
        self.timings["up_cold_s"] = timed(self.up)
        self.timings["copy_to_healthy_s"] = self.timings["build_cold_s"] + self.timings["up_cold_s"]

    def up(self) -> None:
        # Its healthcheck runs every 60 s: `up --wait` would wait for the first.
        # Serving is when /up/ answers.
        self.compose("up", "--detach")
        for _ in range(120):
            probe = subprocess.run(
                [
                    "docker",
                    "compose",
                    "exec",
                    "-T",
                    "web",
                    "curl",
                    "-fsS",
                    "-o",
                    "/dev/null",
                    "localhost:8000/up/",
                ],
                cwd=self.project,
                env=self.env,
                capture_output=True,
                check=False,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the peer's /up/ never answered:\n{self.compose('logs', '--tail', '50')}")

    def rebuild_warm(self) -> None:
        views = self.project / "hello" / "page" / "views.py"
        views.write_text(views.read_text() + "\n# benchmark: a one-line change\n")
        self.timings["build_warm_s"] = timed(lambda: self.compose("build", "web"))
        self.timings["up_warm_s"] = timed(self.up)

    def app_layers_mb(self) -> float:
        return app_layers_mb(f"{self.compose_name}-web", self.base_image)

    def targets(self) -> list[Target]:
        network = f"{self.compose_name}_default"
        page = self.compose("exec", "-T", "web", "curl", "-fsS", "localhost:8000/")
        # Flask checks the Host against its SERVER_NAME, localhost:8000 by default.
        found = [
            Target("peer", path, "direct", network, f"http://web:8000{url}", "localhost:8000", path == "/")
            for path, url in (("/healthz", "/up/"), ("/", "/"), ("static", stylesheet(page)))
        ]
        return found

    @property
    def compose_project(self) -> str:
        return self.compose_name

    def down(self) -> None:
        if self.env:
            subprocess.run(
                ["docker", "compose", "down", "--volumes", "--timeout", "5"],
                cwd=self.project,
                env=self.env,
                capture_output=True,
                check=False,
            )
