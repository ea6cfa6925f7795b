from unittest import mock

import pytest
from django.db import connection

# What the Dockerfile's HEALTHCHECK sends: plain HTTP, to the container itself.
HEALTHCHECK_HOST = {"HTTP_HOST": "127.0.0.1:8000"}


def test_healthz_reports_the_release(client, settings):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "release": settings.APP_RELEASE}


def test_healthcheck_passes_host_validation_and_the_https_redirect(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    # Production's names: development adds 127.0.0.1 (compose.override.yaml).
    settings.ALLOWED_HOSTS = ["example.com", "localhost"]
    assert client.get("/admin/login/", **HEALTHCHECK_HOST).status_code == 400
    assert client.get("/healthz", **HEALTHCHECK_HOST).status_code == 200


@pytest.mark.django_db
def test_readyz_is_ok_with_the_database(client):
    response = client.get("/readyz", **HEALTHCHECK_HOST)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


@pytest.mark.django_db(transaction=True)
def test_readyz_is_503_without_the_database(client):
    connection.close()
    # Nothing listens on port 1: the connection is refused at once.
    with mock.patch.dict(connection.settings_dict, HOST="127.0.0.1", PORT="1"):
        response = client.get("/readyz")
    connection.close()
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "unreachable"}
