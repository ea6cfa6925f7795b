"""server.sh's offsite backups (server/offsite.sh) against the fake docker of
tests/fakeserver.py: the restic commands a backup, a restore from offsite
and the restore drill build (restic's official image, pinned once, the
secrets passed by name only), the retention policy from .env, the reasons
restic's exit statuses give (never with the repository's password), and
what status makes of the recorded outcome. The timers' failure hook:
tests/test_backup_failure_hook_units.py."""

from __future__ import annotations

import re
import time

import pytest

from fakeserver import SCRIPTS, Server, one_line

OFFSITE_ENV = (
    "RESTIC_REPOSITORY=rest:http://backup.example.net:8000/shop\n"
    'RESTIC_PASSWORD="correct horse battery staple"\n'
    "AWS_ACCESS_KEY_ID=AKIAEXAMPLE\n"
)
# The image, as offsite.sh pins it.
IMAGE = re.search(r"^RESTIC_IMAGE=(\S+)$", (SCRIPTS / "server" / "offsite.sh").read_text(), re.MULTILINE)[1]
SUMMARY = '{"message_type":"summary","files_new":2,"snapshot_id":"4f2c9a1b77e0d3c5aa8e"}\\n'

# A running database and a media archive: what every backup needs.
BACKUP_RULES = [
    (r"service=db .*status=running", "db1\n", 0),
    (r"exec -T db sh -c pg_dump", "PGDMP nightly\n", 0),
    (r"--entrypoint tar app", "TAR", 0),
]


@pytest.fixture
def server(tmp_path) -> Server:
    server = Server(tmp_path)
    with (server.app_dir / ".env").open("a") as env:
        env.write(OFFSITE_ENV)
    return server


def restic_calls(server: Server) -> list[list[str]]:
    """Each docker run of restic's image: the arguments after the image."""
    return [call[call.index(IMAGE) + 1 :] for call in server.calls() if call[0] == "run" and IMAGE in call]


def test_the_image_is_restics_official_one_pinned_to_a_release():
    assert re.fullmatch(r"restic/restic:\d+\.\d+\.\d+", IMAGE)


def test_a_nightly_backup_goes_offsite_as_one_snapshot_then_prunes(server):
    server.rules = [*BACKUP_RULES, (r"backup --json", SUMMARY, 0)]
    result = server.run("backup")
    assert result.returncode == 0, result.stderr
    [dump] = (server.app_dir / "backups").glob("*.dump")
    runs = [call for call in server.calls() if call[0] == "run" and IMAGE in call]
    assert [call[call.index(IMAGE) + 1 :][:2] for call in runs] == [
        ["cat", "config"],
        ["backup", "--json"],
        ["forget", "--host"],
    ]
    backup = runs[1]
    options = backup[: backup.index(IMAGE)]
    # As the deploy user, on the host's network, the secrets by name only.
    assert options[:3] == ["run", "--rm", "-i"] and "--network" in options
    assert options[options.index("--network") + 1] == "host"
    assert re.fullmatch(r"\d+:\d+", options[options.index("--user") + 1])
    passed = [options[i + 1] for i, word in enumerate(options) if word == "-e"]
    assert {"RESTIC_REPOSITORY", "RESTIC_PASSWORD", "AWS_ACCESS_KEY_ID"} <= set(passed)
    assert not any("correct horse" in word or "AKIAEXAMPLE" in word for call in runs for word in call)
    mounts = [options[i + 1] for i, word in enumerate(options) if word == "-v"]
    stem = dump.name.removesuffix(".dump")
    assert f"{server.app_dir}/backups/{dump.name}:/backup/database.dump:ro" in mounts
    assert f"{server.app_dir}/backups/{stem}.media.tar:/backup/media.tar:ro" in mounts
    assert backup[backup.index(IMAGE) + 1 :] == [
        "backup",
        "--json",
        "--host",
        "shop",
        "--tag",
        "shop",
        "/backup",
    ]
    forget = runs[2][runs[2].index(IMAGE) + 1 :]
    assert forget == [
        "forget",
        "--host",
        "shop",
        "--tag",
        "shop",
        "--prune",
        "--keep-daily",
        "7",
        "--keep-weekly",
        "4",
        "--keep-monthly",
        "6",
    ]
    ok_at, snapshot = (server.app_dir / "backups" / ".offsite-ok").read_text().split()
    assert snapshot == "4f2c9a1b77e0d3c5aa8e" and abs(int(ok_at) - time.time()) < 60
    assert "offsite: snapshot 4f2c9a1b" in result.stdout
    assert "offsite: pruned, keeping 7 daily, 4 weekly, 6 monthly" in result.stdout
    # scripts/backup still finds the dump's path on the last line.
    assert result.stdout.splitlines()[-1] == str(dump)


def test_retention_comes_from_env(server):
    with (server.app_dir / ".env").open("a") as env:
        env.write("OFFSITE_KEEP_DAILY=3\nOFFSITE_KEEP_MONTHLY=12\n")
    server.rules = [*BACKUP_RULES, (r"backup --json", SUMMARY, 0)]
    assert server.run("backup").returncode == 0
    forget = next(call for call in restic_calls(server) if call[0] == "forget")
    assert forget[-6:] == ["--keep-daily", "3", "--keep-weekly", "4", "--keep-monthly", "12"]


