"""The benchmark's results written out: results.json, the figures in the
page's generated part (docs/benchmarks/README.md) and the plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .figures import markdown_table, ratio, serving_table

BEGIN = "<!-- benchmark: begin (written by scripts/benchmark.py) -->"
END = "<!-- benchmark: end -->"
MB = 1024**2

# The targets (docs/benchmarks/README.md says where they come from).
TARGETS = {
    "healthz_ratio": 0.92,
    "home_ratio": 0.92,
    "p99_ms": 50.0,
    "layers_mb": {"flask": 40.0, "django": 45.0},
    "copy_to_healthy_s": 30.0,
    "build_warm_s": 3.0,
    "idle_mb": {"flask": 350.0},
    "metrics_cost_pct": 5.0,
    "monitoring_mb": 200.0,
    "deploy_s": 30.0,
    "deploy_sent_mb": 10.0,
}

# The deploy benchmark's steps (deploys.py), as the page names them.
DEPLOY_STEPS = {
    "provision": "provision a fresh server",
    "first_deploy": "first deploy (every image)",
    "change_deploy": "deploy of a one-line change",
}


def fmt(value: float | None, digits: int = 0, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{suffix}"


def verdict(value: float | None, limit: float | None, higher_is_better: bool = False) -> str:
    if value is None or limit is None:
        return ""
    met = value >= limit if higher_is_better else value < limit
    return "met" if met else "**missed**"


def total_mb(services: dict[str, int]) -> float | None:
    return sum(services.values()) / MB if services else None


def metrics_cost_pct(serving: dict, framework: str) -> float | None:
    """The share of `/healthz` throughput, direct to the app, that counting requests takes (%)."""
    with_metrics = serving.get(f"{framework} /healthz direct")
    without = serving.get(f"{framework}+no-metrics /healthz direct")
    if not with_metrics or not without or not without["rps"]["median"]:
        return None
    return (1 - with_metrics["rps"]["median"] / without["rps"]["median"]) * 100


def metrics_share_pct(results: dict, framework: str) -> float | None:
    """The same cost from the time counting one request takes in process, as a
    share of what one `/healthz` request direct to the app costs the machine
    (its cores over the requests it answered a second): steady where the A/B
    throughput above is within the rounds' noise."""
    measured = results["stacks"].get(framework, {}).get("metrics_us")
    served = results["serving"].get(f"{framework} /healthz direct")
    if measured is None or not served or not served["rps"]["median"]:
        return None
    return measured / (results["machine"]["cores"] * 1e6 / served["rps"]["median"]) * 100


def overlay_mb(stacks: dict, framework: str) -> float | None:
    """What the monitoring overlay's services take, at idle or under load, whichever is more."""
    base, monitored = stacks.get(framework), stacks.get(f"{framework}+monitoring")
    if not base or not monitored:
        return None
    added = [
        sum(used for service, used in monitored[key].items() if service not in base["memory_idle"])
        for key in ("memory_idle", "memory_load")
    ]
    return max(added) / MB


def change_deploy(results: dict, framework: str) -> dict:
    """The figures of the deploy of a one-line change, if this run deployed."""
    return results.get("deploys", {}).get(framework, {}).get("change_deploy", {})


def targets_table(results: dict) -> str:
    serving = results["serving"]
    rows = []
    for framework in (name for name in ("flask", "django") if name in results["stacks"]):
        stack = results["stacks"][framework]

        def p99(path: str, stack_name: str = framework) -> float | None:
            figures = serving.get(f"{stack_name} {path} nginx")
            return figures and figures["p99_ms"]["median"]

        timings = stack["timings"]
        change = change_deploy(results, framework)
        checks = [
            ("`/healthz` via nginx / direct", ratio(serving, framework, "/healthz", "nginx", "direct"),
             2, "x", TARGETS["healthz_ratio"], True),
            ("`/` via nginx / direct", ratio(serving, framework, "/", "nginx", "direct"),
             2, "x", TARGETS["home_ratio"], True),
            ("`/healthz` p99 via nginx", p99("/healthz"), 1, " ms", TARGETS["p99_ms"], False),
            ("`/` p99 via nginx", p99("/"), 1, " ms", TARGETS["p99_ms"], False),
            ("app image layers", stack.get("app_layers_mb"),
             1, " MB", TARGETS["layers_mb"].get(framework), False),
            ("copy to all healthy, cold build", timings.get("copy_to_healthy_s"),
             1, " s", TARGETS["copy_to_healthy_s"], False),
            ("warm rebuild, one-line change", timings.get("build_warm_s"),
             1, " s", TARGETS["build_warm_s"], False),
            ("deploy of a one-line change, to serving", change.get("seconds"),
             1, " s", TARGETS["deploy_s"], False),
            ("what that deploy sends the server", change.get("received_mb"),
             1, " MB", TARGETS["deploy_sent_mb"], False),
            ("whole stack's memory, idle", total_mb(stack["memory_idle"]),
             0, " MB", TARGETS["idle_mb"].get(framework), False),
            ("whole stack's memory, under load", total_mb(stack["memory_load"]), 0, " MB", None, False),
            ("request metrics' cost, `/healthz` direct", metrics_cost_pct(serving, framework),
             1, " %", TARGETS["metrics_cost_pct"], False),
            ("counting one request, in process", stack.get("metrics_us"), 1, " µs", None, False),
            ("request metrics' cost, from that time", metrics_share_pct(results, framework),
             2, " %", TARGETS["metrics_cost_pct"], False),
            ("monitoring overlay's memory", overlay_mb(results["stacks"], framework),
             0, " MB", TARGETS["monitoring_mb"], False),
        ]  # fmt: skip
        for label, value, digits, suffix, limit, higher in checks:
            goal = "" if limit is None else (f"≥ {limit:g}{suffix}" if higher else f"< {limit:g}{suffix}")
            rows.append([framework, label, fmt(value, digits, suffix), goal, verdict(value, limit, higher)])
    return markdown_table(["stack", "measure", "median", "target", ""], rows)


