#!/usr/bin/env python3
"""Serving, build, size and memory figures for projects rendered from this
template, side by side with a peer project and the frameworks' development
servers, all measured in one run.

    nox -s benchmark                               # everything, into docs/benchmarks/
    nox -s benchmark -- --framework flask --no-peer --seconds 5   # a quick look

One run boots, each built without layer cache:
  - a Flask and a Django project rendered from this template (compose.yaml:
    nginx, Gunicorn, Postgres), timing `copy` to all healthy and a warm
    rebuild after a one-line change;
  - the framework's development server on the same image and networks (the
    naive setup deployment guides start from);
  - nickjj/docker-flask-example at a pinned commit (PEER_COMMIT), from the
    mirror given with --peer-mirror (a clone of the repository).
Then wrk (C, from Debian, in a container on each stack's network) loads
`/healthz`, `/` (a database write) and a static file, direct to the app
server and through nginx: a warm-up, then ROUNDS rounds that interleave every
series, recording the host's load average before and after each run. Memory
per service is sampled at idle and halfway through the runs through nginx.
Last, with the stacks down, each framework's project is deployed with its own
scripts to a throwaway server (the test suite's VPS container): provision,
a first deploy, then a one-line change, timed to serving, with the bytes the
server received.

Results go to OUTPUT (docs/benchmarks/): results.json, throughput.png,
p99.png, and the generated part of README.md. Figures, not tests: nothing
here passes or fails on a number. Environment: TEMPLATE_TEST_PREPARE, as for
the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from benchmarking import docker, report
from benchmarking.deploys import Deploys
from benchmarking.figures import load_series
from benchmarking.stacks import PEER_COMMIT, PEER_REPOSITORY, Ours, Peer, Target, prepare_images
from benchmarking.variants import BUDGETS, VARIANTS

ROOT = Path(__file__).resolve().parent.parent


def measure(targets: list[Target], args: argparse.Namespace, stacks: dict) -> list[dict]:
    """Warm-up, then the rounds: every target once per round, in the same order."""
    for target in targets:
        docker.wrk(target.network, target.url, target.host, args.warmup, args.connections)
    runs = []
    for round_number in range(1, args.rounds + 1):
        for target in targets:
            owner = stacks[target.stack.split()[0]]
            sample = (
                (lambda owner=owner: docker.memory(owner.compose_project)) if target.sample_memory else None
            )
            before = docker.load_average()
            figures, _ = docker.wrk(
                target.network, target.url, target.host, args.seconds, args.connections, during=sample
            )
            after = docker.load_average()
            for service, used in figures.pop("memory", {}).items():
                load = owner.memory_load
                load[service] = max(load.get(service, 0), used)
            failures = figures["socket_errors"] + figures["non_2xx"]
            print(
                f"round {round_number}  {target.series:32} {figures['rps']:8.0f} req/s"
                f"  p99 {figures['p99_ms']:7.1f} ms  failed {failures:5}  load {before:.1f} -> {after:.1f}",
                flush=True,
            )
            runs.append(
                {"series": target.series, "stack": target.stack, "path": target.path, "route": target.route,
                 "round": round_number, "load_before": before, "load_after": after, **figures}
            )  # fmt: skip
    return runs


def clone_peer(directory: Path) -> Path:
    mirror = directory / "peer.git"
    url = f"https://github.com/{PEER_REPOSITORY}"
    if subprocess.run(["git", "clone", "--quiet", "--bare", url, mirror], check=False).returncode != 0:
        raise SystemExit(f"could not clone {url}: pass a local clone with --peer-mirror, or use --no-peer")
    return mirror


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--framework", choices=("flask", "django"), action="append")
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured run (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="each series' warm-up run (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every series (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk's open connections (default 32)")
    parser.add_argument("--no-peer", action="store_true", help=f"leave out {PEER_REPOSITORY}")
    parser.add_argument("--no-devserver", action="store_true", help="leave out the development servers")
    parser.add_argument(
        "--no-deploy", action="store_true", help="leave out the deploys to a throwaway server"
    )
    parser.add_argument(
        "--peer-mirror", type=Path, help=f"a local clone of {PEER_REPOSITORY} (default: clone it from GitHub)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        choices=sorted(VARIANTS),
        help="also boot the template with this tuning option, measured in the same rounds (A/B)",
    )
    parser.add_argument(
        "--no-budgets",
        action="store_true",
        help="leave out the variants the budgets need (no metrics; the monitoring overlay)",
    )
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks", help="where results go")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots (no matplotlib)")
    args = parser.parse_args()
    if args.peer_mirror and not args.peer_mirror.is_dir():
        parser.error(
            f"--peer-mirror {args.peer_mirror}: no such directory; give a clone of {PEER_REPOSITORY}"
        )
    frameworks = args.framework or ["flask", "django"]
    results: dict = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": docker.machine(),
        "peer_commit": PEER_COMMIT,
        "settings": {key: getattr(args, key) for key in ("seconds", "warmup", "rounds", "connections")},
        "stacks": {},
    }
    results["settings"]["load_generator"] = "wrk 4.1 (Debian trixie), 1 thread, in a container"
    print(f"machine: {results['machine']}", flush=True)
    docker.build_wrk_image(prepare_images)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as cleanup:
        stacks: dict = {}
        targets: list[Target] = []
        boots = [Ours(framework, Path(tmp)) for framework in frameworks]
        chosen = list(dict.fromkeys([*args.variant, *([] if args.no_budgets else BUDGETS)]))
        boots += [Ours(framework, Path(tmp), variant) for framework in frameworks for variant in chosen]
        if not args.no_peer:
            boots.append(Peer(args.peer_mirror or clone_peer(Path(tmp)), Path(tmp)))
        for boot in boots:
            name = boot.name
            cleanup.callback(boot.down)
            print(f"{name}: cold build and boot ...", flush=True)
            boot.boot_cold()
            if not getattr(boot, "variant", None):
                print(f"{name}: warm rebuild ...", flush=True)
                boot.rebuild_warm()
            boot.memory_load = {}
            stacks[name] = boot
            print(f"{name}: {boot.timings}", flush=True)
        for name, boot in stacks.items():
            if name == "peer":
                targets += boot.targets()
            else:
                devserver = not args.no_devserver and not boot.variant
                if devserver:
                    boot.start_devserver()
                targets += boot.targets(devserver=devserver)
        time.sleep(10)  # let start-up work settle before memory at idle
        idle = {name: docker.memory(boot.compose_project) for name, boot in stacks.items()}
        runs = measure(targets, args, stacks)
        for name, boot in stacks.items():
            results["stacks"][name] = {
                "timings": boot.timings,
                "app_layers_mb": boot.app_layers_mb(),
                **({"metrics_us": boot.metrics_us()} if name in ("flask", "django") else {}),
                "memory_idle": idle[name],
                "memory_load": boot.memory_load,
            }
    results["runs"] = runs
    results["deploys"] = {}
    for framework in [] if args.no_deploy else frameworks:
        with tempfile.TemporaryDirectory() as tmp:
            deploys = Deploys(framework, Path(tmp))
            try:
                results["deploys"][framework] = deploys.run()
            finally:
                deploys.down()
    results["serving"] = load_series(runs)
    results["machine"]["load_at_end"] = list(os.getloadavg())
    page = report.write(results, args.output, plots=not args.no_plots)
    if args.output.resolve() == (ROOT / "docs" / "benchmarks").resolve():
        report.write_headline(results, ROOT / "README.md")
    print(f"\nwrote {args.output}/results.json and {page}\n")
    print(report.targets_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
