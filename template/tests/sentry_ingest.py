"""A stand-in for Sentry's ingest endpoint, for the tests: it keeps the
envelopes the SDK posts and answers as Sentry does."""

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeIngest(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.envelopes: list[list[tuple[dict, bytes]]] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.server_address[1]}/1"

    def events(self) -> list[dict]:
        """The error events received, in order (not sessions or transactions)."""
        return [
            json.loads(payload)
            for envelope in self.envelopes
            for header, payload in envelope
            if header.get("type") == "event"
        ]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.envelopes.append(_items(body))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format, *args):
        pass


def _items(body: bytes) -> list[tuple[dict, bytes]]:
    """An envelope's items: a header line, then each item's header line and
    payload (of the header's length, or up to the end of the line)."""
    _, _, rest = body.partition(b"\n")
    items = []
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        header = json.loads(line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] + 1 :]
        else:
            payload, _, rest = rest.partition(b"\n")
        items.append((header, payload))
    return items
