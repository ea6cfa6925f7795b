"""The Dockerfile's private index / mirror build argument works: a build with
UV_DEFAULT_INDEX pointing at a local PEP 503 mirror installs every locked
package from that mirror, hash-checked against uv.lock."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, prepare_images, render

pytestmark = pytest.mark.docker


def build_mirror(project: Path, mirror: Path) -> int:
    """Download the lock's wheels for the project's Python into a simple index; return their count."""
    wheels = mirror / "wheels"
    wheels.mkdir(parents=True)
    python = (project / ".python-version").read_text().strip()
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    assert uv, "uv is installed with the test requirements"
    subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--user",
            "0",
            "-e",
            "UV_PYTHON_DOWNLOADS=never",
            "-v",
            f"{uv}:/usr/local/bin/uv:ro",
            "-v",
            f"{project}:/project:ro",
            "-v",
            f"{wheels}:/wheels",
            "-w",
            "/project",
            f"python:{python}-slim",
            "sh",
            "-c",
            "uv export --frozen --no-dev --no-emit-project --quiet --output-file /tmp/requirements.txt"
            " && pip download --quiet --only-binary=:all: --no-deps -r /tmp/requirements.txt -d /wheels"
            " && chmod -R a+rX /wheels",
        ],
        check=True,
    )
    for wheel in wheels.glob("*.whl"):
        name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        page = mirror / "simple" / name / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        with page.open("a") as out:
            out.write(f'<a href="/wheels/{wheel.name}#sha256={digest}">{wheel.name}</a>\n')
    return len(list(wheels.glob("*.whl")))


def test_build_installs_locked_packages_from_a_mirror(tmp_path):
    project = render(tmp_path / "project")
    prepare_images(project)
    count = build_mirror(project, tmp_path / "mirror")
    assert count > 5
    port = free_port()
    log = (tmp_path / "mirror.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            str(port),
            "--directory",
            str(tmp_path / "mirror"),
        ],
        stderr=log,
        stdout=log,
    )
    tag = f"tt-mirror-{port}"
    try:
        build = subprocess.run(
            [
                "docker",
                "build",
                "--network",
                "host",
                "--target",
                "production",
                "--tag",
                tag,
                "--build-arg",
                f"UV_DEFAULT_INDEX=http://127.0.0.1:{port}/simple",
                ".",
            ],
            cwd=project,
            capture_output=True,
            text=True,
        )
        assert build.returncode == 0, build.stderr[-3000:]
    finally:
        server.terminate()
        server.wait()
        log.close()
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True)
    served = set(re.findall(r'"GET /wheels/([^ ?"]+)', (tmp_path / "mirror.log").read_text()))
    assert len(served) == count, f"the build fetched {len(served)} of the mirror's {count} wheels"
