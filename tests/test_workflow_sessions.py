"""The nox sessions that the generated project's CI jobs call, run for real
against rendered projects (the workflows themselves: test_workflows.py).
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import FRAMEWORKS, free_port, prepare_images, render
from workflowfiles import load, workflows


@pytest.fixture(scope="module", params=FRAMEWORKS)
def project(request, tmp_path_factory) -> Path:
    return render(tmp_path_factory.mktemp(request.param) / "project", framework=request.param)


def nox(project: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 900):
    command = [sys.executable, "-m", "nox", "--noxfile", str(project / "noxfile.py"), *args]
    return subprocess.run(
        command, cwd=project, env=env or os.environ.copy(), capture_output=True, text=True, timeout=timeout
    )


def test_lint_and_hadolint_sessions_pass_and_catch_a_violation(project, tmp_path):
    result = nox(project, "-s", "lint", "hadolint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "Session lint was successful" in result.stderr and "Session hadolint was successful" in result.stderr
    )

    broken = project / "broken.py"
    broken.write_text("import os\n")
    try:
        result = nox(project, "-s", "lint")
    finally:
        broken.unlink()
    assert result.returncode != 0
    assert "F401" in result.stdout + result.stderr


@pytest.fixture(scope="module", params=FRAMEWORKS)
def docker_project(request, tmp_path_factory):
    """A rendered project with a slug of its own: its image names and the smoke
    stack's compose project cannot clash with another test's, even one run
    at the same time."""
    slug = f"wf{uuid.uuid4().hex[:8]}_{request.param}"
    project = render(
        tmp_path_factory.mktemp(request.param) / "project", framework=request.param, project_slug=slug
    )
    prepare_images(project)
    yield project
    images = subprocess.run(
        ["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True
    ).stdout.split()
    ours = [image for image in images if image.startswith((f"{slug}:", f"{slug}-dev:"))]
    if ours:
        subprocess.run(["docker", "image", "rm", "--force", *ours], capture_output=True)


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "APP_RELEASE", "COMPOSE_PROJECT_NAME")
    }
    return {**env, **extra}


def compose_leftovers(project_name: str) -> list[str]:
    label = f"label=com.docker.compose.project={project_name}"
    containers = subprocess.run(
        ["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True
    ).stdout
    volumes = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", label], capture_output=True, text=True
    ).stdout
    return containers.split() + volumes.split()


@pytest.mark.docker
def test_tests_session_runs_the_suite_in_the_dev_container(docker_project):
    """Without DATABASE_URL (a laptop), `nox -s tests` runs pytest in the dev
    image beside the compose database. In CI, DATABASE_URL points it at the
    service container and it runs `uv run pytest` instead; that route needs the
    project's Python (3.13+), which this machine does not have."""
    name = f"tt{uuid.uuid4().hex[:10]}"
    env = clean_env(COMPOSE_PROJECT_NAME=name, POSTGRES_PORT=str(free_port()))
    try:
        result = nox(docker_project, "-s", "tests", "--", "-v", env=env)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert re.search(r"=+ \d+ passed", output) and " failed" not in output, output
    finally:
        subprocess.run(
            ["docker", "compose", "down", "--volumes", "--remove-orphans"],
            cwd=docker_project,
            env=env,
            capture_output=True,
        )


@pytest.mark.docker
def test_ci_tests_job_passes_with_its_own_service_and_env(docker_project):
    """CI's route for `nox -s tests`: the tests job's Postgres service, started
    from the workflow's own image, env and health options, and the job's
    steps run with the job's env in the project's Python image (a GitHub
    runner has uv and any Python; this machine has neither Python 3.13+ nor
    GitHub's Python downloads). The job reaches the service on localhost:
    here it shares the service container's network namespace."""
    job = load(workflows(docker_project)["ci.yml"])["jobs"]["tests"]
    service = job["services"]["postgres"]
    answers = yaml.safe_load((docker_project / ".copier-answers.yml").read_text())
    name = f"tt{uuid.uuid4().hex[:10]}"
    env = [arg for key, value in {**service["env"], **job["env"]}.items() for arg in ("-e", f"{key}={value}")]
    uv = Path(sys.executable).parent / "uv"
    assert uv.is_file(), "uv comes with tests/requirements.txt"
    subprocess.run(
        [
            "docker",
            "run",
            "--detach",
            "--name",
            name,
            *env[: 2 * len(service["env"])],
            *shlex.split(service["options"]),
            service["image"],
        ],
        check=True,
        capture_output=True,
    )
    try:
        deadline = time.monotonic() + 120
        while (
            health := subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Health.Status}}", name], capture_output=True, text=True
            ).stdout.strip()
        ) != "healthy":
            assert time.monotonic() < deadline, f"the service never turned healthy ({health})"
            time.sleep(1)
        run = [step["run"] for step in job["steps"] if "run" in step]
        assert run == ["uvx nox -s tests"]
        result = subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--network",
                f"container:{name}",
                "--user",
                f"{os.getuid()}:{os.getgid()}",
                "-e",
                "HOME=/tmp",
                "-e",
                "UV_PYTHON_DOWNLOADS=never",
                "-e",
                "UV_LINK_MODE=copy",
                *env,
                "-v",
                f"{uv}:/usr/local/bin/uv:ro",
                "-v",
                f"{uv.with_name('uvx')}:/usr/local/bin/uvx:ro",
                "-v",
                f"{docker_project}:/work",
                "-w",
                "/work",
                f"python:{answers['python_version']}-slim",
                "sh",
                "-c",
                run[0],
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "uv run --locked pytest" in output, (
            "DATABASE_URL is set: the suite runs with uv, not in Docker"
        )
        assert re.search(r"=+ \d+ passed", output) and " failed" not in output, output
    finally:
        subprocess.run(["docker", "rm", "--force", "--volumes", name], capture_output=True)


@pytest.mark.docker
def test_smoke_session_boots_the_production_stack_and_removes_it(docker_project):
    slug = yaml.safe_load((docker_project / ".copier-answers.yml").read_text())["project_slug"]
    result = nox(docker_project, "-s", "smoke", env=clean_env())
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert reported(output, "/healthz") == {"status": "ok", "release": "smoke"}
    assert reported(output, "/readyz")["status"] == "ok"
    assert compose_leftovers(f"{slug}-smoke") == []


def reported(output: str, path: str) -> dict:
    """The JSON that the smoke session logged for an endpoint."""
    match = re.search(rf"{path}: (\{{.*\}})", output)
    assert match, output
    return ast.literal_eval(match.group(1))


@pytest.mark.docker
def test_smoke_session_fails_when_the_image_reports_another_release(docker_project):
    """CI's route: `-- --no-build` runs an image built beforehand, named
    PROJECT:$APP_RELEASE. An image whose /healthz reports another release
    fails the smoke test, and the stack is still removed."""
    slug = yaml.safe_load((docker_project / ".copier-answers.yml").read_text())["project_slug"]
    # As CI's build job does, but built for release "smoke" and tagged "mismatch".
    subprocess.run(
        [
            "docker",
            "build",
            "--quiet",
            "--target",
            "production",
            "--build-arg",
            "APP_RELEASE=smoke",
            "--tag",
            f"{slug}:mismatch",
            ".",
        ],
        cwd=docker_project,
        check=True,
        capture_output=True,
    )
    result = nox(docker_project, "-s", "smoke", "--", "--no-build", env=clean_env(APP_RELEASE="mismatch"))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "expected status ok, release mismatch" in output, output
    assert "Building" not in output and "naming to" not in output, "--no-build built an image"
    assert compose_leftovers(f"{slug}-smoke") == []
