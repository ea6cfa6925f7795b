"""The stack on a real Docker Swarm of two nodes (issue 15): two throwaway
VPS containers (tests/vps/Dockerfile, as tests/test_deploy.py uses), on one
network, each set up by scripts/provision, then joined into a swarm over SSH
as docs/scaling.md says. scripts/deploy and scripts/status run against the
manager, whose .env says DEPLOY_MODE=swarm.

One swarm serves the whole module, in steps (each test starts from the swarm
as the one before left it):

  first deploy     relA shipped to the worker through the manager; it
                   serves, app tasks on both nodes; rows written
  rolling update   to relB under load: no request fails
  failing release  `broken` never turns healthy: swarm rolls the app back to
                   relB by itself, under load, no request fails
  scripts/rollback back to relA under load: no request fails
  drain            the worker node drained under load (server.sh drain): its
                   app tasks move to the manager, no request fails; then
                   activated again, no request fails
  backup, restore  the nightly backup's service on the manager; a restore
                   brings the rows back

and the database keeps its rows throughout.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import prepare_images, render
from siteload import Load
from vpshost import Scenario, Vps, build_from, build_release, reason, run, site_release, vps_image

pytestmark = pytest.mark.docker

ROWS = "SELECT count(*) || ' ' || md5(string_agg(id::text, ',' ORDER BY id)) FROM swarm_rows;"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A Flask project, with releases relA, relB and `broken` (healthy never)."""
    suffix = uuid.uuid4().hex[:6]
    root = render(tmp_path_factory.mktemp("swarm") / "project", project_name=f"Swarm Check {suffix}")
    slug = f"swarm_check_{suffix}"
    prepare_images(root)
    for release in ("relA", "relB"):
        build_release(root, f"{slug}:{release}", release)
    build_from(
        tmp_path_factory.mktemp("broken"),
        f"{slug}:broken",
        f"FROM {slug}:relA\nENV APP_RELEASE=broken\n"
        # Fails its health check within seconds of starting.
        "HEALTHCHECK --interval=2s --timeout=2s --start-period=2s --retries=2 "
        'CMD ["python", "-c", "raise SystemExit(1)"]\n',
    )
    yield root, slug
    run("docker", "image", "rm", "--force", *(f"{slug}:{r}" for r in ("relA", "relB", "broken")), check=False)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory, request):
    """The manager and a worker: provisioned, on one network, not yet a swarm."""
    image = vps_image()
    network = f"tt-swarm-{uuid.uuid4().hex[:8]}"
    run("docker", "network", "create", network)
    servers = [Vps(tmp_path_factory.mktemp(name), image) for name in ("manager", "worker")]
    failed_before = request.session.testsfailed
    try:
        for server, name in zip(servers, ("manager", "worker"), strict=True):
            server.start()
            run("docker", "network", "connect", network, server.name)
            # Swarm names each node after its host.
            server.ssh("root", f"hostname {name} && echo {name} > /etc/hostname")
        yield servers
    finally:
        if request.session.testsfailed > failed_before:
            for server in servers:
                print(f"\n--- journal of {server.name} ---\n{server.journal()}")
            # nginx's error lines say why a connection closed without an answer.
            every_service = "for s in $(docker service ls -q); do docker service logs --tail 60 $s; done"
            logs = servers[0].ssh("root", every_service, check=False)
            print(f"\n--- services' logs on the manager ---\n{logs.stdout}{logs.stderr}")
        for server in servers:
            server.stop()
        run("docker", "network", "rm", network, check=False)


def address(server: Vps) -> str:
    """ADDRESS/PREFIX of the node on the swarm's network (the one it was connected to)."""
    networks = json.loads(
        run("docker", "inspect", "--format", "{{json .NetworkSettings.Networks}}", server.name).stdout
    )
    return next(
        f"{settings['IPAddress']}/{settings['IPPrefixLen']}"
        for name, settings in networks.items()
        if name.startswith("tt-swarm-")
    )


@pytest.fixture(scope="module")
def ssh_config(nodes, tmp_path_factory) -> Path:
    """One SSH config naming both nodes, as a laptop's would: manager and
    worker, and the key for the worker's private address (deploys reach it
    through the manager)."""
    config = tmp_path_factory.mktemp("ssh") / "config"
    worker = nodes[1]
    config.write_text(
        "".join(
            server.ssh_config.read_text().replace("Host vps", f"Host {name}")
            for server, name in zip(nodes, ("manager", "worker"), strict=True)
        )
        + f"Host {address(worker).split('/')[0]}\n"
        f"  IdentityFile {worker.key}\n"
        "  IdentitiesOnly yes\n"
        "  LogLevel ERROR\n"
    )
    return config


