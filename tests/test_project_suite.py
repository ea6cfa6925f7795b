"""The generated project's own test suite and linters pass, run the way its
README says: in the development image, against the compose database."""

from __future__ import annotations

import pytest

from conftest import FRAMEWORKS, Stack, prepare_images, render

pytestmark = pytest.mark.docker


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_project_tests_and_lint_pass_in_the_dev_container(tmp_path, framework):
    project = render(tmp_path / "project", framework=framework)
    prepare_images(project)
    stack = Stack(project, files=("compose.yaml", "compose.override.yaml"))
    try:
        build = stack.compose("build", "app", check=False)
        assert build.returncode == 0, build.stdout + build.stderr
        for command in (["pytest", "-v"], ["ruff", "check", "."], ["ruff", "format", "--check", "."]):
            result = stack.compose("run", "--rm", "app", *command, check=False)
            assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
            if command[0] == "pytest":
                assert " passed" in result.stdout and " failed" not in result.stdout
    finally:
        stack.down()
