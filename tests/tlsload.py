"""HTTPS clients for the TLS tests: a view of a booted TLS stack
(TLSStack), and load clients of three kinds (keep-alive, a fresh TLS
connection per request, HTTP/2) that run until told to stop, recording each
answer's certificate serial and latency, for the renewal test.
"""

from __future__ import annotations

import collections
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import requests
import requests.adapters
import urllib3
import urllib3.connection

from conftest import Stack

# The name the test certificates are issued for; nginx serves it on 127.0.0.1.
DOMAIN = "www.example.test"


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connects to 127.0.0.1 whatever the host name, which TLS still asks for
    (SNI) and verifies, and which the Host header carries."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._create_connection = lambda address, *rest: socket.create_connection(
            ("127.0.0.1", address[1]), *rest
        )


class TLSStack:
    def __init__(self, stack: Stack, framework: str):
        self.stack = stack
        self.framework = framework
        self.https_port = int(stack.env["HTTPS_PORT"])
        self.pebble_port = int(stack.env["PEBBLE_MANAGEMENT_PORT"])
        self.minica = str(stack.project / "pebble" / "minica.pem")
        self.root = stack.project / "pebble" / "root.pem"

    def fetch_root(self) -> None:
        """Pebble makes a new CA at each start: its root, from the management API."""
        response = requests.get(
            f"https://localhost:{self.pebble_port}/roots/0", verify=self.minica, timeout=10
        )
        response.raise_for_status()
        self.root.write_text(response.text)

    def context(self, verify: bool = True, alpn: tuple[str, ...] = ("h2", "http/1.1")) -> ssl.SSLContext:
        context = (
            ssl.create_default_context(cafile=str(self.root)) if verify else ssl._create_unverified_context()
        )
        context.set_alpn_protocols(list(alpn))
        return context

    def handshake(self, verify: bool = True, name: str = DOMAIN) -> ssl.SSLSocket:
        """A TLS connection to nginx on 127.0.0.1 that asks for `name` (SNI) and checks it."""
        sock = socket.create_connection(("127.0.0.1", self.https_port), timeout=10)
        try:
            return self.context(verify).wrap_socket(sock, server_hostname=name)
        except Exception:
            sock.close()
            raise

    def peer(self) -> dict:
        """The certificate nginx serves now, as ssl decodes it."""
        with self.handshake() as connection:
            return connection.getpeercert()

    def https(self, path: str) -> tuple[int, http.client.HTTPMessage, str]:
        """GET over https from nginx on 127.0.0.1, verified against Pebble's root for DOMAIN."""
        connection = PinnedHTTPSConnection(
            DOMAIN, self.https_port, context=self.context(alpn=("http/1.1",)), timeout=10
        )
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.headers, response.read().decode(errors="replace")
        finally:
            connection.close()

    def http(self, path: str) -> requests.Response:
        return self.stack.get(path, host=DOMAIN, allow_redirects=False)


class RecordingConnection(urllib3.connection.HTTPSConnection):
    """Keeps what its TLS handshake saw: the certificate's serial, and the local port."""

    def connect(self) -> None:
        super().connect()
        self.seen = self.sock.getpeercert()["serialNumber"], self.sock.getsockname()[1]