def builds_table(results: dict) -> str:
    rows = []
    for name, stack in results["stacks"].items():
        timings = stack["timings"]
        rows.append(
            [name]
            + [fmt(timings.get(key), 1) for key in ("copy_to_healthy_s", "build_cold_s", "up_cold_s")]
            + [fmt(timings.get(key), 1) for key in ("build_warm_s", "up_warm_s")]
            + [fmt(stack.get("app_layers_mb"), 1)]
        )
    header = ["stack", "copy to healthy (s)", "cold build (s)", "up (s)", "warm build (s)", "up again (s)"]
    return markdown_table([*header, "app layers (MB)"], rows)


def memory_table(results: dict) -> str:
    rows = []
    for name, stack in results["stacks"].items():
        idle, load = stack["memory_idle"], stack["memory_load"]
        for service in sorted(set(idle) | set(load)):
            rows.append([name, service, fmt(idle.get(service, 0) / MB), fmt(load.get(service, 0) / MB)])
        rows.append([name, "**all**", fmt(total_mb(idle)), fmt(total_mb(load))])
    return markdown_table(["stack", "service", "idle (MB)", "under load (MB)"], rows)


def deploys_table(results: dict) -> str:
    rows = []
    for framework, steps in results.get("deploys", {}).items():
        for step, label in DEPLOY_STEPS.items():
            figures = steps.get(step)
            if figures:
                layers = (
                    f"{figures['layers_pulled']} of {figures['layers_pulled'] + figures['layers_present']}"
                    if "layers_pulled" in figures
                    else ""
                )
                rows.append(
                    [framework, label, fmt(figures["seconds"], 1), fmt(figures["received_mb"], 1), layers]
                )
    if not rows:
        return "Not measured in this run (`--no-deploy`)."
    return markdown_table(["stack", "step", "time (s)", "server received (MB)", "app layers sent"], rows)


def versus_table(results: dict) -> str:
    """The peer against our Flask stack through nginx and direct, and the development servers."""
    serving = results["serving"]
    rows = []
    for path in ("/healthz", "/", "static"):
        for series in (f"peer {path} direct", f"flask {path} nginx", f"flask {path} direct",
                       f"flask devserver {path} direct", f"django {path} nginx",
                       f"django devserver {path} direct"):  # fmt: skip
            figures = serving.get(series)
            if figures:
                peer = serving.get(f"peer {path} direct")
                share = figures["rps"]["median"] / peer["rps"]["median"] if peer else None
                rows.append(
                    [f"`{path}`", series.replace(f" {path} ", ", "), fmt(figures["rps"]["median"]),
                     fmt(share, 2, "x"), fmt(figures["p99_ms"]["median"], 1)]
                )  # fmt: skip
    return markdown_table(["path", "stack, route", "req/s", "of the peer's", "p99 (ms)"], rows)


