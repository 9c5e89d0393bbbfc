"""The `vectormill` command in a real process, as users and their scripts run it."""

from __future__ import annotations

import contextlib
import os
import signal
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


# Kill-point tests start a run again and again; each fresh interpreter would pay Python's start and the imports
# (for `vectormill backfill`: Prefect, torch and sentence-transformers, seconds of CPU). `Preloaded` forks each
# run from one process that made those imports under the same environment (Prefect reads its settings as it is
# imported): every run is still a process of its own, that a SIGKILL ends as it would any other. The parent reads
# one run's arguments per line, writes "started PID" once it forked and "exited PID CODE" once the run ended (CODE
# as subprocess reports it). A run is the `vectormill` command, or a Python script run as __main__.
CLI_IMPORTS = ("prefect", "sentence_transformers", "torch", "vectormill.cli.main", "vectormill.flows.ingest")
_FORKING_PARENT = r'''
import importlib, json, os, signal, sys, traceback
imports, script = json.loads(sys.argv[1]), sys.argv[2] or None
for name in imports:
    importlib.import_module(name)
code = compile(open(script).read(), script, "exec") if script else None


def reap(signum, frame):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        os.write(1, f"exited {pid} {os.waitstatus_to_exitcode(status)}\n".encode())


def run(argv):
    if code is not None:
        sys.argv = [script, *argv]
        exec(code, {"__name__": "__main__"})
        return 0
    from vectormill.cli.main import main

    sys.argv = ["vectormill", *argv]
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


signal.signal(signal.SIGCHLD, reap)
for line in sys.stdin:
    argv, cwd, out, err = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.chdir(cwd)
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        try:
            exit_code = run(argv)
        except BaseException:
            traceback.print_exc()
            exit_code = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(exit_code)
    os.write(1, f"started {pid}\n".encode())
'''


class ForkedRun:
    """One run forked by `Preloaded`: the parts of subprocess.Popen the kill-point tests use."""

    def __init__(self, parent: "Preloaded", pid: int, out: Path, err: Path):
        self._parent, self.pid, self._out, self._err = parent, pid, out, err
        self._reading, self._partial = None, ""  # the run's stdout as readline reads it

    @property
    def returncode(self) -> int | None:
        return self._parent.exits.get(self.pid)

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def wait(self, timeout: float | None = None) -> int:
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        with self._parent.changed:
            while self.returncode is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(["forked run", str(self.pid)], timeout)
                self._parent.changed.wait(left)
        return self.returncode

    def readline(self, timeout: float = 300) -> str:
        """The run's next line of stdout, once it wrote it whole ("" if it ended first)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            ended = self.returncode is not None  # before reading: what it wrote before it ended is read below
            if self._reading is None and self._out.exists():  # the run opens it once forked
                self._reading = self._out.open(errors="replace")
            chunk = self._reading.readline() if self._reading is not None else ""
            self._partial += chunk
            if self._reading is not None and (self._partial.endswith("\n") or (ended and not chunk)):
                line, self._partial = self._partial, ""
                return line
            if ended and self._reading is None:
                return ""
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(["forked run", str(self.pid)], timeout)
            time.sleep(0.01)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        if self._reading is not None:
            self._reading.close()
        return self._out.read_text(errors="replace"), self._err.read_text(errors="replace")


class Preloaded:
    """`with Preloaded(env, folder) as runs: runs.start("backfill", "--json", cwd=...)`: a ForkedRun. With `script`,
    each run is that Python script with the arguments given; `imports` are what the parent imports for them."""

    def __init__(self, env: dict[str, str], folder: Path, imports: tuple[str, ...] = CLI_IMPORTS,
                 script: Path | None = None):
        import json
        import threading

        self._folder, self._count = folder, 0
        folder.mkdir(parents=True, exist_ok=True)
        self._log = (folder / "forking-parent.log").open("w")
        # From the repository's root, so that the parent can import tests' modules too.
        self._process = subprocess.Popen(
            [sys.executable, "-c", _FORKING_PARENT, json.dumps(list(imports)), str(script or "")], env=env,
            cwd=Path(__file__).resolve().parents[1], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            text=True)
        self.exits: dict[int, int] = {}
        self.changed = threading.Condition()
        self._started: list[int] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._process.stdout:
            kind, pid, *code = line.split()
            with self.changed:
                if kind == "exited":
                    self.exits[int(pid)] = int(code[0])
                else:
                    self._started.append(int(pid))
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def start(self, *args: str, cwd) -> ForkedRun:
        import json

        self._count += 1
        out, err = self._folder / f"run{self._count}.out", self._folder / f"run{self._count}.err"
        with self.changed:
            before = len(self._started)
            self._process.stdin.write(json.dumps([list(args), str(cwd), str(out), str(err)]) + "\n")
            self._process.stdin.flush()
            while len(self._started) == before:
                assert self._process.poll() is None, (self._folder / "forking-parent.log").read_text()[-3000:]
                self.changed.wait(1)
            return ForkedRun(self, self._started[-1], out, err)

    def __enter__(self) -> "Preloaded":
        return self

    def __exit__(self, *exc) -> None:
        for pid in self._started:  # a test that failed half-way leaves no run going on behind it
            if pid not in self.exits:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self._process.stdin.close()
        self._process.wait(timeout=60)
        self._reader.join(timeout=10)
        self._log.close()
