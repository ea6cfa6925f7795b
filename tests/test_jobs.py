"""Background and scheduled jobs (issue 13, part 1 and 5): the `background_jobs`
question adds Valkey, a Celery worker and one scheduler, and the home page
enqueues a job that the worker records.

Render tests check both answers without an engine. The Docker tests boot one
stack per framework with the jobs on and take it through what the docs
promise: a job posted through nginx is done once; a worker process killed
mid-job hands the job back and it runs again, recorded once; a stopped worker
finishes its job first; queued jobs survive a broker crash (AOF); the worker's
health check follows its broker connection; the scheduler enqueues a job a minute.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import docker
import pytest
import requests

from conftest import FRAMEWORKS, Stack, booted, compose_config, render

JOB_SERVICES = {"valkey", "worker", "scheduler"}
MiB = 1024 * 1024
# compose.yaml's defaults for the jobs' containers (.env.example has the knobs).
LIMITS = {"valkey": (128 * MiB, 32), "worker": (384 * MiB, 128), "scheduler": (192 * MiB, 32)}
LOG_CONFIG = {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "5"}}


# --- Render level: both answers, no engine ---


@pytest.fixture(scope="module", params=FRAMEWORKS)
def projects(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    return {
        jobs: render(root / str(jobs), framework=request.param, background_jobs=jobs)
        for jobs in (False, True)
    }


def project_text(project) -> dict[str, str]:
    return {
        str(path.relative_to(project)): path.read_text()
        for path in project.rglob("*")
        if path.is_file() and ".git" not in path.parts and ".ruff_cache" not in path.parts
    }


def test_without_jobs_nothing_of_them_is_rendered(projects):
    files = project_text(projects[False])
    mentions = [
        name for name, text in files.items() if re.search(r"celery|valkey|background job", text, re.I)
    ]
    assert mentions == []
    assert not any(re.search(r"jobs?\.md$|tasks\.py$|celery", name) for name in files), sorted(files)
    assert set(compose_config(projects[False])["services"]) == {"db", "migrate", "app", "edge", "nginx"}


def test_with_jobs_the_project_is_clean_and_passes_ruff(projects):
    project = projects[True]
    without = project_text(projects[False])
    # What the answer adds or changes (the rest is test_render.py's).
    changed = {name: text for name, text in project_text(project).items() if without.get(name) != text}
    assert {"compose.yaml", ".env", "pyproject.toml", "README.md", "docs/jobs.md"} <= set(changed)
    for name, text in changed.items():
        if name.endswith(("uv.lock", ".html")) or name == ".copier-answers.yml":
            continue
        assert not re.search(r"{%-?\s|\s-?%}|{{\s|\s}}(?!')", text), f"Jinja residue in {name}"
        blank_lines = 2 if name.endswith(".py") else 1
        assert "\n" * (blank_lines + 2) not in text, f"{name} has a run of blank lines"
    for command in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--no-cache", "."],
            cwd=project,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    # The lock has what pyproject.toml asks for, and only with the jobs on.
    assert re.search(r'^name = "celery"$', (project / "uv.lock").read_text(), re.M)
    assert not re.search(r'^name = "celery"$', (projects[False] / "uv.lock").read_text(), re.M)


def test_with_jobs_the_broker_is_private_persistent_and_password_protected(projects):
    project = projects[True]
    config = compose_config(project)
    services = config["services"]
    assert set(services) >= JOB_SERVICES
    valkey = services["valkey"]
    assert "ports" not in valkey and set(valkey["networks"]) == {"backend"}
    assert config["networks"]["backend"]["internal"] is True
    assert set(services["scheduler"]["networks"]) == {"backend"}
    # The worker sends the mail (docs/email.md): a network of its own leads out.
    assert set(services["worker"]["networks"]) == {"backend", "outbound"}
    assert valkey["volumes"][0]["source"] == "valkey-data" and valkey["volumes"][0]["target"] == "/data"
    command = " ".join(valkey["command"])
    assert "--appendonly yes" in command and '--requirepass "$$VALKEY_PASSWORD"' in command
    # The password is the generated one, new for each project, and the app's broker URL carries it.
    env = (project / ".env").read_text()
    password = re.search(r"^VALKEY_PASSWORD=([0-9a-f]{40})$", env, re.M).group(1)
    assert password not in re.findall(
        r"^\w+_PASSWORD=(\S+)$", env.replace(f"VALKEY_PASSWORD={password}", ""), re.M
    )
    assert valkey["environment"]["VALKEY_PASSWORD"] == password
    for name in ("app", "migrate", "worker", "scheduler"):
        url = services[name]["environment"]["CELERY_BROKER_URL"]
        assert url == f"redis://:{password}@valkey:6379/0", name
    assert re.search(r"^VALKEY_PASSWORD=$", (project / ".env.example").read_text(), re.M)


def test_with_jobs_one_scheduler_and_workers_that_stop_warmly(projects):
    services = compose_config(projects[True])["services"]
    worker, scheduler = services["worker"], services["scheduler"]
    assert worker["command"][-4:] == ["--loglevel", "INFO", "--concurrency", "2"]
    assert worker["image"] == scheduler["image"] == services["app"]["image"]
    assert "beat" in scheduler["command"] and scheduler["command"][-2:] == [
        "--schedule",
        "/tmp/celerybeat-schedule",
    ]
    assert scheduler.get("scale", 1) == 1 and scheduler.get("deploy", {}).get("replicas", 1) == 1
    # Time for running jobs to finish on SIGTERM (warm shutdown); beat has none.
    assert (worker["stop_grace_period"], scheduler["stop_grace_period"]) == ("1m0s", "10s")
    for service in (worker, scheduler):
        assert service["depends_on"]["valkey"]["condition"] == "service_healthy"
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "heartbeat" in " ".join(service["healthcheck"]["test"])
    knobs = {"WORKER_CONCURRENCY": "5", "WORKER_STOP_GRACE_PERIOD": "90s", "WORKER_MEMORY_LIMIT": "1g"}
    tuned = compose_config(projects[True], env=knobs)["services"]["worker"]
    assert tuned["command"][-1] == "5" and int(tuned["deploy"]["resources"]["limits"]["memory"]) == 1024 * MiB
    assert tuned["stop_grace_period"] == "1m30s"


def test_with_jobs_acks_are_late_and_a_lost_worker_hands_its_job_back(projects):
    jobs = next(projects[True].glob("*/jobs.py")).read_text()
    for setting in (
        '"task_acks_late": True',
        '"task_reject_on_worker_lost": True',
        '"worker_prefetch_multiplier": 1',
    ):
        assert setting in jobs


# --- On the engine: one stack per framework, jobs on ---


@pytest.fixture(scope="module", params=FRAMEWORKS)
def stack(request, tmp_path_factory):
    project = render(
        tmp_path_factory.mktemp(request.param) / "project", framework=request.param, background_jobs=True
    )
    with booted(project, request) as stack:
        stack.framework = request.param
        stack.config = compose_config(project, env={"HTTP_PORT": str(stack.http_port)})["services"]
        yield stack


def page(session: requests.Session, stack: Stack) -> tuple[dict[str, int], str]:
    response = session.get(stack.url + "/", headers={"Host": f"localhost:{stack.http_port}"}, timeout=10)
    assert response.status_code == 200, response.text[:500]
    counts = {key: int(value) for key, value in re.findall(r'id="jobs-(done|ticks)">(\d+)<', response.text)}
    assert set(counts) == {"done", "ticks"}, response.text
    return counts, response.text


def post_job(session: requests.Session, stack: Stack) -> None:
    _, html = page(session, stack)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    data = {"csrfmiddlewaretoken": token.group(1)} if token else {}
    headers = {"Host": f"localhost:{stack.http_port}", "Referer": stack.url + "/"}
    response = session.post(
        stack.url + "/jobs", data=data, headers=headers, allow_redirects=False, timeout=10
    )
    assert response.status_code in (302, 303), (response.status_code, response.text[:500])


def wait_for_count(stack: Stack, key: str, expected: int, timeout: float = 30, exact: bool = True) -> None:
    """Until the page shows EXPECTED (or more, unless exact); then not more either."""
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        while (counts := page(session, stack)[0])[key] < expected and time.monotonic() < deadline:
            time.sleep(0.5)
        if exact and counts[key] == expected:
            time.sleep(1)  # a duplicate would show up now
            counts = page(session, stack)[0]
    ok = counts[key] == expected if exact else counts[key] >= expected
    assert ok, f"{key}: {counts[key]}, expected {expected}\n{stack.logs()}"


def enqueue_slow_job(stack: Stack, seconds: int) -> str:
    """A job that works for SECONDS first, enqueued with Celery's own CLI; its id."""
    app = stack.config["worker"]["command"][2]
    slug = re.match(r"\w+", stack.config["app"]["image"]).group(0)
    task = f"{slug}.tasks.record_job"
    result = stack.compose(
        "exec",
        "-T",
        "worker",
        "celery",
        "--app",
        app,
        "call",
        task,
        "--kwargs",
        json.dumps({"work_seconds": seconds}),
    )
    return result.stdout.strip().splitlines()[-1]


