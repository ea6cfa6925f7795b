"""The benchmark's pure parts (scripts/benchmarking/figures.py, report.py):
wrk's and docker stats' output parsed, rounds summarised, the page's
generated part written between its markers with the hand-written text kept.

No Docker and no clock: the benchmark itself (`nox -s benchmark`) measures,
and is never run as a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from benchmarking import report  # noqa: E402
from benchmarking.docker import WRK_DOCKERFILE  # noqa: E402
from benchmarking.figures import (  # noqa: E402
    WrkOutputError,
    load_series,
    markdown_table,
    memory_bytes,
    milliseconds,
    parse_wrk,
    ratio,
    summarise,
)
from benchmarking.variants import apply  # noqa: E402

# What wrk 4.1 (Debian's) prints with --latency, failures included.
WRK_OUTPUT = """\
Running 10s test @ http://nginx/healthz
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    20.86ms   35.10ms 612.33ms   94.12%
    Req/Sec     1.74k   210.45     2.01k    81.00%
  Latency Distribution
     50%   14.02ms
     75%   18.50ms
     90%   27.91ms
     99%  233.07ms
  17342 requests in 10.02s, 3.41MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:   1730.74
Transfer/sec:    348.21KB
"""


def test_wrk_output_is_parsed():
    figures = parse_wrk(WRK_OUTPUT)
    assert figures["requests"] == 17342
    assert figures["seconds"] == pytest.approx(10.02)
    assert figures["bytes"] == round(3.41 * 1024**2)
    assert figures["rps"] == pytest.approx(1730.74)
    assert figures["p50_ms"] == pytest.approx(14.02)
    assert figures["p99_ms"] == pytest.approx(233.07)
    assert figures["socket_errors"] == 5
    assert figures["non_2xx"] == 7


def test_wrk_output_without_failures_counts_none():
    clean = "\n".join(
        line for line in WRK_OUTPUT.splitlines() if "errors" not in line and "Non-2xx" not in line
    )
    figures = parse_wrk(clean)
    assert (figures["socket_errors"], figures["non_2xx"]) == (0, 0)


def test_wrk_output_without_latency_distribution_is_refused():
    without = "\n".join(line for line in WRK_OUTPUT.splitlines() if "%   " not in line)
    with pytest.raises(WrkOutputError, match="--latency"):
        parse_wrk(without)


@pytest.mark.parametrize(
    ("text", "ms"), [("412.00us", 0.412), ("1.23ms", 1.23), ("2.01s", 2010.0), ("1.50m", 90_000.0)]
)
def test_wrk_durations_in_every_unit(text, ms):
    assert milliseconds(text) == pytest.approx(ms)


def test_docker_stats_memory():
    assert memory_bytes("41.2MiB / 512MiB") == round(41.2 * 1024**2)
    assert memory_bytes("1.5GiB / 2GiB") == round(1.5 * 1024**3)
    assert memory_bytes("980KiB / 16MiB") == 980 * 1024
    with pytest.raises(ValueError, match="docker stats"):
        memory_bytes("-- / --")


def test_rounds_are_summarised_by_median_and_spread():
    summary = summarise([1800.0, 1600.0, 2000.0])
    assert summary["median"] == 1800.0
    assert (summary["min"], summary["max"], summary["n"]) == (1600.0, 2000.0, 3)
    assert summary["spread_pct"] == pytest.approx(400 / 1800 * 100)
    with pytest.raises(ValueError):
        summarise([])


def run(stack: str, path: str, route: str, round_number: int, rps: float, p99: float) -> dict:
    return {
        "series": f"{stack} {path} {route}", "stack": stack, "path": path, "route": route,
        "round": round_number, "rps": rps, "p50_ms": p99 / 4, "p99_ms": p99, "requests": int(rps * 10),
        "socket_errors": 0, "non_2xx": 1 if round_number == 2 else 0,
        "load_before": 1.0 + round_number, "load_after": 1.5 + round_number,
    }  # fmt: skip


RUNS = [
    run(stack, "/healthz", route, n, rps * (1 + n / 100), 20.0 + n)
    for n in (1, 2, 3)
    for stack, route, rps in (
        ("flask", "direct", 2000.0),
        ("flask", "nginx", 1900.0),
        ("peer", "direct", 2100.0),
    )
]


def test_runs_are_grouped_by_series_over_rounds():
    summary = load_series(RUNS)
    assert list(summary) == ["flask /healthz direct", "flask /healthz nginx", "peer /healthz direct"]
    nginx = summary["flask /healthz nginx"]
    assert nginx["rps"]["median"] == pytest.approx(1900.0 * 1.02)
    assert nginx["p99_ms"]["median"] == pytest.approx(22.0)
    assert nginx["failures"] == 1
    assert nginx["load"] == [2.0, 3.0, 4.0, 4.5]
    assert ratio(summary, "flask", "/healthz", "nginx", "direct") == pytest.approx(0.95)
    assert ratio(summary, "django", "/healthz", "nginx", "direct") is None


def test_markdown_table_right_aligns_numbers_only():
    table = markdown_table(["stack", "req/s"], [["flask", "1,730 (1,702-1,781)"], ["peer", "2,100"]])
    assert table.splitlines()[:2] == ["| stack | req/s |", "|---|---:|"]
    assert table.splitlines()[2] == "| flask | 1,730 (1,702-1,781) |"


def results() -> dict:
    stack = {
        "timings": {"copy_to_healthy_s": 41.0, "build_cold_s": 30.0, "up_cold_s": 9.0, "build_warm_s": 2.5},
        "app_layers_mb": 52.3,
        "memory_idle": {"app": 200 * 1024**2, "db": 40 * 1024**2},
        "memory_load": {"app": 230 * 1024**2, "db": 60 * 1024**2},
    }
    return {
        "date": "2026-01-01 12:00 UTC",
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "memory_gb": 4.0,
            "kernel": "6.1",
            "docker": "26.1",
            "load_at_start": [0.5, 0.5, 0.5],
        },  # fmt: skip
        "peer_commit": "0123456789abcdef",
        "settings": {"seconds": 10.0, "warmup": 3.0, "rounds": 3, "connections": 32},
        "stacks": {"flask": stack, "peer": {**stack, "app_layers_mb": 187.0}},
        "runs": RUNS,
        "serving": load_series(RUNS),
        "deploys": {
            "flask": {
                "provision": {"seconds": 16.1, "received_mb": 106.2},
                "first_deploy": {
                    "seconds": 61.4,
                    "received_mb": 493.8,
                    "layers_pulled": 10,
                    "layers_present": 0,
                },
                "change_deploy": {
                    "seconds": 24.7,
                    "received_mb": 0.36,
                    "layers_pulled": 1,
                    "layers_present": 9,
                },
            }
        },
    }


def test_page_gets_the_figures_between_its_markers_and_keeps_the_rest(tmp_path):
    page = tmp_path / "README.md"
    page.write_text(
        f"# Benchmarks\n\nWritten by hand.\n\n{report.BEGIN}\nold figures\n{report.END}\n\nAfter.\n"
    )
    report.write(results(), tmp_path, plots=False)
    text = page.read_text()
    assert text.startswith("# Benchmarks\n\nWritten by hand.\n\n") and text.endswith("\n\nAfter.\n")
    assert "old figures" not in text
    assert "on Test CPU, 2 cores" in text
    assert "| flask | `/healthz` via nginx / direct | 0.95x | ≥ 0.92x | met |" in text
    assert "| flask | app image layers | 52.3 MB | < 40 MB | **missed** |" in text
    assert "| flask | whole stack's memory, idle | 240 MB | < 350 MB | met |" in text
    assert "| flask | deploy of a one-line change, to serving | 24.7 s | < 30 s | met |" in text
    assert "| flask | what that deploy sends the server | 0.4 MB | < 10 MB | met |" in text
    assert "| flask | first deploy (every image) | 61.4 | 493.8 | 10 of 10 |" in text
    assert "| flask | provision a fresh server | 16.1 | 106.2 |  |" in text
    # The peer's share: our Flask stack's median over the peer's.
    assert f"| `/healthz` | flask, nginx | 1,938 | {1938 / 2142:.2f}x | 22.0 |" in text
    assert json.loads((tmp_path / "results.json").read_text())["peer_commit"] == "0123456789abcdef"


def test_a_run_without_deploys_says_so(tmp_path):
    figures = results()
    del figures["deploys"]
    text = report.generated_part(figures, [])
    assert "### Deploys\n\nThe project's own" in text and "Not measured in this run (`--no-deploy`)." in text
    assert "| flask | deploy of a one-line change, to serving | n/a | < 30 s |  |" in text


def test_page_without_markers_is_refused(tmp_path):
    (tmp_path / "README.md").write_text("# Benchmarks\n\nNo markers.\n")
    with pytest.raises(SystemExit, match="benchmark: begin"):
        report.write(results(), tmp_path, plots=False)


def test_committed_page_has_its_markers_and_its_figures():
    page = (ROOT / "docs" / "benchmarks" / "README.md").read_text()
    assert page.count(report.BEGIN) == page.count(report.END) == 1
    figures = json.loads((ROOT / "docs" / "benchmarks" / "results.json").read_text())
    assert figures["date"] in page, "README.md's figures are not those of results.json: rerun the benchmark"


def test_load_generator_image_passes_hadolint(tmp_path):
    (tmp_path / "Dockerfile").write_text(WRK_DOCKERFILE)
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--ignore", "DL3008", "Dockerfile"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_headline_names_each_stack_and_the_load(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Template\n\n{report.BEGIN}\n{report.END}\n\n## Layout\n")
    report.write_headline(results(), readme)
    text = readme.read_text()
    assert "| flask | 1,938 | 22.0 | n/a | n/a | 52.3 | 41.0 | 24.7 | 240 |" in text
    assert "| peer | 2,142 | 22.0 | n/a | n/a | 187.0 | 41.0 | n/a | 240 |" in text
    assert "load average of 2.0 to 4.5" in text
    assert text.endswith(f"{report.END}\n\n## Layout\n")


def test_budgets_compare_with_the_variants_without_metrics_and_with_monitoring(tmp_path):
    figures = results()
    base = figures["stacks"]["flask"]
    overlay = {"prometheus": 90 * 1024**2, "alertmanager": 30 * 1024**2}
    figures["stacks"]["flask+monitoring"] = {
        **base,
        "memory_idle": {**base["memory_idle"], **overlay},
        "memory_load": {**base["memory_load"], **overlay, "prometheus": 120 * 1024**2},
    }
    bare = [run("flask+no-metrics", "/healthz", "direct", n, 2100.0 * (1 + n / 100), 20.0) for n in (1, 2, 3)]
    figures["runs"] = RUNS + bare
    figures["serving"] = load_series(figures["runs"])
    base["metrics_us"] = 10.0
    table = report.targets_table(figures)
    cost = (1 - 2000 / 2100) * 100
    assert f"| flask | request metrics' cost, `/healthz` direct | {cost:.1f} % | < 5 % | met |" in table
    # 10 µs of the cores' time per request, at the rate measured direct.
    rate = figures["serving"]["flask /healthz direct"]["rps"]["median"]
    share = 10.0 * rate / (figures["machine"]["cores"] * 1e6) * 100
    assert "| flask | counting one request, in process | 10.0 µs |  |  |" in table
    assert f"| flask | request metrics' cost, from that time | {share:.2f} % | < 5 % | met |" in table
    assert "| flask | monitoring overlay's memory | 150 MB | < 200 MB | met |" in table
    # Without the variants (--no-budgets), no figure rather than a wrong one.
    assert "| flask | monitoring overlay's memory | n/a | < 200 MB |  |" in report.targets_table(results())


def test_a_variant_edits_the_one_file_its_glob_names(tmp_path):
    (tmp_path / "shop").mkdir()
    module = tmp_path / "shop" / "observability.py"
    module.write_text("def record_request():\n    _request_latency.series(labels).observe(seconds)\n")
    assert apply("no-metrics", tmp_path) == {}
    assert "    return  # no metrics\n" in module.read_text()
    module.write_text("def record_request():\n    pass\n")
    with pytest.raises(SystemExit, match="no longer has"):
        apply("no-metrics", tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "observability.py").write_text("")
    with pytest.raises(SystemExit, match="matches 2 files"):
        apply("no-metrics", tmp_path)
