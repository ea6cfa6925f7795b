"""The generated project's GitHub workflows, read for the tests that check
them (test_workflows.py, test_ci_deploy_workflows.py and others)."""

from __future__ import annotations

from pathlib import Path

import yaml

from conftest import render


def render_for_workflows(framework: str, tmp_path_factory) -> Path:
    # Postgres 17 for Django, so that the service image is seen to follow the answer.
    postgres = 18 if framework == "flask" else 17
    return render(
        tmp_path_factory.mktemp(framework) / "project", framework=framework, postgres_version=postgres
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
