"""GitHub Actions workflows: the generated project's CI and deploy, and the
template repository's own.

The workflows cannot run here, so they are kept thin (each job calls a nox
session of the project's noxfile.py) and tested in three ways: GitHub's
workflow schema and zizmor; a parser-based check of their contracts; and the
nox sessions they call, run for real against rendered projects.
"""

from __future__ import annotations

import ast
import json
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
from conftest import FRAMEWORKS, ROOT, free_port, prepare_images, render

TEMPLATE_WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*$")
STRICT_NO = re.compile(r"StrictHostKeyChecking\s*[= ]\s*(no|off|accept-new)\b", re.IGNORECASE)


@pytest.fixture(scope="module", params=FRAMEWORKS)
def project(request, tmp_path_factory) -> Path:
    # Postgres 17 for Django, so that the service image is seen to follow the answer.
    postgres = 18 if request.param == "flask" else 17
    return render(tmp_path_factory.mktemp(request.param) / "project", framework=request.param,
                  postgres_version=postgres)


def workflows(project: Path) -> dict[str, Path]:
    return {path.name: path for path in sorted((project / ".github" / "workflows").glob("*.yml"))}


def load(path: Path) -> dict:
    workflow = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as True.
    if True in workflow:
        workflow["on"] = workflow.pop(True)
    return workflow


def steps(workflow: dict):
    for name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            yield name, step


def nox(project: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 900):
    command = [sys.executable, "-m", "nox", "--noxfile", str(project / "noxfile.py"), *args]
    return subprocess.run(command, cwd=project, env=env or os.environ.copy(), capture_output=True,
                          text=True, timeout=timeout)


# --- static checks ----------------------------------------------------------


def test_rendered_workflows_are_the_expected_ones(project):
    assert {"ci.yml", "deploy.yml"} <= set(workflows(project))
    assert [path.name for path in TEMPLATE_WORKFLOWS] == ["test.yml"]


def test_workflows_pass_githubs_schema(project):
    paths = [*workflows(project).values(), *TEMPLATE_WORKFLOWS]
    result = subprocess.run(
        [str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
         *map(str, paths)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("where", ["rendered", "template"])
def test_zizmor_finds_nothing_of_medium_or_high_severity(project, where):
    folder = project / ".github" / "workflows" if where == "rendered" else ROOT / ".github" / "workflows"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "zizmor"), "--offline", "--format", "json", str(folder)],
        capture_output=True, text=True,
    )
    # zizmor exits 0 when it finds nothing, 10 and up when it reports findings.
    assert result.returncode == 0 or result.returncode >= 10, result.stderr
    findings = json.loads(result.stdout)
    serious = [(f["ident"], f["desc"]) for f in findings if f["determinations"]["severity"] in ("Medium", "High")]
    assert serious == []


# --- contracts --------------------------------------------------------------


def test_third_party_actions_are_pinned_to_a_commit_with_the_version_in_a_comment(project):
    paths = [*workflows(project).values(), *TEMPLATE_WORKFLOWS]
    seen = 0
    for path in paths:
        for line in path.read_text().splitlines():
            match = re.match(r"^\s*(?:- )?uses: (.*)$", line)
            if not match or match.group(1).startswith("./"):
                continue
            seen += 1
            assert SHA_PIN.match(match.group(1)), f"{path.name}: {line.strip()}"
    assert seen >= 5


# Jobs that need more than reading the code, and exactly what they get.
EXTRA_PERMISSIONS = {
    ("deploy.yml", "image"): {"contents": "read", "packages": "write"},
    ("template-update.yml", "update"): {"contents": "write", "pull-requests": "write"},
}


