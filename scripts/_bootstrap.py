"""Shared by scripts/demo and scripts/test: a private virtualenv with the tools they need.

Standard library only, so that the scripts run on any Python >= 3.11.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"


def ensure_venv(*requirements: str) -> Path:
    """Create .venv if needed, install the requirements, return its bin directory."""
    # Whatever python3 the user has runs this: an older one gets a clear message.
    if sys.version_info < (3, 11):  # noqa: UP036
        sys.exit(f"Python 3.11 or newer is needed (this is {sys.version.split()[0]}).")
    bin_dir = VENV / ("Scripts" if os.name == "nt" else "bin")
    if not (bin_dir / "python").exists():
        print(f"==> creating {VENV.relative_to(ROOT)}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print(f"==> installing {' '.join(requirements)}", flush=True)
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *requirements], check=True)
    return bin_dir


def require_docker() -> None:
    for command, hint in (
        (["docker", "info"], "Start a Docker engine (Docker Desktop, or `sudo systemctl start docker`)."),
        (["docker", "compose", "version"], "Install the Docker Compose v2 plugin."),
    ):
        try:
            ok = subprocess.run(command, capture_output=True).returncode == 0
        except FileNotFoundError:
            sys.exit("The docker command is not installed: see https://docs.docker.com/engine/install/")
        if not ok:
            sys.exit(f"`{' '.join(command)}` failed. {hint}")
