"""Structured logs with request ids, on the real production stack (compose.yaml
only), and nginx's JSON log format checked without Docker.

One stack per framework serves every stack test here, in order: the healthy
start is checked first, the tests that stop the database or the app come last.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest
import requests

from conftest import FRAMEWORKS, ROOT, Stack, booted, render

REQUEST_ID = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module", params=FRAMEWORKS)
def stack(request, tmp_path_factory):
    project = render(tmp_path_factory.mktemp(request.param) / "project", framework=request.param)
    with booted(project, request) as stack:
        yield stack


def service_logs(stack: Stack, service: str) -> list[str]:
    result = stack.compose("logs", "--no-color", "--no-log-prefix", service)
    # Compose starts each line with the terminal's clear-line code, even into a pipe.
    text = (result.stdout + result.stderr).replace("\x1b[2K", "")
    return [line for line in text.splitlines() if line.strip()]


def json_lines(stack: Stack, service: str) -> list[dict]:
    """A service's log lines that are JSON objects."""
    records = []
    for line in service_logs(stack, service):
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def wait_for_records(stack: Stack, service: str, request_id: str, timeout: float = 15) -> list[dict]:
    """The service's JSON lines for one request, once there are some."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in json_lines(stack, service) if r.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.mark.docker
def test_a_healthy_start_logs_json_only_and_no_error(stack: Stack):
    lines = service_logs(stack, "app")
    assert lines, "the app logged nothing"
    not_json = [line for line in lines if not line.startswith("{")]
    assert not not_json, f"app log lines that are not JSON: {not_json}"
    records = [json.loads(line) for line in lines]
    assert {"gunicorn.error"} <= {r["logger"] for r in records}
    errors = [r for r in records if r["level"] in ("ERROR", "CRITICAL")]
    assert not errors, f"a healthy start logged errors: {errors}"
    assert "Control server error" not in "\n".join(lines)
    nginx = "\n".join(service_logs(stack, "nginx"))
    assert not re.search(r"\[(error|crit|alert|emerg)\]", nginx), nginx


@pytest.mark.docker
def test_one_request_id_in_the_response_nginx_and_the_app(stack: Stack):
    # A client's own id is not believed (TRUSTED_PROXY_HOPS=1): nginx makes one.
    response = stack.get("/", headers={"X-Request-ID": "forged-by-the-client"})
    assert response.status_code == 200
    request_id = response.headers["X-Request-ID"]
    assert REQUEST_ID.fullmatch(request_id), request_id

    (nginx,) = wait_for_records(stack, "nginx", request_id)
    assert nginx["logger"] == "nginx.access"
    assert (nginx["method"], nginx["path"], nginx["status"]) == ("GET", "/", 200)
    (access,) = wait_for_records(stack, "app", request_id)
    assert access["logger"] == "gunicorn.access"
    assert (access["method"], access["path"], access["status"]) == ("GET", "/", 200)
    assert all("forged-by-the-client" not in json.dumps(r) for r in json_lines(stack, "app"))


@pytest.mark.docker
def test_an_unhandled_exception_is_one_json_record_with_the_request_id(stack: Stack):
    # The home page counts visits in the database: without it, the view fails.
    stack.compose("stop", "db")
    try:
        response = stack.get("/")
        assert response.status_code == 500
        request_id = response.headers["X-Request-ID"]
        assert f'<code id="request-id">{request_id}</code>' in response.text
        records = wait_for_records(stack, "app", request_id)
        (error,) = [r for r in records if r["level"] == "ERROR"]
        assert error["exc_info"].startswith("Traceback (most recent call last):")
        assert "OperationalError" in error["exc_info"]
        assert "\n" in error["exc_info"], "the traceback's lines are in the one record"
    finally:
        stack.compose("start", "db")
    stack.wait_for("/readyz", 200, timeout=90)


@pytest.mark.docker
def test_the_apps_404_page_shows_the_request_id(stack: Stack):
    response = stack.get(f"/no-such-page-{uuid.uuid4().hex[:8]}")
    assert response.status_code == 404
    request_id = response.headers["X-Request-ID"]
    assert f'<code id="request-id">{request_id}</code>' in response.text


@pytest.mark.docker
def test_nginx_shows_the_request_id_when_the_app_is_down(stack: Stack):
    stack.compose("stop", "app")
    for method, passes in (("GET", 2), ("POST", 1)):
        response = requests.request(method, stack.url + "/", headers={"Host": "localhost"}, timeout=30)
        # 502 when the app's address refuses connections, 504 when connecting times out.
        assert response.status_code in (502, 504), method
        request_id = response.headers["X-Request-ID"]
        assert f'<code id="request-id">{request_id}</code>' in response.text
        (nginx,) = wait_for_records(stack, "nginx", request_id)
        assert nginx["status"] == response.status_code
        # A GET gets a second pass over the app's addresses (nginx's @again);
        # a POST, which may have run, never does. Passes are split by " : ".
        assert len(nginx["upstream_time"].split(" : ")) == passes, (method, nginx)


def nginx_log_format() -> str:
    """The JSON access log format in nginx/nginx.conf, its quoted parts joined."""
    text = (ROOT / "template" / "nginx" / "nginx.conf").read_text()
    match = re.search(r"log_format\s+json\s+escape=json\s+((?:'[^']*'\s*)+);", text)
    assert match, "nginx.conf has no `log_format json escape=json`"
    return "".join(re.findall(r"'([^']*)'", match.group(1)))


def test_nginx_log_format_is_one_json_object():
    # escape=json escapes what the variables hold; what is left is the format's
    # own punctuation, which must make a JSON object once they are filled in.
    numbers = {"status", "body_bytes_sent", "request_time"}

    def value(match: re.Match) -> str:
        return "1" if match.group(1) in numbers else 'a \\"quoted\\" value'

    record = json.loads(re.sub(r"\$([a-z_]+)", value, nginx_log_format()))
    expected = {"time", "level", "logger", "message", "request_id", "method", "path", "status"}
    assert expected <= record.keys()
    assert record["request_id"] == 'a "quoted" value'
