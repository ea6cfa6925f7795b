"""server.sh's backup and restore against the fake docker of
tests/fakeserver.py: a backup is a dump and an archive of the uploaded files
(the media volume), pruned together; a restore checks both whole before
anything changes, puts the files back after the rows, and uploads join the
backups only once restored; a deploy's release step dumps the database
before its migrations, for scripts/rollback --with-data."""

from __future__ import annotations

import io
import re
import subprocess
import tarfile

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


def backups(server) -> list[str]:
    return sorted(path.name for path in (server.app_dir / "backups").iterdir() if path.is_file())


def tar_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


# The one-off containers of the app's image that read and replace the media volume.
ARCHIVE = "compose --project-name shop run --rm --no-deps -T --entrypoint tar app -C /srv/media"
UNPACK = "compose --project-name shop run --rm --no-deps -T --entrypoint sh app -c"


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


# --- Uploaded files ---


def test_a_backup_is_the_dump_and_the_uploaded_files_beside_it(server):
    server.rules = [*RESTORE_RULES, (re.escape(ARCHIVE), "TAR of media", 0)]
    result = server.run("backup")
    assert result.returncode == 0, result.stderr
    [dump, media] = backups(server)
    assert re.fullmatch(r"shop-\d{8}T\d{6}Z\.dump", dump)
    assert media == dump.removesuffix(".dump") + ".media.tar"
    assert (server.app_dir / "backups" / media).read_text() == "TAR of media"
    [archive] = [" ".join(call) for call in server.calls() if "--entrypoint" in call]
    assert archive == f"{ARCHIVE} --exclude ./.restoring -cf - ."
    # scripts/backup reads the dump's path on the last line, and finds the archive beside it.
    assert result.stdout.splitlines()[-1] == f"{server.app_dir}/backups/{dump}"
    assert f"uploaded files {server.app_dir}/backups/{media}" in result.stdout


def test_a_failed_archive_leaves_no_partial_file_and_says_so(server):
    server.rules = [*RESTORE_RULES, (re.escape(ARCHIVE), "half", 1)]
    reason = one_line(server.run("backup"))
    assert reason == (
        "backup: archiving the uploaded files (the media volume) failed: only the database's dump was made"
    )
    [dump] = backups(server)
    assert dump.endswith(".dump")


def test_old_archives_go_with_their_dumps(server):
    (server.app_dir / "backups").mkdir()
    for day in ("01", "02", "03"):
        for suffix in (".dump", ".media.tar"):
            (server.app_dir / "backups" / f"shop-202601{day}T000000Z{suffix}").write_text("old")
    server.rules = [*RESTORE_RULES, (re.escape(ARCHIVE), "new", 0)]
    result = server.call("BACKUP_KEEP=2 cmd_backup")
    assert result.returncode == 0, result.stderr
    kept = backups(server)
    assert len(kept) == 4 and kept[:2] == ["shop-20260103T000000Z.dump", "shop-20260103T000000Z.media.tar"]


def upload_pair(server, name: str, media: bytes) -> None:
    upload(server, f"{name}.dump")
    (server.app_dir / "backups" / "uploaded" / f"{name}.media.tar").write_bytes(media)


def test_a_restore_puts_the_uploaded_files_back_after_the_rows(server):
    upload_pair(server, "good", tar_of({"uploads/a.png": b"\x89PNG"}))
    result = restore_with(server, "uploaded/good.dump", check=0, restore=0)
    assert result.returncode == 0, result.stderr
    calls = [" ".join(call) for call in server.calls()]
    rows = next(i for i, call in enumerate(calls) if "--clean" in call)
    [files] = [i for i, call in enumerate(calls) if call.startswith(UNPACK)]
    assert files > rows, calls
    assert "replacing the uploaded files with good.media.tar" in result.stdout
    # The upload joins the backups as a pair, beside the safety backup's pair.
    names = backups(server)
    assert len(names) == 4, names
    stem = names[2].removesuffix(".dump")
    assert stem.endswith("-uploaded") and names[3] == stem + ".media.tar", names
    assert not list((server.app_dir / "backups" / "uploaded").iterdir())


