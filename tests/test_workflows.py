"""GitHub Actions workflows: the generated project's CI and deploy, and the
template repository's own.

The workflows cannot run here, so they are kept thin (each job calls a nox
session of the project's noxfile.py) and tested in three ways: GitHub's
workflow schema and zizmor; a parser-based check of their contracts (the
template-update workflow's: test_template_update_workflow.py); and the nox
sessions they call, run for real against rendered projects
(test_workflow_sessions.py).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import FRAMEWORKS, ROOT, render

TEMPLATE_WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*$")
STRICT_NO = re.compile(r"StrictHostKeyChecking\s*[= ]\s*(no|off|accept-new)\b", re.IGNORECASE)


@pytest.fixture(scope="module", params=FRAMEWORKS)
def project(request, tmp_path_factory) -> Path:
    # Postgres 17 for Django, so that the service image is seen to follow the answer.
    postgres = 18 if request.param == "flask" else 17
    return render(
        tmp_path_factory.mktemp(request.param) / "project", framework=request.param, postgres_version=postgres
    )


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


# --- static checks ----------------------------------------------------------


def test_rendered_workflows_are_the_expected_ones(project):
    assert {"ci.yml", "deploy.yml"} <= set(workflows(project))
    assert [path.name for path in TEMPLATE_WORKFLOWS] == ["pages.yml", "test.yml"]


def test_workflows_pass_githubs_schema(project):
    paths = [*workflows(project).values(), *TEMPLATE_WORKFLOWS]
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def zizmor(paths: list[Path], persona: str) -> list[tuple[str, str, str]]:
    """(file, audit, severity) of each finding that no `# zizmor: ignore` comment waives."""
    result = subprocess.run(
        [str(Path(sys.executable).parent / "zizmor"), "--offline", "--persona", persona, "--format", "json",
         *map(str, paths)],
        capture_output=True, text=True,
    )  # fmt: skip
    # zizmor exits 0 when it finds nothing, 10 and up when it reports findings.
    assert result.returncode == 0 or result.returncode >= 10, result.stderr
    return [
        (Path(f["locations"][0]["symbolic"]["key"]["Local"]["verbatim_path"]).name, f["ident"],
         f["determinations"]["severity"])
        for f in json.loads(result.stdout)
    ]  # fmt: skip


def test_dependabot_configs_pass_githubs_schema_and_cover_each_ecosystem(project):
    paths = [project / ".github" / "dependabot.yml", ROOT / ".github" / "dependabot.yml"]
    result = subprocess.run(
        [str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema", "vendor.dependabot",
         *map(str, paths)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rendered, template = (
        {u["package-ecosystem"]: u for u in yaml.safe_load(p.read_text())["updates"]} for p in paths
    )
    # The project's actions, Python packages (uv.lock), Dockerfile and compose images.
    assert set(rendered) == {"github-actions", "uv", "docker", "docker-compose"}
    # A new Python or PostgreSQL version comes from the answers, with its own steps, never from a bump.
    ignored = {(e, rule["dependency-name"]) for e, u in rendered.items() for rule in u.get("ignore", [])}
    assert ignored == {("docker", "python"), ("docker-compose", "postgres")}
    assert set(template) == {"pip", "github-actions"} and template["pip"]["directory"] == "/tests"
    assert (ROOT / "tests" / "requirements.txt").is_file()


# The regular persona, and the auditor's (every audit, pedantic ones included).
@pytest.mark.parametrize("persona", ["regular", "auditor"])
@pytest.mark.parametrize("where", ["rendered", "template"])
def test_zizmor_finds_nothing_of_medium_or_high_severity(project, where, persona):
    paths = list(workflows(project).values()) if where == "rendered" else TEMPLATE_WORKFLOWS
    serious = [finding for finding in zizmor(paths, persona) if finding[2] in ("Medium", "High")]
    assert serious == []


# What zizmor's auditor reports and the workflows keep, each with its reason
# on the line (the comment above it explains).
WAIVED = {("ci.yml", "unpinned-images"), ("template-update.yml", "secrets-outside-env")}


def test_each_zizmor_waiver_is_justified_and_needed(project, tmp_path):
    waivers = {}
    for name, path in workflows(project).items():
        text = path.read_text()
        for audit, reason in re.findall(r" # zizmor: ignore\[([\w-]+)\](.*)$", text, re.MULTILINE):
            waivers[(name, audit)] = reason.strip()
        (tmp_path / name).write_text(re.sub(r" # zizmor: ignore\[.*$", "", text, flags=re.MULTILINE))
    assert set(waivers) == WAIVED and all(waivers.values()), waivers
    # Without the comments, the auditor reports exactly those: none is stale.
    found = {(name, audit) for name, audit, severity in zizmor(sorted(tmp_path.iterdir()), "auditor")
             if severity in ("Medium", "High")}  # fmt: skip
    assert found == WAIVED


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
    ("ci.yml", "build"): {"contents": "read", "packages": "write"},
    # Attesting and signing the pushed image (test_supply_chain.py): an OIDC token.
    ("ci.yml", "sign"): {"packages": "write", "id-token": "write", "attestations": "write"},
    ("deploy.yml", "ci"): {
        "contents": "read",
        "packages": "write",
        "id-token": "write",
        "attestations": "write",
    },
    ("template-update.yml", "pull-request"): {"contents": "write", "pull-requests": "write"},
    # The template's documentation site: what actions/deploy-pages needs.
    ("pages.yml", "deploy"): {"pages": "write", "id-token": "write"},
}


def test_permissions_are_read_only_but_where_a_job_needs_more(project):
    paths = [*workflows(project).values(), *TEMPLATE_WORKFLOWS]
    for path in paths:
        workflow = load(path)
        assert workflow["permissions"] == {"contents": "read"}, path.name
        for name, job in workflow["jobs"].items():
            assert job.get("permissions") == EXTRA_PERMISSIONS.get((path.name, name)), (
                f"{path.name}: job {name}"
            )
    # Pushing the tested image is what needs packages: write, and only deploy.yml asks for it.
    build = load(workflows(project)["ci.yml"])["jobs"]["build"]
    publish = next(step for step in build["steps"] if step.get("id") == "publish")
    assert publish["if"] == "inputs.push" and publish["with"]["push"] is True


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


def test_the_host_key_is_pinned_and_never_trusted_blindly(project):
    for path in [
        p for p in project.rglob("*") if p.is_file() and ".git" not in p.parts and p.name != "uv.lock"
    ]:
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


def test_template_workflow_runs_the_readme_test_command():
    workflow = load(ROOT / ".github" / "workflows" / "test.yml")
    assert workflow["jobs"]["nox"]["runs-on"] == "ubuntu-latest"
    runs = [step["run"] for _, step in steps(workflow) if "run" in step]
    assert runs == ["python3 scripts/test"]
    assert "python3 scripts/test" in (ROOT / "README.md").read_text()
    assert "TEMPLATE_TEST_PREPARE" not in (ROOT / ".github" / "workflows" / "test.yml").read_text(), (
        "GitHub's runners pull the real images"
    )
