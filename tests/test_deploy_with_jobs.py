"""A Django project with background jobs on the VPS: the scenario's last
steps (tests/deployscenario.py), after tests/test_deploy_interrupted.py left
the Flask site serving. The Flask site goes down (one site per server here:
it gives port 80 back) and a Django project with `background_jobs` on is
provisioned and deployed.

The scripts do not depend on the framework; the release step does
(`manage.py release`), and so do /healthz's JSON and the static files. The
workers and the scheduler belong to the release (docs/jobs.md, "Stopping
and deploying"): jobs posted through nginx all along a deploy and a rollback
are each done exactly once, and a job still running when the deploy begins
finishes in the old worker, which stops only once it is done.

  django           deployed twice, the second time under load
  jobs             a deploy and a rollback under a stream of jobs
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
import requests

from conftest import prepare_images, render
from siteload import SITE_HEADERS
from vpshost import Scenario, Vps, build_from, build_release, run, script, site_release, switch_under_load

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def scenario(deploy_scenario) -> Scenario:
    return deploy_scenario


@pytest.fixture(scope="module")
def django(vps, deploy_project, scenario, tmp_path_factory):
    """The Django project, provisioned and deployed as relD; relE is the
    same code as another release."""
    scenario.starts_after("repaired")
    _, flask_slug = deploy_project
    down = vps.ssh("deploy", f"/srv/{flask_slug}/scripts/server.sh compose down", check=False)
    assert down.returncode == 0, down.stdout + down.stderr
    suffix = uuid.uuid4().hex[:6]
    root = render(
        tmp_path_factory.mktemp("django") / "project",
        framework="django",
        project_name=f"Deploy Django {suffix}",
        background_jobs=True,
    )
    slug = f"deploy_django_{suffix}"
    prepare_images(root)
    try:
        build_release(root, f"{slug}:relD", "relD")
        rel_e = f"FROM {slug}:relD\nENV APP_RELEASE=relE\n"
        build_from(tmp_path_factory.mktemp("relE"), f"{slug}:relE", rel_e)
        script(vps, (root, slug), "provision", "root@vps")
        script(vps, (root, slug), "deploy", "vps", "relD")
        yield root, slug
    finally:
        run("docker", "image", "rm", "--force", f"{slug}:relD", f"{slug}:relE", check=False)


def job_containers(vps: Vps, slug: str) -> dict[str, list[str]]:
    """The image of each running worker and scheduler container."""
    found: dict[str, list[str]] = {}
    for service in ("worker", "scheduler"):
        labels = f"-f label=com.docker.compose.project={slug} -f label=com.docker.compose.service={service}"
        listing = vps.ssh("deploy", f"docker ps {labels} --format '{{{{.Image}}}}'").stdout
        found[service] = sorted(listing.split())
    return found


def test_a_django_project_deploys_the_same_way(vps, django, scenario):
    """One Django release, deployed again under load: the same zero-downtime switch."""
    _, slug = django
    assert site_release(vps) == "relD"
    assert job_containers(vps, slug) == {"worker": [f"{slug}:relD"], "scheduler": [f"{slug}:relD"]}

    result, load = switch_under_load("relD", vps, django, "deploy", "vps", "relD")
    assert "image deploy_django" in result.stdout and "is already on the server" in result.stdout
    assert "release step" in result.stdout and "beside relD" in result.stdout
    assert set(load.releases) == {"relD"}, load.releases
    assert '"release": "relD"' in script(vps, django, "status", "vps").stdout
    scenario.done.append("django")


class JobStream:
    """Posts the home page's job form through nginx, one after another, until
    stopped; counts the posts that were accepted (each enqueued one job) and
    notes those that were not."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.stop = threading.Event()
        self.accepted = 0
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self.post_until_stopped, daemon=True)

    def post_until_stopped(self) -> None:
        with requests.Session() as session:
            page = session.get(self.url + "/", headers=SITE_HEADERS, timeout=15)
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
            headers = {**SITE_HEADERS, "Referer": self.url + "/"}
            deadline = time.monotonic() + 600
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    response = session.post(
                        self.url + "/jobs",
                        data={"csrfmiddlewaretoken": token},
                        headers=headers,
                        allow_redirects=False,
                        timeout=15,
                    )
                except requests.RequestException as error:
                    self.failures.append(f"{datetime.now(UTC):%H:%M:%S.%f} {error!r}")
                else:
                    if response.status_code in (302, 303):
                        self.accepted += 1
                    else:
                        when = f"{datetime.now(UTC):%H:%M:%S.%f}"
                        self.failures.append(f"{when} HTTP {response.status_code}: {response.text[:300]}")
                time.sleep(0.2)

    def __enter__(self) -> JobStream:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def jobs_done(vps: Vps) -> int:
    page = requests.get(f"http://127.0.0.1:{vps.port(80)}/", headers=SITE_HEADERS, timeout=15)
    page.raise_for_status()
    return int(re.search(r'id="jobs-done">(\d+)<', page.text).group(1))


