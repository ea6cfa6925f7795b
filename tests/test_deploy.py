"""The deploy toolkit, for real: scripts/provision, deploy, rollback, backup,
restore, logs and status of a rendered project, run against a throwaway VPS.

The VPS is a container that behaves like one (tests/vps/Dockerfile, driven by
tests/vpshost.py): Debian with systemd as PID 1 and sshd, privileged so that
the Docker engine which provision installs can run containers. The scripts
reach it over SSH with a key generated here. Its engine pulls from no public
registry: the app's releases come from the registry scripts/deploy runs
here, through the SSH connection (the layers the server lacks), postgres and
nginx by `docker save | ssh docker load`, and one release from a registry
inside the VPS (the CI path).

One VPS serves the whole module: booting and provisioning it takes minutes.
So this is one scenario, in steps, each test starting from the server as the
steps before it left it (the `scenario` fixture fails a test clearly when the
step it starts from did not run):

  provision         the server set up; then checks that change nothing:
                    the firewall
  first deploy      release relA serves, with 1000 rows of data; then:
                    a db change refused, a second deploy at once refused
  backup            a dump downloaded here, and one by the daily timer
  deploy under load release relB, built from the working tree; then:
                    a release that never turns healthy gets no traffic
  registry deploy   relC (another stylesheet) pulled by the server, --keep 2;
                    then: relB's stylesheet URL still answers
  rollback          back to relB, under load; then: relB's own stylesheet
  restore           (tests/test_deploy_restore.py) the rows of the backup;
                    then: a truncated dump refused

tests/test_deploy_images.py, test_deploy_interrupted.py, then
test_deploy_with_jobs.py go on from there, on the same VPS.
"""

from __future__ import annotations

import json
import re
import selectors
import subprocess
import time

import pytest
import requests

from deployscenario import COUNTER, TABLE_DIGEST
from siteload import SITE_HEADERS, Load
from vpshost import (
    VPS_DIR,
    Scenario,
    Vps,
    css,
    psql,
    push_to_a_registry_on,
    reason,
    run,
    script,
    site_release,
    stylesheet,
    switch_under_load,
    ufw_status,
)

pytestmark = pytest.mark.docker


# The VPS and the project are shared with the modules that go on with the
# scenario (tests/deployscenario.py).
@pytest.fixture(scope="module")
def project(deploy_project):
    return deploy_project


@pytest.fixture(scope="module")
def scenario(deploy_scenario) -> Scenario:
    return deploy_scenario


def layers_pulled(output: str) -> tuple[int, int]:
    """The layers of the app's image that a deploy's server pulled, and
    those it had already."""
    match = re.search(r"^ *(\d+) layer\(s\) pulled, (\d+) already here$", output, re.MULTILINE)
    assert match, f"the server pulled no image from the deploying machine:\n{output}"
    return int(match.group(1)), int(match.group(2))


def test_provision_sets_the_server_up_and_is_idempotent(vps, project, scenario):
    """Starts from a fresh server: Debian, sshd and root's key."""
    _, slug = project
    first = script(vps, project, "provision", "root@vps")
    assert "    changed  " in first.stdout
    assert "Docker engine" in first.stdout

    second = script(vps, project, "provision", "root@vps")
    assert "provision: 0 changed" in second.stdout, second.stdout
    assert "    changed  " not in second.stdout, second.stdout

    def on_vps(command: str) -> str:
        return vps.ssh("root", command).stdout.strip()

    sshd = dict(line.split(" ", 1) for line in on_vps("sshd -T").splitlines() if " " in line)
    assert (sshd["passwordauthentication"], sshd["kbdinteractiveauthentication"]) == ("no", "no")
    status, policies, allowed = ufw_status(on_vps("ufw status verbose"))
    assert status == "active" and (policies["incoming"], policies["outgoing"]) == ("deny", "allow")
    assert allowed == {"22/tcp", "80/tcp", "443/tcp"}
    assert on_vps("fail2ban-client status sshd").splitlines()[0] == "Status for the jail: sshd"
    assert on_vps(f"stat -c '%a %U' /srv/{slug}/.env") == "600 deploy"
    assert "docker" in on_vps("id -nG deploy").split()
    docker = on_vps("docker info --format 'log={{.LoggingDriver}} live-restore={{.LiveRestoreEnabled}}'")
    assert docker == "log=json-file live-restore=true"
    assert json.loads(on_vps("cat /etc/docker/daemon.json")) == {
        "log-driver": "json-file",
        "log-opts": {"max-size": "10m", "max-file": "5"},
        "live-restore": True,
    }
    timer = f"{slug}-backup.timer"
    assert on_vps(f"systemctl is-enabled {timer}; systemctl is-active {timer}").split() == [
        "enabled",
        "active",
    ]
    # The deploy user logs in with the key, and runs Docker.
    assert vps.ssh("deploy", "docker version --format '{{.Server.Version}}'").stdout.strip()
    scenario.done.append("provision")


