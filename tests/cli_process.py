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


# Runs several command lines through `vectormill.cli.main.main` in one process (a process start and the
# imports cost seconds each), each with its own stdout/stderr: file descriptors 1 and 2 point at
# files while it runs, so whatever writes them (rich, logging handlers, tracebacks) is captured.
_DRIVER = r'''
import json, os, sys, tempfile, time, traceback
from vectormill.cli.main import main

lines, results_file = json.loads(sys.argv[1]), sys.argv[2]
results = []
for argv in lines:
    # Leading NAME=value words set environment variables for this command line only.
    assignments = [word.split("=", 1) for word in argv[:next((i for i, w in enumerate(argv) if "=" not in w), len(argv))]]
    os.environ.update(dict(assignments))
    files = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    sys.stdout.flush(); sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(files[0].fileno(), 1); os.dup2(files[1].fileno(), 2)
    code, started = 0, time.perf_counter()
    try:
        sys.argv = ["vectormill", *argv[len(assignments):]]
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = "raised"
    finally:
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(saved[0], 1); os.dup2(saved[1], 2)
        os.close(saved[0]); os.close(saved[1])
    for name in ["VECTORMILL_DEBUG", *(name for name, _ in assignments)]:
        os.environ.pop(name, None)
    out, err = (f.seek(0) or f.read().decode(errors="replace") for f in files)
    results.append({"argv": argv, "code": code, "stdout": out, "stderr": err,
                    "seconds": round(time.perf_counter() - started, 2)})
with open(results_file, "w") as f:
    json.dump(results, f)
'''


def run_many(command_lines: list[list[str]], cwd, env: dict[str, str], timeout: float = 300,
             prefix: list[str] = ()) -> list[dict]:
    """[{argv, code, stdout, stderr}] of each command line, run one after another in one process.

    A command line may start with NAME=value words: environment variables for it alone. `prefix` runs
    the process through another command (as `setpriv ... --`)."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "results.json"
        process = subprocess.run([*prefix, sys.executable, "-c", _DRIVER, json.dumps(command_lines), str(results)],
                                 cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        assert results.exists(), process.stderr[-3000:]
        return json.loads(results.read_text())
