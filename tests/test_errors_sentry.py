"""Error reports to Sentry: the generated project's own tests send a real
failure through the app to a fake Sentry ingest server (tests/sentry_ingest.py
in the project) and read what arrived; here they run in the development
container, and the settings they rely on are checked to be documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import FRAMEWORKS, Stack, prepare_images, render

SENTRY_TESTS = [
    "test_sentry_gets_one_event_with_the_release_and_request_id",
    "test_sentry_is_inert_without_a_dsn",
    "test_a_failing_request_logs_json_lines_with_its_id_and_one_traceback",
    "test_error_pages_show_the_request_id",
]


@pytest.fixture(scope="module", params=FRAMEWORKS)
def project(request, tmp_path_factory) -> Path:
    return render(tmp_path_factory.mktemp(request.param) / "project", framework=request.param)


def app_code(project: Path) -> dict[Path, str]:
    """The shipped Python, tests left out."""
    return {
        path: path.read_text()
        for path in sorted(project.rglob("*.py"))
        if "tests" not in path.relative_to(project).parts
    }


def test_every_setting_the_app_reads_is_documented(project: Path):
    read = set()
    for text in app_code(project).values():
        read |= set(re.findall(r'(?:environ\.get|_rate)\("((?:SENTRY|LOG)_[A-Z_]+)"', text))
    assert {"SENTRY_DSN", "SENTRY_ENVIRONMENT", "LOG_FORMAT", "LOG_LEVEL"} <= read
    example = (project / ".env.example").read_text()
    guide = (project / "docs" / "observability.md").read_text()
    missing = sorted(name for name in read if f"# {name}=" not in example)
    assert not missing, f".env.example does not document {missing}"
    assert "SENTRY_DSN" in guide and "LOG_FORMAT" in guide


def test_the_shipped_app_has_no_failing_route(project: Path):
    # The failing pages the tests need live in the tests alone.
    for path, text in app_code(project).items():
        assert "_test/" not in text and "1 / 0" not in text, path
    tests = (project / "tests" / "test_observability.py").read_text()
    assert "_test/fail" in tests
    for name in SENTRY_TESTS:
        assert f"def {name}(" in tests


@pytest.mark.docker
def test_sentry_and_log_tests_pass_in_the_dev_container(project: Path):
    prepare_images(project)
    stack = Stack(project, files=("compose.yaml", "compose.override.yaml"))
    try:
        build = stack.compose("build", "app", check=False)
        assert build.returncode == 0, build.stdout + build.stderr
        result = stack.compose(
            "run", "--rm", "app", "pytest", "-v", "tests/test_observability.py", check=False
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        for name in SENTRY_TESTS:
            assert re.search(rf"::{name} PASSED", output), f"{name} did not pass:\n{output}"
    finally:
        stack.down()