def test_first_deploy_uploads_the_images_and_starts_the_stack(vps, project, scenario):
    """Starts from the provisioned server, with no stack yet."""
    scenario.starts_after("provision")
    result = script(vps, project, "deploy", "vps", "relA")
    assert "; docker save | gzip)" in result.stdout
    _, slug = project
    loaded = {line.split(": ", 1)[1] for line in result.stdout.splitlines() if "Loaded image: " in line}
    assert loaded == {"postgres:18", "nginx:1.30"}, result.stdout
    # The app's image, pulled from the registry deploy ran here: every layer.
    pulled, present = layers_pulled(result.stdout)
    assert pulled >= 3 and present == 0, result.stdout
    assert "Deployed relA" in result.stdout
    assert site_release(vps) == "relA"

    status = script(vps, project, "status", "vps").stdout
    assert "release   relA" in status
    assert '"release":"relA"' in status
    # example.com does not resolve here: provision left HTTPS off.
    assert "https     off: warning, production serves plain HTTP" in status
    assert re.search(r"^last run  \S+-deploy-relA\.log: --> relA serves$", status, re.MULTILINE), status
    logs = script(vps, project, "logs", "--no-follow", "--tail", "5", "vps", "app").stdout
    assert "app-" in logs

    psql(
        vps,
        project,
        "CREATE TABLE deploy_rows (id int PRIMARY KEY, payload text NOT NULL);"
        "INSERT INTO deploy_rows SELECT g, md5(g::text) FROM generate_series(1, 1000) g;",
    )
    requests.get(f"http://127.0.0.1:{vps.port(80)}/", headers=SITE_HEADERS, timeout=10).raise_for_status()
    scenario.done.append("first deploy")


def test_containers_get_no_port_but_80_and_443_through_the_firewall(vps, project, scenario):
    """Starts from relA serving; leaves the firewall as provision set it."""
    scenario.starts_after("first deploy")
    # A container publishing 8081, as a compose file might publish the
    # database by mistake (Docker's forwarding bypasses ufw's own rules), and
    # 443, as compose.tls.yaml does.
    vps.ssh("deploy", "docker run --detach --rm --name probe --publish 8081:80 --publish 443:80 nginx:1.30")
    try:
        time.sleep(2)
        inside = vps.ssh("deploy", "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8081/").stdout
        assert inside == "200", "the probe container does not serve"
        closed, https = f"http://127.0.0.1:{vps.port(8081)}/", f"http://127.0.0.1:{vps.port(443)}/"
        assert requests.get(https, timeout=5).status_code == 200
        with pytest.raises(requests.RequestException):
            requests.get(closed, timeout=3)
        # Without provision's DOCKER-USER rules, ufw alone lets it through...
        vps.ssh("root", "iptables -F DOCKER-USER")
        assert requests.get(closed, timeout=5).status_code == 200
        # ...and ufw puts them back whenever it loads its rules.
        vps.ssh("root", "ufw reload")
        with pytest.raises(requests.RequestException):
            requests.get(closed, timeout=3)
        assert requests.get(https, timeout=5).status_code == 200
    finally:
        vps.ssh("root", "ufw reload; docker rm --force probe", check=False)
    assert site_release(vps) == "relA"


def db_started_at(vps: Vps, slug: str) -> str:
    labels = f"--filter label=com.docker.compose.project={slug} --filter label=com.docker.compose.service=db"
    db = f"$(docker ps --quiet {labels})"
    return vps.ssh("deploy", f"docker inspect --format '{{{{.State.StartedAt}}}}' {db}").stdout.strip()


