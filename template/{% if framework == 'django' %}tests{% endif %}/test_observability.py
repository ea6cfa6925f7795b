"""Logs with request ids, error pages that show them, and Sentry reports
(observability.py in the app, docs/observability.md).

Requests go through config.wsgi.application, as Gunicorn serves it: the
request id is set there, outside Django's middleware.
"""

import importlib
import io
import json
import logging
import logging.config
import sys
from wsgiref.util import setup_testing_defaults

import pytest
import sentry_sdk
from django.urls import path
from sentry_ingest import FakeIngest

import config.settings
import config.urls
from config.wsgi import application

REQUEST_ID = "0123456789abcdef0123456789abcdef"


def fail(request):
    logging.getLogger("tests").info("about to fail")
    return 1 / 0


# The app's URLs and error pages, and a failing page for these tests only.
urlpatterns = [path("_test/fail", fail), *config.urls.urlpatterns]
handler404 = config.urls.handler404
handler500 = config.urls.handler500


@pytest.fixture
def configure(settings, monkeypatch):
    """Runs config/settings.py again with the given environment and applies its
    LOGGING, with the log handler writing to a buffer; restores both after."""
    settings.ROOT_URLCONF = __name__
    settings.ALLOWED_HOSTS = ["localhost"]
    output = io.StringIO()

    def configure(**env):
        # The INFO lines these tests look for, whatever LOG_LEVEL .env sets.
        monkeypatch.setenv("LOG_LEVEL", "INFO")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        module = importlib.reload(config.settings)
        logging.config.dictConfig(module.LOGGING)
        for handler in logging.getLogger().handlers:
            if handler.name == "console":
                handler.setStream(output)
        return module, output

    yield configure
    monkeypatch.undo()
    logging.config.dictConfig(importlib.reload(config.settings).LOGGING)
    for handler in logging.getLogger().handlers:
        if handler.name == "console":
            handler.setStream(sys.stderr)


@pytest.fixture
def ingest(monkeypatch):
    """A fake Sentry; the SDK is shut down afterwards."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with FakeIngest() as server:
        yield server
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


def get(url_path: str, request_id: str = REQUEST_ID, **headers: str) -> tuple[str, str]:
    """GET through the WSGI application: (status line, body)."""
    environ = {
        "PATH_INFO": url_path,
        "HTTP_HOST": "localhost",
        "HTTP_X_REQUEST_ID": request_id,
        **headers,
    }
    setup_testing_defaults(environ)
    started = {}

    def start_response(status, headers, exc_info=None):
        started["status"] = status

    response = application(environ, start_response)
    try:
        body = b"".join(response).decode()
    finally:
        response.close()
    return started["status"], body


def records(output: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in output.getvalue().splitlines()]


def test_a_failing_request_logs_json_lines_with_its_id_and_one_traceback(configure):
    _, output = configure(LOG_FORMAT="json")
    status, _ = get("/_test/fail")
    assert status.startswith("500")
    logged = [r for r in records(output) if r.get("request_id") == REQUEST_ID]
    assert [r["message"] for r in logged] == ["about to fail", "Internal Server Error: /_test/fail"]
    error = logged[-1]
    assert error["level"] == "ERROR"
    assert error["exc_info"].startswith("Traceback (most recent call last):")
    assert error["exc_info"].rstrip().endswith("ZeroDivisionError: division by zero")


def test_error_pages_show_the_request_id(configure):
    configure(LOG_FORMAT="json")
    for url_path, status in (("/_test/fail", "500"), ("/no-such-page", "404")):
        got, body = get(url_path)
        assert got.startswith(status)
        assert f'<code id="request-id">{REQUEST_ID}</code>' in body


def test_without_a_valid_id_the_app_makes_one(configure):
    _, output = configure(LOG_FORMAT="json")
    get("/_test/fail", request_id="not an id; forged")
    ids = {r.get("request_id") for r in records(output)}
    assert len(ids) == 1
    assert len(ids.pop()) == 32


def test_text_format_is_one_readable_line_per_record(configure):
    _, output = configure(LOG_FORMAT="text")
    get("/_test/fail")
    assert f"INFO tests [{REQUEST_ID}] about to fail" in output.getvalue()


def test_an_unknown_log_format_is_refused(configure):
    with pytest.raises(RuntimeError, match="LOG_FORMAT must be json or text, not 'xml'"):
        configure(LOG_FORMAT="xml")


def test_sentry_gets_one_event_with_the_release_and_request_id(configure, ingest):
    env = {"SENTRY_DSN": ingest.dsn, "APP_RELEASE": "1a2b3c4", "SENTRY_ENVIRONMENT": "staging"}
    module, _ = configure(**env)
    assert module.SENTRY_ENABLED
    status, _ = get(
        "/_test/fail", HTTP_COOKIE="preference=cookie-secret", HTTP_X_FORWARDED_FOR="203.0.113.9"
    )
    assert status.startswith("500")
    sentry_sdk.flush(timeout=10)
    events = ingest.events()
    assert len(events) == 1, events
    event = events[0]
    assert event["release"] == "1a2b3c4"
    assert event["environment"] == "staging"
    assert event["tags"]["request_id"] == REQUEST_ID
    assert event["exception"]["values"][-1]["type"] == "ZeroDivisionError"
    # No personal data: neither the client's address nor its cookies.
    sent = json.dumps(event)
    assert "203.0.113.9" not in sent and "cookie-secret" not in sent


def test_sentry_is_inert_without_a_dsn(configure, ingest, monkeypatch):
    monkeypatch.delenv("SENTRY_DSN", raising=False)
    module, _ = configure()
    assert not module.SENTRY_ENABLED
    get("/_test/fail")
    sentry_sdk.flush(timeout=2)
    assert not sentry_sdk.get_client().is_active()
    assert ingest.envelopes == []