def test_without_a_repository_backups_stay_local(server):
    (server.app_dir / ".env").write_text("SECRET_KEY=x\nHTTP_PORT=80\n")
    server.rules = BACKUP_RULES
    result = server.run("backup")
    assert result.returncode == 0, result.stderr
    assert restic_calls(server) == []
    assert "offsite" not in result.stdout


def test_a_labelled_backup_stays_on_the_server(server):
    server.rules = BACKUP_RULES
    assert server.call("cmd_backup --label pre-restore").returncode == 0
    assert restic_calls(server) == []


def test_a_missing_repository_is_created_first(server):
    server.rules = [*BACKUP_RULES, (r"cat config$", "", 10), (r"backup --json", SUMMARY, 0)]
    result = server.run("backup")
    assert result.returncode == 0, result.stderr
    assert [call[0] for call in restic_calls(server)] == ["cat", "init", "backup", "forget"]
    assert "offsite: created the repository, encrypted with RESTIC_PASSWORD" in result.stdout


def test_a_wrong_password_never_creates_a_repository_and_says_so(server):
    server.rules = [*BACKUP_RULES, (r"cat config$", "Fatal: wrong password or no key found\n", 12)]
    reason = one_line(server.run("backup"))
    assert reason == (
        "backup: offsite backup failed: RESTIC_PASSWORD in .env does not open the repository at "
        "rest:http://backup.example.net:8000/shop"
    )
    assert [call[0] for call in restic_calls(server)] == ["cat"]
    failed = (server.app_dir / "backups" / ".offsite-failed").read_text()
    assert failed.split(" ", 1)[1].startswith("RESTIC_PASSWORD in .env does not open")


def test_an_unreachable_repository_times_out_with_a_reason(server):
    with (server.app_dir / ".env").open("a") as env:
        env.write("OFFSITE_CONNECT_TIMEOUT=1\n")
    # The fake restic hangs, as restic does while it retries.
    server.rules = [*BACKUP_RULES, (r"cat config$", "", 0)]
    fake = server.bin / "docker"
    fake.write_text(
        fake.read_text().replace('argv="$*"', 'argv="$*"\n[[ $argv != *" cat config" ]] || sleep 30')
    )
    started = time.monotonic()
    reason = one_line(server.run("backup"))
    assert time.monotonic() - started < 20
    assert reason == (
        "backup: offsite backup failed: no answer from the restic repository at "
        "rest:http://backup.example.net:8000/shop in time: is it reachable from the server?"
    )
    # The timed-out client's container is removed.
    assert any(
        call[:2] == ["rm", "--force"] and call[2].startswith("shop-restic-") for call in server.calls()
    )


def test_a_failed_prune_keeps_the_snapshot_recorded_and_fails(server):
    server.rules = [
        *BACKUP_RULES,
        (r"backup --json", SUMMARY, 0),
        (r" forget ", "Fatal: unable to create lock\n", 11),
    ]
    reason = one_line(server.run("backup"))
    assert reason.startswith("backup: offsite backup failed: the snapshot is made, but pruning failed: ")
    assert "locked by another run" in reason
    assert (server.app_dir / "backups" / ".offsite-ok").exists()


# --- Restore from offsite ---


def test_a_restore_from_offsite_fetches_both_files_then_restores_them(server):
    server.rules = [
        (
            r"ls --host shop --tag shop 4f2c9a1b /backup$",
            "/backup\n/backup/database.dump\n/backup/media.tar\n",
            0,
        ),
        (r"dump --host shop --tag shop 4f2c9a1b /backup/database.dump$", "PGDMP offsite\n", 0),
        (r"dump --host shop --tag shop 4f2c9a1b /backup/media.tar$", "", 0),
        (r"exec -T db pg_restore --file=/dev/null$", "", 0),
        *BACKUP_RULES,
    ]
    # An empty file is no tar archive: the media archive is checked whole, and refused.
    reason = one_line(server.run("restore", "--from-offsite", "4f2c9a1b"))
    assert reason.endswith(
        "shop-offsite-4f2c9a1b.media.tar is not a whole tar archive (truncated or another format):"
        " nothing changed"
    )
    assert not any("--clean" in " ".join(call) for call in server.calls())


def test_a_restore_from_offsite_with_a_wrong_password_changes_nothing(server):
    server.rules = [(r"cat config$", "Fatal: wrong password or no key found\n", 12), *BACKUP_RULES]
    reason = one_line(server.run("restore", "--from-offsite"))
    assert reason == (
        "restore: RESTIC_PASSWORD in .env does not open the repository at "
        "rest:http://backup.example.net:8000/shop: nothing changed"
    )
    calls = [" ".join(call) for call in server.calls()]
    assert not any("pg_dump" in call or "pg_restore" in call for call in calls)
    assert [call[0] for call in restic_calls(server)] == ["cat"]


