"""A temporary Prefect server for one `vectormill backfill` without PREFECT_API_URL.

Prefect's ephemeral mode starts its server when the flow first needs the API: it imports the
server's modules in the client (seconds of CPU, holding the GIL), then starts a subprocess that
imports them again, and only then does the flow begin. Instead the CLI starts Prefect's own
`prefect server start` (its public command, on a free port of 127.0.0.1, with the same database
under PREFECT_HOME) as soon as it knows no server is configured, so the server imports and
migrates on another core while this process lists, compares, imports Prefect and loads the
model. The run then uses it through PREFECT_API_URL (`prefect.settings.temporary_settings`), as
it would a server the user runs, and the server stops when the process exits (and, on Linux,
if the process dies).

The server runs the services a flow run needs (task-run recorder, event persister) without the
UI or the services that watch deployments, workers and long-lived runs (`SERVER_SETTINGS`).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

# What a one-off run needs, as in Prefect's ephemeral mode: no UI, and none of the services that
# watch deployments, workers and long-lived runs.
SERVER_SETTINGS = {
    "PREFECT_SERVER_UI_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    **{f"PREFECT_SERVER_SERVICES_{service}_ENABLED": "false" for service in (
        "SCHEDULER", "LATE_RUNS", "FOREMAN", "CANCELLATION_CLEANUP", "PAUSE_EXPIRATIONS", "REPOSSESSOR",
        "CLEANUP_RECONCILER")},
}
HEALTH_POLL_S = 0.1
STOP_WAIT_S = 5.0
PORT_IN_USE_ATTEMPTS = 3  # another process may take the free port between our check and the bind

# The server this process started (one per process, like Prefect's own ephemeral server).
_running: "TemporaryServer | None" = None


class TemporaryServerError(RuntimeError):
    """The temporary server could not start (the message says what to do)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# `prefect server start`, run so that on Linux it gets SIGTERM when the process that started it
# dies, even by SIGKILL (PR_SET_PDEATHSIG follows the starting *thread*: start it from the main one).
LAUNCHER = """\
import os, signal, sys
parent = int(sys.argv.pop(1))
if sys.platform == "linux":
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    if os.getppid() != parent:
        sys.exit(0)
from prefect.cli import app
sys.argv[0] = "prefect"
sys.exit(app())
"""


@dataclass
class TemporaryServer:
    port: int
    process: subprocess.Popen
    log: IO[bytes]
    started: float = field(default_factory=time.perf_counter)
    ready_after: float | None = None  # seconds from start to a healthy /api/health

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @classmethod
    def start(cls) -> "TemporaryServer":
        global _running
        if _running is not None:
            return _running
        port, log = _free_port(), tempfile.TemporaryFile()
        environment = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(os.getpid()), "server", "start", "--host", "127.0.0.1",
             "--port", str(port)],
            env={**environment, **SERVER_SETTINGS}, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        _running = cls(port, process, log)
        atexit.register(_running.stop)  # registered before Prefect's own exit handlers, so it runs after them
        return _running

    def wait_ready(self, timeout: float) -> float:
        """Block until the server answers; returns the seconds it took from its start."""
        deadline = self.started + timeout
        while self.ready_after is None:
            if self.process.poll() is not None:
                raise TemporaryServerError(f"the temporary Prefect server exited ({self.process.returncode}): "
                                           f"{self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        self.ready_after = time.perf_counter() - self.started
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.perf_counter() > deadline:
                raise TemporaryServerError(
                    f"the temporary Prefect server did not answer within {timeout:.0f} s (a first start on a fresh "
                    "PREFECT_HOME migrates its database): raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or "
                    f"run `prefect server start` and set PREFECT_API_URL; its log: {self._log_tail()}")
            time.sleep(HEALTH_POLL_S)
        return self.ready_after

    def _log_tail(self) -> str:
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines()
        return " | ".join(lines[-5:]) or "(no output)"

    def stop(self) -> None:
        global _running
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        if _running is self:
            _running = None


def wait_until_ready(server: TemporaryServer, timeout: float) -> TemporaryServer:
    """The started server once it answers; if another process took its port meanwhile, a new one.

    A server that does not come up is stopped and its error raised."""
    for attempt in range(PORT_IN_USE_ATTEMPTS):
        try:
            server.wait_ready(timeout)
            return server
        except TemporaryServerError:
            taken = "already in use" in server._log_tail()
            server.stop()
            if attempt + 1 == PORT_IN_USE_ATTEMPTS or not taken:
                raise
            server = TemporaryServer.start()
    raise AssertionError("unreachable")


def is_temporary(api_url: str | None) -> bool:
    """Whether `api_url` is the temporary server of this process (no global limits live there)."""
    return _running is not None and api_url is not None and api_url.rstrip("/") == _running.api_url


@contextlib.contextmanager
def using(server: TemporaryServer) -> Iterator[None]:
    """Prefect's client in this process talks to `server` while the block runs.

    Flow-run heartbeats are off: they let a server that outlives a run notice it crashed, and this
    one does not outlive it; stopping the heartbeat thread would cost the run up to a second."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
