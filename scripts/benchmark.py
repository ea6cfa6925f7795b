#!/usr/bin/env python3
"""Build, size and serving figures for projects rendered from this template.

    nox -s benchmark                         # both frameworks
    nox -s benchmark -- --framework flask    # one
    python scripts/benchmark.py --seconds 10 # longer load runs

For each framework it prints:
  - seconds from `copier copy` to every service healthy, with a cold build
    (no build cache; base images already present);
  - seconds for a warm rebuild and restart after a one-line code change;
  - the app image's own layers in MB (image size minus its base image);
  - requests/s and p99 latency for GET /healthz through nginx and direct to
    Gunicorn, measured by the same load generator from a container on the
    stack's network (bounded in time and count).

Figures, not tests: nothing here passes or fails on a number.
Environment: TEMPLATE_TEST_PREPARE, as for the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import FRAMEWORKS, Stack, prepare_images, render  # noqa: E402

# Runs inside a container on the stack's `web` network. Keep-alive
# connections, one per thread; stops after SECONDS or MAX_REQUESTS.
LOAD_GENERATOR = r"""
import http.client, json, sys, threading, time
host, port, path, host_header = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
seconds, threads, max_requests = float(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
latencies, errors, lock = [], [0], threading.Lock()
deadline = time.monotonic() + seconds
def worker():
    conn = http.client.HTTPConnection(host, port, timeout=5)
    mine, failed = [], 0
    while time.monotonic() < deadline and len(mine) < max_requests // threads:
        start = time.perf_counter()
        try:
            conn.request("GET", path, headers={"Host": host_header})
            response = conn.getresponse(); response.read()
            if response.status != 200: failed += 1
        except Exception:
            failed += 1; conn.close(); conn = http.client.HTTPConnection(host, port, timeout=5)
        mine.append(time.perf_counter() - start)
    with lock:
        latencies.extend(mine); errors[0] += failed
began = time.monotonic()
pool = [threading.Thread(target=worker) for _ in range(threads)]
for t in pool: t.start()
for t in pool: t.join()
elapsed = time.monotonic() - began
latencies.sort()
p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
summary = {"requests": len(latencies), "errors": errors[0], "rps": len(latencies) / elapsed}
print(json.dumps({**summary, "p99_ms": p99 * 1000}))
"""


def timed(step) -> float:
    started = time.monotonic()
    step()
    return time.monotonic() - started


def image_mb(client: docker.DockerClient, name: str) -> float:
    return client.images.get(name).attrs["Size"] / 1e6


def load(stack: Stack, python_image: str, target: str, seconds: float, threads: int) -> dict:
    host, port = target.split(":")
    client = docker.from_env()
    network = f"{stack.name}_web"
    load_arguments = [host, port, "/healthz", "localhost", str(seconds), str(threads), "200000"]
    output = client.containers.run(
        python_image,
        ["python", "-c", LOAD_GENERATOR, *load_arguments],
        network=network,
        remove=True,
    )
    return json.loads(output.decode().strip().splitlines()[-1])


def bench(framework: str, seconds: float, threads: int) -> dict:
    client = docker.from_env()
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp) / "project"
        results: dict = {"framework": framework}
        stack: Stack | None = None
        try:
            started = time.monotonic()
            render(project, framework=framework)
            prepare_images(project)  # base images: already present, so this is quick
            stack = Stack(project)
            stack.compose("build", "--no-cache")
            stack.up()
            results["copy_to_healthy_s"] = time.monotonic() - started

            views = next(project.glob("*/views.py"))
            views.write_text(views.read_text() + "\n# benchmark: a one-line change\n")
            results["warm_rebuild_s"] = timed(lambda: stack.compose("build", "app"))
            results["warm_rebuild_and_restart_s"] = results["warm_rebuild_s"] + timed(stack.up)

            app_ref = json.loads(stack.compose("images", "--format", "json", "app").stdout)[0]
            app_name = f"{app_ref['Repository']}:{app_ref['Tag']}"
            python_version = (project / ".python-version").read_text().strip()
            base = f"python:{python_version}-slim"
            results["app_layers_mb"] = image_mb(client, app_name) - image_mb(client, base)

            results["nginx"] = load(stack, base, "nginx:80", seconds, threads)
            results["gunicorn"] = load(stack, base, "app:8000", seconds, threads)
        finally:
            if stack:
                stack.down()
        return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--framework", choices=FRAMEWORKS, action="append")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each load run (default 5)")
    parser.add_argument(
        "--threads", type=int, default=8, help="concurrent keep-alive connections (default 8)"
    )
    args = parser.parse_args()
    rows = [bench(framework, args.seconds, args.threads) for framework in args.framework or FRAMEWORKS]
    print()
    print(f"{'':32}" + "".join(f"{row['framework']:>14}" for row in rows))
    lines = [
        ("copy to all healthy, cold (s)", lambda r: f"{r['copy_to_healthy_s']:.1f}"),
        ("warm rebuild, 1-line change (s)", lambda r: f"{r['warm_rebuild_s']:.1f}"),
        ("  ... and restart healthy (s)", lambda r: f"{r['warm_rebuild_and_restart_s']:.1f}"),
        ("app image layers (MB)", lambda r: f"{r['app_layers_mb']:.1f}"),
        ("/healthz via nginx (req/s)", lambda r: f"{r['nginx']['rps']:.0f}"),
        ("/healthz via nginx p99 (ms)", lambda r: f"{r['nginx']['p99_ms']:.1f}"),
        ("/healthz direct (req/s)", lambda r: f"{r['gunicorn']['rps']:.0f}"),
        ("/healthz direct p99 (ms)", lambda r: f"{r['gunicorn']['p99_ms']:.1f}"),
        ("failed requests (nginx/direct)", lambda r: f"{r['nginx']['errors']}/{r['gunicorn']['errors']}"),
    ]
    for label, value in lines:
        print(f"{label:32}" + "".join(f"{value(row):>14}" for row in rows))


if __name__ == "__main__":
    main()
