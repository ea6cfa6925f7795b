"""Metrics and the monitoring overlay, checked on the rendered files (no
Docker): where the app's, nginx's and Postgres's figures are served, that
none of it is on a published port or behind the public nginx server, and
that every alert is documented and unit-tested. The stacks that prove it
running are in tests/test_monitoring.py."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import FRAMEWORKS, render

OVERLAY_SERVICES = {"prometheus", "alertmanager", "node-exporter", "postgres-exporter", "nginx-exporter"}


@pytest.fixture(scope="module", params=FRAMEWORKS)
def project(request, tmp_path_factory) -> Path:
    return render(tmp_path_factory.mktemp(request.param) / "project", framework=request.param)


def compose_file(project: Path, name: str) -> dict:
    return yaml.safe_load((project / name).read_text())


def published(project: Path) -> dict[str, list[str]]:
    """Each service's published ports, over every compose file a server uses."""
    ports: dict[str, list[str]] = {}
    for name in ("compose.yaml", "compose.tls.yaml", "compose.monitoring.yaml"):
        for service, spec in compose_file(project, name)["services"].items():
            ports.setdefault(service, []).extend(str(port) for port in spec.get("ports", []))
    return ports


def test_only_nginx_is_published_and_monitoring_on_loopback_only(project):
    ports = published(project)
    assert ports["edge"] == ["${HTTP_PORT:-80}:80", "${HTTPS_PORT:-443}:443"]
    assert ports["prometheus"] == ["127.0.0.1:${PROMETHEUS_PORT:-9090}:9090"]
    assert ports["alertmanager"] == ["127.0.0.1:${ALERTMANAGER_PORT:-9093}:9093"]
    allowed = ("edge", "prometheus", "alertmanager")
    others = {service: p for service, p in ports.items() if p and service not in allowed}
    assert not others, f"published ports: {others}"


def test_the_public_server_never_proxies_the_metrics_port(project):
    slug = next(p.name for p in project.iterdir() if (p / "observability.py").is_file())
    source = (project / slug / "observability.py").read_text()
    port = re.search(r"^METRICS_PORT = (\d+)$", source, re.MULTILINE).group(1)
    site = (project / "nginx" / "templates" / "default.conf.template").read_text()
    # One upstream, the app's port 8000, and no proxy_pass anywhere else.
    assert re.findall(r"^\s*server ([\w.-]+:\d+)", site, re.MULTILINE) == ["app:8000"]
    assert set(re.findall(r"proxy_pass (\S+);", site)) == {"http://app"}
    assert port != "8000" and port not in site
    prometheus = yaml.safe_load((project / "monitoring" / "prometheus.yml").read_text())
    (app,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "app"]
    (discovery,) = app["dns_sd_configs"]
    assert (discovery["names"], discovery["type"], discovery["port"]) == (["app"], "A", int(port))


def test_stub_status_listens_apart_from_the_site(project):
    status = (project / "nginx" / "templates" / "stub-status.conf.template").read_text()
    listens = re.findall(r"^\s*listen (.+);", status, re.MULTILINE)
    # reuseport: the nginx taking over (docs/deploy.md) binds it beside the old one.
    assert listens == ["8080 reuseport"]
    assert re.search(r"location = /stub_status \{\s*stub_status;\s*\}", status)
    site = (project / "nginx" / "templates" / "default.conf.template").read_text()
    assert "stub_status" not in site
    exporter = compose_file(project, "compose.monitoring.yaml")["services"]["nginx-exporter"]
    assert exporter["command"] == ["--nginx.scrape-uri=http://nginx:8080/stub_status"]


def test_gunicorn_counts_every_worker(project):
    conf = (project / "gunicorn.conf.py").read_text()
    # Set in the master before any worker imports prometheus_client.
    assert 'os.environ["PROMETHEUS_MULTIPROC_DIR"] = "/tmp/metrics"' in conf
    for hook, call in (
        ("on_starting(server)", "clear_metrics()"),
        ("when_ready(server)", "serve_metrics()"),
        ("child_exit(server, worker)", "archive_worker_metrics(worker.pid)"),
    ):
        assert re.search(rf"^def {re.escape(hook)}:\n    {re.escape(call)}$", conf, re.MULTILINE), hook
    # The tmpfs the directory lives on.
    assert "/tmp:size=64m" in compose_file(project, "compose.yaml")["x-app"]["tmpfs"]


