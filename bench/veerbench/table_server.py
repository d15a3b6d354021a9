"""A minimal table server speaking the controller's long-poll contract
(`GET /v1/table?after=N&waitMs=M`: 200 with a newer table, else hold up to M ms, then 304),
for the propagation benchmark when the real controller is not used. It records when each
generation was published and when each poll was answered, so the benchmark can tell the
controller's side of the delay from the gateway's."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class TableServer:
    def __init__(self, table: dict):
        self._cond = threading.Condition()
        self._table = table
        self._body = json.dumps(table).encode()
        self.waiting = 0  # long-polls held right now
        self.polls = 0
        self.answered: list[tuple[float, int]] = []  # (perf_counter, generation) of each 200
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # The handler writes the headers and the body separately. With Nagle on, the body
            # waits for the ACK of the headers, which the gateway may delay by up to 40 ms:
            # that showed as single 43-44 ms outliers in the propagation delays.
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                if url.path != "/v1/table":
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                q = urllib.parse.parse_qs(url.query)
                try:
                    after = int(q.get("after", ["0"])[0])
                    wait_ms = int(q.get("waitMs", ["0"])[0])
                except ValueError:
                    self.send_response(400)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                body, gen = server._wait_newer(after, wait_ms / 1000.0)
                if body is None:
                    self.send_response(304)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                with server._cond:
                    server.answered.append((time.perf_counter(), gen))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def generation(self) -> int:
        return int(self._table["generation"])

    def _wait_newer(self, after: int, wait_s: float):
        deadline = time.monotonic() + wait_s
        with self._cond:
            self.polls += 1
            self.waiting += 1
            try:
                while self.generation <= after:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None, after
                    self._cond.wait(left)
                return self._body, self.generation
            finally:
                self.waiting -= 1

    def publish(self, table: dict) -> float:
        """Make `table` current and wake the held polls; returns the publish instant."""
        body = json.dumps(table).encode()
        with self._cond:
            self._table = table
            self._body = body
            t = time.perf_counter()
            self._cond.notify_all()
        return t

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
