"""Container hardening: the production stack gives up what Docker grants by
default and it does not use (issue 11, part 3).

Every service drops all capabilities and adds back only those its image's
entrypoint needs, cannot gain privileges, rotates its logs and has memory and
process limits; the app, its release step and nginx run on read-only root
filesystems. The render tests read that from `docker compose config` for both
frameworks; the Docker tests boot the Flask stack once and ask the engine and
the kernel what each container really got.
"""

from __future__ import annotations

import re

import docker
import pytest

from conftest import FRAMEWORKS, Stack, booted, compose_config, render

# The capabilities each service keeps, and why (compose.yaml says the same):
# db: the postgres entrypoint starts as root, makes the data and socket
#     directories the postgres user's (CHOWN, FOWNER), looks through the 0700
#     data directory (DAC_READ_SEARCH), then drops to that user (SETGID, SETUID).
# nginx: the master hands its temporary directories to the nginx user (CHOWN)
#     and starts its workers as that user (SETGID, SETUID); port 80 needs
#     nothing, Docker lets containers bind low ports.
# app, migrate, and with background_jobs worker and scheduler: run as UID
#     10001 and need none.
# edge: holds nginx's ports and networks, asleep as nobody: none.
# valkey (background_jobs): runs as its image's user, who owns /data: none.
CAPABILITIES = {
    "db": {"CHOWN", "DAC_READ_SEARCH", "FOWNER", "SETGID", "SETUID"},
    "migrate": set(),
    "app": set(),
    "edge": set(),
    "nginx": {"CHOWN", "SETGID", "SETUID"},
    "valkey": set(),
    "worker": set(),
    "scheduler": set(),
}
# Rendered only with background_jobs=true.
JOB_SERVICES = {"valkey", "worker", "scheduler"}
READ_ONLY = {"migrate", "app", "edge", "nginx", "valkey", "worker", "scheduler"}
MiB = 1024 * 1024
# The defaults of compose.yaml's limits; .env.example documents the knobs.
MEMORY = {
    "db": 512 * MiB,
    "migrate": 512 * MiB,
    "app": 512 * MiB,
    "edge": 16 * MiB,
    "nginx": 128 * MiB,
    "valkey": 128 * MiB,
    "worker": 384 * MiB,
    "scheduler": 192 * MiB,
}
PIDS = {
    "db": 256,
    "migrate": 256,
    "app": 256,
    "edge": 8,
    "nginx": 128,
    "valkey": 32,
    "worker": 128,
    "scheduler": 32,
}
# The same rotation scripts/provision writes to the engine's daemon.json.
LOG_OPTIONS = {"max-size": "10m", "max-file": "5"}
# What `docker inspect` shows of it, under HostConfig.
HOST_CONFIG = ("CapDrop", "CapAdd", "SecurityOpt", "ReadonlyRootfs", "Memory", "PidsLimit", "LogConfig")

# Bit numbers from linux/capability.h, for reading /proc/PID/status.
CAPABILITY_BITS = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "DAC_READ_SEARCH": 2,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "NET_BIND_SERVICE": 10,
    "NET_RAW": 13,
    "SYS_CHROOT": 18,
    "MKNOD": 27,
    "AUDIT_WRITE": 29,
    "SETFCAP": 31,
}


def capability_names(mask: int) -> set[str]:
    names = {name for name, bit in CAPABILITY_BITS.items() if mask >> bit & 1}
    unnamed = mask & ~sum(1 << bit for bit in CAPABILITY_BITS.values())
    return names | ({f"unnamed bits {unnamed:#x}"} if unnamed else set())


# --- Render level: what compose.yaml asks for, both frameworks, no engine ---


@pytest.fixture(
    scope="module",
    params=[(framework, jobs) for jobs in (False, True) for framework in FRAMEWORKS],
    ids=lambda param: f"{param[0]}{'-jobs' if param[1] else ''}",
)
def project(request, tmp_path_factory):
    framework, jobs = request.param
    project = tmp_path_factory.mktemp(framework) / "project"
    return render(project, framework=framework, background_jobs=jobs)


def expected_services(project) -> set[str]:
    jobs = re.search(r"^background_jobs: true$", (project / ".copier-answers.yml").read_text(), re.M)
    return set(CAPABILITIES) if jobs else set(CAPABILITIES) - JOB_SERVICES


def check_hardening(name: str, service: dict, capabilities: set[str], read_only: bool) -> None:
    assert service.get("cap_drop") == ["ALL"], f"{name}: cap_drop is {service.get('cap_drop')}"
    assert set(service.get("cap_add") or []) == capabilities, f"{name}: cap_add is {service.get('cap_add')}"
    assert "no-new-privileges:true" in (service.get("security_opt") or []), name
    assert bool(service.get("read_only")) == read_only, f"{name}: read_only is {service.get('read_only')}"
    logging = service.get("logging") or {}
    assert (logging.get("driver"), logging.get("options")) == ("json-file", LOG_OPTIONS), name
    limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
    assert int(limits.get("memory", 0)) > 0 and int(limits.get("pids", 0)) > 0, f"{name}: limits {limits}"


