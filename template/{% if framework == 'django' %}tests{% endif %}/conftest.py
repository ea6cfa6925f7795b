"""Fixtures. pytest-django creates a test database beside the configured one
(DATABASE_URL), applies the migrations to it and drops it at the end.

Run the suite in the development container, next to the compose database, where
the app's role may create databases (compose.override.yaml; never in production):

    docker compose run --rm app pytest

or on this machine, against that database published on 127.0.0.1:

    docker compose up -d db
    uv run --env-file .env pytest
"""

import os

import django
import pytest
from django.core.management import call_command
from django.test import override_settings

# Set here rather than in pyproject.toml, where pytest-django would import the
# settings before the check below could say what is missing.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def pytest_configure(config):
    """Without the settings, stop before any test with one line saying how to run them."""
    missing = [name for name in ("DATABASE_URL", "SECRET_KEY") if not os.environ.get(name)]
    if missing:
        raise pytest.UsageError(
            f"pytest needs {' and '.join(missing)}: run the tests in the container "
            "(docker compose run --rm app pytest), or start the database "
            "(docker compose up -d db) and run uv run --env-file .env pytest"
        )
    django.setup()


@pytest.fixture(scope="session", autouse=True)
def collected_static(tmp_path_factory):
    """Static files collected as the image's build does, so that pages link
    to the hashed names the manifest lists."""
    root = tmp_path_factory.mktemp("staticfiles")
    with override_settings(STATIC_ROOT=root):
        call_command("collectstatic", interactive=False, verbosity=0)
        yield root