def wait_until_running(stack: Stack, job: str, timeout: float = 60) -> None:
    """Until a pool process runs the job: "received" is logged before that, and
    a job whose process dies before it starts is simply given to another."""
    app = stack.config["worker"]["command"][2]
    inspect = ["exec", "-T", "worker", "celery", "--app", app, "inspect", "--timeout", "5"]
    deadline = time.monotonic() + timeout
    while True:
        active = stack.compose(*inspect, "active", check=False)
        if job in active.stdout:
            return
        logs = stack.compose("logs", "--no-color", "worker").stdout
        assert f"{job}] succeeded" not in logs, f"job {job} ran and ended between two looks: make it longer"
        assert time.monotonic() < deadline, f"job {job} never ran:\n{active.stdout}\n{logs[-3000:]}"
        time.sleep(0.5)


def wait_for_log(stack: Stack, service: str, pattern: str, count: int = 1, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        logs = stack.compose("logs", "--no-color", service).stdout
        if len(re.findall(pattern, logs)) >= count or time.monotonic() > deadline:
            assert len(re.findall(pattern, logs)) >= count, (
                f"{pattern!r} not {count}x in {service}'s logs:\n{logs[-3000:]}"
            )
            return logs
        time.sleep(0.5)


def healthy(stack: Stack, service: str) -> bool:
    """The service's own health check, run now rather than at its next interval."""
    test = stack.config[service]["healthcheck"]["test"]
    command = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]
    return stack.compose("exec", "-T", service, *command, check=False).returncode == 0