def test_permissions_are_read_only_but_where_a_job_needs_more(project):
    paths = [*workflows(project).values(), *TEMPLATE_WORKFLOWS]
    for path in paths:
        workflow = load(path)
        assert workflow["permissions"] == {"contents": "read"}, path.name
        for name, job in workflow["jobs"].items():
            assert job.get("permissions") == EXTRA_PERMISSIONS.get((path.name, name)), f"{path.name}: job {name}"
    # Pushing the image is what needs packages: write.
    image = load(workflows(project)["deploy.yml"])["jobs"]["image"]
    assert any(step.get("uses", "").startswith("docker/build-push-action@") and step["with"]["push"] is True
               for step in image["steps"])


def test_no_secret_or_expression_is_expanded_inside_a_shell_script(project):
    """Secrets reach scripts through env only, never spliced into a command
    (template injection), and scripts write them to files, never to the log."""
    for path in [*workflows(project).values(), *TEMPLATE_WORKFLOWS]:
        for job, step in steps(load(path)):
            if "run" not in step:
                continue
            assert "${{" not in step["run"], f"{path.name}: job {job}: {step['run']}"
            assert "set -x" not in step["run"]
            for line in step["run"].splitlines():
                if re.search(r"\$\{?SSH_(PRIVATE_KEY|KNOWN_HOSTS)\b(?!:\?)", line):
                    assert re.search(r"> ~/\.ssh/\w+\)?$", line), f"a secret may reach the log: {line}"


def test_ci_jobs_call_the_projects_nox_sessions(project):
    noxfile = (project / "noxfile.py").read_text()
    sessions = set(re.findall(r"@nox\.session(?:\([^)]*\))?\ndef (\w+)", noxfile))
    assert {"lint", "hadolint", "tests", "smoke", "ci"} <= sessions
    ci = load(workflows(project)["ci.yml"])
    called = {}
    for job, step in steps(ci):
        if "run" in step:
            match = re.fullmatch(r"uvx nox -s (\w+)(?: -- .*)?", step["run"].strip())
            assert match, f"job {job} runs something other than a nox session: {step['run']}"
            called[job] = match.group(1)
    assert called == {"lint": "lint", "hadolint": "hadolint", "tests": "tests", "build": "smoke"}
    # `nox -s ci` runs the same sessions as the CI jobs.
    ci_session = re.search(r"def ci\(.*?\n\n\n", noxfile, re.DOTALL).group(0)
    assert all(f'"{name}"' in ci_session for name in called.values())


def test_ci_triggers_and_postgres_service_follow_the_answer(project):
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    ci = load(workflows(project)["ci.yml"])
    assert {"push", "pull_request", "workflow_call"} <= set(ci["on"])
    tests = ci["jobs"]["tests"]
    service = tests["services"]["postgres"]
    assert service["image"] == f"postgres:{answers['postgres_version']}"
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    assert service["image"] == compose["services"]["db"]["image"]
    options = service["options"]
    assert "--health-cmd" in options and "pg_isready" in options and "--health-retries" in options
    env = service["env"]
    assert tests["env"]["DATABASE_URL"] == (
        f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@localhost:5432/{env['POSTGRES_DB']}"
    )
    assert "5432:5432" in service["ports"]
    assert "SECRET_KEY" not in tests["env"], "nox -s tests makes a strong throwaway one"


def test_ci_builds_with_buildx_and_the_gha_cache_then_smoke_tests_that_image(project):
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    build = load(workflows(project)["ci.yml"])["jobs"]["build"]
    uses = [step.get("uses", "").split("@")[0] for step in build["steps"]]
    assert uses.index("docker/setup-buildx-action") < uses.index("docker/build-push-action")
    options = next(s["with"] for s in build["steps"] if s.get("uses", "").startswith("docker/build-push-action@"))
    assert options["cache-from"] == "type=gha" and options["cache-to"].startswith("type=gha")
    assert options["load"] is True and options.get("push") is not True
    # The smoke test runs the image compose.yaml names: PROJECT:$APP_RELEASE.
    assert options["tags"] == f"{answers['project_slug']}:${{{{ github.sha }}}}"
    assert build["env"]["APP_RELEASE"] == "${{ github.sha }}"
    assert build["steps"][-1]["run"] == "uvx nox -s smoke -- --no-build"


