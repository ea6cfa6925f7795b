"""Screenshots of a booted stack's pages, drawn by headless Chromium (Debian's
package, in the container of scripts/chromium/), for the documentation site.

The stack tests take them (tests/test_stack.py) while their stacks run;
scripts/docs.py boots the stacks itself when no test run left them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The test suite's stack and image preparation, as the benchmark uses them.
sys.path.insert(0, str(ROOT / "tests"))
from conftest import Stack, prepare_images  # noqa: E402

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
    """Chromium's image, its base image prepared as the test suite's are."""
    prepare_images(CHROMIUM)
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
    for framework, pages in PAGES.items():
        project = projects[framework]
        prepare_images(project)
        # The production stack (compose.yaml alone), on a port of its own.
        stack = Stack(project)
        print(f"screenshots: booting the {framework} project's stack", flush=True)
        try:
            stack.up("--build")
            nginx = stack.compose("ps", "-q", "nginx").stdout.strip()
            for name, (path, _) in pages.items():
                take(nginx, path, SCREENSHOTS / name)
        finally:
            stack.down()
