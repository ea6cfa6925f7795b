"""GitHub Actions workflows: the generated project's CI and deploy, and the
template repository's own.

The workflows cannot run here, so they are kept thin (each job calls a nox
session of the project's noxfile.py) and tested in three ways: GitHub's
workflow schema and zizmor (here); parser-based checks of their contracts
(test_ci_deploy_workflows.py, test_template_update_workflow.py); and the nox
sessions they call, run for real against rendered projects
(test_workflow_sessions.py).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import FRAMEWORKS, ROOT
from workflowfiles import load, render_for_workflows, steps, workflows

TEMPLATE_WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*$")
STRICT_NO = re.compile(r"StrictHostKeyChecking\s*[= ]\s*(no|off|accept-new)\b", re.IGNORECASE)


@pytest.fixture(scope="module", params=FRAMEWORKS)
def project(request, tmp_path_factory) -> Path:
    return render_for_workflows(request.param, tmp_path_factory)


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


def test_template_workflow_runs_the_readme_test_command():
    workflow = load(ROOT / ".github" / "workflows" / "test.yml")
    assert workflow["jobs"]["nox"]["runs-on"] == "ubuntu-latest"
    runs = [step["run"] for _, step in steps(workflow) if "run" in step]
    assert runs == ["python3 scripts/test"]
    assert "python3 scripts/test" in (ROOT / "README.md").read_text()
    assert "TEMPLATE_TEST_PREPARE" not in (ROOT / ".github" / "workflows" / "test.yml").read_text(), (
        "GitHub's runners pull the real images"
    )
