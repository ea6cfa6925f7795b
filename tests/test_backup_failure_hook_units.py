"""server.sh backup-failed (server/offsite.sh), the backup timers' OnFailure=
hook, against the fake docker of tests/fakeserver.py: who it tells (a
webhook, mail through EMAIL_URL with the password kept off command lines,
Alertmanager with the monitoring overlay) and that it fails when nobody is
told."""

from __future__ import annotations

import json
import re
import time

import pytest

from fakeserver import Server, one_line


@pytest.fixture
def server(tmp_path) -> Server:
    return Server(tmp_path)


def test_the_failure_hook_posts_to_the_webhook(server):
    with (server.app_dir / ".env").open("a") as env:
        env.write("BACKUP_FAILURE_WEBHOOK=https://hooks.example.net/T0/B0\n")
    (server.app_dir / "backups").mkdir(exist_ok=True)
    (server.app_dir / "backups" / ".offsite-failed").write_text(
        f"{int(time.time())} no answer from the restic repository\n"
    )
    posted = server.app_dir.parent / "posted"
    (server.bin / "curl").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >"{posted}"\n')
    result = server.run("backup-failed", "shop-backup.service")
    assert result.returncode == 0, result.stderr
    argv = posted.read_text().splitlines()
    assert argv[-1] == "https://hooks.example.net/T0/B0"
    body = argv[argv.index("--data") + 1]
    assert re.fullmatch(
        r'\{"text": "shop-backup\.service failed on \S+ at [0-9-]+ [0-9:]+ UTC: no answer from the restic '
        r'repository \(journalctl -u shop-backup\.service says why\)"\}',
        body,
    ), body
    assert "told BACKUP_FAILURE_WEBHOOK" in result.stdout


def test_the_failure_hook_with_nobody_to_tell_fails(server):
    server.rules = [(r"config --services$", "app\n", 0)]
    assert one_line(server.run("backup-failed", "shop-backup.service")) == (
        "backup-failed: nobody was told: set BACKUP_FAILURE_WEBHOOK or BACKUP_FAILURE_EMAIL in "
        f"{server.app_dir}/.env"
    )


def test_the_failure_hook_mails_through_email_url_without_the_password_on_a_command_line(server):
    with (server.app_dir / ".env").open("a") as env:
        env.write(
            "EMAIL_URL=smtp+tls://alerts%40example.net:p%3Ass@smtp.example.net:587\n"
            "BACKUP_FAILURE_EMAIL=ops@example.net\n"
            'DEFAULT_FROM_EMAIL="Shop <noreply@example.net>"\n'
        )
    sent = server.app_dir.parent / "sent"
    (server.bin / "curl").write_text(
        "#!/bin/bash\n"
        f'printf "%s\\n" "$@" >"{sent}.argv"\n'
        f'cat >"{sent}.config"\n'
        'while [ $# -gt 0 ]; do [ "$1" != --upload-file ] || message=$2; shift; done\n'
        f'cat "$message" >"{sent}.message"\n'
    )
    server.rules = [(r"config --services$", "app\n", 0)]
    result = server.run("backup-failed", "shop-backup-verify.service")
    assert result.returncode == 0, result.stderr
    argv = (server.app_dir.parent / "sent.argv").read_text().splitlines()
    assert argv[argv.index("--url") + 1] == "smtp://smtp.example.net:587" and "--ssl-reqd" in argv
    assert argv[argv.index("--mail-from") + 1] == "noreply@example.net"
    assert argv[argv.index("--mail-rcpt") + 1] == "ops@example.net"
    assert not any("p:ss" in word or "p%3Ass" in word for word in argv)
    assert (server.app_dir.parent / "sent.config").read_text() == 'user = "alerts@example.net:p:ss"\n'
    message = (server.app_dir.parent / "sent.message").read_bytes().decode()
    assert "Subject: shop backup failed\r\n" in message and "To: ops@example.net\r\n" in message
    assert "shop-backup-verify.service failed on " in message
    assert "told ops@example.net" in result.stdout


def test_the_failure_hook_fires_an_alert_with_the_monitoring_overlay(server):
    server.rules = [(r"config --services$", "app\nalertmanager\n", 0)]
    result = server.run("backup-failed", "shop-backup.service")
    assert result.returncode == 0, result.stderr
    [post] = [call for call in server.calls() if "--post-data" in call]
    assert post[:7] == ["compose", "--project-name", "shop", "exec", "-T", "alertmanager", "wget"]
    assert post[-1] == "http://127.0.0.1:9093/api/v2/alerts"
    [alert] = json.loads(post[post.index("--post-data") + 1])
    assert alert["labels"] == {
        "alertname": "BackupFailed",
        "severity": "critical",
        "unit": "shop-backup.service",
    }
    assert alert["annotations"]["summary"].startswith("shop-backup.service failed on ")
    assert "told Alertmanager" in result.stdout
