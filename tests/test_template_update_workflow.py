"""The generated project's template-update workflow: copier, and the
template's migrations, run in a job without a write token; a second job,
which runs nothing from the template, applies the patch it hands over and
opens the pull request. Checked on the rendered workflow, and its jobs'
scripts run for real on synthetic template releases.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, render
from workflowfiles import load, steps, workflows


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    # template-update.yml is the same for both frameworks.
    return render(tmp_path_factory.mktemp("update-workflow") / "project")


def step_using(job: dict, action: str) -> dict:
    return next(step for step in job["steps"] if step.get("uses", "").startswith(f"{action}@"))


def test_template_update_runs_the_template_without_write_access_and_opens_the_pr_apart(project):
    workflow = load(workflows(project)["template-update.yml"])
    update, pr = workflow["jobs"]["update"], workflow["jobs"]["pull-request"]
    # copier update --trust runs the template's migrations: that job can read
    # the code (the workflow's default), and holds no secret nor credentials.
    assert "permissions" not in update and workflow["permissions"] == {"contents": "read"}
    assert not re.search(r"secrets\.|github\.token", yaml.safe_dump(update))
    assert step_using(update, "actions/checkout")["with"]["persist-credentials"] is False
    assert any("scripts/update-template" in step.get("run", "") for step in update["steps"])
    artifact = step_using(update, "actions/upload-artifact")["with"]["name"]
    # The job with the write token runs nothing of the template's: it applies
    # the patch, then opens the pull request.
    assert pr["needs"] == "update"
    runs = [step["run"] for step in pr["steps"] if "run" in step]
    assert not any(word in run for run in runs for word in ("copier", "update-template", "uv "))
    assert not any(step.get("uses", "").startswith("astral-sh/setup-uv@") for step in pr["steps"])
    assert step_using(pr, "actions/download-artifact")["with"]["name"] == artifact
    assert (
        "secrets.TEMPLATE_UPDATE_TOKEN" in step_using(pr, "peter-evans/create-pull-request")["with"]["token"]
    )


def run_step(workflow: dict, name: str, cwd: Path, runner_temp: Path) -> dict[str, str]:
    """Run a step's script as GitHub's runner does (bash -eo pipefail); return its outputs."""
    from updating import ENV

    script = next(step["run"] for _, step in steps(workflow) if step.get("name") == name)
    output = runner_temp / "output"
    env = {**ENV, "RUNNER_TEMP": str(runner_temp), "GITHUB_OUTPUT": str(output)}
    bash = ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script]
    result = subprocess.run(bash, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return dict(line.split("=", 1) for line in output.read_text().splitlines()) if output.exists() else {}


@pytest.mark.parametrize("start", ["1.0.0", "1.1.0"])
def test_template_update_hands_the_pr_job_the_very_update_as_a_patch(template_repo, tmp_path, start):
    """The two jobs' scripts, for real, on the synthetic releases of
    tests/updating.py: from 1.0.0 with a conflict, and already at 1.1.0."""
    from updating import V2, commit_all, generate, git

    workflow = load(ROOT / "template" / ".github" / "workflows" / "template-update.yml")
    project = generate(template_repo, tmp_path / "project", start)
    compose = project / "compose.yaml"
    compose.write_text(
        "# Our production stack, as the team describes it.\n" + compose.read_text().split("\n", 1)[1]
    )
    commit_all(project, "Our own compose comment")
    # The pull-request job's own checkout of the same commit.
    git(tmp_path, "clone", "--quiet", str(project), "checkout")
    (tmp_path / "update").mkdir()
    outputs = run_step(workflow, "Update from the template", project, tmp_path / "update")
    assert outputs == {"version": V2, "conflicts": "true" if start != V2 else "false"}
    # download-artifact puts the update job's files there.
    shutil.copytree(tmp_path / "update" / "template-update", tmp_path / "pr" / "template-update")
    run_step(workflow, "Apply the update", tmp_path / "checkout", tmp_path / "pr")
    assert git(tmp_path / "checkout", "write-tree") == git(project, "write-tree")
    assert bool(git(tmp_path / "checkout", "status", "--porcelain")) == (start != V2)
    body = (tmp_path / "pr" / "template-update" / "pull-request.md").read_text()
    assert body.startswith(f"Updates this project to release {V2} ")
    assert ("**Conflicts**" in body) == (start != V2)
