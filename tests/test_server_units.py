"""The server side of the deploy toolkit, unit by unit (no Docker engine):
server.sh's commands and functions against the fake docker of
tests/fakeserver.py, checking what they print, return and ask docker to do.
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd

import pytest

from fakeserver import SWITCH, Server, one_line


@pytest.fixture
def server(tmp_path) -> Server:
    return Server(tmp_path)


def test_sourcing_runs_nothing(server):
    result = server.call(
        "type cmd_deploy cmd_rollback switch prune_images put_file >/dev/null && echo defined"
    )
    assert result.stdout == "defined\n", result.stderr
    assert server.calls() == []


@pytest.mark.parametrize("release", ["relA", "0123456789ab", "v1.2.3-rc_1", "a" * 128])
def test_release_ids_that_are_image_tags_are_valid(server, release):
    assert server.call(f"valid_release '{release}'").returncode == 0


@pytest.mark.parametrize("release", ["", "-x", ".x", "bad id", "a/b", "x:y", "a" * 129, "é"])
def test_other_release_ids_are_refused_before_docker_runs(server, release):
    assert server.call(f"valid_release '{release}'").returncode == 1
    reason = one_line(server.run("deploy", release))
    if release.startswith("-"):
        assert reason == f"deploy: unknown option {release}"
    else:
        assert reason == f"deploy: not a release id: '{release}'"
    assert server.calls() == []


def test_deploy_and_rollback_options_are_checked(server):
    assert one_line(server.run("deploy", "relA", "--keep", "0")).endswith(
        "--keep needs a number of releases, at least 1"
    )
    assert one_line(server.run("deploy", "relA", "--health-timeout", "soon")).endswith(
        "--health-timeout needs a number of seconds"
    )
    assert one_line(server.run("rollback", "--bogus")) == "rollback: unknown option --bogus"
    assert one_line(server.run("deploy", "relA", "relB")) == "deploy: one RELEASE only"
    assert one_line(server.run("deploy", "relA", "--keep")) == "deploy: --keep needs a value"


def test_a_held_deploy_lock_refuses_a_second_deploy(server):
    server.releases_log(("deploy", "relA"), ("deploy", "relB"))
    server.rules = [(r"^image inspect", "[]", 0)]
    with open(server.app_dir / ".deploy.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for command in (("deploy", "relA"), ("rollback", "relA")):
            reason = one_line(server.run(*command))
            assert reason == f"{command[0]}: another deploy, rollback or restore is running on this server"
    assert not any(call[0] == "compose" for call in server.calls())


def test_a_compose_change_to_db_is_refused(server):
    server.rules = [
        (r"^image inspect", "[]", 0),
        (r"service=db .*status=running", "dbcontainer\n", 0),
        (r"^inspect .*config-hash.* dbcontainer$", "hash-running\n", 0),
        (r"^compose .*config --hash db$", "db hash-wanted\n", 0),
    ]
    reason = one_line(server.run("deploy", "relB"))
    assert reason.startswith(
        "deploy: the compose files change the db service, and deploy never restarts the database"
    )
    assert "scripts/upgrade-postgres" in reason
    assert not any("up" in call for call in server.calls()), "deploy started something anyway"


def test_unchanged_db_lets_deploy_go_on(server):
    server.rules = [
        (r"^image inspect", "[]", 0),
        (r"service=db .*status=running", "dbcontainer\n", 0),
        (r"^inspect .*config-hash.* dbcontainer$", "same\n", 0),
        (r"^compose .*config --hash db$", "db same\n", 0),
    ]
    result = server.run("deploy", "relB")
    assert result.returncode == 0, result.stderr
    assert "starting the stack with release relB" in result.stdout
    assert server.release() == "relB"


def test_pruning_keeps_the_current_release_and_the_newest_distinct_ones(server):
    server.releases_log(("deploy", "A"), ("deploy", "B"), ("deploy", "C"), ("deploy", "D"), ("rollback", "C"))
    server.rules = [(r"^image ls shop --format", "A\nB\nC\nD\nE\n", 0)]
    result = server.call("prune_images 3")
    assert result.returncode == 0, result.stderr
    removed = sorted(call[2] for call in server.calls() if call[:2] == ["image", "rm"])
    assert removed == ["shop:A", "shop:E"]
    assert "kept the images of 3 release(s) for rollback (C D B), removed 2" in result.stdout
    assert server.call("kept_releases 1").stdout == "C\n"


def test_pruning_recreates_a_migrate_container_that_pins_an_old_image(server):
    server.releases_log(("deploy", "A"), ("deploy", "B"))
    server.rules = [
        (r"service=migrate .*status=exited", "migrate1\n", 0),
        (r"^inspect --format \{\{\.Config\.Image\}\} migrate1$", "shop:A\n", 0),
    ]
    assert server.call("prune_images 5").returncode == 0
    assert [
        "compose",
        "--project-name",
        "shop",
        "up",
        "--no-start",
        "--no-build",
        "migrate",
    ] in server.calls()


def test_rolling_back_twice_returns_to_the_start(server):
    server.releases_log(("deploy", "A"), ("deploy", "B"), ("deploy", "C"))
    server.rules = [(r"^image inspect", "[]", 0)]
    first = server.run("rollback")
    assert first.returncode == 0, first.stderr
    assert "rolling back from C to B" in first.stdout
    assert server.release() == "B"
    assert not any(call[-1] == "migrate" for call in server.calls()), "a rollback runs no release step"

    second = server.run("rollback")
    assert second.returncode == 0, second.stderr
    assert "rolling back from B to C" in second.stdout
    assert server.release() == "C"
    lines = (server.app_dir / "releases.log").read_text().splitlines()
    assert [line.split("\t")[1:3] for line in lines[-2:]] == [["rollback", "B"], ["rollback", "C"]]


def test_rollback_needs_an_earlier_release_and_its_image(server):
    server.releases_log(("deploy", "A"))
    assert one_line(server.run("rollback")) == (
        f"rollback: no earlier release in {server.app_dir}/releases.log to roll back to"
    )
    server.releases_log(("deploy", "A"), ("deploy", "B"))
    server.rules = [(r"^image inspect", "", 1)]
    assert "the image of A is no longer on the server" in one_line(server.run("rollback"))
    assert one_line(server.run("rollback", "B")) == "rollback: B is already the current release"


def test_the_switch_keeps_new_containers_off_nginx_until_healthy(server):
    server.releases_log(("deploy", "A"))
    server.rules = [
        *SWITCH,
        (r"service=edge .*status=running", "edge1\n", 0),
        (r"^inspect --format \{\{range .*Networks.* new1$", "shop_web shop_backend \n", 0),
        (r"^inspect --format \{\{range .*Networks.* edge1$", "shop_web \n", 0),
        (r"^inspect --format \{\{\.State\.Status", "running healthy 0\n", 0),
        (r"^inspect --format \{\{\.Name\}\} new1$", "/shop-app-2\n", 0),
    ]
    result = server.run("deploy", "B")
    assert result.returncode == 0, result.stderr
    calls = [" ".join(call) for call in server.calls()]
    order = [
        calls.index("network disconnect shop_web new1"),
        calls.index("start new1"),
        calls.index("network connect --alias app --alias shop-app-2 shop_web new1"),
        calls.index("stop old1"),
        calls.index("rm old1"),
    ]
    assert order == sorted(order), calls
    assert "network disconnect shop_backend new1" not in calls, "only nginx's networks are left"
    assert any("up --detach --no-build migrate" in call for call in calls), "a deploy runs the release step"
    stopped = [
        line for line in result.stdout.splitlines() if line.startswith("    stopped 1 container(s) of A at ")
    ]
    assert len(stopped) == 1 and stopped[0].endswith("Z"), result.stdout
    assert server.release() == "B"


def test_a_release_that_never_turns_healthy_is_removed_and_the_old_one_stays(server):
    server.releases_log(("deploy", "A"))
    server.rules = [
        *SWITCH,
        (r"^inspect --format \{\{\.State\.Status", "running unhealthy 0\n", 0),
        (r"^logs --tail 15 new1$", "Traceback: boom\n", 0),
    ]
    result = server.run("deploy", "B")
    reason = one_line(result)
    assert reason == (
        "deploy: release B never turned healthy (its healthcheck fails);"
        " it got no traffic, and A keeps serving"
    )
    assert "        Traceback: boom" in result.stdout
    calls = [" ".join(call) for call in server.calls()]
    assert "rm --force new1" in calls and "stop old1" not in calls
    assert server.release() == "A"


def test_put_file_reports_changed_then_ok(server, tmp_path):
    owner = f"{pwd.getpwuid(os.getuid()).pw_name}:{grp.getgrgid(os.getgid()).gr_name}"
    target = tmp_path / "etc" / "app.conf"
    script = f"if put_file {target} 640 {owner} <<<'a=1'; then echo 0; else echo 1; fi"
    assert server.call(script).stdout == "0\n", "a new file is written"
    assert server.call(script).stdout == "1\n", "the same content again changes nothing"
    target.chmod(0o644)
    assert server.call(script).stdout == "0\n", "a wrong mode is put right"
    assert oct(target.stat().st_mode & 0o777) == "0o640"
    assert server.call(script.replace("a=1", "a=2")).stdout == "0\n"
    assert target.read_text() == "a=2\n"


def test_status_names_every_problem_on_one_line(server):
    server.releases_log(("deploy", "A"), ("deploy", "B"))
    server.rules = [
        (r"^compose .*config --services$", "db\nmigrate\napp\nnginx\n", 0),
        (r"service=app .*status=running", "app1\n", 0),
        (r"service=nginx .*status=running", "nginx1\n", 0),
        (r"Health\.Status.* app1$", "unhealthy\n", 0),
        (r"Health\.Status.* nginx1$", "healthy\n", 0),
    ]
    result = server.run("status")
    assert one_line(result) == "status: db is not running; app is unhealthy"
    assert "release   B (went live 2026-01-02T00:00:00Z by deploy)" in result.stdout
    assert "rollback  A" in result.stdout
    assert "https     off: warning, production serves plain HTTP" in result.stdout


def test_status_fails_when_the_certificate_has_under_14_days_left(server):
    server.releases_log(("deploy", "A"))
    server.rules = [
        (r"^compose .*config --services$", "certbot\n", 0),
        (r"service=certbot .*status=running", "certbot1\n", 0),
    ]
    expiry = server.app_dir / "scripts" / "cert-expiry"
    expiry.write_text("#!/bin/sh\necho 'shop.example: expires 2026-12-10 (10 days), issued by R12'\nexit 1\n")
    expiry.chmod(0o755)
    result = server.run("status")
    assert "https     shop.example: expires 2026-12-10 (10 days), issued by R12" in result.stdout
    assert one_line(result) == (
        "status: the certificate needs attention: shop.example: expires 2026-12-10 (10 days), issued by R12"
    )


def test_command_line_mistakes_exit_2_and_other_failures_1(server):
    for args in (
        ("deploy", "relA", "--keep", "0"),
        ("rollback", "--bogus"),
        ("deploy", "bad id"),
        ("bogus",),
    ):
        result = server.run(*args)
        assert result.returncode == 2, (args, result.stderr)
    server.releases_log(("deploy", "A"))
    assert server.run("rollback").returncode == 1


def test_rolling_back_to_a_release_never_deployed_says_so(server):
    server.releases_log(("deploy", "A"), ("deploy", "B"))
    server.rules = [(r"^image inspect", "", 1)]
    assert one_line(server.run("rollback", "deadbeef")) == (
        "rollback: deadbeef was never deployed here (scripts/status shows the releases that were)"
    )
    assert "is no longer on the server" in one_line(server.run("rollback", "A"))


def test_status_before_the_first_deploy_says_what_to_do(server):
    (server.app_dir / "compose.yaml").unlink()
    assert one_line(server.run("status")) == "status: nothing deployed on this server yet: run scripts/deploy"
    assert server.calls() == []


def test_a_switch_cut_short_converges_on_the_current_release(server):
    """Two releases' containers serve (a deploy killed mid-switch): the one
    .env names stays, the other stops; one release alone changes nothing."""
    server.releases_log(("deploy", "A"), ("deploy", "B"))
    both = [
        (r"service=app .*status=running", "old1\nnew1\n", 0),
        (r"^inspect --format \{\{\.Config\.Image\}\} old1$", "shop:A\n", 0),
        (r"^inspect --format \{\{\.Config\.Image\}\} new1$", "shop:B\n", 0),
    ]
    server.rules = both
    result = server.call("converge B")
    assert result.returncode == 0, result.stderr
    calls = [" ".join(call) for call in server.calls()]
    assert "stop old1" in calls and "rm old1" in calls, calls
    assert not any(call.endswith("new1") and call.split()[0] in {"stop", "rm"} for call in calls), calls

    server.rules = [(r"service=app .*status=running", "new1\n", 0), both[2]]
    assert server.call("converge B").returncode == 0
    assert not any(call[0] in {"stop", "rm"} for call in server.calls())


def test_status_fails_when_two_releases_serve(server):
    server.releases_log(("deploy", "A"), ("deploy", "B"))
    server.rules = [
        (r"^compose .*config --services$", "app\n", 0),
        (r"service=app .*status=running", "app1\napp2\n", 0),
        (r"Health\.Status.* app[12]$", "healthy\n", 0),
        (r"^inspect --format \{\{\.Config\.Image\}\} app1$", "shop:A\n", 0),
        (r"^inspect --format \{\{\.Config\.Image\}\} app2$", "shop:B\n", 0),
    ]
    result = server.run("status")
    assert one_line(result) == (
        "status: app containers of several releases serve at once"
        " (the next deploy or rollback keeps only one)"
    )
    assert "releases  A, B serve at once" in result.stdout


def test_refresh_images_restarts_the_database_only_when_asked(server):
    server.releases_log(("deploy", "A"))
    server.rules = [
        (r"^compose .*config --images$", "postgres:18\n", 0),
        (r"^compose .*config --services$", "db\n", 0),
        (r"^pull --quiet postgres:18$", "", 0),
        (r"service=db .*status=running", "db1\n", 0),
        (r"^inspect --format \{\{\.Config\.Image\}\} db1$", "postgres:18\n", 0),
        (r"^inspect --format \{\{\.Image\}\} db1$", "sha256:old\n", 0),
        (r"^image inspect --format \{\{\.Id\}\} postgres:18$", "sha256:new\n", 0),
    ]
    restart = "compose --project-name shop up --detach --wait --no-deps --no-build db"
    result = server.run("refresh-images")
    assert result.returncode == 0, result.stderr
    assert "a newer postgres:18 build is here: scripts/refresh-images --postgres applies it" in result.stdout
    assert restart not in [" ".join(call) for call in server.calls()]

    result = server.run("refresh-images", "--postgres")
    assert result.returncode == 0, result.stderr
    assert "restarting the database on the newer postgres:18 build: a few seconds without it" in result.stdout
    assert restart in [" ".join(call) for call in server.calls()]


def test_each_release_keeps_its_sbom_until_its_image_goes(server):
    server.releases_log(("deploy", "A"), ("deploy", "B"), ("deploy", "C"))
    sbom = server.app_dir / "sbom.cdx.json"
    for release in ("A", "B", "C"):
        sbom.write_text(f'{{"components": [{{"purl": "pkg:pypi/x@{release}"}}]}}\n')
        assert server.call(f"keep_sbom deploy {release}").returncode == 0
    assert server.call("keep_sbom rollback B").returncode == 0
    assert "x@B" in sbom.read_text(), "a rollback puts its release's SBOM back"
    assert server.call("prune_images 2").returncode == 0
    assert sorted(path.name for path in (server.app_dir / "sboms").iterdir()) == ["B.cdx.json", "C.cdx.json"]
    server.rules = [(r"^compose .*config --services$", "", 0)]
    assert "sbom      sboms/C.cdx.json (1 packages)" in server.run("status").stdout