class PinnedAdapter(requests.adapters.HTTPAdapter):
    """requests to 127.0.0.1 that ask for DOMAIN in TLS (SNI) and verify it."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs, server_hostname=DOMAIN)
        pool = type("RecordingPool", (urllib3.HTTPSConnectionPool,), {"ConnectionCls": RecordingConnection})
        self.poolmanager.pool_classes_by_scheme = {"https": pool}


def answered(status: int, headers, body: bytes) -> str:
    """A failed answer, with the request id nginx gave it (its log lines have it too)."""
    return f"HTTP {status} (request id {headers.get('X-Request-ID')}): {body[:200]!r}"


def keep_alive(tls: TLSStack) -> Callable[[], tuple[str, int]]:
    """One requests.Session: its connections are kept alive between requests.
    On reload nginx closes idle ones, and a request sent at that instant meets
    a closed connection: like browsers, the client sends a GET again on a new
    one (RFC 9112 9.3.1), once. Anything else fails, and retries are counted."""
    session = requests.Session()
    session.trust_env = False  # or REQUESTS_CA_BUNDLE would replace Pebble's root
    retry = urllib3.Retry(total=1, connect=0, read=1, redirect=0, status=0, other=0)
    session.mount("https://", PinnedAdapter(max_retries=retry))
    session.verify = str(tls.root)
    url = f"https://127.0.0.1:{tls.https_port}/healthz"

    def request() -> tuple[str, int]:
        response = session.get(url, headers={"Host": DOMAIN}, timeout=10, stream=True)
        request.retries += len(response.raw.retries.history)
        seen = response.raw.connection.seen
        # Read to the end, which returns the connection to the pool.
        assert response.status_code == 200 and response.content, answered(
            response.status_code, response.headers, response.content
        )
        return seen

    request.retries = 0
    return request


def fresh_connections(tls: TLSStack) -> Callable[[], tuple[str, int]]:
    """A new TCP and TLS connection for each request, HTTP/1.1."""
    context = tls.context(alpn=("http/1.1",))

    def request() -> tuple[str, int]:
        connection = PinnedHTTPSConnection(DOMAIN, tls.https_port, context=context, timeout=10)
        try:
            connection.connect()
            seen = connection.sock.getpeercert()["serialNumber"], connection.sock.getsockname()[1]
            connection.request("GET", "/healthz")
            response = connection.getresponse()
            body = response.read()
            assert response.status == 200 and body, answered(response.status, response.headers, body)
            return seen
        finally:
            connection.close()

    return request


class GracefulGoaway(h2.connection.H2ConnectionStateMachine):
    """h2 refuses every frame that follows a GOAWAY (python-hyper/h2#1181), so
    httpx fails the streams nginx still answers when it reloads. RFC 9113 6.8
    lets the streams the GOAWAY covers finish: their frames pass here."""

    def process_input(self, input_):
        if self.state is h2.connection.ConnectionState.CLOSED and input_.name.startswith("RECV_"):
            return []
        return super().process_input(input_)


def http2(tls: TLSStack) -> Callable[[], tuple[str, int]]:
    """HTTP/2 streams, one after the other on one connection, on the h2
    protocol library (httpx's, with the fix above): a stream a graceful GOAWAY
    covers is read to its end; one it does not, which the server never
    touched, is retried on a new connection."""
    context = tls.context(alpn=("h2",))
    current: list = []  # the open socket and its h2 state, once connected

    def connect() -> None:
        sock = context.wrap_socket(
            socket.create_connection(("127.0.0.1", tls.https_port), timeout=10), server_hostname=DOMAIN
        )
        assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
        connection = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="utf-8"))
        connection.state_machine = GracefulGoaway()
        connection.initiate_connection()
        sock.sendall(connection.data_to_send())
        current[:] = [sock, connection]

    def exchange() -> str | None:
        """The status of one GET, or None when a GOAWAY left it unprocessed."""
        sock, connection = current
        stream = connection.get_next_available_stream_id()
        headers = [(":method", "GET"), (":scheme", "https"), (":authority", DOMAIN), (":path", "/healthz")]
        connection.send_headers(stream, headers, end_stream=True)
        sock.sendall(connection.data_to_send())
        status, goaway = None, None
        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("the server closed the connection before answering")
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ConnectionTerminated):
                    goaway = event
                    if event.error_code != 0:
                        raise ConnectionError(f"GOAWAY {event}")
                    if event.last_stream_id < stream:
                        return None
                elif isinstance(event, h2.events.DataReceived):
                    connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif getattr(event, "stream_id", None) != stream:
                    continue
                elif isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[":status"]
                elif isinstance(event, h2.events.StreamReset):
                    raise ConnectionError(f"stream reset: {event}")
                elif isinstance(event, h2.events.StreamEnded):
                    if goaway:  # the server finishes this connection: the next request opens one
                        sock.close()
                        current.clear()
                    return status
            if not goaway:
                sock.sendall(connection.data_to_send())

    def request() -> tuple[str, int]:
        while True:
            if current and current[1].state_machine.state is h2.connection.ConnectionState.CLOSED:
                current.pop(0).close()  # a GOAWAY came with the last answer
                current.clear()
            if not current:
                connect()
            sock = current[0]
            seen = sock.getpeercert()["serialNumber"], sock.getsockname()[1]
            try:
                status = exchange()
            except BaseException:
                sock.close()
                current.clear()
                raise
            if status is not None:
                assert status == "200", f"HTTP {status}"
                return seen
            request.retries += 1
            sock.close()
            current.clear()

    request.retries = 0
    return request


class Client(threading.Thread):
    """Requests until told to stop, with no cap; any exception is a failure."""

    def __init__(self, kind: str, request: Callable[[], tuple[str, int]], stop: threading.Event):
        super().__init__(name=kind, daemon=True)
        self.kind, self.request, self.stop = kind, request, stop
        self.answers: list[tuple[str, int]] = []  # (certificate serial, local port) of each answer
        self.failures: list[str] = []
        self.worst = 0.0
        self.since = time.monotonic()  # when the request under way started

    def run(self) -> None:
        while not self.stop.is_set():
            started = self.since = time.monotonic()
            try:
                self.answers.append(self.request())
            except Exception as error:  # noqa: BLE001 - every failure counts, whatever it is
                self.failures.append(f"{type(error).__name__}: {error}")
            self.worst = max(self.worst, time.monotonic() - started)

    def progress(self) -> str:
        """For a failure message: how far this client got."""
        certificates = collections.Counter(serial for serial, _ in self.answers)
        return (
            f"{self.kind}: {len(self.answers)} answers by certificate {dict(certificates)},"
            f" {len(self.failures)} failures {self.failures[-3:]}, worst {self.worst:.1f}s,"
            f" busy for {time.monotonic() - self.since:.1f}s now"
        )

    def on(self, serial: str) -> int:
        return sum(1 for answer in self.answers if answer[0] == serial)
