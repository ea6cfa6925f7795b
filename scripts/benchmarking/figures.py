"""The benchmark's pure parts: wrk's and docker stats' output parsed,
rounds summarised, the Markdown table written. No Docker, no clock."""

from __future__ import annotations

import re
import statistics

# wrk prints durations as 412.00us, 1.23ms, 2.01s, 1.50m and sizes as
# 512.00B, 3.45MB; docker stats prints memory as 41.2MiB / 512MiB.
TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
MEMORY_UNITS = {"B": 1, "kB": 1e3, "KiB": 1024, "MB": 1e6, "MiB": 1024**2, "GB": 1e9, "GiB": 1024**3}


class WrkOutputError(ValueError):
    """wrk's output lacks a line the benchmark relies on."""


def milliseconds(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not match:
        raise WrkOutputError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * TIME_UNITS[match.group(2)]


def parse_wrk(output: str) -> dict:
    """Requests/s, latency percentiles (ms) and failures from `wrk --latency`."""

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if not match:
            raise WrkOutputError(
                f"wrk's output has no line matching {pattern!r} (run with --latency):\n{output}"
            )
        return match

    total = find(r"^\s*(\d+) requests in ([0-9.]+[a-z]+), ([0-9.]+)([KMGT]?B) read")
    result = {
        "requests": int(total.group(1)),
        "seconds": milliseconds(total.group(2)) / 1e3,
        "bytes": round(float(total.group(3)) * SIZE_UNITS[total.group(4)]),
        "rps": float(find(r"^Requests/sec:\s+([0-9.]+)").group(1)),
    }
    for percentile in ("50", "75", "90", "99"):
        result[f"p{percentile}_ms"] = milliseconds(find(rf"^\s+{percentile}%\s+(\S+)").group(1))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    result["socket_errors"] = sum(int(n) for n in sockets.groups()) if sockets else 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    return result


def memory_bytes(usage: str) -> int:
    """The used part of docker stats' MemUsage, "41.2MiB / 512MiB"."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kKMG]?i?B)\s*(?:/.*)?", usage)
    if not match or match.group(2) not in MEMORY_UNITS:
        raise ValueError(f"not a docker stats memory figure: {usage!r}")
    return round(float(match.group(1)) * MEMORY_UNITS[match.group(2)])


def summarise(values: list[float]) -> dict:
    """Median and spread of a measurement's rounds; spread is (max - min) / median, in %."""
    if not values:
        raise ValueError("no rounds to summarise")
    median = statistics.median(values)
    spread = (max(values) - min(values)) / median * 100 if median else 0.0
    return {"median": median, "min": min(values), "max": max(values), "spread_pct": spread, "n": len(values)}


def load_series(runs: list[dict]) -> dict[str, dict]:
    """The runs grouped by series (e.g. "flask /healthz proxied"), each metric summarised over rounds."""
    grouped: dict[str, list[dict]] = {}
    for run in runs:
        grouped.setdefault(run["series"], []).append(run)
    summary = {}
    for series, rounds in grouped.items():
        failures = sum(run["socket_errors"] + run["non_2xx"] for run in rounds)
        summary[series] = {
            **{key: rounds[0][key] for key in ("stack", "path", "route")},
            "rps": summarise([run["rps"] for run in rounds]),
            "p99_ms": summarise([run["p99_ms"] for run in rounds]),
            "p50_ms": summarise([run["p50_ms"] for run in rounds]),
            "failures": failures,
            "requests": sum(run["requests"] for run in rounds),
            "load": [run["load_before"] for run in rounds] + [rounds[-1]["load_after"]],
        }
    return summary


def ratio(summary: dict[str, dict], stack: str, path: str, over: str, under: str) -> float | None:
    """Median throughput of one route over another's, for one stack and path."""
    top = summary.get(f"{stack} {path} {over}")
    bottom = summary.get(f"{stack} {path} {under}")
    if not top or not bottom or not bottom["rps"]["median"]:
        return None
    return top["rps"]["median"] / bottom["rps"]["median"]


def spread_text(figure: dict, digits: int = 0) -> str:
    """1,734 (1,702-1,781): the median with its rounds' range."""
    return f"{figure['median']:,.{digits}f} ({figure['min']:,.{digits}f}-{figure['max']:,.{digits}f})"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table, numbers right-aligned."""
    numeric = [
        all(re.match(r"^[-0-9.,x%( )~]+$|^$|^n/a$", row[i]) for row in rows) for i in range(len(header))
    ]
    align = ["---:" if flag and i else "---" for i, flag in enumerate(numeric)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def serving_table(summary: dict[str, dict]) -> str:
    """One row per series: requests/s and p99 as median (range), failures, and the load average."""
    rows = []
    for figures in summary.values():
        rows.append(
            [
                f"{figures['stack']}",
                f"`{figures['path']}`",
                figures["route"],
                spread_text(figures["rps"]),
                spread_text(figures["p99_ms"], 1),
                str(figures["failures"]),
                " ".join(f"{load:.1f}" for load in figures["load"]),
            ]
        )
    header = [
        "stack",
        "path",
        "route",
        "req/s, median (range)",
        "p99 ms, median (range)",
        "failed",
        "load avg",
    ]
    return markdown_table(header, rows)
