"""Fixtures. pytest-django creates a test database beside the configured one
(DATABASE_URL), applies the migrations to it and drops it at the end.

Run the suite in the development container, next to the compose database, where
the app's role may create databases (compose.override.yaml; never in production):

    docker compose run --rm app pytest
"""

import pytest
from django.core.management import call_command
from django.test import override_settings


@pytest.fixture(scope="session", autouse=True)
def collected_static(tmp_path_factory):
    """Static files collected as the image's build does, so that pages link
    to the hashed names the manifest lists."""
    root = tmp_path_factory.mktemp("staticfiles")
    with override_settings(STATIC_ROOT=root):
        call_command("collectstatic", interactive=False, verbosity=0)
        yield root
