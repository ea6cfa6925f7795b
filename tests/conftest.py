"""Shared fixtures: render the template with copier, boot rendered stacks.

Environment:
  TEMPLATE_TEST_PREPARE  a command run on each rendered project before it is
                         built, with the project's path appended (CI uses it
                         to provide base images where no registry is reachable).
  TEMPLATE_TESTS_REQUIRE_DOCKER=1
                         Docker tests were asked for (`nox -s stack` sets it):
                         without a working engine the run fails instead of
                         skipping them.
  TEMPLATE_TESTS_NO_SKIPS=1
                         a skipped test fails the run (both nox sessions set it).
  CI=true                implies both.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from copier import run_copy

ROOT = Path(__file__).resolve().parent.parent

DEFAULTS = {
    "project_name": "My App",
    "framework": "flask",
    "python_version": "3.14",
    "postgres_version": 18,
    "domain": "example.com",
    "email": "admin@example.com",
}
FRAMEWORKS = ["flask", "django"]


def render(destination: Path, src: Path | str = ROOT, vcs_ref: str = "HEAD", **answers) -> Path:
    """Render the template (its working tree, uncommitted changes included) into destination."""
    run_copy(
        str(src),
        destination,
        data={**DEFAULTS, **answers},
        defaults=True,
        unsafe=False,
        vcs_ref=vcs_ref,
        quiet=True,
    )
    return destination


def docker_available() -> str | None:
    """None when a Docker engine answers, else the reason it does not."""
    if not shutil.which("docker"):
        return "the docker client is not installed"
    result = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        return "no Docker engine answers `docker info`: " + lines[-1]
    if subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode != 0:
        return "the docker compose plugin is missing"
    return None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes") or os.environ.get("CI") == "true"


# The VPS scenario's modules share one throwaway server and run in order.
VPS_SCENARIO = (
    "test_deploy.py",
    "test_deploy_restore.py",
    "test_deploy_images.py",
    "test_deploy_interrupted.py",
    "test_deploy_with_jobs.py",
)


# The VPS scenario, then the modules with throwaway servers of their own.
LONGEST = (VPS_SCENARIO, ("test_swarm.py", "test_backup_offsite.py"))


def pytest_xdist_make_scheduler(config, log):
    """Under `pytest -n N --dist loadfile` a worker takes a module at a time,
    so that a module's stack is booted once; here the VPS scenario's modules
    are one unit too."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "vps-scenario" if Path(module).name in VPS_SCENARIO else module

    return ModuleScheduling(config, log)


# After pytest's own hook has deselected by -m/-k: only tests that will run count.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    # The longest first, so that they start while the others run; the VPS
    # scenario's modules in the scenario's order.
    def order(item) -> tuple[int, int]:
        for n, names in enumerate(LONGEST):
            if item.path.name in names:
                return n, names.index(item.path.name)
        return len(LONGEST), 0

    items.sort(key=order)
    docker_items = [item for item in items if item.get_closest_marker("docker")]
    reason = docker_available() if docker_items else None
    if not reason:
        return
    if _env_flag("TEMPLATE_TESTS_REQUIRE_DOCKER"):
        pytest.exit(
            f"{len(docker_items)} Docker tests were asked for (TEMPLATE_TESTS_REQUIRE_DOCKER=1 or CI=true), "
            f"but {reason}. Start a Docker engine, or run only the render tests (`nox -s render`).",
            returncode=pytest.ExitCode.TESTS_FAILED,
        )
    for item in docker_items:
        item.add_marker(pytest.mark.skip(reason=f"needs Docker: {reason}"))
    print(f"\nSkipping {len(docker_items)} Docker tests: {reason}")


# Every skipped test of the session (xfail included): where skips are not
# allowed to count as passing, the session fails and names them.
_skipped: list[str] = []


def _skip_reason(report) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ")


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(f"{report.nodeid}: {_skip_reason(report)}")


def pytest_collectreport(report):
    """A module skipped as a whole (pytest.skip at import, importorskip)."""
    if report.skipped:
        _skipped.append(f"{report.nodeid}: {_skip_reason(report)}")


