"""The suite's own guards (tests/conftest.py): Docker tests cannot pass by luck.

Each test runs pytest in a subprocess, with this repository's conftest loaded
as a plugin, on a tiny test file: a Docker engine that is asked for but does
not answer fails the run, and so does a skip where skips are not allowed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
DEAD_ENGINE = "unix:///nonexistent/template-tests-docker.sock"
TINY_TESTS = """
import pytest


@pytest.mark.docker
def test_needs_docker():
    pass


def test_plain():
    pass
"""


def pytest_run(tmp_path: Path, tests: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    docker: needs a Docker engine\n")
    (tmp_path / "test_tiny.py").write_text(tests)
    clean = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CI", "TEMPLATE_TESTS_REQUIRE_DOCKER", "TEMPLATE_TESTS_NO_SKIPS", "PYTEST_ADDOPTS")
    }
    command = [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rs"]
    return subprocess.run(
        [*command, *args, "test_tiny.py"],
        cwd=tmp_path,
        env={**clean, "PYTHONPATH": str(HERE), "DOCKER_HOST": DEAD_ENGINE, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("env", [{"TEMPLATE_TESTS_REQUIRE_DOCKER": "1"}, {"CI": "true"}])
def test_an_unreachable_engine_fails_a_run_that_asks_for_docker(tmp_path, env):
    result = pytest_run(tmp_path, TINY_TESTS, **env)
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, output
    assert "1 Docker tests were asked for" in output, output
    assert "no Docker engine answers `docker info`" in output, output
    assert " passed" not in output and " skipped" not in output, output


def test_a_run_that_deselects_docker_tests_needs_no_engine(tmp_path):
    """As `nox -s render` in CI: -m "not docker" leaves no Docker test to run."""
    result = pytest_run(tmp_path, TINY_TESTS, "-m", "not docker", CI="true")
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.OK, output
    assert "1 passed, 1 deselected" in output and "Docker" not in output, output


def test_without_the_request_docker_tests_skip_and_say_why(tmp_path):
    result = pytest_run(tmp_path, TINY_TESTS)
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.OK, output
    assert "SKIPPED [1] test_tiny.py:5: needs Docker: no Docker engine answers `docker info`" in output, (
        output
    )
    assert "1 passed, 1 skipped" in output, output


def test_a_run_that_allows_no_skips_fails_on_one(tmp_path):
    tests = (
        "import pytest\n\n\ndef test_skipped():\n    pytest.skip('not today')\n\n\n"
        "def test_plain():\n    pass\n"
    )
    result = pytest_run(tmp_path, tests, TEMPLATE_TESTS_NO_SKIPS="1")
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, output
    assert "FAILED: 1 skipped, and a skip is not a pass here" in output, output
    assert "test_tiny.py::test_skipped: not today" in output, output


def test_a_run_that_allows_no_skips_passes_without_one(tmp_path):
    tests = "def test_plain():\n    pass\n"
    result = pytest_run(tmp_path, tests, TEMPLATE_TESTS_NO_SKIPS="1")
    output = result.stdout + result.stderr
    assert result.returncode == pytest.ExitCode.OK, output
    assert "1 passed" in output and " skipped" not in output, output