def swarm_script(ssh_config: Path, project, name: str, *args: str, check: bool = True):
    root, _ = project
    env = {**os.environ, "DEPLOY_SSH_CONFIG": str(ssh_config)}
    result = run(str(root / "scripts" / name), *args, check=False, env=env, cwd=root, input="")
    if check and result.returncode != 0:
        raise AssertionError(
            f"scripts/{name} {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return Scenario()


def on(server: Vps, command: str, user: str = "root", **kwargs) -> str:
    return server.ssh(user, command, **kwargs).stdout.strip()


def rows(manager: Vps, slug: str, sql: str = ROWS) -> str:
    command = (
        f"docker exec -i $(docker ps -q -f label=com.docker.swarm.service.name={slug}_db) "
        """sh -c 'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -q -tA -v ON_ERROR_STOP=1'"""
    )
    return on(manager, command, user="deploy", input=sql)


def app_nodes(manager: Vps, slug: str) -> list[str]:
    tasks = on(
        manager, f"docker service ps --filter desired-state=running --format '{{{{.Node}}}}' {slug}_app"
    )
    return sorted(tasks.split())


def replicas(manager: Vps, slug: str) -> str:
    return on(manager, f"docker service ls --filter name={slug}_app --format '{{{{.Replicas}}}}'")


def test_provision_makes_a_manager_and_joins_a_worker(nodes, ssh_config, project, scenario):
    manager, worker = nodes
    _, slug = project
    # The worker set up as a single server first: provision again with
    # --swarm turns a server into a node.
    with ThreadPoolExecutor(2) as pool:
        results = pool.map(
            lambda args: swarm_script(ssh_config, project, "provision", *args),
            [("--swarm", address(manager), "root@manager"), ("root@worker",)],
        )
        for result in results:
            assert "Docker engine" in result.stdout
    joined = swarm_script(
        ssh_config, project, "provision", "--swarm", address(worker), "--join", "root@manager", "root@worker"
    )
    assert "changed  joined the swarm of" in joined.stdout, joined.stdout
    assert "deploy to its manager: scripts/deploy manager" in joined.stdout
    assert "live-restore false" in joined.stdout
    again = swarm_script(ssh_config, project, "provision", "--swarm", address(manager), "root@manager")
    assert "provision: 0 changed" in again.stdout, again.stdout
    assert on(manager, "docker node ls --format '{{.Hostname}} {{.Status}}'").splitlines() == [
        "manager Ready",
        "worker Ready",
    ]
    assert on(manager, f"grep ^DEPLOY_MODE= /srv/{slug}/.env") == "DEPLOY_MODE=swarm"
    # Deploys check the worker's host key against the one it had when it joined.
    worker_key = on(worker, "cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1]
    known = on(manager, f"cat /srv/{slug}/nodes.known_hosts", user="deploy").splitlines()
    assert f"{address(worker).split('/')[0]} ssh-ed25519 {worker_key}" in known, known
    # The manager runs the timers: the worker's, from its single-server days, are off.
    assert f"changed  {slug}-backup.timer off: the manager runs it" in joined.stdout, joined.stdout
    assert on(worker, f"systemctl is-enabled {slug}-backup.timer", check=False) == "disabled"
    scenario.done.append("swarm")


def test_first_deploy_spreads_the_app_over_both_nodes(nodes, ssh_config, project, scenario):
    scenario.starts_after("swarm")
    manager, _ = nodes
    _, slug = project
    result = swarm_script(ssh_config, project, "deploy", "manager", "relA")
    # Through the manager, to the worker's private address (docs/scaling.md).
    assert f"--> shipping {slug}:relA to node worker ({address(nodes[1]).split('/')[0]})" in result.stdout
    assert "--> release job of relA" in result.stdout
    assert "--> relA serves" in result.stdout
    assert site_release(manager) == "relA"
    assert app_nodes(manager, slug) == ["manager", "worker"]
    rows(
        manager,
        slug,
        "CREATE TABLE swarm_rows (id integer PRIMARY KEY);"
        " INSERT INTO swarm_rows SELECT generate_series(1, 500);",
    )
    scenario.rows = rows(manager, slug)
    assert scenario.rows.startswith("500 ")
    status = swarm_script(ssh_config, project, "status", "manager").stdout
    assert "release   relA" in status
    assert "node      worker: ready, active" in status
    assert any(line.split()[:2] == ["worker", "app"] for line in status.splitlines()), status
    scenario.done.append("first deploy")


def test_a_rolling_update_fails_no_request(nodes, ssh_config, project, scenario):
    scenario.starts_after("first deploy")
    manager, _ = nodes
    _, slug = project
    with Load(manager.port(80), manager.nginx_errors) as load:
        result = swarm_script(ssh_config, project, "deploy", "manager", "relB")
        load.run_until(time.time() + 3)
    load.check(None)
    assert f"--> shipping {slug}:relB to node worker" in result.stdout
    assert "--> relB serves" in result.stdout
    assert load.releases["relB"] > 0 and load.releases["relA"] > 0, load.releases
    assert site_release(manager) == "relB"
    assert rows(manager, slug) == scenario.rows
    scenario.done.append("rolling update")


def test_a_release_that_fails_its_health_check_is_rolled_back_by_swarm(nodes, ssh_config, project, scenario):
    scenario.starts_after("rolling update")
    manager, _ = nodes
    _, slug = project
    with Load(manager.port(80), manager.nginx_errors) as load:
        result = swarm_script(ssh_config, project, "deploy", "manager", "broken", check=False)
    load.check(None)
    assert result.returncode != 0
    assert "release broken did not turn healthy: swarm rolled the app back to relB" in reason(result)
    assert set(load.releases) == {"relB"}, load.releases
    assert site_release(manager) == "relB"
    assert rows(manager, slug) == scenario.rows
    scenario.done.append("rollback")


def test_scripts_rollback_goes_back_to_the_release_before(nodes, ssh_config, project, scenario):
    scenario.starts_after("rollback")
    manager, _ = nodes
    _, slug = project
    with Load(manager.port(80), manager.nginx_errors) as load:
        result = swarm_script(ssh_config, project, "rollback", "manager")
        load.run_until(time.time() + 3)
    load.check(None)
    assert "rolling back from relB to relA" in result.stdout
    assert "--> relA serves" in result.stdout
    assert site_release(manager) == "relA"
    assert "release   relA" in swarm_script(ssh_config, project, "status", "manager").stdout
    assert rows(manager, slug) == scenario.rows
    scenario.done.append("scripts/rollback")


def test_draining_a_node_moves_its_app_tasks_while_requests_succeed(nodes, project, scenario):
    """server.sh drain moves the app off the node as a rolling update first:
    a plain drain would stop every app task at once when all run there."""
    scenario.starts_after("scripts/rollback")
    manager, _ = nodes
    _, slug = project
    server = f"/srv/{slug}/scripts/server.sh"
    with Load(manager.port(80), manager.nginx_errors) as load:
        drained = on(manager, f"{server} drain worker", user="deploy")
        assert app_nodes(manager, slug) == ["manager", "manager"]
        assert replicas(manager, slug) == "2/2"
        load.run_until(time.time() + 3)
    load.check(None)
    assert "--> draining worker" in drained
    assert on(manager, "docker node inspect --format '{{.Spec.Availability}}' worker") == "drain"
    with Load(manager.port(80), manager.nginx_errors) as load:
        on(manager, f"{server} activate worker", user="deploy")
        load.run_until(time.time() + 3)
    load.check(None)
    assert on(manager, "docker node inspect --format '{{.Spec.Availability}}' worker") == "active"
    assert site_release(manager) == "relA"
    assert rows(manager, slug) == scenario.rows
    scenario.done.append("drain")


def test_the_nightly_backup_and_a_restore_work_on_the_manager(nodes, ssh_config, project, scenario):
    """scripts/backup's and restore's server side find the stack's tasks on
    the manager: the database's container, the media volume."""
    scenario.starts_after("drain")
    manager, _ = nodes
    _, slug = project
    # The nightly timer's service, started now, as systemd would.
    on(manager, f"systemctl start {slug}-backup.service")
    files = on(manager, f"ls /srv/{slug}/backups", user="deploy").split()
    dump = next(name for name in files if name.endswith(".dump"))
    assert dump.removesuffix(".dump") + ".media.tar" in files, files
    rows(manager, slug, "INSERT INTO swarm_rows VALUES (501);")
    assert rows(manager, slug) != scenario.rows
    restored = swarm_script(ssh_config, project, "restore", "--yes", "manager", dump)
    assert f"--> restored {dump}" in restored.stdout, restored.stdout
    assert rows(manager, slug) == scenario.rows
    assert site_release(manager) == "relA"
