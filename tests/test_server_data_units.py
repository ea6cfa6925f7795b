"""server.sh's restore against the fake docker of tests/fakeserver.py: the
dump is checked whole before anything changes, and uploads join the backups
only once restored."""

from __future__ import annotations

import subprocess

import pytest

from fakeserver import Server, one_line


@pytest.fixture
def server(tmp_path) -> Server:
    return Server(tmp_path)


RESTORE_RULES = [
    (r"service=db .*status=running", "db1\n", 0),
    (r"exec -T db sh -c pg_dump", "PGDMP safety\n", 0),
]


def restore_with(server, dump: str, *, check: int, restore: int) -> subprocess.CompletedProcess:
    server.rules = [
        (r"exec -T db pg_restore --file=/dev/null$", "", check),
        (r"exec -T -e PGOPTIONS=.* db sh -c pg_restore", "", restore),
        *RESTORE_RULES,
    ]
    return server.run("restore", dump)


def upload(server, name: str) -> None:
    (server.app_dir / "backups" / "uploaded").mkdir(parents=True, exist_ok=True)
    (server.app_dir / "backups" / "uploaded" / name).write_text("PGDMP uploaded\n")


def dumps(server) -> list[str]:
    return sorted(path.name for path in (server.app_dir / "backups").glob("*.dump"))


def test_restore_checks_the_whole_dump_before_anything_else(server):
    upload(server, "cut.dump")
    reason = one_line(restore_with(server, "uploaded/cut.dump", check=1, restore=0))
    assert reason == (
        "restore: cut.dump is not a whole pg_dump custom-format archive (truncated or another format):"
        " nothing changed"
    )
    calls = [" ".join(call) for call in server.calls()]
    assert not any("pg_dump" in call or "--clean" in call for call in calls), "no safety dump, no restore"
    assert not (server.app_dir / "backups" / "uploaded" / "cut.dump").exists(), "a refused upload is removed"
    assert dumps(server) == [], "and never counts as a backup"


def test_a_failed_restore_keeps_the_safety_dump_and_drops_the_upload(server):
    upload(server, "bad.dump")
    reason = one_line(restore_with(server, "uploaded/bad.dump", check=0, restore=1))
    assert reason == "restore: pg_restore failed: the database is unchanged"
    [safety] = dumps(server)
    assert safety.startswith("shop-") and safety.endswith("-pre-restore.dump")
    assert (server.app_dir / "backups" / safety).read_text() == "PGDMP safety\n"
    assert not (server.app_dir / "backups" / "uploaded" / "bad.dump").exists()


def test_a_restored_upload_joins_the_backups(server):
    upload(server, "good.dump")
    result = restore_with(server, "uploaded/good.dump", check=0, restore=0)
    assert result.returncode == 0, result.stderr
    assert "restored good.dump" in result.stdout
    names = dumps(server)
    assert len(names) == 2 and names[0].endswith("-pre-restore.dump") and names[1].endswith("-uploaded.dump")
    assert not list((server.app_dir / "backups" / "uploaded").iterdir())


def test_a_dump_already_on_the_server_stays_after_a_refused_restore(server):
    (server.app_dir / "backups").mkdir()
    (server.app_dir / "backups" / "shop-20260101T000000Z.dump").write_text("PGDMP old\n")
    one_line(restore_with(server, "shop-20260101T000000Z.dump", check=1, restore=0))
    assert dumps(server) == ["shop-20260101T000000Z.dump"]
