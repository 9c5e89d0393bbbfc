"""`vectormill serve-search` as a real process on 127.0.0.1, for the service tests and benchmarks/search_service.py."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..cli_process import VECTORMILL
from .processes import free_port, stop, wait_until_healthy

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
    try:
        wait_until_healthy(process, f"{service.url}/health", log, "serve-search", 180)
        yield service
    finally:
        stop(process, grace=20)