def test_every_production_service_is_hardened(project):
    services = compose_config(project, "compose.yaml")["services"]
    assert set(services) == expected_services(project)
    for name, service in services.items():
        check_hardening(name, service, CAPABILITIES[name], name in READ_ONLY)
        limits = service["deploy"]["resources"]["limits"]
        assert (int(limits["memory"]), int(limits["pids"])) == (MEMORY[name], PIDS[name]), name
    # Read-only roots get memory where they must write; nothing else does.
    assert [mount.split(":")[0] for mount in services["app"]["tmpfs"]] == ["/tmp"]
    for name in {"migrate", "worker", "scheduler"} & set(services):
        assert services[name]["tmpfs"] == services["app"]["tmpfs"], name
    # Valkey writes its volume only.
    assert "tmpfs" not in services.get("valkey", {})
    nginx_writes = {mount.split(":")[0] for mount in services["nginx"]["tmpfs"]}
    assert nginx_writes == {"/etc/nginx/conf.d", "/etc/nginx/site.d", "/var/cache/nginx", "/run"}
    main_conf = (project / "nginx/nginx.conf").read_text()
    temp_paths = re.findall(r"^\s*(\w+_temp_path)\s+(\S+);", main_conf, re.MULTILINE)
    assert len(temp_paths) == 5, "every temporary path is named, onto the tmpfs"
    for directive in temp_paths:
        assert directive[1].startswith("/var/cache/nginx/"), directive


def test_limits_follow_the_env_knobs(project):
    knobs = {
        "APP_MEMORY_LIMIT": "300m",
        "APP_PIDS_LIMIT": "99",
        "DB_MEMORY_LIMIT": "1g",
        "DB_PIDS_LIMIT": "150",
        "NGINX_MEMORY_LIMIT": "64m",
        "NGINX_PIDS_LIMIT": "40",
        "VALKEY_MEMORY_LIMIT": "96m",
        "VALKEY_PIDS_LIMIT": "20",
        "WORKER_MEMORY_LIMIT": "768m",
        "WORKER_PIDS_LIMIT": "200",
        "SCHEDULER_MEMORY_LIMIT": "160m",
        "SCHEDULER_PIDS_LIMIT": "24",
    }
    services = compose_config(project, "compose.yaml", env=knobs)["services"]
    limits = {name: service["deploy"]["resources"]["limits"] for name, service in services.items()}
    expected = {
        "app": (300 * MiB, 99),
        "migrate": (300 * MiB, 99),
        "db": (1024 * MiB, 150),
        "edge": (16 * MiB, 8),
        "nginx": (64 * MiB, 40),
        "valkey": (96 * MiB, 20),
        "worker": (768 * MiB, 200),
        "scheduler": (160 * MiB, 24),
    }
    got = {name: (int(limit["memory"]), int(limit["pids"])) for name, limit in limits.items()}
    assert got == {name: expected[name] for name in expected_services(project)}


def test_development_and_https_keep_the_hardening(project):
    # Development runs under the same restrictions (compose.override.yaml says why).
    dev = compose_config(project, "compose.yaml", "compose.override.yaml")["services"]
    # Except that the dev image's entrypoint starts as root to run as the
    # code's owner (.devcontainer/entrypoint.py), then drops these.
    entrypoint = {"CHOWN", "SETGID", "SETUID"}
    dev_capabilities = {
        **CAPABILITIES,
        **{name: entrypoint for name in ("app", "migrate", "worker", "scheduler", "mail")},
    }
    for name, service in dev.items():
        check_hardening(name, service, dev_capabilities[name], name in READ_ONLY | {"mail"})
    assert "/app" in [volume["target"] for volume in dev["app"]["volumes"]], "the code is bind-mounted"
    tls = compose_config(project, "compose.yaml", "compose.tls.yaml")["services"]
    for name, service in tls.items():
        check_hardening(name, service, CAPABILITIES.get(name, set()), name in READ_ONLY)


# --- On the engine: the Flask stack, booted once ---


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    project = render(tmp_path_factory.mktemp("flask") / "project", framework="flask")
    with booted(project, request) as stack:
        yield stack


@pytest.fixture(scope="module")
def containers(stack: Stack) -> dict:
    client = docker.from_env()
    found = client.containers.list(all=True, filters={"label": f"com.docker.compose.project={stack.name}"})
    by_service = {c.labels["com.docker.compose.service"]: c for c in found}
    assert set(by_service) == set(CAPABILITIES) - JOB_SERVICES, f"containers: {[c.name for c in found]}"
    return by_service


@pytest.mark.docker
def test_every_container_runs_as_configured(containers):
    for name, container in containers.items():
        host = container.attrs["HostConfig"]
        got = {key: host[key] for key in HOST_CONFIG}
        got["CapAdd"] = sorted(got["CapAdd"] or [])
        assert got == {
            "CapDrop": ["ALL"],
            "CapAdd": sorted(CAPABILITIES[name]),
            "SecurityOpt": ["no-new-privileges:true"],
            "ReadonlyRootfs": name in READ_ONLY,
            "Memory": MEMORY[name],
            "PidsLimit": PIDS[name],
            "LogConfig": {"Type": "json-file", "Config": LOG_OPTIONS},
        }, name
    assert containers["migrate"].attrs["State"]["ExitCode"] == 0