def script_calling_back(vps: Vps, project, name: str, *args: str, when: str, then) -> str:
    """Run the project's scripts/NAME like vpshost.script, and THEN (in a
    thread) as soon as a line of its output contains WHEN; its output."""
    root, _ = project
    env = {**os.environ, "DEPLOY_SSH_CONFIG": str(vps.ssh_config)}
    command = [str(root / "scripts" / name), *args]
    with subprocess.Popen(
        command, cwd=root, env=env, text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as process:  # fmt: skip
        lines, called = [], []
        for line in process.stdout:
            lines.append(line)
            if when in line and not called:
                called.append(threading.Thread(target=then, daemon=True))
                called[0].start()
        code = process.wait(timeout=600)
    output = "".join(lines)
    assert code == 0 and called, f"scripts/{name} {' '.join(args)} exited {code}:\n{output}"
    called[0].join(timeout=60)
    return output


def test_jobs_enqueued_across_a_deploy_and_a_rollback_each_run_once(vps, django, scenario):
    scenario.starts_after("django")
    _, slug = django
    before = jobs_done(vps)
    # A job that works for 40 s, enqueued as the old app drains: the old
    # worker takes it before the new ones start, and finishes it before it
    # stops (its stop_grace_period is 60 s).
    call = (
        f"/srv/{slug}/scripts/server.sh compose exec -T worker celery --app config call "
        f"""{slug}.tasks.record_job --kwargs '{{"work_seconds": 40}}'"""
    )
    enqueued: list[subprocess.CompletedProcess] = []
    with JobStream(vps.port(80)) as stream:
        deploy = script_calling_back(
            vps, django, "deploy", "vps", "relE",
            when="draining relD", then=lambda: enqueued.append(vps.ssh("deploy", call, check=False)),
        )  # fmt: skip
        rollback = script(vps, django, "rollback", "vps").stdout
    assert enqueued and enqueued[0].returncode == 0, enqueued
    assert site_release(vps) == "relD"
    # nginx resends a GET that an old container dropped, never a POST, which
    # may have run: a post that lands on an old container as it stops is
    # refused (docs/deploy.md, "Requests during the switch"), and enqueues nothing.
    print(f"job posts: {stream.accepted} accepted, refused: {stream.failures}")
    explained = f"{stream.failures}\n{deploy}\n{rollback}"
    assert all(" HTTP 50" in failure for failure in stream.failures), explained
    assert len(stream.failures) < stream.accepted / 20, explained
    assert stream.accepted >= 50, f"too few jobs to prove anything: {stream.accepted}"

    for output, old, new in ((deploy, "relD", "relE"), (rollback, "relE", "relD")):
        assert f"starting 1 worker(s) of {new} beside those of {old}" in output, output
        assert f"stopping the workers of {old}: they finish the jobs they run first" in output, output
        assert f"replacing the scheduler: the old one stops before that of {new} starts" in output, output
    # Stopping the old worker waited for the slow job, and less than the grace
    # period: a worker killed then would have to run it again.
    waited = int(re.search(r"stopping the workers of relD.*\n\s+stopped after (\d+)s", deploy).group(1))
    assert 3 <= waited < 60, deploy
    assert job_containers(vps, slug) == {"worker": [f"{slug}:relD"], "scheduler": [f"{slug}:relD"]}

    expected = before + stream.accepted + 1
    deadline = time.monotonic() + 120
    while (done := jobs_done(vps)) < expected and time.monotonic() < deadline:
        time.sleep(1)
    time.sleep(3)  # a job run twice would show now
    assert jobs_done(vps) == expected, f"{done} done, {expected} expected"
    scenario.done.append("jobs")
