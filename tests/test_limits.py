"""Limits that keep one client from taking the site down, on a booted stack.

- A flood of half-open connections (a request line and no more, the way
  slowloris does it) from one container on the stack's network: requests
  from another address keep getting 200 all along.
- Requests held in flight by one client beyond LIMIT_CONNECTIONS_PER_CLIENT
  get 429 at once; another client is not affected.
- Bursts of login attempts, of writes and of /readyz get 429 from nginx
  after their allowance, while GETs of pages and /healthz never do.

The Django project only: its nginx configuration is Flask's plus the admin's
login location, and its stack is the one shared by these tests.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import time
from collections import Counter

import pytest
import requests

from conftest import Stack, booted, render

pytestmark = pytest.mark.docker

# At least 2,000 half-open connections, and more than the official image's
# nginx.conf lets its workers hold (1024 each, one worker per CPU): with it,
# the flood fills them and the other clients' requests fail.
FLOOD_AT_LEAST = 2000
IMAGE_WORKER_CONNECTIONS = 1024
FLOOD_SECONDS = 30
# nginx's defaults in the generated project (compose.yaml, nginx/).
CONNECTIONS_PER_CLIENT = 20
WRITES_BURST, WRITES_PER_SECOND = 20, 5
LOGINS_BURST, LOGINS_PER_SECOND = 10, 10 / 60
READINESS_BURST, READINESS_PER_SECOND = 10, 2

# Keeps COUNT connections open to nginx for SECONDS, each having sent a
# request line and one header, and opens a new one whenever nginx closes one
# (it gives up on unfinished headers after a few seconds). A connection not
# established within 3 s counts as failed. Prints "ready" once the first COUNT
# are established or failed (5 s at most), then a JSON summary.
FLOOD = r"""
import errno, json, resource, selectors, socket, sys, time

target, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
address = (socket.gethostbyname(target), 80)
selector = selectors.DefaultSelector()
stats = {"opened": 0, "closed_by_nginx": 0, "failed": 0, "peak_open": 0}
connecting = {}  # socket -> when its connect started
established = set()


def start_one():
    sock = socket.socket()
    sock.setblocking(False)
    if sock.connect_ex(address) not in (0, errno.EINPROGRESS):
        sock.close()
        stats["failed"] += 1
        return False
    connecting[sock] = time.monotonic()
    selector.register(sock, selectors.EVENT_WRITE)
    return True


def drop(sock):
    selector.unregister(sock)
    sock.close()
    connecting.pop(sock, None)
    established.discard(sock)


started = time.monotonic()
deadline = started + seconds
while time.monotonic() < deadline:
    while len(connecting) + len(established) < count and start_one():
        pass
    if "ready" not in stats and (not connecting or time.monotonic() - started > 5):
        stats["ready"] = round(time.monotonic() - started, 1)
        print("ready", flush=True)
    for key, events in selector.select(timeout=0.2):
        sock = key.fileobj
        if sock in connecting:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                drop(sock)
                stats["failed"] += 1
                continue
            del connecting[sock]
            sock.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
            selector.modify(sock, selectors.EVENT_READ)
            established.add(sock)
            stats["opened"] += 1
            stats["peak_open"] = max(stats["peak_open"], len(established))
            continue
        try:
            data = sock.recv(4096)
        except OSError:
            data = b""
        if not data:
            drop(sock)
            stats["closed_by_nginx"] += 1
    now = time.monotonic()
    for sock, since in list(connecting.items()):
        if now - since > 3:
            drop(sock)
            stats["failed"] += 1