def test_deploy_refuses_a_change_to_the_database_service(vps, project, scenario):
    """Starts from relA serving; puts compose.yaml back, here and on the server."""
    scenario.starts_after("first deploy")
    root, slug = project
    compose = root / "compose.yaml"
    original = compose.read_text()
    anchor = "      POSTGRES_DB: ${POSTGRES_DB}\n"
    assert original.count(anchor) == 1, "the db service's environment is not where the test expects it"
    started = db_started_at(vps, slug)
    try:
        compose.write_text(original.replace(anchor, anchor + '      EXTRA_SETTING: "1"\n'))
        refused = script(vps, project, "deploy", "vps", "relA", check=False)
    finally:
        compose.write_text(original)
        vps.ssh("deploy", f"cat >/srv/{slug}/compose.yaml", input=original)
    assert refused.returncode != 0
    assert "never restarts the database" in reason(refused), refused.stderr
    assert db_started_at(vps, slug) == started, "the database was restarted"
    assert site_release(vps) == "relA"


def test_a_second_deploy_at_the_same_time_is_refused(vps, project, scenario):
    """Starts from relA serving. The first deploy is played by a shell that
    holds the server's deploy lock until its stdin closes."""
    scenario.starts_after("first deploy")
    _, slug = project
    hold = f"timeout 120 flock /srv/{slug}/.deploy.lock sh -c 'echo held; read -r _'"
    holder = subprocess.Popen(
        vps.ssh_command("deploy", hold), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(holder.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=30), "the lock holder never got the lock"
        assert holder.stdout.readline() == "held\n"
        refused = script(vps, project, "deploy", "vps", "relA", check=False)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert refused.returncode != 0
    message = "another deploy, rollback or restore is running on this server"
    assert [line for line in refused.stderr.splitlines() if message in line] == [reason(refused)], (
        refused.stderr
    )
    assert site_release(vps) == "relA"


def test_backup_on_demand_and_scheduled(vps, project, scenario, tmp_path_factory):
    """Starts from relA serving, with its 1000 rows."""
    scenario.starts_after("first deploy")
    _, slug = project
    here = tmp_path_factory.mktemp("backups")
    result = script(vps, project, "backup", "--to", str(here), "vps")
    dumps = list(here.glob(f"{slug}-*.dump"))
    assert len(dumps) == 1, result.stdout
    assert dumps[0].read_bytes().startswith(b"PGDMP"), "not a pg_dump custom-format file"
    scenario.dump = dumps[0]
    scenario.rows = psql(vps, project, TABLE_DIGEST)
    scenario.counter = psql(vps, project, COUNTER)
    assert scenario.rows.startswith("1000 ")

    # The daily timer's service, started now, as systemd would.
    vps.ssh("root", f"systemctl start {slug}-backup.service")
    listing = vps.ssh("deploy", f"ls /srv/{slug}/backups").stdout.split()
    assert len([name for name in listing if name.endswith(".dump")]) == 2, listing
    scenario.done.append("backup")


def test_deploy_under_load_has_zero_downtime_and_keeps_the_data(vps, project, scenario):
    """Starts from relA serving, backed up."""
    scenario.starts_after("backup")
    root, slug = project
    # No IMAGE: deploy builds this working tree as release <commit>.
    release = scenario.rel_b = run("git", "-C", str(root), "rev-parse", "--short=12", "HEAD").stdout.strip()
    result, load = switch_under_load("relA", vps, project, "deploy", "vps")
    assert f"building {slug}:{release}" in result.stdout
    # The same code as relA: not one of its layers travels again.
    pulled, present = layers_pulled(result.stdout)
    assert pulled == 0 and present >= 3, result.stdout
    assert f"Deployed {release}" in result.stdout
    assert {"relA", release} <= set(load.releases), f"the load did not span the switch: {load.releases}"
    assert {site_release(vps) for _ in range(10)} == {release}
    assert psql(vps, project, TABLE_DIGEST) == scenario.rows
    assert int(psql(vps, project, COUNTER)) > int(scenario.counter)
    scenario.done.append("deploy under load")


def test_a_release_that_never_turns_healthy_gets_no_traffic(vps, project, scenario):
    """Starts from relB serving; leaves relB serving (and `broken`'s image
    on the server)."""
    scenario.starts_after("deploy under load")
    with Load(vps.port(80), vps.nginx_errors) as load:
        result = script(vps, project, "deploy", "--health-timeout", "15", "vps", "broken", check=False)
    assert result.returncode != 0
    assert "never turned healthy" in reason(result), result.stderr
    assert f"{scenario.rel_b} keeps serving" in reason(result), result.stderr
    # The broken container's own log, which the server prints: http.server
    # started, and logged no request (it logs each one), nor anything else.
    lines = result.stdout.splitlines()
    assert "    last lines of its log:" in lines, result.stdout
    log = [
        line for line in lines[lines.index("    last lines of its log:") + 1 :] if line.startswith(" " * 8)
    ]
    assert len(log) == 1 and "Serving HTTP on" in log[0], result.stdout
    load.check(None)
    assert set(load.releases) == {scenario.rel_b}, load.releases
    assert {site_release(vps) for _ in range(10)} == {scenario.rel_b}


def test_deploy_from_a_registry_keeping_two_releases(vps, project, scenario):
    """Starts from relB serving, after relA, with `broken`'s image left over.
    The CI path: the image is pushed to a registry, and the server pulls it
    by its immutable tag. The registry runs inside the VPS, published on its
    loopback; this machine pushes to it through an SSH tunnel."""
    scenario.starts_after("deploy under load")
    _, slug = project
    push_to_a_registry_on(vps, f"{slug}:relC", VPS_DIR / "registry")
    scenario.rel_b_css = stylesheet(vps)
    result = script(vps, project, "deploy", "--keep", "2", "vps", f"127.0.0.1:5000/{slug}:relC")
    assert "pulling 127.0.0.1:5000" in result.stdout
    assert "uploading" not in result.stdout
    assert site_release(vps) == "relC"
    vps.ssh("deploy", "docker rm --force registry")
    # Pruned: the current release and the newest other one that went live;
    # not relA (older), not `broken` (never live), not the pulled name.
    listed = vps.ssh("deploy", "docker image ls --format '{{.Repository}}:{{.Tag}}'").stdout.split()
    ours = [image for image in listed if image.rpartition(":")[0].split("/")[-1] == slug]
    assert sorted(ours) == sorted([f"{slug}:relC", f"{slug}:{scenario.rel_b}"]), result.stdout
    scenario.done.append("registry deploy")


def test_the_previous_releases_stylesheet_still_answers_after_a_switch(vps, project, scenario):
    """Starts from relC serving, just switched from relB, whose page named
    the stylesheet URL noted then: a page relB served during the switch, or
    a cached one, still gets its own stylesheet."""
    scenario.starts_after("registry deploy")
    root, _ = project
    old_url, old_content = scenario.rel_b_css
    assert old_content == (root / "static" / "css" / "site.css").read_bytes(), (
        "relB served another stylesheet"
    )
    new_url, new_content = stylesheet(vps)
    assert new_url != old_url and new_content != old_content, "relC's stylesheet should differ from relB's"
    assert css(vps, old_url) == old_content, f"{old_url} now answers relC's stylesheet"


def test_rollback_under_load_returns_to_the_previous_release(vps, project, scenario):
    """Starts from relC serving, after relB."""
    scenario.starts_after("registry deploy")
    release_b = scenario.rel_b
    result, load = switch_under_load("relC", vps, project, "rollback", "vps")
    assert "Rolled back" in result.stdout
    assert {"relC", release_b} <= set(load.releases), load.releases
    assert {site_release(vps) for _ in range(10)} == {release_b}

    _, slug = project
    log = vps.ssh("deploy", f"cat /srv/{slug}/releases.log").stdout.splitlines()
    assert [line.split("\t")[1:3] for line in log] == [
        ["deploy", "relA"],
        ["deploy", release_b],
        ["deploy", "relC"],
        ["rollback", release_b],
    ]
    status = script(vps, project, "status", "vps").stdout
    assert f"release   {release_b}" in status and "rollback  relC" in status
    scenario.done.append("rollback")


def test_after_a_rollback_the_page_gets_its_own_stylesheet(vps, project, scenario):
    """Starts from relB serving again, rolled back from relC (a rollback has
    no release step: the static files stay as relC published them)."""
    scenario.starts_after("rollback")
    root, _ = project
    url, content = stylesheet(vps)
    assert url == scenario.rel_b_css[0]
    assert content == (root / "static" / "css" / "site.css").read_bytes(), f"{url} answers relC's stylesheet"
