"""What the benchmark asks Docker: the wrk image and its runs, memory per
service, image sizes, and the machine it all ran on."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from .figures import memory_bytes, parse_wrk

WRK_IMAGE = "template-benchmark-wrk:trixie"
# wrk from Debian: a C load generator whose own CPU use stays far below the
# servers', unlike a Python client, which saturates first on two cores.
# netbase: /etc/services, for the "http" in URLs without a port.
WRK_DOCKERFILE = """\
FROM debian:trixie-slim
RUN apt-get update \\
    && apt-get install --yes --no-install-recommends netbase wrk \\
    && rm -rf /var/lib/apt/lists/*
USER 65534:65534
ENTRYPOINT ["wrk"]
"""


def run(*command: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 1800) -> str:
    """A command's stdout; on failure, an error with its stderr."""
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(command)}` failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def timed(step) -> float:
    started = time.monotonic()
    step()
    return time.monotonic() - started


def load_average() -> float:
    """The host's one-minute load average: how busy the machine was around a run."""
    return os.getloadavg()[0]


def machine() -> dict:
    """What the figures were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(memory / 1024**3, 1),
        "kernel": platform.release(),
        "docker": run("docker", "version", "--format", "{{.Server.Version}}").strip(),
        "load_at_start": list(os.getloadavg()),
    }


def build_wrk_image(prepare) -> None:
    """The load generator's image, built once (prepare provides its base image)."""
    with tempfile.TemporaryDirectory() as context:
        Path(context, "Dockerfile").write_text(WRK_DOCKERFILE)
        prepare(Path(context))
        run("docker", "build", "--quiet", "--tag", WRK_IMAGE, context)


def wrk(network: str, url: str, host: str, seconds: float, connections: int, during=None) -> tuple[dict, str]:
    """One wrk run from a container on the network: its figures and raw output.

    during(), if given, is called halfway through the run (to sample memory under load).
    """
    arguments = ["--threads", "1", "--connections", str(connections), "--duration", f"{seconds:g}s"]
    # Slow answers are measured rather than dropped as timeouts (wrk's default is 2 s).
    arguments += ["--timeout", "10s", "--latency", "--header", f"Host: {host}", url]
    container = run("docker", "run", "--detach", "--network", network, WRK_IMAGE, *arguments).strip()
    try:
        sampled = None
        if during:
            time.sleep(seconds / 2)
            sampled = during()
        status = run("docker", "wait", container, timeout=seconds + 60).strip()
        output = run("docker", "logs", container)
        if status != "0":
            errors = subprocess.run(["docker", "logs", container], capture_output=True, text=True).stderr
            raise RuntimeError(f"wrk {url} failed ({status}): {errors.strip() or output.strip()}")
    finally:
        subprocess.run(["docker", "rm", "--force", container], capture_output=True, check=False)
    figures = parse_wrk(output)
    if sampled is not None:
        figures["memory"] = sampled
    return figures, output


def memory(project: str) -> dict[str, int]:
    """Bytes of memory each running service of a compose project uses, by service name."""
    lines = run(
        "docker", "ps", "--filter", f"label=com.docker.compose.project={project}",
        # Not `compose run`'s one-off containers (the development server).
        "--filter", "label=com.docker.compose.oneoff=False",
        "--format", '{{.ID}} {{.Label "com.docker.compose.service"}} {{.Names}}',
    ).split("\n")  # fmt: skip
    services = {}
    for line in filter(None, lines):
        identifier, service, name = line.split(" ", 2)
        services[identifier] = service or name
    if not services:
        return {}
    stats = run("docker", "stats", "--no-stream", "--format", "{{json .}}", *services)
    used: dict[str, int] = {}
    for line in filter(None, stats.splitlines()):
        record = json.loads(line)
        service = services.get(record["ID"][:12]) or services.get(record["ID"]) or record["Name"]
        used[service] = used.get(service, 0) + memory_bytes(record["MemUsage"])
    return used


def image_bytes(name: str) -> int:
    return int(run("docker", "image", "inspect", "--format", "{{.Size}}", name).strip())


def app_layers_mb(image: str, base: str) -> float:
    """The app's own layers: the image minus its base (stand-in bases differ in size)."""
    return (image_bytes(image) - image_bytes(base)) / 1e6
