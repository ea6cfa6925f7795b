"""What the generated ci.yml and deploy.yml do, read from the files: CI runs
the project's nox sessions on the Postgres version of the answers, builds the
image once and smoke-tests it; deploy ships that image, one deploy at a time,
to a host whose key is pinned; and the README documents every secret and
variable they read and the GitHub settings that keep production to main.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from conftest import FRAMEWORKS
from workflowfiles import load, render_for_workflows, steps, workflows


@pytest.fixture(scope="module", params=FRAMEWORKS)
def project(request, tmp_path_factory) -> Path:
    return render_for_workflows(request.param, tmp_path_factory)


def test_ci_jobs_call_the_projects_nox_sessions(project):
    noxfile = (project / "noxfile.py").read_text()
    sessions = set(re.findall(r"@nox\.session(?:\([^)]*\))?\ndef (\w+)", noxfile))
    assert {"lint", "hadolint", "tests", "smoke", "ci"} <= sessions
    ci = load(workflows(project)["ci.yml"])
    called = {}
    for job, step in steps(ci):
        # Pushing and signing the image once it passed (deploy.yml): the steps that are not checks.
        if "run" in step and step.get("id") != "push" and job != "sign":
            match = re.fullmatch(r"uvx nox -s (\w+)(?: -- .*)?", step["run"].strip())
            assert match, f"job {job} runs something other than a nox session: {step['run']}"
            called[job] = match.group(1)
    assert called == {
        "lint": "lint",
        "hadolint": "hadolint",
        "audit": "audit",
        "zizmor": "zizmor",
        "tests": "tests",
        "build": "smoke",
    }
    # `nox -s ci` runs the same sessions as the CI jobs.
    ci_session = re.search(r"def ci\(.*?\n\n\n", noxfile, re.DOTALL).group(0)
    assert all(f'"{name}"' in ci_session for name in called.values())


def test_ci_triggers_and_postgres_service_follow_the_answer(project):
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    ci = load(workflows(project)["ci.yml"])
    # Once per change: a push to a pull request's branch runs the pull request's
    # CI only, and a push to main runs it through deploy.yml.
    assert set(ci["on"]) == {"pull_request", "workflow_dispatch", "workflow_call"}
    assert ci["on"]["workflow_call"]["inputs"]["push"] == {
        "description": ci["on"]["workflow_call"]["inputs"]["push"]["description"],
        "type": "boolean",
        "default": False,
    }
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


def test_ci_builds_once_smoke_tests_that_image_then_pushes_it(project):
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    ci = load(workflows(project)["ci.yml"])
    build = ci["jobs"]["build"]
    uses = [step.get("uses", "").split("@")[0] for step in build["steps"]]
    assert uses.index("docker/metadata-action") < uses.index("docker/build-push-action")
    assert uses.index("docker/setup-buildx-action") < uses.index("docker/build-push-action")
    # Once to test (amd64, loaded here), and once more to push both platforms from
    # the cache that build wrote (deploy.yml only): test_supply_chain.py.
    assert uses.count("docker/build-push-action") == 2
    meta = next(s for s in build["steps"] if s.get("uses", "").startswith("docker/metadata-action@"))
    assert meta["id"] == "meta" and meta["with"]["images"] == "ghcr.io/${{ github.repository }}"
    # The tag is the full commit SHA, the release id the image carries; never `latest`.
    assert meta["with"]["tags"] == "type=sha,format=long,prefix=" and meta["with"]["flavor"] == "latest=false"
    options = next(
        s["with"] for s in build["steps"] if s.get("uses", "").startswith("docker/build-push-action@")
    )
    assert options["cache-from"] == "type=gha" and options["cache-to"].startswith("type=gha")
    assert options["load"] is True and options.get("push") is not True
    assert options["labels"] == "${{ steps.meta.outputs.labels }}"
    # Under the registry name, and under the one compose.yaml runs (PROJECT:$APP_RELEASE) for the smoke test.
    assert options["tags"].splitlines() == [
        "${{ steps.meta.outputs.tags }}",
        f"{answers['project_slug']}:${{{{ github.sha }}}}",
    ]
    assert build["env"]["APP_RELEASE"] == "${{ github.sha }}"
    # The smoke test, then (for deploy.yml only) the push of that same image, not a rebuild.
    runs = [(step.get("id"), step.get("if"), step["run"]) for step in build["steps"] if "run" in step]
    assert runs[0] == (None, None, "uvx nox -s smoke -- --no-build")
    assert runs[1][:2] == ("push", "inputs.push") and len(runs) == 2
    login = next(s for s in build["steps"] if s.get("uses", "").startswith("docker/login-action@"))
    assert login["if"] == "inputs.push" and login["with"]["registry"] == "ghcr.io"
    # Logged in only to push, once the smoke test passed.
    smoke = next(s for s in build["steps"] if s.get("run", "").startswith("uvx nox -s smoke"))
    publish = next(s for s in build["steps"] if s.get("id") == "publish")
    assert build["steps"].index(smoke) < build["steps"].index(login) < build["steps"].index(publish)
    push = build["steps"][-1]
    assert push["id"] == "push" and push["env"]["IMAGE"] == "${{ steps.meta.outputs.tags }}"
    assert push["env"]["DIGEST"] == "${{ steps.publish.outputs.digest }}"
    assert 'echo "image=$IMAGE" >> "$GITHUB_OUTPUT"' in push["run"] and "digest=" in push["run"]
    assert build["outputs"] == {
        "name": "${{ steps.push.outputs.name }}",
        "image": "${{ steps.push.outputs.image }}",
        "digest": "${{ steps.push.outputs.digest }}",
    }
    outputs = ci["on"]["workflow_call"]["outputs"]
    assert {name: output["value"] for name, output in outputs.items()} == {
        "image": "${{ jobs.build.outputs.image }}",
        "digest": "${{ jobs.build.outputs.digest }}",
    }


def test_deploy_is_serialised_gated_and_ships_the_image_ci_tested(project):
    deploy_path = workflows(project)["deploy.yml"]
    deploy = load(deploy_path)
    assert set(deploy["on"]) == {"push", "workflow_dispatch"}
    assert deploy["on"]["push"]["branches"] == ["main"]
    assert deploy["concurrency"]["cancel-in-progress"] is False
    assert "${{" not in deploy["concurrency"]["group"], "one group for every run, whatever the ref"

    jobs = deploy["jobs"]
    assert set(jobs) == {"ci", "deploy"}
    assert jobs["ci"]["uses"] == "./.github/workflows/ci.yml" and jobs["ci"]["with"] == {"push": True}
    assert jobs["deploy"]["needs"] == "ci"
    # Built once, in CI: nothing here builds or pushes an image.
    text = deploy_path.read_text()
    assert "docker/build-push-action" not in text and "docker build" not in text and "docker push" not in text
    assert not re.search(r":latest\b", text)

    job = jobs["deploy"]
    assert job["environment"]["name"] == "production"
    assert job["if"] == "github.ref == 'refs/heads/main'"
    run = next(s for s in job["steps"] if "scripts/deploy" in s.get("run", ""))
    assert run["run"] == 'scripts/deploy "$DEPLOY_HOST" "$IMAGE"'
    # The exact image CI tested, by digest (scripts/deploy names the release after the tag).
    assert run["env"]["IMAGE"] == "${{ needs.ci.outputs.image }}@${{ needs.ci.outputs.digest }}"


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
    for command in (
        "gh secret set SSH_PRIVATE_KEY",
        "gh secret set SSH_KNOWN_HOSTS",
        "gh variable set DEPLOY_HOST",
        "gh variable set DEPLOY_USER",
        "uvx nox -s ci",
    ):
        assert command in readme


def gh_api_call(command: list[str]) -> tuple[str, str, dict]:
    """What `gh api` sends: method, endpoint, JSON body. -F makes true and
    false booleans; key[sub]=value nests (gh api --help)."""
    method, endpoint, body = "GET", "", {}
    words = iter(command[2:])
    for word in words:
        if word in ("--method", "-X"):
            method = next(words)
        elif word in ("-f", "-F", "--raw-field", "--field"):
            key, value = next(words).split("=", 1)
            typed = {"true": True, "false": False}.get(value, value) if word in ("-F", "--field") else value
            *parents, last = re.findall(r"[^\[\]]+", key)
            target = body
            for parent in parents:
                target = target.setdefault(parent, {})
            target[last] = typed
        else:
            endpoint = word
    return method, endpoint, body


def test_readme_makes_production_deployable_from_main_only_with_a_restricted_ci_key(project):
    readme = (project / "README.md").read_text()
    block = re.search(r"^```sh\n(# The environment,.*?)^```", readme, re.DOTALL | re.MULTILINE).group(1)
    commands = [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line[:1] not in "#"]
    calls = [gh_api_call(command) for command in commands if command[:2] == ["gh", "api"]]
    environment = "repos/{owner}/{repo}/environments/production"
    # Branches by name (custom policies), not "any protected branch"; then the one name.
    policy = {"protected_branches": False, "custom_branch_policies": True}
    assert calls == [
        ("PUT", environment, {"deployment_branch_policy": policy}),
        ("POST", f"{environment}/deployment-branch-policies", {"name": "main", "type": "branch"}),
    ]
    # CI's key reaches the server through provision, restricted; never as is.
    keygen = next(command for command in commands if command[0] == "ssh-keygen")
    provision = next(command for command in commands if command[0] == "scripts/provision")
    assert provision[provision.index("--ci-key") + 1] == keygen[keygen.index("-f") + 1] + ".pub"
    assert "ssh-copy-id" not in readme
