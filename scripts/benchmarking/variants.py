"""Tuning options, booted as extra stacks beside the template's own and
measured in the same rounds (`--variant NAME`): A/B, back to back.

Each is the project as rendered, with Gunicorn settings in GUNICORN_CMD_ARGS
(which override gunicorn.conf.py), text replaced in its files (a path may be a
glob matching one file), and/or more of its compose files with the settings
they need. One whose replacement no longer matches fails loudly rather than
measuring the unchanged project.

BUDGETS are booted in every run (unless --no-budgets): what the request
metrics cost (the app without them) and what the monitoring overlay adds.
"""

from __future__ import annotations

from pathlib import Path

VARIANTS: dict[str, dict] = {
    # Worker models: the template's gthread (2 x CPUs + 1 workers, 2 threads each).
    "sync": {"gunicorn": "--worker-class sync"},
    "sync4": {"gunicorn": "--worker-class sync --workers 4"},
    "gthread3x4": {"gunicorn": "--workers 3 --threads 4"},
    "gthread2x8": {"gunicorn": "--workers 2 --threads 8"},
    "gthread5x1": {"gunicorn": "--threads 1"},
    "keepalive2": {"gunicorn": "--keep-alive 2"},
    # Gunicorn's access log off (nginx logs every request too).
    "no-accesslog": {"gunicorn": "--access-logfile /dev/null"},
    # nginx: buffered access log, more idle upstream connections, none at all.
    "nginx-logbuffer": {
        "edit": {
            "nginx/nginx.conf": (
                "access_log  /var/log/nginx/access.log  json;",
                "access_log  /var/log/nginx/access.log  json  buffer=64k  flush=1s;",
            )
        }
    },
    # No access log at all, nginx's or Gunicorn's: what logging every request
    # through Docker's log driver costs (a bound, not a setting to ship).
    "no-logs": {
        "gunicorn": "--access-logfile /dev/null",
        "edit": {"nginx/nginx.conf": ("access_log  /var/log/nginx/access.log  json;", "access_log  off;")},
    },
    # One nginx worker rather than one per core: fewer processes on two cores.
    "nginx-1worker": {"edit": {"nginx/nginx.conf": ("worker_processes  auto;", "worker_processes  1;")}},
    "nginx-keepalive64": {
        "edit": {"nginx/templates/default.conf.template": ("    keepalive 16;", "    keepalive 64;")}
    },
    "nginx-no-keepalive": {"edit": {"nginx/templates/default.conf.template": ("    keepalive 16;\n", "")}},
    # The app counting no request: the baseline for the metrics' cost.
    "no-metrics": {
        "edit": {
            "*/observability.py": (
                "    _request_latency.series(labels).observe(seconds)\n",
                "    return  # no metrics\n",
            )
        }
    },
    # gthread accepting a connection only with a thread free (worker_connections
    # = threads), so that the kernel hands each to an idle worker rather than
    # queueing it behind a busy one; nginx then opens one per request, since
    # an idle kept-alive connection would hold a slot. Direct figures are not
    # meaningful here: wrk's kept-alive connections hold every slot.
    "gthread-bounded": {
        "gunicorn": "--worker-connections 2",
        "edit": {"nginx/templates/default.conf.template": ("    keepalive 16;\n", "")},
    },
    # compose.monitoring.yaml on top: Prometheus, Alertmanager and the exporters.
    "monitoring": {
        "files": ("compose.monitoring.yaml",),
        "env": {"MONITORING_DB_PASSWORD": "benchmark-only-password"},
        "free_ports": ("PROMETHEUS_PORT", "ALERTMANAGER_PORT"),
    },
}
BUDGETS = ("no-metrics", "monitoring")


def apply(name: str, project: Path) -> dict[str, str]:
    """Make the variant's edits in a rendered project; the environment the app needs for it."""
    variant = VARIANTS[name]
    for path, (old, new) in variant.get("edit", {}).items():
        files = list(project.glob(path))
        if len(files) != 1:
            raise SystemExit(
                f"variant {name}: {path} matches {len(files)} files; update scripts/benchmarking/variants.py"
            )
        file = files[0]
        text = file.read_text()
        if old not in text:
            raise SystemExit(
                f"variant {name}: {path} no longer has {old!r}; update scripts/benchmarking/variants.py"
            )
        file.write_text(text.replace(old, new, 1))
    return {"GUNICORN_CMD_ARGS": variant["gunicorn"]} if "gunicorn" in variant else {}


def override(environment: dict[str, str]) -> str:
    """A compose file that adds the environment to the app (JSON is YAML)."""
    import json

    return json.dumps({"services": {"app": {"environment": environment}}}, indent=2) + "\n"