def plot(results: dict, directory: Path) -> list[str]:
    """Throughput and p99 per series, the bars at the median and the whiskers at the range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    serving = results["serving"]
    names = list(serving)
    written = []
    for key, label, filename, log in (
        ("rps", "requests/s (median, range of rounds)", "throughput.png", False),
        ("p99_ms", "p99 latency, ms (median, range of rounds; log scale)", "p99.png", True),
    ):
        figure, axes = plt.subplots(figsize=(8, 0.32 * len(names) + 1.2), dpi=100)
        medians = [serving[name][key]["median"] for name in names]
        low = [medians[i] - serving[name][key]["min"] for i, name in enumerate(names)]
        high = [serving[name][key]["max"] - medians[i] for i, name in enumerate(names)]
        colours = [
            "#4c72b0" if " nginx" in name else "#dd8452" if "peer" in name else "#8c8c8c" for name in names
        ]
        axes.barh(names, medians, xerr=[low, high], color=colours, capsize=2)
        axes.invert_yaxis()
        axes.set_xlabel(label)
        if log:
            axes.set_xscale("log")
        axes.tick_params(axis="y", labelsize=8)
        figure.tight_layout()
        figure.savefig(directory / filename)
        plt.close(figure)
        written.append(filename)
    return written


def generated_part(results: dict, plots: list[str]) -> str:
    machine = results["machine"]
    settings = results["settings"]
    loads = [load for figures in results["serving"].values() for load in figures["load"]]
    busy = " (a busy machine: noisy figures)" if max(loads) > 1.5 * machine["cores"] else ""
    parts = [
        f"Measured {results['date']} on {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gb']} GB, kernel {machine['kernel']}, Docker {machine['docker']}. "
        f"wrk: {settings['connections']} connections, {settings['seconds']:g} s per run, "
        f"{settings['rounds']} rounds after a {settings['warmup']:g} s warm-up, rounds interleaved. "
        f"One-minute load average around the runs: {min(loads):.1f} to {max(loads):.1f} "
        f"(at start {machine['load_at_start'][0]:.1f}){busy}.",
        "### Against the targets\n\n" + targets_table(results),
        "### Side by side\n\nThe peer is nickjj/docker-flask-example at "
        f"`{results['peer_commit'][:12]}`; *devserver* is the framework's own development server on "
        "the same image, no nginx.\n\n" + versus_table(results),
        "### Every series\n\n" + serving_table(results["serving"]),
        "### Builds and images\n\n"
        "Cold: no layer cache (base images present, uv's download cache kept). Warm: after a one-line "
        "change to a view.\n\n" + builds_table(results),
        "### Memory\n\n" + memory_table(results),
        "### Deploys\n\n"
        "The project's own `scripts/provision` and `scripts/deploy` against a fresh server (the test "
        "suite's VPS container), from this machine; times to the new release serving, and what the "
        "server's network interface received meanwhile (SSH's own bytes included).\n\n"
        + deploys_table(results),
        "\n\n".join(f"![{name[:-4]}]({name})" for name in plots),
    ]  # fmt: skip
    return "\n\n".join(parts)


def write(results: dict, directory: Path, plots: bool = True) -> Path:
    """results.json, the plots, and the generated part of README.md (the rest of the page is kept)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    written = plot(results, directory) if plots else []
    page = directory / "README.md"
    text = page.read_text() if page.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{page} lacks the lines {BEGIN!r} and {END!r}: put them back where the figures go")
    generated = f"{BEGIN}\n\n{generated_part(results, written)}\n\n{END}"
    page.write_text(re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: generated, text, flags=re.S))
    return page


def headline(results: dict) -> str:
    """The README's few lines: each stack's main figures, and where they were measured."""
    serving = results["serving"]

    def figure(series: str, key: str, digits: int = 0) -> str:
        found = serving.get(series)
        return fmt(found and found[key]["median"], digits)

    rows = []
    # Not the tuning variants: their boot is from a warm build cache.
    for name, stack in ((name, stack) for name, stack in results["stacks"].items() if "+" not in name):
        route = "direct" if name == "peer" else "nginx"
        rows.append(
            [name, figure(f"{name} /healthz {route}", "rps"), figure(f"{name} /healthz {route}", "p99_ms", 1),
             figure(f"{name} / {route}", "rps"), figure(f"{name} / {route}", "p99_ms", 1),
             fmt(stack.get("app_layers_mb"), 1), fmt(stack["timings"].get("copy_to_healthy_s"), 1),
             fmt(change_deploy(results, name).get("seconds"), 1), fmt(total_mb(stack["memory_idle"]))]
        )  # fmt: skip
    header = [
        "stack",
        "`/healthz` req/s",
        "p99 ms",
        "`/` req/s",
        "p99 ms",
        "app layers MB",
        "to healthy s",
        "deploy s",
        "idle MB",
    ]
    loads = [load for figures in serving.values() for load in figures["load"]]
    return (
        markdown_table(header, rows)
        + f"\n\nThrough nginx (the peer has none: direct), {results['settings']['connections']} connections, "
        f"medians of {results['settings']['rounds']} rounds; measured {results['date']} on "
        f"{results['machine']['cores']} cores with a load average of {min(loads):.1f} to {max(loads):.1f}. "
        "*deploy s*: `scripts/deploy` of a one-line change to a fresh server, until the new release serves."
    )


def write_headline(results: dict, readme: Path) -> None:
    """The figures between the README's markers, if it has them."""
    text = readme.read_text()
    if BEGIN in text and END in text:
        generated = f"{BEGIN}\n\n{headline(results)}\n\n{END}"
        readme.write_text(
            re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: generated, text, flags=re.S)
        )
