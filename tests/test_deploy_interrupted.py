"""A deploy cut short, for real: the scenario of tests/test_deploy.py goes on
here, on the same VPS (tests/deployscenario.py), from the Flask site that
its restore step left serving release relB (and tests/test_deploy_images.py
left on a newer nginx build).

The laptop's side of a deploy may die at the worst moment, while both
releases answer and nginx is about to drop the old one: the server's run goes
on detached and ends with one release serving, under load with no failed
request. A run killed on the server itself leaves two releases serving:
scripts/status fails, and the next deploy converges on one.

  ssh killed        the SSH client killed mid-switch, deploying relA
  ctrl-c            Ctrl-C mid-switch, deploying relB back
  repaired          the server's run killed mid-switch; the next deploy
                    converges

tests/test_deploy_with_jobs.py goes on from there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

import pytest

from conftest import like_a_terminal
from siteload import Load
from vpshost import (
    Scenario,
    Vps,
    reason,
    run,
    script,
    site_release,
    stop_moment,
    switch_under_load,
)

pytestmark = pytest.mark.docker

# The most dangerous step: the new release serves, the old one still does.
DANGER = "for nginx to resolve app again"


@pytest.fixture(scope="module")
def project(deploy_project):
    return deploy_project


@pytest.fixture(scope="module")
def scenario(deploy_scenario) -> Scenario:
    return deploy_scenario


def cut_short(
    vps: Vps, project, args: list[str], blow: Callable[[subprocess.Popen], None]
) -> subprocess.CompletedProcess:
    """Run scripts/ARGS, and BLOW once it reaches DANGER."""
    root, _ = project
    env = {**os.environ, "DEPLOY_SSH_CONFIG": str(vps.ssh_config)}
    process = subprocess.Popen(
        [str(root / "scripts" / args[0]), *args[1:]], cwd=root, env=env, text=True, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=like_a_terminal,
    )  # fmt: skip
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("--> waiting") and DANGER in line:
            blow(process)
    stderr = process.stderr.read()
    process.wait(timeout=60)
    output = "".join(lines)
    assert any(DANGER in line for line in lines), f"the deploy never reached the switch:\n{output}{stderr}"
    return subprocess.CompletedProcess(process.args, process.returncode, output, stderr)


def server_run(vps: Vps, project) -> str:
    """The log of the newest detached run, once it has ended (the deploy
    lock is free again)."""
    _, slug = project
    deadline = time.time() + 300
    while vps.ssh("deploy", f"flock --nonblock /srv/{slug}/.deploy.lock true", check=False).returncode != 0:
        assert time.time() < deadline, "the server's run still holds the deploy lock after 5 minutes"
        time.sleep(1)
    return vps.ssh("deploy", f'cd /srv/{slug}/deploys && cat "$(ls -1 *.log | tail -n 1)"').stdout


def serving(vps: Vps, project) -> list[str]:
    """The release of each running app container."""
    _, slug = project
    filters = f"--filter label=com.docker.compose.project={slug}"
    filters += " --filter label=com.docker.compose.service=app"
    images = vps.ssh("deploy", f"docker ps {filters} --format '{{{{.Image}}}}'").stdout.split()
    return sorted(image.split(":", 1)[1] for image in images)


def survives(vps: Vps, project, old: str, new: str, args: list[str], blow) -> subprocess.CompletedProcess:
    """Deploy from OLD to NEW under load, cut short by BLOW: the server's run
    finishes the switch with no failed request, and NEW alone serves."""
    with Load(vps.port(80), vps.nginx_errors) as load:
        started = time.time()
        result = cut_short(vps, project, args, blow)
        log = server_run(vps, project)
        stopped = stop_moment(subprocess.CompletedProcess(args, 0, log, ""), old, started)
        load.run_until(stopped + Load.AROUND + 0.5)
    load.check(stopped)
    assert result.returncode != 0, result.stdout
    assert log.rstrip().endswith(f"--> {new} serves"), log
    assert serving(vps, project) == [new]
    assert {site_release(vps) for _ in range(10)} == {new}
    status = script(vps, project, "status", "vps")
    assert f"release   {new}" in status.stdout and f"{new} serves" in status.stdout
    return result


def kill_ssh(vps: Vps) -> Callable[[subprocess.Popen], None]:
    # Every ssh process of the deploy: its session and the shared connection.
    return lambda _: run("pkill", "-KILL", "-f", f"ssh .*-F {vps.ssh_config}", check=False)


def test_killing_the_ssh_client_mid_switch_leaves_one_release(vps, project, scenario):
    """Starts from relB serving; relA's image is uploaded again (pruned)."""
    scenario.starts_after("images refreshed")
    result = survives(vps, project, scenario.rel_b, "relA", ["deploy", "vps", "relA"], kill_ssh(vps))
    assert "lost the SSH connection" in reason(result), result.stderr
    assert "goes on there: scripts/status vps shows how it ended" in reason(result)
    scenario.done.append("ssh killed")


def test_ctrl_c_mid_switch_leaves_one_release(vps, project, scenario):
    """Starts from relA serving; relB's image is still on the server."""
    scenario.starts_after("ssh killed")
    release_b = scenario.rel_b

    def ctrl_c(process: subprocess.Popen) -> None:
        # What a terminal does: SIGINT to the whole foreground process group.
        os.killpg(process.pid, signal.SIGINT)

    result = survives(vps, project, "relA", release_b, ["deploy", "vps", release_b], ctrl_c)
    assert reason(result).startswith("deploy: interrupted here; what the server had begun goes on there")
    scenario.done.append("ctrl-c")


def test_a_switch_killed_on_the_server_is_repaired_by_the_next_deploy(vps, project, scenario):
    """Starts from relB serving. The server's run dies mid-switch (as in a
    reboot): two releases serve until the next deploy."""
    scenario.starts_after("ctrl-c")
    release_b = scenario.rel_b

    def kill_the_run(_: subprocess.Popen) -> None:
        vps.ssh("root", "pkill -KILL -f 'server.sh (apply|go-live) '", check=False)

    result = cut_short(vps, project, ["deploy", "vps", "relA"], kill_the_run)
    assert result.returncode != 0
    server_run(vps, project)
    assert serving(vps, project) == sorted(["relA", release_b])
    status = script(vps, project, "status", "vps", check=False)
    assert status.returncode != 0
    assert "app containers of several releases serve at once" in reason(status), status.stderr

    result, _ = switch_under_load("relA", vps, project, "deploy", "vps", "relA")
    assert "a switch cut short left 1 container(s) of another release serving beside relA" in result.stdout
    assert serving(vps, project) == ["relA"]
    assert script(vps, project, "status", "vps").returncode == 0
    scenario.done.append("repaired")
