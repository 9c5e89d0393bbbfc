"""The `vectormill` command in a real process, as users and their scripts run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VECTORMILL = str(Path(sys.executable).parent / "vectormill")


def run(*args: str, cwd, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([VECTORMILL, *args], cwd=cwd, env=env or os.environ, capture_output=True, text=True,
                          timeout=timeout)


def harness_env(**extra: str) -> dict[str, str]:
    """This process's environment pointed at the Prefect server of the `prefect_harness` fixture."""
    from prefect.settings import PREFECT_API_URL

    return dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), **extra)
