"""Logs and error reports (docs/observability.md).

Every log line is one JSON object (LOG_FORMAT=json, the default in production)
or one readable line (LOG_FORMAT=text), from the app and from Gunicorn alike,
and carries the id of the request it belongs to: nginx sets X-Request-ID,
RequestIdMiddleware makes it the id of whatever the app logs while serving that
request. Errors also go to Sentry when SENTRY_DSN is set.
"""

import logging
import os
import re
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
