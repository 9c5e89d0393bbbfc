"""A real S3-protocol server for tests: moto's server mode on 127.0.0.1, which a test can stop and restart."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from urllib.parse import urlencode

import pytest
import requests

from .fault_server import Reply, Request
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


class ThrottlingS3Proxy:
    """An app for FaultServer: forwards every request to moto; an injected fault answers as S3 answers a client
    it throttles (503 with an XML error whose code is SlowDown, as the S3 error-responses documentation lists)."""

    HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}

    def __init__(self, upstream: str):
        self.upstream = upstream
        self.session = requests.Session()

    def handle(self, request: Request) -> Reply:
        query = urlencode(request.query, doseq=True)
        answer = self.session.request(request.method, f"{self.upstream}{request.path}" + (f"?{query}" if query else ""),
                                      headers={name: value for name, value in request.headers.items()
                                               if name.lower() not in self.HOP_BY_HOP},
                                      data=request.body, allow_redirects=False, timeout=30)
        headers = {name: value for name, value in answer.headers.items() if name.lower() not in self.HOP_BY_HOP}
        headers["Content-Type"] = answer.headers.get("Content-Type", "application/xml")
        if request.method == "HEAD":
            headers["Content-Length"] = answer.headers.get("Content-Length", "0")
        return Reply(answer.status_code, answer.content, headers)

    def error(self, status: int, message: str) -> Reply:
        code = "SlowDown" if status == 503 else "InternalError"
        return Reply(status, (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                              f"<Message>Please reduce your request rate ({message}).</Message>"
                              "<RequestId>0</RequestId></Error>").encode(), {"Content-Type": "application/xml"})
