"""HTTPS in production (compose.tls.yaml), tested against a real ACME server.

Pebble, Let's Encrypt's ACME test server, runs in the stack's `acme` network
under a test-only compose file layered on the project's own; a network alias
gives nginx the test domain there, so Pebble's HTTP-01 validation reaches it.
The certbot service runs unchanged except for ACME_SERVER, the CA it trusts
for Pebble's API, and its two documented renewal settings: a check every
RENEW_INTERVAL seconds, and a threshold that makes each certificate due
RENEW_AFTER seconds after Pebble issued it. Then, through the published ports:

- the certificate nginx serves verifies against Pebble's root, with http/2;
- http redirects to https, except the ACME challenge and the health checks;
- HSTS and the security headers are on every https response, once;
- the app sees https (its canonical link; secure cookies and `check --deploy`);
- the certbot service's own loop renews, and nginx reloads onto the new
  certificate while keep-alive, fresh-connection and HTTP/2 clients keep
  requesting, none of them failing.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

import pytest

from acmeserver import (
    RENEW_AFTER,
    RENEW_BEFORE_EXPIRY_DAYS,
    RENEW_INTERVAL,
    pebble_files,
    pebble_overlay,
    wait_for_issuance,
)
from conftest import FRAMEWORKS, Stack, free_port, prepare_images, render
from tlsload import DOMAIN, Client, TLSStack, fresh_connections, http2, keep_alive

FILES = ("compose.yaml", "compose.tls.yaml", "compose.pebble.yaml")


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
    # The project's own settings, as a user would put them in .env.
    stack.env["CERTBOT_RENEW_INTERVAL"] = str(RENEW_INTERVAL)
    stack.env["CERTBOT_RENEW_BEFORE_EXPIRY"] = f"{RENEW_BEFORE_EXPIRY_DAYS} days"
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
        # A year, once a certificate was issued (none with the placeholder).
        assert headers.get_all("Strict-Transport-Security") == ["max-age=31536000"], path
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
        code = (
            "from my_app import create_app; c = create_app().config; "
            "print(c['SESSION_COOKIE_SECURE'], c['PREFERRED_URL_SCHEME'])"
        )
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


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, tls: TLSStack, clients: Sequence[Client] = ()
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            progress = "\n".join(client.progress() for client in clients)
            raise AssertionError(f"{what} within {timeout:.0f}s\n{progress}\n{tls.stack.logs()}")
        time.sleep(0.25)


def lines_of(failures: list[str], tls: TLSStack) -> str:
    """The stack's log lines that name the failed requests' ids, and its error lines."""
    ids = re.findall(r"request id ([0-9a-f]{32})", " ".join(failures))
    logs = tls.stack.compose("logs", "--no-color", check=False).stdout.splitlines()
    wanted = [*ids, '"level": "ERROR"', '"level":"ERROR"', '"status":5', '"status": 5', "[error]", "[alert]"]
    return "\n".join(line for line in logs if any(word in line for word in wanted))


def nginx_state(tls: TLSStack) -> tuple[str, int]:
    """When the nginx container started, and how many reloads its watcher logged."""
    nginx_id = tls.stack.compose("ps", "-q", "nginx").stdout.strip()
    started_at = subprocess.run(
        ["docker", "inspect", "--format", "{{.State.StartedAt}}", nginx_id],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    logs = tls.stack.compose("logs", "--no-color", "nginx").stdout
    return started_at, logs.count("the certificate changed: reloading nginx")


CLIENTS = {"keep-alive": keep_alive, "fresh TLS": fresh_connections, "HTTP/2": http2}
PER_KIND = 2
MIN_EACH_SIDE = 20  # answers per client on the old certificate, and on the new one
MIN_PER_KIND = 100
WORST_LATENCY = 5.0  # seconds
WARM_UP = 25  # seconds the clients may take to get MIN_EACH_SIDE answers each


@pytest.mark.docker
def test_the_renewal_loop_renews_and_nginx_reloads_under_load(tls: TLSStack):
    renewal = tls.stack.compose("exec", "-T", "certbot", "cat", f"/etc/letsencrypt/renewal/{DOMAIN}.conf")
    assert f"renew_before_expiry = {RENEW_BEFORE_EXPIRY_DAYS} days" in renewal.stdout.splitlines()
    # The clients must warm up on one certificate before the next renewal:
    # when that is due too soon, wait for it and warm up on its successor.
    current = tls.peer()
    if time.time() - ssl.cert_time_to_seconds(current["notBefore"]) > RENEW_AFTER - WARM_UP:
        wait_until(
            lambda: tls.peer()["serialNumber"] != current["serialNumber"],
            RENEW_AFTER + RENEW_INTERVAL + 90,
            "the certbot service renewed nothing",
            tls,
        )
        time.sleep(2)  # the old workers stop taking connections a moment after the new start
    before = tls.peer()
    started_at, reloads = nginx_state(tls)
    stop = threading.Event()
    clients = [Client(kind, make(tls), stop) for kind, make in CLIENTS.items() for _ in range(PER_KIND)]
    for client in clients:
        client.start()
    try:
        wait_until(
            lambda: all(len(client.answers) >= MIN_EACH_SIDE or client.failures for client in clients),
            WARM_UP,
            "the clients got no answers",
            tls,
            clients,
        )
        # Nothing but the certbot service's loop renews; it is due RENEW_AFTER
        # seconds after issuance and looks every RENEW_INTERVAL seconds.
        # The first handshake on the new certificate tells which it is: for a
        # moment after the reload, an old worker may still take a connection
        # and show the old one.
        seen = [before]

        def renewed() -> bool:
            seen.append(tls.peer())
            return seen[-1]["serialNumber"] != before["serialNumber"]

        wait_until(
            renewed,
            RENEW_AFTER + RENEW_INTERVAL + 90,
            "nginx still serves the certificate it had before",
            tls,
        )
        after = seen[-1]
        wait_until(
            lambda: all(
                client.on(after["serialNumber"]) >= MIN_EACH_SIDE or client.failures for client in clients
            ),
            30,
            "the clients did not move to the new certificate",
            tls,
            clients,
        )
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=30)
    print(f"\nrenewal under load: certificate {before['serialNumber']} -> {after['serialNumber']}")
    for kind in CLIENTS:
        ours = [client for client in clients if client.kind == kind]
        answers = [answer for client in ours for answer in client.answers]
        connections = len({(id(client), port) for client in ours for _, port in client.answers})
        failures = sum(len(client.failures) for client in ours)
        worst = max(client.worst for client in ours)
        retries = sum(getattr(client.request, "retries", 0) for client in ours)
        print(f"  {kind}: {len(answers)} requests on {connections} connections, {failures} failures,", end="")
        print(f" worst latency {worst:.3f}s, {retries} retried on a connection the server closed")
    failures = [f"{client.kind}: {failure}" for client in clients for failure in client.failures]
    assert not failures, f"{len(failures)} requests failed: {failures[:10]}\n{lines_of(failures, tls)}"
    for client in clients:
        assert len(client.answers) - client.on(after["serialNumber"]) >= MIN_EACH_SIDE, client.kind
        assert client.on(after["serialNumber"]) >= MIN_EACH_SIDE, client.kind
        assert client.worst < WORST_LATENCY, f"{client.kind}: a request took {client.worst:.1f}s"
    for kind in CLIENTS:
        assert sum(len(client.answers) for client in clients if client.kind == kind) >= MIN_PER_KIND, kind
    assert ssl.cert_time_to_seconds(after["notBefore"]) > ssl.cert_time_to_seconds(before["notBefore"])
    # Reloaded, not restarted: the same nginx container, started once, whose
    # watcher logged one more reload.
    started_now, reloads_now = nginx_state(tls)
    assert started_now == started_at
    assert reloads_now > reloads
    # A reload closes each client's connection once: one retry per reload at most.
    for client in clients:
        assert getattr(client.request, "retries", 0) <= reloads_now - reloads, client.kind


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
    assert set(services) == {"db", "migrate", "app", "edge", "nginx", "certbot"}
    assert services["app"]["image"] == "my_app:dev", "the development override must not load"
    assert services["app"]["environment"]["HTTPS_ENABLED"] == "true"
    # nginx serves on edge's ports (compose.yaml).
    assert services["nginx"]["network_mode"] == "service:edge"
    assert sorted(port["target"] for port in services["edge"]["ports"]) == [80, 443]
    assert services["nginx"]["depends_on"]["certbot"]["condition"] == "service_healthy"
    assert "web" not in services["certbot"].get("networks", {}), "only nginx may reach the app"
    # Production renewal as before the settings existed: twice a day, when certbot says.
    assert services["certbot"]["environment"]["CERTBOT_RENEW_INTERVAL"] == "43200"
    assert services["certbot"]["environment"]["CERTBOT_RENEW_BEFORE_EXPIRY"] == ""
    used = set(re.findall(r"\$\{([A-Z_]+)", (project / "compose.tls.yaml").read_text()))
    documented = set(re.findall(r"^#?\s?([A-Z_]+)=", (project / ".env.example").read_text(), re.MULTILINE))
    assert used - documented == set(), "compose.tls.yaml reads variables .env.example does not document"