def process_statuses(container) -> list[dict[str, str]]:
    """/proc/PID/status of every process in the container, as fields."""
    script = 'for f in /proc/[0-9]*/status; do cat "$f" 2>/dev/null && echo ---; done'
    result = container.exec_run(["sh", "-c", script])
    assert result.exit_code == 0, result.output
    blocks = result.output.decode().split("---\n")
    return [
        dict(line.split(":\t", 1) for line in block.splitlines() if ":\t" in line)
        for block in blocks
        if block.strip()
    ]


@pytest.mark.docker
def test_the_kernel_enforces_it(containers):
    """What the processes hold, as the kernel sees it: the bounding set is the
    service's list, no-new-privileges is on, and every process that switched
    to its own user (postgres, nginx's workers, the app) holds no capability."""
    for name in ("db", "app", "nginx"):
        statuses = process_statuses(containers[name])
        main = next(status for status in statuses if status["Pid"] == "1")
        assert capability_names(int(main["CapBnd"], 16)) == CAPABILITIES[name], name
        assert all(status["NoNewPrivs"] == "1" for status in statuses), name
        unprivileged = [status for status in statuses if status["Uid"].split()[0] != "0"]
        assert unprivileged, f"{name}: no process runs as a user other than root"
        for status in unprivileged:
            assert int(status["CapEff"], 16) == 0, f"{name}: {status['Name']} holds {status['CapEff']}"


@pytest.mark.docker
@pytest.mark.parametrize("user", ["10001", "root"])
def test_the_app_cannot_write_its_code_or_root_but_can_write_tmp(containers, user):
    app = containers["app"]
    for path in ("/app/probe", "/probe", "/opt/venv/probe"):
        result = app.exec_run(["touch", path], user=user)
        assert result.exit_code != 0, f"{user} could write {path}"
        assert b"Read-only file system" in result.output, result.output
    result = app.exec_run(["sh", "-c", "echo ok > /tmp/probe && cat /tmp/probe && rm /tmp/probe"], user=user)
    assert (result.exit_code, result.output.strip()) == (0, b"ok"), result.output


@pytest.mark.docker
def test_nginx_cannot_write_outside_its_tmpfs(containers):
    nginx = containers["nginx"]
    for path in ("/usr/share/nginx/html/probe", "/etc/nginx/probe", "/probe"):
        result = nginx.exec_run(["touch", path])
        assert result.exit_code != 0 and b"Read-only file system" in result.output, (path, result.output)
    # Where it writes: the rendered site, its temporary files (owned by the
    # workers' user, which took CHOWN) and its pid file.
    listing = nginx.exec_run(["ls", "-ln", "/var/cache/nginx", "/etc/nginx/conf.d", "/run"]).output.decode()
    assert "default.conf" in listing and "nginx.pid" in listing, listing
    assert re.search(r"^d\S+\s+\d+\s+(?!0\s)\d+\s.*proxy_temp$", listing, re.MULTILINE), listing


@pytest.mark.docker
def test_the_deploys_extra_app_containers_get_the_same_settings(stack: Stack, containers):
    # What scripts/server/release.sh `switch` runs to start a release beside
    # the serving one; created, never started here.
    stack.compose("up", "--no-start", "--no-recreate", "--no-build", "--scale", "app=2", "app")
    client = docker.from_env()
    labels = [f"com.docker.compose.project={stack.name}", "com.docker.compose.service=app"]
    extra = [c for c in client.containers.list(all=True, filters={"label": labels}) if c != containers["app"]]
    try:
        assert [c.status for c in extra] == ["created"]
        new, old = extra[0].attrs["HostConfig"], containers["app"].attrs["HostConfig"]
        keys = (*HOST_CONFIG, "Tmpfs")
        assert {key: new[key] for key in keys} == {key: old[key] for key in keys}
    finally:
        for container in extra:
            container.remove(force=True)


@pytest.mark.docker
def test_the_stack_serves_and_the_app_logs_no_error(stack: Stack):
    assert stack.get("/healthz").status_code == 200
    assert stack.get("/readyz").status_code == 200
    logs = stack.compose("logs", "--no-color", "app", "migrate").stdout
    assert "Booting worker" in logs or "Listening at" in logs, logs[-2000:]
    # Gunicorn 25.1+ logged "Control server error: [Errno 13] Permission
    # denied: '/app/.gunicorn'" at every start while its control socket
    # defaulted under the read-only home directory.
    errors = [
        line
        for line in logs.splitlines()
        if re.search(r"\bERROR\b", line)
        or re.search(r'"level(name)?": ?"error"', line, re.IGNORECASE)
        or "control server" in line.lower()
    ]
    assert errors == [], "\n".join(errors)
