"""The workers and the scheduler move with each release (server/jobs.sh,
issue 13 part 2), unit by unit against tests/fakeserver.py's fake docker:
the order of what the switch asks docker to do, and what it does when the
new workers fail or a switch was cut short. The whole scenario, with jobs
enqueued across a real deploy and rollback, is tests/test_deploy_with_jobs.py.
"""

from __future__ import annotations

import shutil

import pytest

from fakeserver import SCRIPTS, Server, one_line
from fakeserver import SWITCH as APP_SWITCH

# A switch from A to B: app old1 -> new1 (fakeserver.SWITCH), worker w-old1 -> w-new1.
SWITCH = [
    *APP_SWITCH,
    (r"service=worker .*status=running", "w-old1\n", 0),
    (r"service=worker .*status=created", "w-new1\n", 0),
]
HEALTHY = (r"^inspect --format \{\{\.State\.Status", "running healthy 0\n", 0)


@pytest.fixture
def server(tmp_path) -> Server:
    server = Server(tmp_path)
    # What copier renders when the project has background jobs.
    shutil.copy2(
        SCRIPTS / "server" / "{% if background_jobs %}jobs.sh{% endif %}",
        server.app_dir / "scripts" / "server" / "jobs.sh",
    )
    return server


def joined(server: Server) -> list[str]:
    return [" ".join(call) for call in server.calls()]


def test_new_workers_start_beside_the_old_which_then_stop_and_the_scheduler_is_replaced(server):
    server.releases_log(("deploy", "A"))
    server.rules = [*SWITCH, HEALTHY]
    result = server.run("deploy", "B")
    assert result.returncode == 0, result.stderr
    calls = joined(server)
    create = next(i for i, call in enumerate(calls) if "--scale worker=2 worker" in call)
    scheduler = next(i for i, call in enumerate(calls) if call.endswith("--no-deps --no-build scheduler"))
    order = [
        calls.index("stop old1"),  # the app switched first
        create,
        calls.index("start w-new1"),
        calls.index("stop w-old1"),
        calls.index("rm w-old1"),
        scheduler,
    ]
    assert order == sorted(order), calls
    assert "--no-start --no-recreate --no-build" in calls[create]
    assert "stopping the workers of A: they finish the jobs they run first" in result.stdout
    assert "replacing the scheduler: the old one stops before that of B starts" in result.stdout
    assert server.release() == "B"


def test_a_rollback_brings_the_old_releases_workers_back(server):
    server.releases_log(("deploy", "A"), ("deploy", "B"))
    server.rules = [*SWITCH, HEALTHY]
    result = server.run("rollback")
    assert result.returncode == 0, result.stderr
    calls = joined(server)
    assert calls.index("start w-new1") < calls.index("stop w-old1"), calls
    assert "starting 1 worker(s) of A beside those of B" in result.stdout
    assert server.release() == "A"


def test_workers_that_never_turn_healthy_are_removed_and_the_old_ones_keep_the_jobs(server):
    server.releases_log(("deploy", "A"))
    server.rules = [
        *SWITCH,
        (r"^inspect --format \{\{\.State\.Status.* w-new1$", "running unhealthy 0\n", 0),
        HEALTHY,
        (r"^logs --tail 15 w-new1$", "celery: cannot import tasks\n", 0),
    ]
    result = server.run("deploy", "B")
    assert result.returncode == 1
    assert one_line(result) == (
        "deploy: the workers of B never turned healthy (its healthcheck fails): B serves, the workers of A"
        " run the jobs; fix it and deploy again, or scripts/rollback"
    )
    assert "        celery: cannot import tasks" in result.stdout
    calls = joined(server)
    assert "rm --force w-new1" in calls and "stop w-old1" not in calls, calls
    assert not any(call.endswith(" scheduler") for call in calls), "the scheduler stays as it was"


def test_with_no_worker_running_the_deploy_starts_them(server):
    server.releases_log(("deploy", "A"))
    server.rules = [*(rule for rule in SWITCH if "service=worker" not in rule[0]), HEALTHY]
    result = server.run("deploy", "B")
    assert result.returncode == 0, result.stderr
    assert any(call.endswith("up --detach --wait --wait-timeout 180 --no-build worker scheduler")
               for call in joined(server)), joined(server)  # fmt: skip
    assert "starting the workers and the scheduler of B (no worker was running)" in result.stdout


def test_a_switch_cut_short_leaves_the_current_releases_workers_and_no_other_scheduler(server):
    server.releases_log(("deploy", "A"), ("deploy", "B"))
    images = [
        (r"^inspect --format \{\{\.Config\.Image\}\} (w-a|s-a)$", "shop:A\n", 0),
        (r"^inspect --format \{\{\.Config\.Image\}\} w-b$", "shop:B\n", 0),
    ]
    server.rules = [
        (r"service=worker .*status=running", "w-a\nw-b\n", 0),
        (r"service=scheduler .*status=running", "s-a\n", 0),
        *images,
    ]
    result = server.call("converge_jobs B")
    assert result.returncode == 0, result.stderr
    calls = joined(server)
    assert {"stop w-a", "rm w-a", "stop s-a", "rm s-a"} <= set(calls), calls
    assert not any(call.endswith("w-b") and call.split()[0] in {"stop", "rm"} for call in calls), calls

    # The new release's workers never started: the old ones keep the jobs.
    server.rules = [(r"service=worker .*status=running", "w-a\n", 0), *images]
    assert server.call("converge_jobs B").returncode == 0
    assert not any(call.split()[0] in {"stop", "rm"} for call in joined(server))


def test_without_background_jobs_deploys_leave_workers_alone(tmp_path):
    server = Server(tmp_path)
    server.releases_log(("deploy", "A"))
    server.rules = [*SWITCH, HEALTHY]
    result = server.run("deploy", "B")
    assert result.returncode == 0, result.stderr
    assert server.call("type switch_jobs").returncode == 1
    assert not any("worker" in call or "scheduler" in call for call in joined(server))
