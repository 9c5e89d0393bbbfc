"""A real HTTP server on 127.0.0.1 (stdlib, one thread per connection) with switchable faults.

An application (`App.handle(request) -> Reply`) answers requests; the server records when each
request arrived (so tests measure the request rate at the server) and can, for the next N
requests, answer an error status with `Retry-After`, reset the connection half-way through
the body, or answer slower than the client's read timeout; or answer an error status to every
request that a predicate picks (one document's requests, say) until the faults are cleared.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    arrived: float  # time.monotonic()
    fault: "Fault | None" = None  # the fault injected into this request's answer

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Reply:
    status: int
    body: Any = None  # JSON-encoded unless bytes
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()


class App(Protocol):
    def handle(self, request: Request) -> Reply: ...

    def error(self, status: int, message: str) -> Reply:
        """The API's own error body for an injected status."""
        ...


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    # The stdlib's backlog of 5 overflows when many clients connect at once (Dask workers' threads): Linux then
    # drops the handshake's last ACK and the client's request waits out SYN-ACK retries, up to its read timeout.
    request_queue_size = 128

    def handle_error(self, request, client_address):
        pass  # injected resets and clients that time out end connections abruptly on purpose


@dataclass(frozen=True)
class Fault:
    kind: str  # "status" | "reset" | "slow"
    status: int = 0
    retry_after: str | None = None
    seconds: float = 0.0


class FaultServer:
    def __init__(self, app: App):
        self.app = app
        self.requests: list[Request] = []
        self._faults: deque[Fault] = deque()
        self._matching: list[tuple[Callable[[Request], bool], Fault]] = []
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FaultServer":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- faults --------------------------------------------------------------------------
    def fail_next(self, count: int, status: int, retry_after: str | None = None) -> None:
        self._add(count, Fault("status", status=status, retry_after=retry_after))

    def reset_next(self, count: int) -> None:
        self._add(count, Fault("reset"))

    def slow_next(self, count: int, seconds: float) -> None:
        self._add(count, Fault("slow", seconds=seconds))

    def fail_matching(self, matches: Callable[[Request], bool], status: int, retry_after: str | None = None) -> None:
        """Answer `status` to every request `matches` picks (after the next-N faults), until `clear_faults`."""
        with self._lock:
            self._matching.append((matches, Fault("status", status=status, retry_after=retry_after)))

    def _add(self, count: int, fault: Fault) -> None:
        with self._lock:
            self._faults.extend([fault] * count)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._matching.clear()

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    # ---- measurements --------------------------------------------------------------------
    def max_requests_in_window(self, seconds: float = 1.0) -> int:
        """The most requests that arrived within any `seconds`-long window."""
        times = sorted(r.arrived for r in self.requests)
        most, start = 0, 0
        for end, moment in enumerate(times):
            while moment - times[start] > seconds:
                start += 1
            most = max(most, end - start + 1)
        return most

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - keep test output clean
                pass

            def do_GET(self):
                self._serve()

            def do_POST(self):
                self._serve()

            def do_HEAD(self):
                self._serve()

            def _serve(self):
                arrived = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = Request(self.command, parts.path, parse_qs(parts.query, keep_blank_values=True),
                                  dict(self.headers.items()), body, arrived)
                with server._lock:
                    fault = server._faults.popleft() if server._faults else next(
                        (fault for matches, fault in server._matching if matches(request)), None)
                    request.fault = fault
                    server.requests.append(request)
                if fault and fault.kind == "status":
                    reply = server.app.error(fault.status, "injected fault")
                    if fault.retry_after is not None:
                        reply.headers["Retry-After"] = fault.retry_after
                else:
                    if fault and fault.kind == "slow":
                        time.sleep(fault.seconds)
                    reply = server.app.handle(request)
                payload = reply.encoded()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", reply.headers.pop("Content-Type", "application/json"))
                    # A HEAD reply states the size of the body it does not send.
                    self.send_header("Content-Length", reply.headers.pop("Content-Length", str(len(payload))))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    if fault and fault.kind == "reset":
                        # Half the promised body, then an RST: the client sees a reset mid-response.
                        self.wfile.write(payload[: len(payload) // 2])
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        self.connection.close()
                        self.close_connection = True
                        return
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (read timeout): nothing to answer

            def handle_one_request(self):
                try:
                    super().handle_one_request()
                except OSError:
                    self.close_connection = True

        return Handler
