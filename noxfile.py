"""Tasks for the template repository.

    nox                 # the whole test suite: render tests, then the Docker stack tests
    nox -s render       # render tests only (no Docker)
    nox -s stack        # stack tests only (needs a Docker engine)
    nox -s lock         # re-lock the generated projects' dependencies
    nox -s benchmark    # build and serving figures, printed
"""

import os
import re
import shutil
import tempfile
from pathlib import Path

import nox

ROOT = Path(__file__).parent
nox.options.sessions = ["render", "stack"]
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True

TEST_DEPS = ["-r", "tests/requirements.txt"]


@nox.session
def render(session: nox.Session) -> None:
    """Render the template with many answers and lint the output (no Docker)."""
    session.install(*TEST_DEPS)
    session.run("pytest", "-m", "not docker", *session.posargs)


@nox.session
def stack(session: nox.Session) -> None:
    """Boot the rendered production stacks for real and test them through nginx."""
    session.install(*TEST_DEPS)
    session.run("pytest", "-m", "docker", *session.posargs)


@nox.session
def benchmark(session: nox.Session) -> None:
    """Print build, size and serving figures for each framework."""
    session.install(*TEST_DEPS)
    session.run("python", "scripts/benchmark.py", *session.posargs)


@nox.session
def lock(session: nox.Session) -> None:
    """Resolve each framework's dependencies and write template/uv.lock.jinja.

    The lock is resolved by uv inside the official Python image, so that this
    works on machines without the project's Python version.
    """
    session.install("copier", "uv")
    uv = shutil.which("uv", path=session.bin)
    python_version = _copier_default("python_version")
    placeholder = "lockedprojectname"
    locks = {}
    for framework in ("flask", "django"):
        with tempfile.TemporaryDirectory() as tmp:
            project = Path(tmp) / "project"
            session.run(
                "copier", "copy", "--quiet", "--defaults", "--vcs-ref", "HEAD",
                "--data", f"framework={framework}", "--data", f"project_slug={placeholder}",
                str(ROOT), str(project),
            )
            session.run(
                "docker", "run", "--rm", "--user", f"{os.getuid()}:{os.getgid()}",
                "-e", "UV_CACHE_DIR=/tmp/uv-cache", "-e", "UV_PYTHON_DOWNLOADS=never",
                "-v", f"{uv}:/usr/local/bin/uv:ro", "-v", f"{project}:/project", "-w", "/project",
                f"python:{python_version}-slim", "uv", "lock", "--upgrade",
                external=True,
            )
            locks[framework] = (project / "uv.lock").read_text().replace(
                f'"{placeholder}"', "\"{{ project_slug | replace('_', '-') }}\""
            )
    (ROOT / "template" / "uv.lock.jinja").write_text(
        "{% if framework == 'flask' -%}\n"
        + locks["flask"]
        + "{% else -%}\n"
        + locks["django"]
        + "{% endif -%}\n"
    )
    session.log("wrote template/uv.lock.jinja: commit it with the pyproject.toml change")


def _copier_default(question: str) -> str:
    """A question's default from copier.yml (top-level keys, scalar defaults)."""
    text = (ROOT / "copier.yml").read_text()
    block = re.search(rf"^{question}:\n((?:  .*\n)+)", text, re.MULTILINE)
    return re.search(r"^  default: \"?([^\"\n]+)\"?$", block.group(1), re.MULTILINE).group(1)
