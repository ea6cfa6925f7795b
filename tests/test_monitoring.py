"""The monitoring overlay and the app's metrics, running.

Without a stack: the alert rules pass their unit tests (`promtool test rules`
in the prom/prometheus image: no promtool runs without Docker), and the
entrypoints of Alertmanager and node-exporter write what they should from
the environment and the files they read.

Then one stack per framework, compose.yaml with compose.monitoring.yaml and a
webhook receiver: every target is up; the app counts requests by route and
status across its Gunicorn workers, loses no count when a worker exits, and
serves none of it through nginx; the overlay stays under 200 MB; stopping
the app fires AppDown, which the receiver gets, and starting it resolves it.
Only the timings are shortened for the test (scrape and evaluation every 2 s,
AppDown after 5 s): the rules, configuration and images are the project's.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from conftest import FRAMEWORKS, Stack, free_port, prepare_images, render

pytestmark = pytest.mark.docker

OVERLAY = ("prometheus", "alertmanager", "node-exporter", "postgres-exporter", "nginx-exporter")

# A webhook receiver for Alertmanager: prints each POST's body on one line.
RECEIVER = """
import http.server

class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        print("ALERT " + body.decode().replace("\\n", " "), flush=True)
        self.send_response(200)
        self.end_headers()

http.server.HTTPServer(("", 8000), Receiver).serve_forever()
"""


def image(project: Path, service: str) -> str:
    return yaml.safe_load((project / "compose.monitoring.yaml").read_text())["services"][service]["image"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    project = render(tmp_path_factory.mktemp("rules") / "project")
    prepare_images(project)
    return project


def test_the_alert_rules_pass_their_unit_tests(project):
    monitoring = f"{project / 'monitoring'}:/etc/prometheus:ro"
    promtool = ["--entrypoint", "promtool", image(project, "prometheus")]
    tests = subprocess.run(
        ["docker", "run", "--rm", "-v", monitoring, "-w", "/etc/prometheus/tests", *promtool,
         "test", "rules", "alerts.test.yml"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "SUCCESS" in tests.stdout
    config = subprocess.run(
        ["docker", "run", "--rm", "-v", monitoring, *promtool,
         "check", "config", "/etc/prometheus/prometheus.yml"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # rule_files names the path the overlay mounts the rules at: found there.
    assert config.returncode == 0, config.stdout + config.stderr
    assert "/etc/prometheus/rules/alerts.yml" in config.stdout + config.stderr


def alertmanager_config(project: Path, **env: str) -> subprocess.CompletedProcess:
    """Run monitoring/alertmanager.sh as the overlay does, up to alertmanager
    --version; then amtool checks the configuration it wrote, which follows."""
    variables = [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]
    return subprocess.run(
        ["docker", "run", "--rm", "-v", f"{project / 'monitoring'}:/etc/monitoring:ro", *variables,
         "--entrypoint", "sh", image(project, "alertmanager"), "-c",
         "sh /etc/monitoring/alertmanager.sh --version >/dev/null"
         " && amtool check-config /tmp/alertmanager.yml >&2 && cat /tmp/alertmanager.yml"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_alertmanager_sends_to_the_webhook_and_by_email_through_email_url(project):
    result = alertmanager_config(
        project,
        ALERT_WEBHOOK_URL="https://hooks.example.net/T0/B0",
        ALERT_EMAIL_TO="ops@example.com",
        EMAIL_URL="smtp+tls://alerts%40example.com:p%22w%5Cd@smtp.example.net:587",
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    (receiver,) = config["receivers"]
    assert receiver["webhook_configs"] == [{"url": "https://hooks.example.net/T0/B0", "send_resolved": True}]
    (email,) = receiver["email_configs"]
    assert email["to"] == "ops@example.com"
    assert email["smarthost"] == "smtp.example.net:587" and email["require_tls"] is True
    assert (email["auth_username"], email["auth_password"]) == ("alerts@example.com", 'p"w\\d')


def test_alertmanager_refuses_an_email_url_it_cannot_use(project):
    result = alertmanager_config(project, ALERT_EMAIL_TO="ops@example.com", EMAIL_URL="console://")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "alertmanager.sh: EMAIL_URL must start with smtp://, smtp+tls:// or smtp+ssl://, not console://"
    )
    missing = alertmanager_config(project, ALERT_EMAIL_TO="ops@example.com")
    assert "ALERT_EMAIL_TO is set but EMAIL_URL is not" in missing.stderr


def test_node_exporter_reports_the_newest_backup_and_the_certificate_expiry(project, tmp_path):
    backups = tmp_path / "project" / "backups"
    backups.mkdir(parents=True)
    for name, mtime in (("a.dump", 1_700_000_000), ("b.dump", 1_800_000_000), ("c.tar.gz", 1_900_000_000)):
        (backups / name).write_bytes(b"x")
        os.utime(backups / name, (mtime, mtime))
    (backups / ".offsite-ok").write_text("1800000100 0123abcd\n")
    serving = tmp_path / "letsencrypt" / "serving"
    serving.mkdir(parents=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-days", "10", "-subj", "/CN=example.com", "-keyout", str(tmp_path / "key.pem"),
         "-out", str(serving / "fullchain.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    end = subprocess.run(
        ["openssl", "x509", "-enddate", "-noout", "-in", str(serving / "fullchain.pem")],
        check=True, capture_output=True, text=True,
    ).stdout.strip().removeprefix("notAfter=")  # fmt: skip
    expected_end = calendar.timegm(time.strptime(end, "%b %d %H:%M:%S %Y %Z"))
    result = subprocess.run(
        ["docker", "run", "--rm", "--user", "root", "-v", f"{project / 'monitoring'}:/etc/monitoring:ro",
         "-v", f"{tmp_path / 'project'}:/project:ro", "-v", f"{tmp_path / 'letsencrypt'}:/letsencrypt:ro",
         "--entrypoint", "sh", image(project, "node-exporter"), "-c",
         "sh /etc/monitoring/node-exporter.sh --version >/dev/null 2>&1; cat /tmp/textfile/files.prom"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    values = dict(re.findall(r"^(\w+) (\d+)$", result.stdout, re.MULTILINE))
    assert values == {
        "backup_newest_timestamp_seconds": "1800000000",
        "backup_offsite_newest_timestamp_seconds": "1800000100",
        "tls_certificate_not_after_seconds": str(expected_end),
    }, result.stdout + result.stderr


## One stack per framework ####################################################


def prometheus_api(stack: Stack, path: str) -> dict:
    result = stack.compose(
        "exec", "-T", "prometheus", "wget", "-q", "-O", "-", f"http://127.0.0.1:9090{path}"
    )
    return json.loads(result.stdout)["data"]


def app_metrics(stack: Stack) -> dict[tuple[str, str, str], float]:
    """Requests counted (the histogram's _count) by (route, method, status), as Prometheus would read it."""
    text = stack.compose(
        "exec", "-T", "prometheus", "wget", "-q", "-O", "-", "http://app:8001/metrics"
    ).stdout
    counts = {}
    counted = re.findall(r"^http_request_duration_seconds_count\{(.*)\} (\S+)$", text, re.MULTILINE)
    for labels, value in counted:
        label = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        counts[(label["route"], label["method"], label["status"])] = float(value)
    return counts


def received(stack: Stack) -> list[dict]:
    logs = stack.compose("logs", "--no-color", "--no-log-prefix", "webhook").stdout
    return [json.loads(line.split("ALERT ", 1)[1]) for line in logs.splitlines() if "ALERT " in line]


def wait_for(condition, timeout: float, what: str, stack: Stack):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s\n{stack.logs()}")
        time.sleep(1)


@pytest.fixture(scope="module", params=FRAMEWORKS)
def stack(request, tmp_path_factory):
    project = render(tmp_path_factory.mktemp(request.param) / "project", framework=request.param)
    config = project / "monitoring" / "prometheus.yml"
    config.write_text(re.sub(r"\b15s\b", "2s", config.read_text()))
    rules = project / "monitoring" / "rules" / "alerts.yml"
    app_down = 'absent(up{job="app"} == 1)\n        for: '
    rules.write_text(rules.read_text().replace(app_down + "1m", app_down + "5s"))
    assert app_down + "5s" in rules.read_text()
    # The receiver runs on the app's base image, which the stack has anyway.
    dockerfile = (project / "Dockerfile").read_text()
    python = re.search(r"^ARG PYTHON_IMAGE=(\S+)", dockerfile, re.MULTILINE).group(1)
    (project / "compose.webhook.yaml").write_text(
        yaml.safe_dump(
            {
                "services": {
                    "webhook": {
                        "image": python,
                        "command": ["python", "-u", "-c", RECEIVER],
                        "networks": ["monitoring"],
                    }
                }
            }
        )
    )
    # A dump of 2 hours ago: BackupTooOld stays quiet.
    (project / "backups").mkdir()
    dump = project / "backups" / "my_app-20260101T030000Z.dump"
    dump.write_bytes(b"PGDMP")
    os.utime(dump, (time.time() - 7200, time.time() - 7200))
    prepare_images(project)
    stack = Stack(project, files=("compose.yaml", "compose.monitoring.yaml", "compose.webhook.yaml"))
    stack.env.update(
        MONITORING_DB_PASSWORD="monitoring-test-password",
        ALERT_WEBHOOK_URL="http://webhook:8000/alerts",
        ALERT_GROUP_WAIT="1s",
        ALERT_GROUP_INTERVAL="2s",
        PROMETHEUS_PORT=str(free_port()),
        ALERTMANAGER_PORT=str(free_port()),
        WEB_CONCURRENCY="3",
    )
    failed_before = request.session.testsfailed
    try:
        stack.up("--build")
        yield stack
    finally:
        if request.session.testsfailed > failed_before or sys.exc_info()[0] is not None:
            print(f"\n--- docker compose logs ({project}) ---\n{stack.logs()}")
        stack.down()


def test_every_target_is_up(stack):
    def all_up():
        targets = prometheus_api(stack, "/api/v1/targets")["activeTargets"]
        health = {t["labels"]["job"]: t["health"] for t in targets}
        return health if set(health.values()) == {"up"} and len(health) == 6 else None

    health = wait_for(all_up, 60, "not every target came up", stack)
    assert set(health) == {"prometheus", "alertmanager", "app", "nginx", "postgres", "node"}
    for query, value in (("pg_up", "1"), ("nginx_up", "1"), ("backup_newest_timestamp_seconds", None)):
        (sample,) = prometheus_api(stack, f"/api/v1/query?query={query}")["result"]
        assert value is None or sample["value"][1] == value, (query, sample)

    # Alerts that fired while the stack was starting (a target not scraped
    # yet) resolve at the rules' next evaluation once every target is up.
    # DiskAlmostFull is about the machine the tests run on, not the stack:
    # a busy CI disk may rightly raise it.
    def firing():
        alerts = prometheus_api(stack, "/api/v1/alerts")["alerts"]
        return [a["labels"]["alertname"] for a in alerts if a["labels"]["alertname"] != "DiskAlmostFull"]

    wait_for(lambda: firing() == [], 30, f"alerts on a healthy stack: {firing()}", stack)


def test_requests_are_counted_by_route_and_status_across_workers(stack):
    before = app_metrics(stack)
    with ThreadPoolExecutor(8) as pool:
        pages = list(pool.map(lambda _: stack.get("/").status_code, range(40)))
        missing = list(pool.map(lambda _: stack.get("/no-such-page").status_code, range(5)))
    assert set(pages) == {200} and set(missing) == {404}
    after = app_metrics(stack)
    assert after[("/", "GET", "200")] - before.get(("/", "GET", "200"), 0) == 40
    assert after[("unmatched", "GET", "404")] - before.get(("unmatched", "GET", "404"), 0) == 5
    # The container healthcheck's requests, under their own route.
    assert after[("/healthz", "GET", "200")] > 0
    files = stack.compose("exec", "-T", "app", "ls", "/tmp/metrics").stdout.split()
    workers = {name.split("_")[1] for name in files if re.fullmatch(r"histogram_\d+\.db", name)}
    assert len(workers) >= 2, f"one worker served every request: {files}"


def test_metrics_are_not_served_through_nginx(stack):
    for path in ("/metrics", "/stub_status"):
        response = stack.get(path)
        assert response.status_code == 404, path
        assert "http_request_duration" not in response.text and "Active connections" not in response.text
    # Inside, on nginx's network, stub_status answers on its own port.
    script = "import urllib.request; print(urllib.request.urlopen('http://nginx:8080/stub_status').read().decode())"
    inside = stack.compose("exec", "-T", "app", "python", "-c", script).stdout
    assert inside.startswith("Active connections:"), inside
    for service, port in (("app", "8001"), ("edge", "8080")):
        assert stack.compose("port", service, port, check=False).returncode != 0, (service, port)


def test_a_worker_that_exits_loses_no_count(stack):
    before = app_metrics(stack)
    files = stack.compose("exec", "-T", "app", "ls", "/tmp/metrics").stdout.split()
    pid = next(name.split("_")[1][:-3] for name in files if re.fullmatch(r"histogram_\d+\.db", name))
    stack.compose("exec", "-T", "app", "python", "-c", f"import os, signal; os.kill({pid}, signal.SIGTERM)")

    def archived():
        names = stack.compose("exec", "-T", "app", "ls", "/tmp/metrics").stdout.split()
        return names if f"histogram_{pid}.db" not in names and "histogram_archive.db" in names else None

    wait_for(archived, 30, f"worker {pid}'s counts never moved to the archive", stack)
    after = app_metrics(stack)
    assert all(after.get(key, 0) >= value for key, value in before.items()), (before, after)
    assert after[("/", "GET", "200")] == before[("/", "GET", "200")]


def test_the_monitoring_role_reads_statistics_and_writes_nothing(stack):
    def as_monitoring(sql: str) -> subprocess.CompletedProcess:
        return stack.compose(
            "exec", "-T", "-e", "PGPASSWORD=monitoring-test-password", "db",
            "psql", "-h", "127.0.0.1", "-U", "my_app_monitoring", "-d", "my_app", "-tAc", sql, check=False,
        )  # fmt: skip

    assert as_monitoring("SELECT count(*) > 0 FROM pg_stat_activity").stdout.strip() == "t"
    refused = as_monitoring("CREATE TABLE intruder (id int)")
    assert refused.returncode != 0 and "read-only transaction" in refused.stderr, refused.stderr


def test_the_overlay_uses_under_200_mb(stack):
    containers = [stack.compose("ps", "-q", service).stdout.strip() for service in OVERLAY]
    stats = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", *containers],
        check=True, capture_output=True, text=True,
    ).stdout.splitlines()  # fmt: skip
    units = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}
    used = sum(float(m.group(1)) * units[m.group(2)] for m in (re.match(r"([\d.]+)(\w+)", s) for s in stats))
    assert len(stats) == len(OVERLAY) and used < 200, stats


def test_stopping_the_app_fires_the_alert_and_starting_it_resolves_it(stack):
    def app_down(status: str):
        return [
            message
            for message in received(stack)
            if message["status"] == status
            and any(alert["labels"]["alertname"] == "AppDown" for alert in message["alerts"])
        ]

    stack.compose("stop", "app")
    try:
        (fired, *_) = wait_for(lambda: app_down("firing"), 90, "AppDown never reached the webhook", stack)
        assert fired["receiver"] == "operators"
        assert fired["commonLabels"]["severity"] == "critical"
    finally:
        stack.compose("start", "app")
    wait_for(lambda: app_down("resolved"), 90, "AppDown was never resolved", stack)