def test_a_restore_from_offsite_refuses_a_strange_snapshot_name(server):
    reason = one_line(server.run("restore", "--from-offsite", "../etc"))
    assert reason == "restore: not a snapshot id: ../etc (restic snapshots lists them)"
    assert restic_calls(server) == []


# --- The restore drill ---


def test_the_drill_reports_each_table_and_fails_on_a_missing_one(server):
    live = "public.orders 12\npublic.users 3"
    same = server.call(f"compare_counts '{live}' '{live}'")
    assert same.returncode == 0, same.stderr
    assert "verified: the backup restores, and its 2 tables hold as many rows as the live ones" in same.stdout
    assert re.search(r"public\.orders +live +12 +backup +12 +same", same.stdout)
    newer = server.call(f"compare_counts '{live}' 'public.orders 11\npublic.users 3'")
    assert newer.returncode == 0, newer.stderr
    assert "1 of its 2 tables differ from the live ones (rows written since)" in newer.stdout
    missing = server.call(f"compare_counts '{live}' 'public.users 3'")
    assert one_line(missing) == "test: the backup lacks 1 of the 2 live tables"
    assert re.search(r"public\.orders +live +12 +backup +- +MISSING from the backup", missing.stdout)


def test_the_drill_checks_the_repository_then_restores_into_a_scratch_database(server):
    with (server.app_dir / ".env").open("a") as env:
        env.write("POSTGRES_DB=shop\n")
    counts = "public.orders 12\n"
    server.rules = [
        (r"service=db .*status=running", "db1\n", 0),
        (r" check$", "no errors were found\n", 0),
        (r"ls --host shop --tag shop latest /backup$", "/backup/database.dump\n", 0),
        (r"/backup/database.dump$", "PGDMP latest\n", 0),
        (r"exec -T db sh -c psql", counts, 0),
    ]
    result = server.run("verify-backup")
    assert result.returncode == 0, result.stderr
    assert [call[0] for call in restic_calls(server)] == ["cat", "check", "cat", "ls", "dump"]
    shells = [
        call for call in server.calls() if call[:5] == ["compose", "--project-name", "shop", "exec", "-T"]
    ]
    # Into a scratch database beside the live one, dropped at the end; the
    # rows counted in both.
    [restore] = [call for call in shells if "pg_restore" in " ".join(call)]
    assert restore[-1] == "shop_verify", restore
    assert [call[-1] for call in shells if "psql" in " ".join(call)] == ["shop", "shop_verify"]
    assert "dropdb" in " ".join(shells[-1]) and shells[-1][-1] == "shop_verify"
    assert "no errors were found" in result.stdout
    assert (
        "verified: the backup restores, and its 1 tables hold as many rows as the live ones" in result.stdout
    )
    assert not (server.app_dir / "backups" / ".verify").exists(), "the fetched files are removed"


# --- Status ---


def record(server: Server, name: str, text: str) -> None:
    (server.app_dir / "backups").mkdir(exist_ok=True)
    (server.app_dir / "backups" / name).write_text(text)


STATUS_RULES = [
    (r"^compose .*config --services$", "app\n", 0),
    (r"service=app .*status=running", "app1\n", 0),
]


def test_status_shows_the_newest_snapshot(server):
    server.releases_log(("deploy", "A"))
    record(server, ".offsite-ok", f"{int(time.time()) - 3 * 3600} 4f2c9a1b77e0\n")
    server.rules = STATUS_RULES
    result = server.run("status")
    assert (
        "offsite   snapshot 4f2c9a1b (3 h old) at rest:http://backup.example.net:8000/shop" in result.stdout
    )


def test_status_fails_when_the_newest_snapshot_is_over_26_hours_old(server):
    server.releases_log(("deploy", "A"))
    record(server, ".offsite-ok", f"{int(time.time()) - 27 * 3600} 4f2c9a1b77e0\n")
    server.rules = STATUS_RULES
    assert one_line(server.run("status")) == (
        "status: the newest offsite snapshot is 27 hours old (journalctl -u shop-backup says why)"
    )


def test_status_fails_when_the_last_offsite_backup_failed(server):
    server.releases_log(("deploy", "A"))
    record(server, ".offsite-ok", f"{int(time.time()) - 3 * 3600} 4f2c9a1b77e0\n")
    record(server, ".offsite-failed", f"{int(time.time())} no answer from the restic repository\n")
    server.rules = STATUS_RULES
    assert (
        one_line(server.run("status"))
        == "status: the last offsite backup failed: no answer from the restic repository"
    )


def test_messages_never_show_the_password_in_the_repositorys_url(server):
    (server.app_dir / ".env").write_text(
        "RESTIC_REPOSITORY=rest:https://shop:s3cret@backup.example.net/shop\nRESTIC_PASSWORD=x\n"
    )
    server.rules = [*BACKUP_RULES, (r"cat config$", "Fatal: wrong password or no key found\n", 12)]
    reason = one_line(server.run("backup"))
    assert reason.endswith("does not open the repository at rest:https://***@backup.example.net/shop")
    assert "s3cret" not in (server.app_dir / "backups" / ".offsite-failed").read_text()