def test_a_truncated_archive_of_uploaded_files_changes_nothing(server):
    whole = tar_of({"uploads/a.bin": b"x" * 4000})
    upload_pair(server, "cut", whole[:1500])
    reason = one_line(restore_with(server, "uploaded/cut.dump", check=0, restore=0))
    assert reason == (
        "restore: cut.media.tar is not a whole tar archive (truncated or another format): nothing changed"
    )
    calls = [" ".join(call) for call in server.calls()]
    assert not any("pg_dump" in call or "--clean" in call or "--entrypoint" in call for call in calls)
    assert list((server.app_dir / "backups" / "uploaded").iterdir()) == [], "the refused pair is removed"


def test_a_dump_without_an_archive_leaves_the_uploaded_files_alone(server):
    upload(server, "rows-only.dump")
    result = restore_with(server, "uploaded/rows-only.dump", check=0, restore=0)
    assert result.returncode == 0, result.stderr
    assert "no rows-only.media.tar beside it: the uploaded files stay as they are" in result.stdout
    assert not any(" ".join(call).startswith(UNPACK) for call in server.calls())


def test_the_unpacking_replaces_the_volumes_files_whole(server, tmp_path):
    """The script the one-off container runs, run here on a directory that
    stands for the media volume."""
    upload_pair(server, "good", tar_of({"uploads/kept.txt": b"from the backup"}))
    restore_with(server, "uploaded/good.dump", check=0, restore=0)
    [call] = [call for call in server.calls() if " ".join(call).startswith(UNPACK)]
    script, name, target = call[call.index("-c") + 1 :]
    assert (name, target) == ("sh", "/srv/media")
    volume = tmp_path / "volume"
    (volume / "uploads").mkdir(parents=True)
    (volume / "uploads" / "since.txt").write_text("uploaded after the backup")
    (volume / "uploads" / "kept.txt").write_text("changed since")
    archive = tar_of({"uploads/kept.txt": b"from the backup", "uploads/b.txt": b"b"})
    result = subprocess.run(["sh", "-c", script, "sh", str(volume)], input=archive, capture_output=True)
    assert result.returncode == 0, result.stderr
    files = {str(path.relative_to(volume)): path.read_bytes() for path in volume.rglob("*") if path.is_file()}
    assert files == {"uploads/kept.txt": b"from the backup", "uploads/b.txt": b"b"}
    assert not (volume / ".restoring").exists()
    # A broken stream fails before the old files are touched.
    broken = subprocess.run(["sh", "-c", script, "sh", str(volume)], input=archive[:700], capture_output=True)
    assert broken.returncode != 0
    assert (volume / "uploads" / "b.txt").read_bytes() == b"b"


# --- The dump before a deploy's migrations ---

RELEASE_STEP_RULES = [
    *RESTORE_RULES,
    (r"service=migrate", "mig1\n", 0),
    (r"^wait mig1$", "0\n", 0),
]


def test_a_release_step_dumps_the_database_before_the_migrations(server):
    server.rules = RELEASE_STEP_RULES
    result = server.call("release_step B A")
    assert result.returncode == 0, result.stderr
    [dump] = dumps(server)
    assert re.fullmatch(r"shop-\d{8}T\d{6}Z-before-migrations-of-B\.dump", dump)
    assert (server.app_dir / "backups" / dump).read_text() == "PGDMP safety\n"
    calls = [" ".join(call) for call in server.calls()]
    dumped = next(i for i, call in enumerate(calls) if "pg_dump" in call)
    migrated = next(i for i, call in enumerate(calls) if call.endswith("up --detach --no-build migrate"))
    assert dumped < migrated, calls
    assert f"for scripts/rollback --with-data: backups/{dump}" in result.stdout


def test_the_dump_before_the_migrations_can_be_turned_off(server):
    with (server.app_dir / ".env").open("a") as env:
        env.write("PRE_MIGRATION_BACKUP=off\n")
    server.rules = RELEASE_STEP_RULES
    assert server.call("release_step B A").returncode == 0
    assert dumps(server) == []
    assert not any("pg_dump" in " ".join(call) for call in server.calls())


def test_a_first_release_step_has_nothing_to_roll_back_to_and_no_dump(server):
    server.rules = RELEASE_STEP_RULES
    assert server.call("release_step B ''").returncode == 0
    assert dumps(server) == []
