"""scripts/status on the server, unit by unit (no Docker engine): the newest
backup's age and the alerts firing in Alertmanager, each a reason to exit
non-zero, against the fake docker of tests/fakeserver.py."""

from __future__ import annotations

import os
import time

import pytest

from fakeserver import Server, one_line

# Alertmanager's /api/v2/alerts, trimmed: one alert twice (two instances).
FIRING = (
    '[{"labels": {"alertname": "AppDown", "severity": "critical"}, "status": {"state": "active"}},'
    '{"labels": {"alertname": "DiskAlmostFull", "mountpoint": "/"}, "status": {"state": "active"}},'
    '{"labels": {"alertname": "DiskAlmostFull", "mountpoint": "/srv"}, "status": {"state": "active"}}]\n'
)


@pytest.fixture
def server(tmp_path) -> Server:
    server = Server(tmp_path)
    server.releases_log(("deploy", "A"))
    return server


def healthy(services: str = "app") -> list[tuple[str, str, int]]:
    return [
        (r"^compose .*config --services$", services.replace(" ", "\n") + "\n", 0),
        *((rf"service={name} .*status=running", f"{name}1\n", 0) for name in services.split()),
    ]


def dump(server: Server, name: str, hours_old: float) -> None:
    backups = server.app_dir / "backups"
    backups.mkdir(exist_ok=True)
    path = backups / name
    path.write_bytes(b"PGDMP")
    then = time.time() - hours_old * 3600
    os.utime(path, (then, then))


def test_a_fresh_backup_and_no_monitoring_need_no_attention(server):
    dump(server, "shop-20260101T030000Z.dump", 30)
    dump(server, "shop-20260102T030000Z.dump", 5.5)
    server.rules = healthy()
    result = server.run("status")
    assert result.returncode == 0, result.stderr
    assert "backups   2, newest: shop-20260102T030000Z.dump (5 h old)" in result.stdout
    assert "alerts    no monitoring (docs/observability.md turns it on)" in result.stdout


def test_no_backup_yet_is_a_warning_only(server):
    server.rules = healthy()
    result = server.run("status")
    assert result.returncode == 0, result.stderr
    assert "backups   none yet: warning" in result.stdout


def test_a_backup_over_26_hours_old_needs_attention(server):
    # The newest by time, whatever the names say (a restored upload sorts anywhere).
    dump(server, "shop-20260103T030000Z.dump", 50)
    dump(server, "shop-20260101T030000Z-uploaded.dump", 27)
    server.rules = healthy()
    result = server.run("status")
    assert "backups   2, newest: shop-20260101T030000Z-uploaded.dump (27 h old)" in result.stdout
    assert one_line(result) == (
        "status: the newest backup is 27 hours old (journalctl -u shop-backup says why)"
    )


def test_alerts_firing_in_alertmanager_need_attention(server):
    dump(server, "shop-20260102T030000Z.dump", 1)
    server.rules = [
        (r"^compose .*exec -T alertmanager wget .*active=true&silenced=false", FIRING, 0),
        *healthy("app alertmanager"),
    ]
    result = server.run("status")
    assert "alerts    firing: AppDown, DiskAlmostFull" in result.stdout
    assert one_line(result) == (
        'status: alerts firing: AppDown, DiskAlmostFull (docs/observability.md, "Alerts")'
    )


def test_no_alert_firing_is_healthy(server):
    dump(server, "shop-20260102T030000Z.dump", 1)
    server.rules = [(r"exec -T alertmanager wget", "[]\n", 0), *healthy("app alertmanager")]
    result = server.run("status")
    assert result.returncode == 0, result.stderr
    assert "alerts    none firing" in result.stdout


def test_an_alertmanager_that_does_not_answer_needs_attention(server):
    dump(server, "shop-20260102T030000Z.dump", 1)
    server.rules = [
        (r"exec -T alertmanager wget", "wget: can't connect to remote host: Connection refused\n", 1),
        *healthy("app alertmanager"),
    ]
    result = server.run("status")
    assert "alerts    Alertmanager does not answer: wget: can't connect" in result.stdout
    assert one_line(result) == "status: Alertmanager does not answer (docker compose logs alertmanager)"
