"""Logs, error reports and metrics (docs/observability.md).

Every log line is one JSON object (LOG_FORMAT=json, the default in production)
or one readable line (LOG_FORMAT=text), from the app and from Gunicorn alike,
and carries the id of the request it belongs to: nginx sets X-Request-ID,
RequestIdMiddleware makes it the id of whatever the app logs while serving that
request. Errors also go to Sentry when SENTRY_DSN is set. Each request is
counted and timed by route, method and status (see "Metrics" below).
"""

import glob
import logging
import os
import re
import shutil
import threading
import time
import uuid
from contextvars import ContextVar

import sentry_sdk

# The id of the request being served by this thread, None outside a request.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# nginx passes on an id only in this form (nginx/templates/default.conf.template):
# anything else reaching the app did not come through it, and gets a new id.
VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,128}")

LOG_FORMATS = ("json", "text")


class RequestIdMiddleware:
    """WSGI middleware: the request's id, for the logs, the error pages and Sentry."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        # Without nginx in front (the development server), the app makes one up.
        current = incoming if VALID_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        environ["HTTP_X_REQUEST_ID"] = current
        token = request_id.set(current)
        try:
            return self.app(environ, start_response)
        finally:
            request_id.reset(token)


class RequestFieldsFilter(logging.Filter):
    """Adds request_id to every record logged while a request is served.

    Gunicorn writes its access line after the app has returned: its record
    carries the request's headers and figures as arguments, which become the
    same fields nginx's access log has (method, path, status, duration_ms...).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "gunicorn.access" and isinstance(record.args, dict):
            atoms = record.args
            # The id RequestIdMiddleware settled on, as the app's lines have it.
            record.request_id = atoms.get("{http_x_request_id}e") or atoms.get("{x-request-id}i")
            record.client = atoms.get("h")
            record.method = atoms.get("m")
            record.path = atoms.get("U")
            record.status = int(atoms["s"]) if str(atoms.get("s", "")).isdigit() else atoms.get("s")
            record.bytes = atoms.get("B")
            record.duration_ms = atoms.get("M")
            record.user_agent = atoms.get("a")
        elif getattr(record, "request_id", None) is None:
            current = request_id.get()
            if current is not None:
                record.request_id = current
        return True


def logging_config(log_format: str, level: str, loggers: dict | None = None) -> dict:
    """The dictConfig for the app, its management commands and Gunicorn: one
    handler on stderr, where `docker compose logs` collects it."""
    if log_format not in LOG_FORMATS:
        raise RuntimeError(f"LOG_FORMAT must be json or text, not {log_format!r}: fix it in .env.")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_fields": {"()": f"{__name__}.RequestFieldsFilter"}},
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": "%(levelname)s %(name)s %(message)s",
                "rename_fields": {"levelname": "level", "name": "logger"},
                "timestamp": "time",
            },
            "text": {
                "()": "logging.Formatter",
                "fmt": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
                "defaults": {"request_id": "-"},
            },
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": log_format,
                "filters": ["request_fields"],
            }
        },
        "root": {"handlers": ["console"], "level": level.upper()},
        "loggers": loggers or {},
    }


def init_sentry(release: str) -> bool:
    """Reports unhandled errors to Sentry when SENTRY_DSN is set; does nothing,
    and opens no connection, when it is not. True when reporting is on."""
    dsn = os.environ.get("SENTRY_DSN", "").strip()
    if not dsn:
        return False
    sentry_sdk.init(
        dsn=dsn,
        release=release,
        environment=os.environ.get("SENTRY_ENVIRONMENT") or "production",
        # Performance tracing and profiling cost time on every sampled request:
        # off unless asked for, as a fraction of requests (0.1 = one in ten).
        traces_sample_rate=_rate("SENTRY_TRACES_SAMPLE_RATE"),
        profiles_sample_rate=_rate("SENTRY_PROFILES_SAMPLE_RATE"),
        # Personal data (cookies, IP addresses, user names, request bodies)
        # stays out: the SDK's default for requests, and no local variables in
        # stack traces, where a request's environ or a user's record would be.
        include_local_variables=False,
        before_send=_tag_request_id,
    )
    return True


def _tag_request_id(event: dict, hint: dict) -> dict:
    # The same id as in the logs and on the error page the user saw.
    current = request_id.get()
    if current is not None:
        event.setdefault("tags", {})["request_id"] = current
    return event


def _rate(name: str) -> float:
    value = os.environ.get(name, "").strip() or "0"
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not 0.0 <= rate <= 1.0:
        raise RuntimeError(f"{name} must be a number from 0 to 1, not {value!r}: fix it in .env.")
    return rate


## Metrics ####################################################################
#
# Gunicorn's workers are separate processes: each writes its figures to files
# in PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py sets it, on the /tmp tmpfs),
# and the master process adds them up when Prometheus asks, on METRICS_PORT.
# nginx never proxies that port: metrics are reachable on the containers'
# networks only. prometheus_client is imported on first use, once Gunicorn
# has set the directory, since it picks its mode when imported.