def start(stack: Stack, *services: str, timeout: float = 60) -> None:
    """Start stopped containers as they are (`up` could recreate them), until healthy."""
    stack.compose("start", *services)
    deadline = time.monotonic() + timeout
    while True:
        states = stack.compose("ps", "--format", "{{.Service}} {{.Health}}", *services).stdout.split("\n")
        if sorted(states[:-1]) == sorted(f"{name} healthy" for name in services):
            return
        assert time.monotonic() < deadline, f"not healthy: {states}\n{stack.logs()}"
        time.sleep(0.5)


def done(stack: Stack) -> int:
    with requests.Session() as session:
        return page(session, stack)[0]["done"]


@pytest.mark.docker
def test_a_job_posted_through_nginx_is_done_once(stack):
    before = done(stack)
    with requests.Session() as session:
        for _ in range(3):
            post_job(session, stack)
    wait_for_count(stack, "done", before + 3)


@pytest.mark.docker
def test_a_worker_process_killed_mid_job_hands_it_back_and_it_is_recorded_once(stack):
    before = done(stack)
    job = enqueue_slow_job(stack, 20)
    wait_until_running(stack, job)
    # The prefork pool's processes, children of the worker's main process (PID 1).
    kill = (
        'for s in /proc/[0-9]*/status; do grep -q "^PPid:\t1$" "$s"'
        ' && kill -9 "$(basename "$(dirname "$s")")"; done; true'
    )
    stack.compose("exec", "-T", "worker", "sh", "-c", kill)
    logs = wait_for_log(stack, "worker", rf"{job}\] succeeded", timeout=60)
    assert re.search(r"WorkerLostError|exited with 'signal 9", logs), logs[-3000:]
    assert len(re.findall(rf"{job}\] received", logs)) == 2, "the job was handed back and received again"
    wait_for_count(stack, "done", before + 1)