def test_deploy_is_serialised_gated_and_ships_an_immutable_tag(project):
    deploy_path = workflows(project)["deploy.yml"]
    deploy = load(deploy_path)
    assert set(deploy["on"]) == {"push", "workflow_dispatch"}
    assert deploy["on"]["push"]["branches"] == ["main"]
    assert deploy["concurrency"]["cancel-in-progress"] is False
    assert "${{" not in deploy["concurrency"]["group"], "one group for every run, whatever the ref"

    jobs = deploy["jobs"]
    assert jobs["ci"]["uses"] == "./.github/workflows/ci.yml"
    assert jobs["image"]["needs"] == "ci" and jobs["deploy"]["needs"] == "image"

    # The image is tagged with the full commit SHA, and that tag is what is pushed and deployed.
    name_step = next(s for s in jobs["image"]["steps"] if s.get("id") == "name")
    assert re.search(r"image=ghcr\.io/\$\{GITHUB_REPOSITORY,,\}:\$\{GITHUB_SHA\}\"", name_step["run"])
    push = next(s["with"] for s in jobs["image"]["steps"] if s.get("uses", "").startswith("docker/build-push-action@"))
    assert push["push"] is True and push["tags"] == "${{ steps.name.outputs.image }}"
    assert jobs["image"]["outputs"]["image"] == "${{ steps.name.outputs.image }}"
    assert not re.search(r":latest\b", deploy_path.read_text())

    job = jobs["deploy"]
    assert job["environment"]["name"] == "production"
    assert job["if"] == "github.ref == 'refs/heads/main'"
    run = next(s for s in job["steps"] if "scripts/deploy" in s.get("run", ""))
    assert run["run"] == 'scripts/deploy "$DEPLOY_HOST" "$IMAGE"'
    assert run["env"]["IMAGE"] == "${{ needs.image.outputs.image }}"


def test_the_host_key_is_pinned_and_never_trusted_blindly(project):
    for path in [p for p in project.rglob("*") if p.is_file() and ".git" not in p.parts and p.name != "uv.lock"]:
        assert not STRICT_NO.search(path.read_text(errors="replace")), path
    deploy = load(workflows(project)["deploy.yml"])
    ssh = next(s for s in deploy["jobs"]["deploy"]["steps"] if s.get("name") == "Set up SSH")
    assert ssh["env"]["SSH_KNOWN_HOSTS"] == "${{ secrets.SSH_KNOWN_HOSTS }}"
    assert '"$SSH_KNOWN_HOSTS" > ~/.ssh/known_hosts' in ssh["run"]
    assert "StrictHostKeyChecking yes" in ssh["run"]
    assert "ssh-keyscan" not in ssh["run"], "scanning the key in CI would trust whoever answers"


def references(path: Path) -> set[str]:
    """The secrets and variables a workflow reads."""
    return set(re.findall(r"\$\{\{[^}]*?\b(?:secrets|vars)\.(\w+)", path.read_text())) - {"GITHUB_TOKEN"}


def test_readme_documents_every_secret_and_variable(project):
    readme = (project / "README.md").read_text()
    docs = readme + "".join(path.read_text() for path in (project / "docs").glob("*.md"))
    for path in workflows(project).values():
        for name in references(path):
            assert f"`{name}`" in docs, f"{path.name} reads {name}, which no document explains"
    names = references(workflows(project)["ci.yml"]) | references(workflows(project)["deploy.yml"])
    assert names == {"SSH_PRIVATE_KEY", "SSH_KNOWN_HOSTS", "DEPLOY_HOST", "DEPLOY_USER", "DEPLOY_PORT"}
    for name in names:
        assert re.search(rf"^\| `{name}` +\|", readme, re.MULTILINE), f"{name} is not in the README's table"
    assert "GITHUB_TOKEN" in readme
    for command in ("gh secret set SSH_PRIVATE_KEY", "gh secret set SSH_KNOWN_HOSTS", "gh variable set DEPLOY_HOST",
                    "gh variable set DEPLOY_USER", "uvx nox -s ci"):
        assert command in readme


