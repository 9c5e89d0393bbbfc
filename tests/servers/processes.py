"""Servers the tests start as real processes on 127.0.0.1: a free port, waiting until one answers, stopping one."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_until_healthy(process: subprocess.Popen, health_url: str, log: Path, what: str, timeout: float) -> None:
    """Until `health_url` answers 200; a process that exits meanwhile fails at once, with the end of its `log`."""

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited {process.returncode}: {log.read_text(errors='replace')[-3000:]}")
        try:
            return httpx.get(health_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, timeout, f"{what} to answer {health_url}")


def stop(process: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM to the process's group (started with start_new_session), SIGKILL after `grace` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