def pytest_sessionfinish(session, exitstatus):
    if _skipped and _env_flag("TEMPLATE_TESTS_NO_SKIPS") and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _skipped and _env_flag("TEMPLATE_TESTS_NO_SKIPS"):
        terminalreporter.write_sep(
            "=", f"FAILED: {len(_skipped)} skipped, and a skip is not a pass here", red=True, bold=True
        )
        terminalreporter.write_line("With TEMPLATE_TESTS_NO_SKIPS=1 or CI=true every test must run; skipped:")
        for line in _skipped:
            terminalreporter.write_line(f"  {line}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def compose_config(project: Path, *files: str, env: dict[str, str] | None = None) -> dict:
    """The project's compose files (compose.yaml unless FILES) as compose resolves
    them, with ENV over this process's environment: the docker CLI only, no engine."""
    command = ["docker", "compose", *(arg for file in files or ("compose.yaml",) for arg in ("-f", file))]
    result = subprocess.run(
        [*command, "config", "--format", "json"],
        cwd=project,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def prepare_images(project: Path) -> None:
    """Run TEMPLATE_TEST_PREPARE on the project, if set (e.g. to provide base images)."""
    command = os.environ.get("TEMPLATE_TEST_PREPARE")
    if command:
        subprocess.run([*shlex.split(command), str(project)], check=True)


class Stack:
    """A rendered project's compose stack, driven with the real docker compose CLI."""

    def __init__(self, project: Path, files: tuple[str, ...] = ("compose.yaml",)):
        self.project = project
        self.name = f"tt{uuid.uuid4().hex[:10]}"
        self.files = files
        self.http_port = free_port()
        # Its own image tag (the app's image is PROJECT_SLUG:APP_RELEASE): the
        # stack tests run on two workers, which render projects of the same
        # name and would otherwise start each other's image.
        self.release = f"dev-{self.name}"
        self.env = {
            **os.environ,
            "HTTP_PORT": str(self.http_port),
            "COMPOSE_PROJECT_NAME": self.name,
            "APP_RELEASE": self.release,
        }
        # The same for the development image (compose.override.yaml names it
        # SLUG-dev), through one more compose file outside the project.
        self.dev_images: list[str] = []
        if "compose.override.yaml" in files:
            services = compose_config(project, *files, env=self.env)["services"]
            retag = {
                name: {"image": f"{service['image']}:{self.name}"}
                for name, service in services.items()
                if service.get("build", {}).get("target") == "dev"
            }
            extra = Path(tempfile.mkdtemp(prefix=f"{self.name}-")) / "compose.dev-image.json"
            extra.write_text(json.dumps({"services": retag}))
            self.files = (*files, str(extra))
            self.dev_images = sorted({image["image"] for image in retag.values()})

    @property
    def url(self) -> str:
        return f"http://localhost:{self.http_port}"

    def compose(
        self, *args: str, check: bool = True, timeout: float = 900, **kwargs
    ) -> subprocess.CompletedProcess:
        command = ["docker", "compose"]
        for file in self.files:
            command += ["-f", file]
        return subprocess.run(
            [*command, *args],
            cwd=self.project,
            env=self.env,
            check=check,
            timeout=timeout,
            text=True,
            capture_output=kwargs.pop("capture_output", True),
            **kwargs,
        )

    def up(self, *extra: str) -> None:
        try:
            self.compose("up", "-d", "--wait", "--wait-timeout", "180", *extra)
        except subprocess.CalledProcessError as error:
            raise AssertionError(
                f"`docker compose up` failed:\n{error.stdout}\n{error.stderr}\n{self.logs()}"
            ) from None

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "200", check=False).stdout

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False)
        if self.dev_images:
            subprocess.run(["docker", "image", "rm", *self.dev_images], capture_output=True)

    def get(self, path: str, host: str = "localhost", **kwargs) -> requests.Response:
        headers = {"Host": f"{host}:{self.http_port}", **kwargs.pop("headers", {})}
        return requests.get(self.url + path, headers=headers, timeout=10, **kwargs)

    def wait_for(self, path: str, status: int, timeout: float = 60) -> requests.Response:
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = self.get(path)
                if response.status_code == status:
                    return response
            except requests.RequestException:
                response = None
            if time.monotonic() > deadline:
                got = response.status_code if response is not None else "no answer"
                raise AssertionError(
                    f"GET {path} never returned {status} within {timeout}s (last: {got})\n{self.logs()}"
                )
            time.sleep(0.5)


@pytest.fixture(scope="session")
def template_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def template_repo(tmp_path_factory) -> Path:
    """A template repository with two synthetic releases, 1.0.0 and 1.1.0
    (tests/updating.py), for the update and Postgres upgrade tests."""
    from updating import make_template_repo

    return make_template_repo(tmp_path_factory.mktemp("template") / "repo")


def app_access_record(stack: Stack, probe: str) -> dict:
    """The app's JSON access-log record of the request whose URL has PROBE."""
    logs = stack.compose("logs", "--no-color", "--no-log-prefix", "app").stdout.replace("\x1b[2K", "")
    records = [json.loads(line) for line in logs.splitlines() if probe in line and line.startswith("{")]
    access = [record for record in records if record.get("logger") == "gunicorn.access"]
    assert access, f"the request with {probe} is not in the app's access log"
    return access[-1]


# The deploy scenario's VPS and project, shared by tests/test_deploy*.py.
@pytest.fixture(scope="session")
def vps(tmp_path_factory, request):
    from deployscenario import start_vps

    yield from start_vps(tmp_path_factory, request)


@pytest.fixture(scope="session")
def deploy_project(tmp_path_factory):
    from deployscenario import deploy_project

    yield from deploy_project(tmp_path_factory)


@pytest.fixture(scope="session")
def deploy_scenario():
    from vpshost import Scenario

    return Scenario()


@contextmanager
def booted(project: Path, request: pytest.FixtureRequest, *extra_up: str) -> Iterator[Stack]:
    """Boot a rendered project's production stack; always `down -v` afterwards,
    and print the stack's logs when a test using it failed."""
    prepare_images(project)
    stack = Stack(project)
    failed_before = request.session.testsfailed
    try:
        stack.up("--build", *extra_up)
        yield stack
    finally:
        if request.session.testsfailed > failed_before or sys.exc_info()[0] is not None:
            print(f"\n--- docker compose logs ({project}) ---\n{stack.logs()}")
        stack.down()


def like_a_terminal() -> None:
    """Popen's preexec_fn for a script that a test interrupts with SIGINT,
    as a terminal's Ctrl-C does: a suite started in the background (`cmd &`
    in a shell without job control) passes SIGINT on ignored, and a shell
    cannot trap a signal ignored when it started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