def test_template_workflow_runs_the_readme_test_command():
    workflow = load(ROOT / ".github" / "workflows" / "test.yml")
    assert workflow["jobs"]["nox"]["runs-on"] == "ubuntu-latest"
    runs = [step["run"] for _, step in steps(workflow) if "run" in step]
    assert runs == ["python3 scripts/test"]
    assert "python3 scripts/test" in (ROOT / "README.md").read_text()
    assert "TEMPLATE_TEST_PREPARE" not in (ROOT / ".github" / "workflows" / "test.yml").read_text(), \
        "GitHub's runners pull the real images"


# --- the sessions the workflows call, for real ------------------------------


def test_lint_and_hadolint_sessions_pass_and_catch_a_violation(project, tmp_path):
    result = nox(project, "-s", "lint", "hadolint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Session lint was successful" in result.stderr and "Session hadolint was successful" in result.stderr

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
    project = render(tmp_path_factory.mktemp(request.param) / "project", framework=request.param,
                     project_slug=slug)
    prepare_images(project)
    yield project
    images = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"],
                            capture_output=True, text=True).stdout.split()
    ours = [image for image in images if image.startswith((f"{slug}:", f"{slug}-dev:"))]
    if ours:
        subprocess.run(["docker", "image", "rm", "--force", *ours], capture_output=True)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "APP_RELEASE", "COMPOSE_PROJECT_NAME")}
    return {**env, **extra}


def compose_leftovers(project_name: str) -> list[str]:
    label = f"label=com.docker.compose.project={project_name}"
    containers = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True).stdout
    volumes = subprocess.run(["docker", "volume", "ls", "-q", "--filter", label], capture_output=True, text=True).stdout
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
        subprocess.run(["docker", "compose", "down", "--volumes", "--remove-orphans"], cwd=docker_project, env=env,
                       capture_output=True)


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
    subprocess.run(["docker", "run", "--detach", "--name", name, *env[: 2 * len(service["env"])],
                    *shlex.split(service["options"]), service["image"]], check=True, capture_output=True)
    try:
        deadline = time.monotonic() + 120
        while (health := subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", name],
                                        capture_output=True, text=True).stdout.strip()) != "healthy":
            assert time.monotonic() < deadline, f"the service never turned healthy ({health})"
            time.sleep(1)
        run = [step["run"] for step in job["steps"] if "run" in step]
        assert run == ["uvx nox -s tests"]
        result = subprocess.run(
            ["docker", "run", "--rm", "--network", f"container:{name}", "--user", f"{os.getuid()}:{os.getgid()}",
             "-e", "HOME=/tmp", "-e", "UV_PYTHON_DOWNLOADS=never", "-e", "UV_LINK_MODE=copy", *env,
             "-v", f"{uv}:/usr/local/bin/uv:ro", "-v", f"{uv.with_name('uvx')}:/usr/local/bin/uvx:ro",
             "-v", f"{docker_project}:/work", "-w", "/work", f"python:{answers['python_version']}-slim",
             "sh", "-c", run[0]],
            capture_output=True, text=True, timeout=900,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "uv run --locked pytest" in output, "DATABASE_URL is set: the suite runs with uv, not in Docker"
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
    subprocess.run(["docker", "build", "--quiet", "--target", "production", "--build-arg", "APP_RELEASE=smoke",
                    "--tag", f"{slug}:mismatch", "."], cwd=docker_project, check=True, capture_output=True)
    result = nox(docker_project, "-s", "smoke", "--", "--no-build", env=clean_env(APP_RELEASE="mismatch"))
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "expected status ok, release mismatch" in output, output
    assert "Building" not in output and "naming to" not in output, "--no-build built an image"
    assert compose_leftovers(f"{slug}-smoke") == []