@pytest.mark.docker
def test_a_stopped_worker_finishes_its_job_first(stack):
    before = done(stack)
    job = enqueue_slow_job(stack, 4)
    wait_for_log(stack, "worker", rf"{job}\] received")
    started = time.monotonic()
    stack.compose("stop", "worker")
    stopped = time.monotonic() - started
    logs = stack.compose("logs", "--no-color", "worker").stdout
    assert re.search(rf"{job}\] succeeded", logs), logs[-3000:]
    assert 1.5 < stopped < 30, f"stopped in {stopped:.1f}s"
    start(stack, "worker")
    wait_for_count(stack, "done", before + 1)


@pytest.mark.docker
def test_queued_jobs_survive_a_broker_crash_and_the_health_check_follows_the_broker(stack):
    before = done(stack)
    stack.compose("stop", "worker")
    with requests.Session() as session:
        for _ in range(3):
            post_job(session, stack)
    time.sleep(2)  # Valkey writes its append-only file to disk every second.
    stack.compose("kill", "valkey")
    start(stack, "valkey")
    # The default queue, a list: the scheduler's jobs aside, the three are there.
    lrange = 'VALKEYCLI_AUTH="$VALKEY_PASSWORD" valkey-cli lrange celery 0 -1'
    queued = stack.compose("exec", "-T", "valkey", "sh", "-c", lrange).stdout
    assert queued.count("tasks.record_job") == 3, queued
    # Without the password, Valkey answers nothing.
    refused = stack.compose("exec", "-T", "valkey", "valkey-cli", "llen", "celery").stdout
    assert "NOAUTH" in refused, refused
    start(stack, "worker")
    wait_for_count(stack, "done", before + 3)
    # The worker loses its broker: its heartbeat stops, and its health check fails at once.
    assert healthy(stack, "worker")
    stack.compose("stop", "valkey")
    try:
        deadline = time.monotonic() + 30
        while healthy(stack, "worker") and time.monotonic() < deadline:
            time.sleep(1)
        logs = stack.compose("logs", "--no-color", "--tail", "40", "worker", "valkey").stdout
        assert not healthy(stack, "worker"), f"the worker reports healthy without its broker\n{logs}"
    finally:
        # Back with the broker (whatever happened above, for the next tests):
        # the worker reconnects, and its heartbeat with it.
        start(stack, "valkey")
    deadline = time.monotonic() + 40
    while not healthy(stack, "worker") and time.monotonic() < deadline:
        time.sleep(1)
    assert healthy(stack, "worker"), stack.logs()


@pytest.mark.docker
def test_the_jobs_containers_are_hardened(stack):
    client = docker.from_env()
    labels = [f"com.docker.compose.project={stack.name}"]
    containers = {
        c.labels["com.docker.compose.service"]: c for c in client.containers.list(filters={"label": labels})
    }
    for name in JOB_SERVICES:
        host = containers[name].attrs["HostConfig"]
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"], name
        assert host["SecurityOpt"] == ["no-new-privileges:true"] and host["ReadonlyRootfs"], name
        assert (host["Memory"], host["PidsLimit"]) == LIMITS[name], name
        assert host["LogConfig"] == LOG_CONFIG, name
        assert not host["PortBindings"], name
        state = containers[name].attrs["State"]
        assert state["Health"]["Status"] == "healthy", name
    user = containers["valkey"].exec_run(["id", "-un"]).output.decode().strip()
    assert user != "root", "Valkey runs as its image's user"


@pytest.mark.docker
def test_the_scheduler_enqueues_a_job_each_minute(stack):
    # A job a minute, from beat's start: at most a minute and a bit to wait.
    wait_for_count(stack, "ticks", 1, timeout=75, exact=False)
    logs = stack.compose("logs", "--no-color", "scheduler").stdout
    assert "Sending due task record-tick" in logs, logs[-2000:]