METRICS_PORT = 8001

# Request latencies, in seconds, from a cached page to a slow report.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Anything else is counted as "other": a client must not invent label values.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Where the framework leaves the route a request matched, in the WSGI environ.
ROUTE_KEY = "app.route"


class _RequestLatency:
    """The request histogram, made on a worker's first request (once Gunicorn
    has set the directory), and its series by label values, kept here since
    Histogram.labels() checks and locks on every call. Its `_count` is the
    number of requests: a separate counter would add to each request's writes."""

    def __init__(self):
        self.histogram = None
        self.by_labels = {}
        # A worker's threads can serve their first requests at the same
        # moment: one of them makes the histogram, since registering it twice fails.
        self.lock = threading.Lock()

    def series(self, labels: tuple[str, str, str]):
        series = self.by_labels.get(labels)
        if series is None:
            with self.lock:
                if self.histogram is None:
                    from prometheus_client import Histogram

                    self.histogram = Histogram(
                        "http_request_duration_seconds",
                        "Time to answer a request, by route, method and status.",
                        ("route", "method", "status"),
                        buckets=LATENCY_BUCKETS,
                    )
                series = self.by_labels.setdefault(labels, self.histogram.labels(*labels))
        return series


_request_latency = _RequestLatency()


def record_request(route: str | None, method: str, status: int | str, seconds: float) -> None:
    """Counts and times one answered request. The route is the pattern the
    request matched (/items/<id>), never its path, so that the series stay
    few; requests that matched none are counted together as "unmatched"."""
    labels = (route or "unmatched", method if method in METHODS else "other", str(status))
    _request_latency.series(labels).observe(seconds)


class MetricsMiddleware:
    """WSGI middleware (Flask): counts and times each request. The app puts
    the route it matched in environ[ROUTE_KEY]."""

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        start = time.perf_counter()
        status = "500"

        def note_status(line, headers, *args):
            nonlocal status
            status = line.split(" ", 1)[0]
            return start_response(line, headers, *args)

        try:
            return self.app(environ, note_status)
        finally:
            method = environ.get("REQUEST_METHOD", "")
            record_request(environ.get(ROUTE_KEY), method, status, time.perf_counter() - start)


class DjangoMetricsMiddleware:
    """Django middleware, first in MIDDLEWARE: counts and times each request
    by the URL pattern it resolved to. The health checks are answered before
    URL resolution (HealthCheckMiddleware): they keep their own path."""

    unresolved_routes = frozenset({"/healthz", "/readyz"})

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        start = time.perf_counter()
        response = self.get_response(request)
        match = request.resolver_match
        if match is not None:
            route = "/" + match.route
        else:
            route = request.path_info if request.path_info in self.unresolved_routes else None
        record_request(route, request.method, response.status_code, time.perf_counter() - start)
        return response


def metrics_dir() -> str:
    return os.environ["PROMETHEUS_MULTIPROC_DIR"]


def clear_metrics() -> None:
    """Gunicorn's on_starting: a restarted container starts from zero, as
    Prometheus expects of counters after a restart."""
    shutil.rmtree(metrics_dir(), ignore_errors=True)
    os.makedirs(metrics_dir())


# Held while a worker's figures move to the archive, so a scrape never sees
# them twice or not at all.
_archive_lock = threading.Lock()


def archive_worker_metrics(pid: int) -> None:
    """Gunicorn's child_exit: adds an exited worker's counts to one archive
    file per kind and deletes its own files. Gunicorn replaces each worker
    after max_requests: without this, a file per worker ever started would
    pile up in memory and be read at every scrape."""
    from prometheus_client.mmap_dict import MmapedDict

    with _archive_lock:
        for kind in ("counter", "histogram"):
            path = os.path.join(metrics_dir(), f"{kind}_{pid}.db")
            if not os.path.exists(path):
                continue
            archive = MmapedDict(os.path.join(metrics_dir(), f"{kind}_archive.db"))
            try:
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(path):
                    archive.write_value(key, archive.read_value(key)[0] + value, timestamp)
            finally:
                archive.close()
            os.remove(path)


class _ArchiveSafeCollector:
    """Every worker's files and the archive, added up, read under the archive's lock."""

    def __init__(self, path: str):
        from prometheus_client.multiprocess import MultiProcessCollector

        self.path = path
        self.merge = MultiProcessCollector.merge

    def collect(self):
        with _archive_lock:
            return self.merge(glob.glob(os.path.join(self.path, "*.db")), accumulate=True)


def serve_metrics(port: int = METRICS_PORT) -> None:
    """Gunicorn's when_ready: the master process serves every worker's
    figures, added up, in a thread of its own."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(_ArchiveSafeCollector(metrics_dir()))
    start_http_server(port, registry=registry)
