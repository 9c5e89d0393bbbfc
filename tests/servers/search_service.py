"""`vectormill serve-search` as a real process on 127.0.0.1, for the service tests and benchmarks/search_service.py."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..cli_process import VECTORMILL
from .prefect_server import free_port, wait_until

API_KEY = "test-key-of-the-search-service"


@dataclass
class Service:
    url: str
    process: subprocess.Popen
    log: Path  # the process's stderr

    def headers(self, key: str = API_KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@contextmanager
def search_service(config: Path, **env: str) -> Iterator[Service]:
    """serve-search over the store `config` names, with API_KEY, until the block ends (then it is stopped)."""
    port = free_port()
    log = config.parent / f"serve-search-{port}.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [VECTORMILL, "serve-search", "--port", str(port), "--config", str(config)], cwd=config.parent,
            env=dict(os.environ, VECTORMILL_SEARCH_API_KEY=API_KEY, **env), stdout=stderr, stderr=stderr,
            start_new_session=True)
    service = Service(f"http://127.0.0.1:{port}", process, log)

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"serve-search exited {process.returncode}: {log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{service.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, 180, "serve-search to answer /health")
        yield service
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
