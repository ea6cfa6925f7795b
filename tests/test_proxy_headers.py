"""Behind a load balancer: TRUSTED_PROXY_HOPS=2 and a second nginx in front.

The front proxy is what a load balancer that terminates TLS does: it
appends the client's address to X-Forwarded-For and says https on port 443,
whatever the client claimed. Through it, the app must see the client's real
address (its access log shows the address the app resolved) and build https
URLs for the host asked for; Django's CSRF origin check must pass for a
browser on https. The spoof a client sends along is ignored. (Without a
proxy in front, TRUSTED_PROXY_HOPS=1, test_stack.py checks the same spoof.)
"""

from __future__ import annotations

import re
import subprocess
import time
import uuid

import pytest
import requests

from conftest import FRAMEWORKS, Stack, app_access_record, booted, free_port, render

pytestmark = pytest.mark.docker

FRONT_CONFIG = """
server {
    listen 80;
    location / {
        proxy_pass http://nginx:80;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto https;
        proxy_set_header X-Forwarded-Port 443;
    }
}
"""

SPOOF = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "http", "X-Forwarded-Port": "6666"}


class Front:
    """The proxy in front of the stack's nginx, on the stack's network."""

    def __init__(self, stack: Stack, config_dir):
        self.name = f"{stack.name}-front"
        self.port = free_port()
        (config_dir / "default.conf").write_text(FRONT_CONFIG)
        subprocess.run(
            [
                "docker", "run", "--detach", "--name", self.name, f"--network={stack.name}_web",
                "--publish", f"127.0.0.1:{self.port}:80",
                "--volume", f"{config_dir / 'default.conf'}:/etc/nginx/conf.d/default.conf:ro",
                "nginx:1.30",
            ],
            check=True, capture_output=True,
        )  # fmt: skip
        self.url = f"http://localhost:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/healthz")
                return
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"the front proxy does not answer:\n{self.logs()}") from None
                time.sleep(0.3)

    def logs(self) -> str:
        logs = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True, check=False)
        return logs.stdout + logs.stderr

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kwargs)

    def seen_from(self, probe: str) -> str:
        """The client address the front proxy logged for the request with probe."""
        logs = self.logs()
        lines = [line for line in logs.splitlines() if probe in line]
        assert lines, f"the front proxy did not log {probe}:\n{logs[-2000:]}"
        return lines[-1].split()[0]

    def address(self) -> str:
        inspect = [
            "docker",
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        ]
        return subprocess.run(
            [*inspect, self.name], capture_output=True, text=True, check=True
        ).stdout.strip()

    def remove(self) -> None:
        subprocess.run(["docker", "rm", "--force", self.name], capture_output=True, check=False)


@pytest.fixture(scope="module", params=FRAMEWORKS)
def framework(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def stack(request, framework, tmp_path_factory):
    project = render(tmp_path_factory.mktemp(framework) / "project", framework=framework)
    with (project / ".env").open("a") as env:
        env.write("TRUSTED_PROXY_HOPS=2\n")
    with booted(project, request) as stack:
        yield stack


@pytest.fixture(scope="module")
def front(stack, tmp_path_factory):
    front = Front(stack, tmp_path_factory.mktemp("front"))
    try:
        yield front
    finally:
        front.remove()


def canonical(page: str) -> str:
    match = re.search(r'<link rel="canonical" href="([^"]+)"', page)
    assert match, "the home page has no canonical link"
    return match.group(1)


def app_log_client(stack: Stack, probe: str) -> str:
    """The client address in the app's access log record for the request with probe."""
    return app_access_record(stack, probe)["client"]


def test_the_app_sees_the_client_and_https_through_the_proxy(framework: str, stack: Stack, front: Front):
    probe = uuid.uuid4().hex
    response = front.get(f"/?probe={probe}", headers=SPOOF)
    assert response.status_code == 200, response.text[:2000]
    # https and the default port, from the front proxy; the host the client
    # asked for, without the front proxy's own port.
    assert canonical(response.text) == "https://localhost/"
    client = front.seen_from(probe)
    assert app_log_client(stack, probe) == client
    assert client not in ("6.6.6.6", front.address())
    if framework == "django":
        check_a_browser_on_https_passes_the_csrf_origin_check(front)


def check_a_browser_on_https_passes_the_csrf_origin_check(front: Front) -> None:
    session = requests.Session()
    login = session.get(front.url + "/admin/login/", timeout=10)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
    assert token, login.text[:2000]
    form = {"username": "nobody", "password": "wrong", "csrfmiddlewaretoken": token.group(1)}
    # The browser is on https://localhost, the load balancer's address.
    origin = {"Origin": "https://localhost", "Referer": "https://localhost/admin/login/"}
    response = session.post(front.url + "/admin/login/", data=form, headers=origin, timeout=10)
    # Past the CSRF check (403 otherwise), Django turns the password down.
    assert response.status_code == 200, response.text[:2000]
    assert "Please enter the correct username and password" in response.text
