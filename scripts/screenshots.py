"""Screenshots of a booted stack's pages, drawn by headless Chromium (Debian's
package, in the container of scripts/chromium/), for the documentation site.

The stack tests take them (tests/test_stack.py) while their stacks run;
scripts/docs.py boots the stacks itself when no test run left them.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "docs" / "_build" / "screenshots"
CHROMIUM = ROOT / "scripts" / "chromium"
IMAGE = "template-docs-chromium"
# The pages the site shows, per framework: file name, (path, caption).
PAGES = {
    "flask": {"flask-home.png": ("/", "The Flask project's home page")},
    "django": {
        "django-home.png": ("/", "The Django project's home page"),
        "django-admin.png": ("/admin/login/", "The Django admin's login page"),
    },
}
WINDOW = (1100, 700)


def build_chromium() -> None:
    """Chromium's image; TEMPLATE_TEST_PREPARE (README.md, "Tests") on its directory first, when set."""
    prepare = os.environ.get("TEMPLATE_TEST_PREPARE")
    if prepare:
        subprocess.run([*shlex.split(prepare), str(CHROMIUM)], check=True, capture_output=True)
    subprocess.run(
        ["docker", "build", "--quiet", "--tag", IMAGE, str(CHROMIUM)], check=True, capture_output=True
    )


def take(nginx: str, path: str, out: Path) -> Path:
    """PATH of the site as Chromium draws it through the nginx container
    NGINX (an id or name), into OUT, a PNG file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    result = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--network",
            f"container:{nginx}",
            "--user",
            f"{os.getuid()}:{os.getgid()}",
            "--volume",
            f"{out.parent}:/out",
            IMAGE,
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--screenshot=/out/{out.name}",
            f"http://localhost{path}",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=180,
    )
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(
            f"Chromium drew no screenshot of {path} (exit {result.returncode}):\n{result.stderr}"
        )
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fresh() -> bool:
    """Every screenshot is there, taken since the last commit."""
    committed = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%ct"], check=True, capture_output=True, text=True
    ).stdout
    files = [SCREENSHOTS / name for pages in PAGES.values() for name in pages]
    return all(file.is_file() and file.stat().st_mtime >= int(committed) for file in files)


def take_all(projects: dict[str, Path]) -> None:
    """Boot each framework's production stack, rendered in PROJECTS, and take
    its pages; unless the stack tests took them since the last commit."""
    if fresh():
        print(f"screenshots: those the stack tests took, in {SCREENSHOTS.relative_to(ROOT)}", flush=True)
        return
    build_chromium()
    prepare = os.environ.get("TEMPLATE_TEST_PREPARE")
    for framework, pages in PAGES.items():
        project = projects[framework]
        if prepare:
            subprocess.run([*shlex.split(prepare), str(project)], check=True, capture_output=True)
        # The production stack (compose.yaml alone), on a port of its own.
        env = {**os.environ, "COMPOSE_PROJECT_NAME": f"docs-{framework}", "APP_RELEASE": "docs"}
        env["HTTP_PORT"] = str(free_port())
        compose = ["docker", "compose", "--file", "compose.yaml"]
        print(f"screenshots: booting the {framework} project's stack", flush=True)
        try:
            up = subprocess.run(
                [*compose, "up", "--build", "--wait", "--quiet-pull"],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
            )
            if up.returncode != 0:
                raise RuntimeError(
                    f"the {framework} stack did not boot for its screenshots:\n{up.stdout}{up.stderr}"
                )
            nginx = subprocess.run(
                [*compose, "ps", "-q", "nginx"],
                cwd=project,
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            for name, (path, _) in pages.items():
                take(nginx, path, SCREENSHOTS / name)
        finally:
            subprocess.run(
                [*compose, "down", "--volumes"], cwd=project, env=env, check=False, capture_output=True
            )
