"""The production stack answers through nginx: liveness with the release it
runs, readiness with the database behind it."""

import json
import urllib.request

import pytest


@pytest.fixture(scope="session")
def get(docker_services, docker_ip, settings):
    """GET a path through nginx, as localhost (a name nginx serves), once it answers."""
    port = settings["HTTP_PORT"]

    def get(path: str) -> tuple[int, dict]:
        request = urllib.request.Request(
            f"http://{docker_ip}:{port}{path}", headers={"Host": f"localhost:{port}"}
        )
        # Plain http to the stack just started: S310 warns about file:// and other schemes.
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, json.load(response)

    def answers() -> bool:
        try:
            return get("/healthz")[0] == 200
        except OSError:  # refused or reset while nginx settles, or an HTTP error status
            return False

    docker_services.wait_until_responsive(check=answers, timeout=30, pause=0.5)
    return get


def test_healthz_reports_the_release(get, settings):
    status, body = get("/healthz")
    print(f"/healthz: {body}")
    release = settings["APP_RELEASE"]
    assert (status, body.get("status"), body.get("release")) == (200, "ok", release), (
        f"/healthz answered {status} {body}, expected status ok, release {release}"
    )


def test_readyz_reaches_the_database(get):
    status, body = get("/readyz")
    print(f"/readyz: {body}")
    assert status == 200, f"/readyz answered {status} {body}"