def test_the_overlay_has_its_services_hardened_and_bounded(project):
    overlay = compose_file(project, "compose.monitoring.yaml")
    services = overlay["services"]
    assert set(services) >= OVERLAY_SERVICES
    total = 0
    for name in OVERLAY_SERVICES:
        spec = services[name]
        assert spec["cap_drop"] == ["ALL"] and spec["read_only"] is True, name
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", spec["image"]), spec["image"]
        limit = re.search(r"(\d+)m\}?$", str(spec["deploy"]["resources"]["limits"]["memory"]))
        total += int(limit.group(1))
    # Limits, not use (docs/observability.md has the measured figures).
    assert total <= 512, total
    # The only extra capability: node-exporter reads the backups and certificates.
    added = {name: spec["cap_add"] for name, spec in services.items() if "cap_add" in spec}
    assert added == {"node-exporter": ["DAC_READ_SEARCH"]}
    # Retention bounded by time and by size, from .env.
    command = " ".join(services["prometheus"]["command"])
    assert "--storage.tsdb.retention.time=${PROMETHEUS_RETENTION_TIME:-15d}" in command
    assert "--storage.tsdb.retention.size=${PROMETHEUS_RETENTION_SIZE:-1GB}" in command


def test_every_overlay_setting_is_in_env_example(project):
    overlay = (project / "compose.monitoring.yaml").read_text()
    example = (project / ".env.example").read_text()
    names = set(re.findall(r"\$\{(\w+)", overlay)) - {"POSTGRES_DB"}
    missing = [name for name in sorted(names) if not re.search(rf"^#? ?{name}=", example, re.MULTILINE)]
    assert not missing, f"not in .env.example: {missing}"


def test_every_alert_is_documented_and_unit_tested(project):
    rules = yaml.safe_load((project / "monitoring" / "rules" / "alerts.yml").read_text())
    alerts = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
    assert {"AppDown", "NginxDown", "DatabaseDown", "HighErrorRate", "SlowRequests"} <= set(alerts)
    assert {"CertificateExpiresSoon", "BackupTooOld", "DiskAlmostFull"} <= set(alerts)
    tests = yaml.safe_load((project / "monitoring" / "tests" / "alerts.test.yml").read_text())
    fired = {
        case["alertname"] for test in tests["tests"] for case in test["alert_rule_test"] if case["exp_alerts"]
    }
    assert fired == set(alerts), "each alert has a test where it fires"
    guide = (project / "docs" / "observability.md").read_text()
    undocumented = [alert for alert in alerts if not re.search(rf"^### {alert}$", guide, re.MULTILINE)]
    assert not undocumented, f"alerts without a section in docs/observability.md: {undocumented}"


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_the_overlay_is_valid_compose_and_says_what_it_needs(project, tls, tmp_path):
    files = ["compose.yaml", *(["compose.tls.yaml"] if tls else []), "compose.monitoring.yaml"]
    command = ["docker", "compose", *(arg for file in files for arg in ("-f", file)), "config", "-q"]
    env = {**os.environ, "MONITORING_DB_PASSWORD": "x"}
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    # A .env from before the overlay (a new one has the password).
    del env["MONITORING_DB_PASSWORD"]
    older = tmp_path / "older.env"
    lines = (project / ".env").read_text().splitlines(keepends=True)
    older.write_text("".join(line for line in lines if not line.startswith("MONITORING_DB_PASSWORD=")))
    command[2:2] = ["--env-file", str(older)]
    missing = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
    assert missing.returncode != 0
    assert "MONITORING_DB_PASSWORD is not set in .env; add a new random one" in missing.stderr