print(json.dumps(stats), flush=True)
"""


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    project = render(tmp_path_factory.mktemp("django") / "project", framework="django")
    with booted(project, request) as stack:
        yield stack


def nginx_error_log(stack: Stack) -> str:
    # The official image sends nginx's error log to stderr.
    return stack.compose("logs", "--no-color", "nginx").stdout


def statuses(responses: list[requests.Response]) -> list[int]:
    return [response.status_code for response in responses]


def post(stack: Stack, path: str, **kwargs) -> requests.Response:
    headers = {"Host": f"localhost:{stack.http_port}"}
    return requests.post(stack.url + path, headers=headers, timeout=10, **kwargs)


def test_half_open_flood_from_one_client_does_not_stop_the_others(stack: Stack):
    # nginx's worker processes ([s]: not grep's own command line, nor sh's).
    workers = int(
        stack.compose(
            "exec", "-T", "nginx", "sh", "-c", "grep -l 'worker proces[s]' /proc/[0-9]*/cmdline | wc -l"
        ).stdout
    )  # fmt: skip
    connections = max(FLOOD_AT_LEAST, workers * IMAGE_WORKER_CONNECTIONS + 500)
    name = f"{stack.name}-flood"
    stylesheet = re.search(r'<link rel="stylesheet" href="([^"]+)"', stack.get("/").text).group(1)
    flood = subprocess.Popen(
        [
            "docker", "run", "--rm", "--name", name, f"--network={stack.name}_web",
            "--ulimit", f"nofile={connections + 100}", "python:3.14-slim",
            "python", "-c", FLOOD, "nginx", str(connections), str(FLOOD_SECONDS),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    answers: Counter[str] = Counter()
    try:
        # Normal requests start once the whole flood is open, and go on
        # until it ends; a new connection each, as many visitors would.
        first = flood.stdout.readline()
        assert first.strip() == "ready", (
            f"the flood never opened its connections: {first}{flood.stderr.read()}"
        )
        paths = ["/", "/healthz", stylesheet]
        while flood.poll() is None:
            path = paths[sum(answers.values()) % len(paths)]
            try:
                response = stack.get(path, headers={"Connection": "close"})
                answers[f"{path} {response.status_code}"] += 1
            except requests.RequestException as error:
                answers[f"{path} {type(error).__name__}"] += 1
            time.sleep(0.05)
        summary = json.loads(flood.communicate(timeout=FLOOD_SECONDS + 60)[0])
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True, check=False)
        flood.kill()
    print(f"\nflood of {connections} ({workers} nginx workers): {summary}; meanwhile: {dict(answers)}")
    failed = {answer: n for answer, n in answers.items() if not answer.endswith(" 200")}
    assert not failed, f"normal requests failed during the flood: {failed} of {dict(answers)}"
    assert sum(answers.values()) >= 100, f"too few normal requests during the flood: {dict(answers)}"
    assert "worker_connections are not enough" not in nginx_error_log(stack)
    # The flood was what it claims: every connection accepted and held,
    # nginx giving up on the unfinished headers (client_header_timeout) and
    # the flood reopening them all the while.
    assert summary["peak_open"] >= connections, summary
    assert summary["failed"] == 0, f"nginx did not accept all of the flood's connections: {summary}"
    assert summary["closed_by_nginx"] >= connections, summary


def test_requests_held_in_flight_beyond_the_limit_get_429(stack: Stack):
    # Each request's headers are complete, its body still on its way: nginx
    # counts it as in flight until the body arrives or client_body_timeout.
    held = []
    try:
        for _ in range(CONNECTIONS_PER_CLIENT):
            sock = socket.create_connection(("127.0.0.1", stack.http_port), timeout=10)
            sock.sendall(
                f"GET /?held HTTP/1.1\r\nHost: localhost:{stack.http_port}\r\n"
                "Content-Length: 1000\r\n\r\npartial".encode()
            )
            held.append(sock)
        time.sleep(0.5)
        from_same_client = stack.get("/")
        # nginx's healthcheck asks from inside its container: another client.
        from_another = stack.compose(
            "exec", "-T", "nginx", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
            "-H", "Host: localhost", "http://127.0.0.1/",
        ).stdout  # fmt: skip
        static = stack.get("/static/admin/css/base.css")
    finally:
        for sock in held:
            sock.close()
    assert from_same_client.status_code == 429, from_same_client.text[:500]
    assert from_another == "200"
    assert static.status_code == 200, "static files do not count towards the limit"
    # nginx frees the client's slots as it sees the held connections close.
    stack.wait_for("/", 200, timeout=5)


def burst(send, count: int) -> tuple[list[requests.Response], float]:
    """count requests one after the other; their answers, and the seconds they took."""
    started = time.monotonic()
    answers = [send(n) for n in range(count)]
    return answers, time.monotonic() - started


def check_limited(
    answers: list[requests.Response], seconds: float, allowance: int, per_second: float
) -> None:
    """The first `allowance` requests passed, then nginx answered 429 to all
    but those the rate let through in the meantime."""
    codes = [answer.status_code for answer in answers]
    assert 429 not in codes[:allowance], f"429 within the allowance of {allowance}: {codes}"
    passed = len(codes) - codes.count(429)
    most = 1 + allowance + math.ceil(per_second * seconds)
    assert passed <= most, f"{passed} passed in {seconds:.1f}s, at most {most} may: {codes}"
    assert all("nginx" in a.text for a in answers if a.status_code == 429), "a 429 is not nginx's"


def test_a_burst_of_login_attempts_gets_429_after_the_allowance(stack: Stack):
    # Without a CSRF token, Django refuses each attempt (403): nginx's 429 is
    # what this is about, and it comes before the app is asked.
    form = {"username": "admin", "password": "guess"}
    answers, seconds = burst(lambda _: post(stack, "/admin/login/", data=form), LOGINS_BURST + 20)
    print(f"\nlogin attempts in {seconds:.1f}s: {Counter(a.status_code for a in answers)}")
    check_limited(answers, seconds, LOGINS_BURST, LOGINS_PER_SECOND)
    assert {a.status_code for a in answers} == {403, 429}
    # The login page itself still opens: only attempts are counted.
    assert stack.get("/admin/login/").status_code == 200


def test_a_burst_of_writes_gets_429_after_the_allowance(stack: Stack):
    answers, seconds = burst(lambda n: post(stack, f"/?write={n}"), WRITES_BURST + 30)
    print(f"\nPOSTs in {seconds:.1f}s: {Counter(a.status_code for a in answers)}")
    check_limited(answers, seconds, WRITES_BURST, WRITES_PER_SECOND)
    assert 429 in {a.status_code for a in answers}


def test_readiness_polling_is_limited_but_pages_and_liveness_are_not(stack: Stack):
    answers, seconds = burst(lambda _: stack.get("/readyz"), READINESS_BURST + 30)
    print(f"\n/readyz in {seconds:.1f}s: {Counter(a.status_code for a in answers)}")
    check_limited(answers, seconds, READINESS_BURST, READINESS_PER_SECOND)
    assert 429 in {a.status_code for a in answers}
    # The deploy's zero-downtime checks ask for these from one address, as
    # fast as they can: never limited.
    pages = statuses([stack.get(path) for path in ["/", "/healthz"] * 60])
    assert set(pages) == {200}, Counter(pages)
