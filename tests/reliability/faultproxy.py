"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the loopback S3 server, for tests.

Each request is forwarded to the upstream unless it is picked (with probability ``fraction``,
from a seeded generator) for one of the ``faults``:

* ``"500"`` / ``"503"``: answer that status with an S3-style error body, upstream untouched;
* ``"reset"``: close the connection abruptly (TCP RST) without answering;
* ``"slow"``: wait ``slow_s`` seconds, then forward (longer than a client's read timeout, it
  becomes a timeout on the client side);
* ``"overlong"``: on a GET of a byte range, forward, then send 1,000 bytes more than the store
  answered (a hostile or broken store), with a Content-Length that covers them; other requests
  pass untouched.

:func:`black_hole` is the other kind of dead store: a port that accepts connections and never
answers. Both run in daemon threads and are context managers.
"""
from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterable, Optional
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out on a slow answer closes the socket: expected here


class FaultProxy:
    def __init__(self, upstream: str, fraction: float = 0.0, faults: Iterable[str] = ("503",),
                 slow_s: float = 3.0, seed: int = 0, delay_s: float = 0.0, stream_mb_s: float = 0.0):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.fraction = fraction
        self.faults = tuple(faults)
        self.slow_s = slow_s
        self.delay_s = delay_s  # added to every forwarded request: a store far away (benchmarks)
        self.stream_mb_s = stream_mb_s  # each response body at most this fast (0: unlimited): one stream's cap
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request
        self.ranges: list[tuple[str, str, Optional[str]]] = []  # (method, path, Range header or None)
        self.injected: dict[str, int] = {}
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def pick_fault(self) -> Optional[str]:
        with self._lock:
            self.requests += 1
            if self._random.random() >= self.fraction:
                return None
            fault = self._random.choice(self.faults)
            self.injected[fault] = self.injected.get(fault, 0) + 1
            return fault

    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: tests read their own output
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _handle(self) -> None:
                body = self._body()
                with proxy._lock:
                    proxy.seen.append((self.command, self.path))
                    proxy.ranges.append((self.command, self.path, self.headers.get("Range")))
                fault = proxy.pick_fault()
                if fault in ("500", "503"):
                    return self._error(int(fault))
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if fault == "slow":
                    time.sleep(proxy.slow_s)
                if proxy.delay_s:
                    time.sleep(proxy.delay_s)
                self._forward(body, pad=b"X" * 1000 if fault == "overlong" and self.headers.get("Range") else b"")

            def _error(self, status: int) -> None:
                code = "SlowDown" if status == 503 else "InternalError"
                payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                           f"<Message>injected by the fault proxy</Message></Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _forward(self, body: bytes, pad: bytes = b"") -> None:
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read() + pad
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self._write_body(data)
                conn.close()

            def _write_body(self, data: bytes) -> None:
                if not proxy.stream_mb_s:
                    self.wfile.write(data)
                    return
                step = 256 * 1024  # paced in 256 KB slices, as a store serving one stream at a fixed rate
                started = time.monotonic()
                for offset in range(0, len(data), step):
                    self.wfile.write(data[offset:offset + step])
                    due = started + (offset + step) / (proxy.stream_mb_s * 1e6)
                    if due > time.monotonic():
                        time.sleep(due - time.monotonic())

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        return Handler


class black_hole:
    """A port on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
                self._held.append(conn)
            except OSError:
                continue

    def __enter__(self) -> "black_hole":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self._held:
            conn.close()
        self._sock.close()
