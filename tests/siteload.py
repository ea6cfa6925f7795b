"""Requests through nginx while a deploy script runs (Load): the figures
every zero-downtime test holds a switch to.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Self

import requests

# A request to the site through nginx (SERVER_NAMES keeps localhost).
SITE_HEADERS = {"Host": "localhost"}


class Load:
    """Requests through nginx from a few threads while a script runs. Each
    thread sends until told to stop; every failure counts (an exception of any
    kind, or a status other than 200). MAX_SECONDS is a safety net, not a
    limit: a load still running then means a step hung, and fails the test.

    check() holds every zero-downtime test to the same figures: no failure, at
    most MAX_RESENT GETs sent again, at least MIN_REQUESTS answered, none
    slower than MAX_LATENCY, and, when old containers stopped, at least
    MIN_AROUND app-bound answers in the AROUND seconds before that moment and
    as many in those after it."""

    THREADS = 4
    MAX_SECONDS = 420
    PATHS = ("/healthz", "/", "/static/css/site.css")
    # Answered by the app; /static/ is nginx's own.
    APP_PATHS = frozenset({"/healthz", "/"})
    MIN_REQUESTS = 300
    # A request sent to an old address waits out proxy_connect_timeout
    # (250 ms) before nginx retries it, on a 2-core machine busy starting
    # containers.
    MAX_LATENCY = 5.0
    # A close that races a request is rare; more than this is a fault.
    MAX_RESENT = 2
    AROUND = 2.0
    MIN_AROUND = 10

    def __init__(self, port: int, explain: Callable[[], str] | None = None):
        self.url = f"http://127.0.0.1:{port}"
        # What the server says of a failure (Vps.nginx_errors), printed with it.
        self.explain = explain
        self.stop = threading.Event()
        self.lock = threading.Lock()
        # Each request answered 200: path, when it completed (epoch seconds), latency.
        self.answered: list[tuple[str, float, float]] = []
        self.failures: list[str] = []
        # GETs sent again after a kept-alive connection closed unanswered.
        self.resent: list[str] = []
        self.releases: collections.Counter[str] = collections.Counter()
        self.threads = [
            threading.Thread(target=self.worker, args=(n,), daemon=True) for n in range(self.THREADS)
        ]

    def fail(self, failure: str) -> None:
        with self.lock:
            self.failures.append(f"{datetime.now(UTC):%H:%M:%S.%f} {failure}")

    def worker(self, offset: int) -> None:
        try:
            self.send_until_stopped(offset)
        except Exception as error:  # noqa: BLE001 - a thread that dies must count too
            self.fail(f"load thread died: {error!r}")

    def send_until_stopped(self, number: int) -> None:
        deadline = time.monotonic() + self.MAX_SECONDS
        with requests.Session() as session:
            while not self.stop.is_set():
                if time.monotonic() > deadline:
                    self.fail(f"nothing stopped the load within {self.MAX_SECONDS}s: a step hung")
                    return
                path = self.PATHS[number % len(self.PATHS)]
                number += 1
                sent = time.monotonic()
                try:
                    response = self.get(session, path)
                    latency = time.monotonic() - sent
                    if response.status_code != 200:
                        raise AssertionError(f"HTTP {response.status_code}")
                    release = response.json()["release"] if path == "/healthz" else None
                except Exception as error:  # noqa: BLE001 - any error is a failed request
                    self.fail(f"{path}: {error!r}")
                else:
                    with self.lock:
                        self.answered.append((path, time.time(), latency))
                        if release:
                            self.releases[release] += 1
                time.sleep(0.01)

    def get(self, session: requests.Session, path: str) -> requests.Response:
        """GET PATH; sent again once when the server closed a kept-alive
        connection without answering, as browsers do for a GET (RFC 9112,
        9.3.1): that race is a client's to handle, and it is counted."""
        try:
            return session.get(self.url + path, headers=SITE_HEADERS, timeout=15)
        except requests.ConnectionError as error:
            if "RemoteDisconnected" not in repr(error):
                raise
            with self.lock:
                self.resent.append(f"{datetime.now(UTC):%H:%M:%S.%f} {path}")
            return session.get(self.url + path, headers=SITE_HEADERS, timeout=15)

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
            if thread.is_alive():
                self.fail("a load thread did not stop within 30s")

    def run_until(self, moment: float) -> None:
        """Keep the load going until MOMENT (epoch seconds)."""
        time.sleep(max(0.0, moment - time.time()))

    def figures(self, stopped: float | None) -> dict:
        app = [done for path, done, _ in self.answered if path in self.APP_PATHS]
        figures = {
            "requests": len(self.answered) + len(self.failures),
            "failures": len(self.failures),
            "resent": len(self.resent),
            "worst latency": round(max((latency for *_, latency in self.answered), default=0.0), 3),
        }
        if stopped is not None:
            # App-bound answers in the AROUND seconds before and after the stop.
            figures["before the stop"] = sum(stopped - self.AROUND <= done < stopped for done in app)
            figures["after it"] = sum(stopped <= done <= stopped + self.AROUND for done in app)
        return figures

    def check(self, stopped: float | None) -> None:
        figures = self.figures(stopped)
        print(
            f"load figures: {figures}, releases {dict(self.releases)}; bounds: at least {self.MIN_REQUESTS}"
            f" requests, worst latency under {self.MAX_LATENCY}s, at least {self.MIN_AROUND} around the stop"
        )
        summary = f"{figures}: {self.failures[:10]} resent: {self.resent[:10]}"
        if self.failures and self.explain:
            print(f"the server's nginx warnings and errors:\n{self.explain()}")
        assert not self.failures, summary
        assert len(self.resent) <= self.MAX_RESENT, f"kept-alive connections closed too often: {summary}"
        assert len(self.answered) >= self.MIN_REQUESTS, f"too little load to prove anything: {summary}"
        assert figures["worst latency"] < self.MAX_LATENCY, summary
        if stopped is not None:
            assert figures["before the stop"] >= self.MIN_AROUND, (
                f"no service as the old release drained: {summary}"
            )
            assert figures["after it"] >= self.MIN_AROUND, (
                f"no service once the old release stopped: {summary}"
            )
