"""HTTPS in production (compose.tls.yaml), tested against a real ACME server.

Pebble, Let's Encrypt's ACME test server, runs in the stack's `acme` network
under a test-only compose file layered on the project's own; a network alias
gives nginx the test domain there, so Pebble's HTTP-01 validation reaches it.
The certbot service runs unchanged except for ACME_SERVER and the CA it
trusts for Pebble's API. Then, through the published ports:

- the certificate nginx serves verifies against Pebble's root, with http/2;
- http redirects to https, except the ACME challenge and the health checks;
- HSTS and the security headers are on every https response, once;
- the app sees https (its canonical link; secure cookies and `check --deploy`);
- a forced renewal is served after a reload, with no request failing meanwhile.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml
from conftest import FRAMEWORKS, Stack, free_port, prepare_images, render

DOMAIN = "www.example.test"
PEBBLE = "ghcr.io/letsencrypt/pebble"
FILES = ("compose.yaml", "compose.tls.yaml", "compose.pebble.yaml")


def pebble_overlay(project: Path) -> None:
    """Write the test-only compose file and Pebble's files into the project."""
    (project / "compose.pebble.yaml").write_text(
        yaml.safe_dump(
            {
                "services": {
                    "pebble": {
                        "image": PEBBLE,
                        "command": ["-config", "/pebble/config.json"],
                        # No random delays before validating, no nonces
                        # rejected at random: the test needs no retries.
                        "environment": {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"},
                        "volumes": ["./pebble:/pebble:ro"],
                        "ports": ["127.0.0.1:${PEBBLE_MANAGEMENT_PORT}:15000"],
                        "networks": ["acme"],
                    },
                    "certbot": {
                        "environment": {
                            "ACME_SERVER": "https://pebble:14000/dir",
                            "REQUESTS_CA_BUNDLE": "/pebble/minica.pem",
                        },
                        "volumes": ["./pebble:/pebble:ro"],
                        "depends_on": ["pebble"],
                    },
                    "nginx": {
                        "environment": {"CERT_CHECK_INTERVAL": "1"},
                        "networks": {"acme": {"aliases": [DOMAIN]}},
                    },
                }
            },
            sort_keys=False,
        )
    )


def pebble_files(project: Path) -> None:
    """Pebble's own config, validating HTTP-01 on port 80, and the CA of its API's certificate."""
    target = project / "pebble"
    target.mkdir()
    container = subprocess.run(
        ["docker", "create", PEBBLE], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        for source, name in (
            ("/test/config/pebble-config.json", "image-config.json"),
            ("/test/certs/pebble.minica.pem", "minica.pem"),
        ):
            subprocess.run(
                ["docker", "cp", f"{container}:{source}", str(target / name)], check=True, capture_output=True
            )
    finally:
        subprocess.run(["docker", "rm", container], check=True, capture_output=True)
    config = json.loads((target / "image-config.json").read_text())
    settings = config["pebble"]
    settings["httpPort"] = 80
    settings["tlsPort"] = 443
    for key in ("certificate", "privateKey"):
        settings[key] = "/" + settings[key].lstrip("/")
    (target / "config.json").write_text(json.dumps(config, indent=2))


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connects to 127.0.0.1 whatever the host name, which TLS still asks for
    (SNI) and verifies, and which the Host header carries."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = lambda address, *rest: socket.create_connection(
            ("127.0.0.1", address[1]), *rest
        )


class TLSStack:
    def __init__(self, stack: Stack, framework: str):
        self.stack = stack
        self.framework = framework
        self.https_port = int(stack.env["HTTPS_PORT"])
        self.pebble_port = int(stack.env["PEBBLE_MANAGEMENT_PORT"])
        self.minica = str(stack.project / "pebble" / "minica.pem")
        self.root = stack.project / "pebble" / "root.pem"

    def fetch_root(self) -> None:
        """Pebble makes a new CA at each start: its root, from the management API."""
        response = requests.get(
            f"https://localhost:{self.pebble_port}/roots/0", verify=self.minica, timeout=10
        )
        response.raise_for_status()
        self.root.write_text(response.text)

    def context(self, verify: bool = True, alpn: tuple[str, ...] = ("h2", "http/1.1")) -> ssl.SSLContext:
        context = (
            ssl.create_default_context(cafile=str(self.root)) if verify else ssl._create_unverified_context()
        )
        context.set_alpn_protocols(list(alpn))
        return context

    def handshake(self, verify: bool = True, name: str = DOMAIN) -> ssl.SSLSocket:
        """A TLS connection to nginx on 127.0.0.1 that asks for `name` (SNI) and checks it."""
        sock = socket.create_connection(("127.0.0.1", self.https_port), timeout=10)
        try:
            return self.context(verify).wrap_socket(sock, server_hostname=name)
        except Exception:
            sock.close()
            raise

    def serial(self) -> str:
        with self.handshake() as connection:
            return connection.getpeercert()["serialNumber"]

    def https(self, path: str) -> tuple[int, http.client.HTTPMessage, str]:
        """GET over https from nginx on 127.0.0.1, verified against Pebble's root for DOMAIN."""
        connection = PinnedHTTPSConnection(
            DOMAIN, self.https_port, context=self.context(alpn=("http/1.1",)), timeout=10
        )
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.headers, response.read().decode(errors="replace")
        finally:
            connection.close()

    def http(self, path: str) -> requests.Response:
        return self.stack.get(path, host=DOMAIN, allow_redirects=False)


def wait_for_issuance(tls: TLSStack, timeout: float = 150) -> None:
    """Until nginx serves a certificate that verifies against Pebble's root."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            tls.handshake().close()
            return
        except (ssl.SSLError, OSError) as error:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no certificate from Pebble after {timeout}s: {error}\n{tls.stack.logs()}"
                ) from None
        time.sleep(1)


@pytest.fixture(scope="module", params=FRAMEWORKS)
def tls(request, tmp_path_factory):
    framework = request.param
    project = render(
        tmp_path_factory.mktemp(f"tls-{framework}") / "project", framework=framework, domain=DOMAIN
    )
    pebble_overlay(project)
    prepare_images(project)
    pebble_files(project)
    stack = Stack(project, files=FILES)
    stack.env["HTTPS_PORT"] = str(free_port())
    stack.env["PEBBLE_MANAGEMENT_PORT"] = str(free_port())
    failed_before = request.session.testsfailed
    try:
        stack.up("--build")
        tls = TLSStack(stack, framework)
        tls.fetch_root()
        wait_for_issuance(tls)
        yield tls
    finally:
        if request.session.testsfailed > failed_before:
            print(f"\n--- docker compose logs ({project}) ---\n{stack.logs()}")
        stack.down()


@pytest.mark.docker
def test_certificate_from_the_acme_server_verifies(tls: TLSStack):
    with tls.handshake() as connection:
        assert connection.version() in ("TLSv1.2", "TLSv1.3")
        assert connection.selected_alpn_protocol() == "h2"
        names = [value for kind, value in connection.getpeercert()["subjectAltName"] if kind == "DNS"]
    # localhost is in SERVER_NAMES but no CA certifies it: left out.
    assert names == [DOMAIN]


@pytest.mark.docker
def test_other_names_are_refused_during_the_handshake(tls: TLSStack):
    with pytest.raises(ssl.SSLError):
        tls.handshake(verify=False, name="other.example.test").close()


@pytest.mark.docker
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_are_served(tls: TLSStack, version: ssl.TLSVersion):
    context = tls.context()
    context.minimum_version = context.maximum_version = version
    sock = socket.create_connection(("127.0.0.1", tls.https_port), timeout=10)
    with context.wrap_socket(sock, server_hostname=DOMAIN) as connection:
        assert connection.version() == version.name.replace("_", ".")


@pytest.mark.docker
def test_http_redirects_to_https(tls: TLSStack):
    response = tls.http("/some/page?x=1")
    assert response.status_code == 301
    assert response.headers["Location"] == f"https://{DOMAIN}:{tls.https_port}/some/page?x=1"
    # Over plain http, no HSTS: browsers ignore it there, and the standard forbids it.
    assert "Strict-Transport-Security" not in response.headers


@pytest.mark.docker
def test_acme_challenge_and_health_checks_stay_on_http(tls: TLSStack):
    token = "test-token-0123456789"
    tls.stack.compose(
        "exec",
        "-T",
        "certbot",
        "sh",
        "-c",
        f"echo {token}.key > /var/www/certbot/.well-known/acme-challenge/{token}",
    )
    response = tls.http(f"/.well-known/acme-challenge/{token}")
    assert response.status_code == 200
    assert response.text.strip() == f"{token}.key"
    assert tls.http("/.well-known/acme-challenge/missing").status_code == 404
    for path in ("/healthz", "/readyz"):
        assert tls.http(path).status_code == 200, path


@pytest.mark.docker
def test_https_responses_carry_hsts_and_the_security_headers(tls: TLSStack):
    for path in ("/", "/static/css/site.css", "/healthz"):
        status, headers, _ = tls.https(path)
        assert status == 200, path
        assert headers.get_all("Strict-Transport-Security") == ["max-age=300"], path
        assert headers.get_all("X-Content-Type-Options") == ["nosniff"], path
        assert headers["X-Frame-Options"] == "DENY", path
        assert headers["Referrer-Policy"] == "strict-origin-when-cross-origin", path
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"], path


@pytest.mark.docker
def test_the_app_sees_https(tls: TLSStack):
    _, _, page = tls.https("/")
    canonical = re.search(r'<link rel="canonical" href="([^"]+)"', page)
    assert canonical, page[:2000]
    assert canonical.group(1) == f"https://{DOMAIN}:{tls.https_port}/"
    if tls.framework == "django":
        check = tls.stack.compose(
            "exec",
            "-T",
            "app",
            "python",
            "manage.py",
            "check",
            "--deploy",
            "--fail-level",
            "WARNING",
            check=False,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        code = "from django.conf import settings as s; print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE)"
        settings = tls.stack.compose(
            "exec", "-T", "app", "python", "manage.py", "shell", "-v", "0", "-c", code
        )
        assert settings.stdout.split() == ["True", "True"]
    else:
        code = "from my_app import create_app; c = create_app().config; print(c['SESSION_COOKIE_SECURE'], c['PREFERRED_URL_SCHEME'])"
        settings = tls.stack.compose("exec", "-T", "app", "python", "-c", code)
        assert settings.stdout.split() == ["True", "https"]


@pytest.mark.docker
def test_cert_expiry_reports_days_left(tls: TLSStack):
    env = {**tls.stack.env, "COMPOSE_FILE": ":".join(FILES)}
    script = tls.stack.project / "scripts" / "cert-expiry"
    report = subprocess.run([str(script)], env=env, check=False, capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stdout + report.stderr
    assert re.fullmatch(
        rf"{re.escape(DOMAIN)}: expires \d{{4}}-\d\d-\d\d \(\d+ days\), issued by .+\n", report.stdout
    )
    days = subprocess.run(
        [str(script), "--days"], env=env, check=False, capture_output=True, text=True, timeout=60
    )
    assert days.returncode == 0 and int(days.stdout) > 14
    # A certificate closer to expiry than --warn asks for fails the check.
    warned = subprocess.run(
        [str(script), "--warn", "100000"], env=env, check=False, capture_output=True, text=True, timeout=60
    )
    assert warned.returncode == 1


@pytest.mark.docker
def test_renewal_is_served_after_a_reload_without_failed_requests(tls: TLSStack):
    before = tls.serial()
    nginx_id = tls.stack.compose("ps", "-q", "nginx").stdout.strip()
    started_at = subprocess.run(
        ["docker", "inspect", "--format", "{{.State.StartedAt}}", nginx_id],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    results: list[object] = []
    stop = threading.Event()

    def requests_loop() -> None:
        # A bounded loop of fresh https connections to 127.0.0.1 only.
        deadline = time.monotonic() + 180
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                results.append(tls.https("/healthz")[0])
            except Exception as error:  # noqa: BLE001 - every failure counts, whatever it is
                results.append(error)

    worker = threading.Thread(target=requests_loop)
    worker.start()
    try:
        renew = tls.stack.compose(
            "exec",
            "-T",
            "certbot",
            "certbot",
            "renew",
            "--force-renewal",
            "--no-random-sleep-on-renew",
            check=False,
        )
        assert renew.returncode == 0, renew.stdout + renew.stderr
        deadline = time.monotonic() + 60
        while (after := tls.serial()) == before:
            assert time.monotonic() < deadline, f"nginx still serves the old certificate\n{tls.stack.logs()}"
            time.sleep(0.5)
        served_at = len(results)
        time.sleep(2)  # and requests keep succeeding after the reload
    finally:
        stop.set()
        worker.join()
    assert after != before
    failures = [result for result in results if result != 200]
    assert not failures, f"{len(failures)} of {len(results)} requests failed: {failures[:5]}"
    assert served_at > 10 and len(results) > served_at, "too few requests to tell"
    # Reloaded, not restarted: the same nginx container, started once.
    assert (
        subprocess.run(
            ["docker", "inspect", "--format", "{{.State.StartedAt}}", nginx_id],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        == started_at
    )
    assert "the certificate changed: reloading nginx" in tls.stack.compose("logs", "nginx").stdout


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_tls_mode_renders_a_valid_compose_config(tmp_path, framework):
    """Render level: both files together are valid, with COMPOSE_FILE in .env as documented."""
    project = render(tmp_path / "p", framework=framework)
    with (project / ".env").open("a") as env:
        env.write("COMPOSE_FILE=compose.yaml:compose.tls.yaml\n")
    result = subprocess.run(
        ["docker", "compose", "config", "--format", "json"],
        cwd=project,
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    services = config["services"]
    assert set(services) == {"db", "migrate", "app", "nginx", "certbot"}
    assert services["app"]["image"] == "my_app:dev", "the development override must not load"
    assert services["app"]["environment"]["HTTPS_ENABLED"] == "true"
    assert sorted(port["target"] for port in services["nginx"]["ports"]) == [80, 443]
    assert services["nginx"]["depends_on"]["certbot"]["condition"] == "service_healthy"
    assert "web" not in services["certbot"].get("networks", {}), "only nginx may reach the app"
