"""A real S3-protocol server for tests: moto's server mode on 127.0.0.1, which a test can stop and restart."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from .processes import free_port

MOTO_SERVER = Path(sys.executable).parent / "moto_server"


class MotoServer:
    """moto_server in a subprocess. Its state lives in memory: a restart starts with no buckets."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        self._process = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120  # a loaded machine takes its time to import moto
        while time.monotonic() < deadline:
            try:
                # Listening is not answering: the first request can wait on moto's lazy imports.
                requests.get(self.url, timeout=(1, 10))
                return
            except (requests.ConnectionError, requests.Timeout):
                if self._process.poll() is not None:
                    raise RuntimeError(f"moto_server exited with {self._process.returncode}")
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto_server did not answer within 120 s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def storage_options(self) -> dict[str, Any]:
        """s3fs options: moto takes any credentials; region eu-west-1 (us-east-1 breaks bucket creation)."""
        return {
            "key": "testing", "secret": "testing", "skip_instance_cache": True,
            "client_kwargs": {"endpoint_url": self.url, "region_name": "eu-west-1"},
            # Fail fast when the server is gone: the store's own retries (tenacity) are under test.
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 10},
        }


@pytest.fixture(scope="module")
def s3_server():
    server = MotoServer()
    server.start()
    yield server
    server.stop()
