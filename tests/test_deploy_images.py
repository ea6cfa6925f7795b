"""Images besides the app's, patched on the server: the scenario of
tests/test_deploy.py goes on here, on the same VPS (tests/deployscenario.py),
from relB serving after its restore step.

A newer build of nginx:1.30 appears on the registry the server pulls from
(a mirror of Docker Hub inside the VPS): the weekly timer pulls it and a new
nginx takes over, under load, without one failed request. A newer build
that never turns healthy changes nothing: the old nginx serves on, and the
tag names its build again.

  images refreshed  nginx on the newer build, by the timer
"""

from __future__ import annotations

import json
import time

import pytest

from siteload import Load
from vpshost import VPS_DIR, Scenario, Vps, push_to_a_registry_on, run, site_release

pytestmark = pytest.mark.docker

# The VPS's engine pulls Docker Hub's images through a registry on its
# loopback (registry-mirrors), where this test pushes them.
MIRROR = {"log-driver": "json-file", "log-opts": {"max-size": "10m", "max-file": "5"}, "live-restore": True,
          "registry-mirrors": ["http://127.0.0.1:5000"]}  # fmt: skip


@pytest.fixture(scope="module")
def project(deploy_project):
    return deploy_project


@pytest.fixture(scope="module")
def scenario(deploy_scenario) -> Scenario:
    return deploy_scenario


def nginx_builds(vps: Vps, slug: str) -> list[str]:
    """The image id of each running nginx container."""
    labels = f"label=com.docker.compose.project={slug} --filter label=com.docker.compose.service=nginx"
    ids = vps.ssh("deploy", f"docker ps --filter {labels} --quiet --no-trunc").stdout.split()
    inspect = "docker inspect --format '{{.Image}}'"
    return [vps.ssh("deploy", f"{inspect} {container}").stdout.strip() for container in ids]


def newer_nginx(tmp_path, label: str, extra: str = "") -> str:
    """A build of nginx:1.30 that differs from the local one by LABEL."""
    (tmp_path / "Dockerfile").write_text(f"FROM nginx:1.30\nLABEL template-test.build={label}\n{extra}")
    tag = f"template-test-nginx:{label}"
    run("docker", "build", "--quiet", "--tag", tag, str(tmp_path))
    return tag


@pytest.fixture(scope="module")
def mirror(vps):
    vps.ssh("root", "cat >/etc/docker/daemon.json && systemctl restart docker", input=json.dumps(MIRROR))
    yield
    vps.ssh("deploy", "docker rm --force registry", check=False)


def test_the_weekly_timer_switches_nginx_to_a_newer_build_without_a_gap(
    vps, project, scenario, mirror, tmp_path
):
    scenario.starts_after("restore")
    _, slug = project
    before = nginx_builds(vps, slug)
    newer = newer_nginx(tmp_path, "newer")
    push_to_a_registry_on(vps, newer, VPS_DIR / "registry", name="library/nginx:1.30")
    with Load(vps.port(80), vps.nginx_errors) as load:
        timer = vps.ssh("root", f"systemctl start {slug}-refresh-images.service", check=False)
        # Some load on the new nginx alone, after the old one stopped.
        load.run_until(time.time() + 2)
    load.check(None)
    journal = vps.ssh("root", f"journalctl --no-pager -u {slug}-refresh-images.service").stdout
    assert timer.returncode == 0, journal
    assert "nginx:1.30: newer build pulled" in journal
    assert "a newer nginx:1.30 build is here: a new nginx takes over" in journal
    pulled = vps.ssh("deploy", "docker image inspect --format '{{.Id}}' nginx:1.30").stdout.strip()
    assert nginx_builds(vps, slug) == [pulled] != before
    assert site_release(vps) == scenario.rel_b
    scenario.done.append("images refreshed")
