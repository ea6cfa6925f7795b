import os
import subprocess
import sys

import pytest
from django.conf import settings


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    """Run manage.py in a fresh process, where settings.py reads this environment."""
    return subprocess.run(  # noqa: S603 (a fixed command)
        [sys.executable, "manage.py", *args],
        cwd=settings.BASE_DIR,
        env={**os.environ, "DEBUG": "false", **env},
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("https_enabled", ["false", "true"])
def test_deploy_checks_pass_with_production_settings(https_enabled):
    result = manage("check", "--deploy", "--fail-level", "WARNING", HTTPS_ENABLED=https_enabled)
    assert result.returncode == 0, result.stderr


def test_deploy_checks_fail_in_debug_mode():
    result = manage("check", "--deploy", "--fail-level", "WARNING", DEBUG="true")
    assert result.returncode != 0
    assert "security.W018" in result.stderr


def test_https_enabled_turns_on_hsts_the_redirect_and_secure_cookies():
    names = ["SECURE_HSTS_SECONDS", "SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE"]
    code = f"from django.conf import settings; print(*[getattr(settings, n) for n in {names!r}])"
    result = manage("shell", "--verbosity", "0", "-c", code, HTTPS_ENABLED="true")
    assert result.stdout.split() == ["31536000", "True", "True"], result.stderr


def test_a_missing_secret_key_stops_the_app():
    result = manage("check", SECRET_KEY="")
    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr
