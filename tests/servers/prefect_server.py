"""A real Prefect server on 127.0.0.1 and `vectormill serve` serving a known corpus, for the ops tests.

Load with `pytest_plugins = ["tests.servers.prefect_server"]` for one server and one served process
per session (the tests that use them live in tests/test_prefect_ops.py, so that `--dist loadfile` starts
them on one worker only). The server takes ≈ 11 s to start here; `vectormill serve` keeps the model
loaded on its task worker, so a flow run's subprocess does not load it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from vectormill.flows.sample import write_pdf
from vectormill.flows.task_records import FOLDER, STALE_AFTER

from ..cli_process import VECTORMILL
from .processes import free_port, stop, wait_until, wait_until_healthy

FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# A background task's record that a killed run left behind before `vectormill serve` started.
STALE_RECORD = Path(FOLDER) / "parameters" / "left-by-a-killed-run"

# Known corpus: each source's documents, and which of them are broken (with the reason's gist).
GOOD_TEXTS = {
    "backups.txt": "Backups of the billing database are restored and tested every Friday at noon.",
    "vpn.txt": "The office VPN gateway rotates its certificates on the first Monday of each quarter.",
    "travel.txt": "Travel expenses above five hundred euros need a manager's approval before booking.",
}
BROKEN = {
    "truncated.pdf": b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog",  # cut off mid-object
    "not-a-pdf.pdf": b"this is plain text pretending to be a PDF\n",
    "latin1.txt": b"Caf\xe9 menu\n",  # not UTF-8
}


class RetryingTransport(httpx.HTTPTransport):
    """Sends a request again while the server answers 429/502/503, as Prefect's own client does: a
    server on a loaded machine answers 503 now and then (its database busy)."""

    RETRY_STATUSES = {429, 502, 503}
    ATTEMPTS = 6

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        for attempt in range(1, self.ATTEMPTS):
            if response.status_code not in self.RETRY_STATUSES:
                break
            response.close()
            time.sleep(0.5 * 2 ** attempt)
            response = super().handle_request(request)
        return response


@dataclass
class PrefectServer:
    api_url: str
    ui_url: str
    home: Path
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, timeout=30, transport=RetryingTransport())


def start_prefect_server(folder: Path) -> tuple[PrefectServer, subprocess.Popen]:
    port = free_port()
    home = folder / "server-home"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        # Where the UI's scripts call the API (default: port 4200).
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # An enqueued run (deployment concurrency) is looked at again after this many seconds (default 30).
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
    }
    env.pop("PREFECT_API_URL", None)
    log = folder / "server.log"
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    server = PrefectServer(f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}", home, log)

    try:
        wait_until_healthy(process, f"{server.api_url}/health", log, "the Prefect server", 120)
    except BaseException:
        stop(process)
        raise
    return server, process


@dataclass
class Served:
    """`vectormill serve` for a config with sources docs (good), mixed (1 of 4 broken), broken (3 of 4) and
    notes (empty: tests add documents no run has seen)."""

    server: PrefectServer
    config: Path
    env: dict[str, str]
    folder: Path
    storage: Path  # Prefect's local result storage of the served processes (PREFECT_LOCAL_STORAGE_PATH)
    corpus: dict[str, dict[str, str]] = field(default_factory=dict)

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """`vectormill ARGS` against the server (add `--config`, `served.config`, where the command takes one)."""
        return subprocess.run([VECTORMILL, *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        with self.server.client() as client:
            response = client.get(f"/flow_runs/{flow_run_id}")
            response.raise_for_status()
            return response.json()

    def wait_for_run(self, flow_run_id: str, timeout: float = 240) -> dict[str, Any]:
        return wait_until(lambda: (run := self.flow_run(flow_run_id))["state_type"] in FINAL_STATES and run,
                          timeout, f"flow run {flow_run_id} to finish", interval=1)

    def states(self, flow_run_id: str) -> list[dict[str, Any]]:
        with self.server.client() as client:
            response = client.get("/flow_run_states/", params={"flow_run_id": flow_run_id})
            response.raise_for_status()
            return sorted(response.json(), key=lambda state: state["timestamp"])

    def artifacts(self, flow_run_id: str) -> dict[str, dict[str, Any]]:
        """The run's artifacts by key (the latest version of each)."""
        with self.server.client() as client:
            response = client.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
            response.raise_for_status()
            return {artifact["key"]: artifact for artifact in response.json()}

    def task_runs(self, flow_run_id: str) -> list[dict[str, Any]]:
        """The flow run's task runs, each with its states (oldest first) under "states"."""
        with self.server.client() as client:
            response = client.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}})
            response.raise_for_status()
            task_runs = response.json()
            for task_run in task_runs:
                states = client.get("/task_run_states/", params={"task_run_id": task_run["id"]})
                states.raise_for_status()
                task_run["states"] = sorted(states.json(), key=lambda state: state["timestamp"])
        return task_runs


def write_corpus(folder: Path) -> dict[str, dict[str, str]]:
    """The sources' folders; returns {source: {document: 'ok' | 'broken'}}."""
    corpus: dict[str, dict[str, str]] = {}
    layout = {
        "docs": (list(GOOD_TEXTS), []),
        "mixed": (list(GOOD_TEXTS), ["truncated.pdf"]),
        "broken": (["backups.txt"], list(BROKEN)),
        "notes": ([], []),
    }
    for source, (good, broken) in layout.items():
        root = folder / source
        root.mkdir(parents=True)
        corpus[source] = {}
        for name in good:
            (root / name).write_text(f"{GOOD_TEXTS[name]} Source {source}.\n", encoding="utf-8")
            corpus[source][name] = "ok"
        for name in broken:
            (root / name).write_bytes(BROKEN[name])
            corpus[source][name] = "broken"
    write_pdf(["Incident reviews are written within two business days.", "Each review names an owner."],
              folder / "docs" / "incidents.pdf", title="Incidents")
    corpus["docs"]["incidents.pdf"] = "ok"
    return corpus


CONFIG = """\
[store]
path = "store"

[chunking]
tokens = 64
overlap = 8

[[sources]]
name = "docs"
type = "filesystem"
root = "corpus/docs"

[[sources]]
name = "mixed"
type = "filesystem"
root = "corpus/mixed"

[[sources]]
name = "broken"
type = "filesystem"
root = "corpus/broken"

[[sources]]
name = "notes"
type = "filesystem"
root = "corpus/notes"

[deployments]
all_schedule = "0 3 * * *"
embedding_slots = 1

[deployments.schedules]
docs = "0 * * * *"
"""


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    server, process = start_prefect_server(tmp_path_factory.mktemp("prefect-server"))
    yield server
    stop(process)


@pytest.fixture(scope="session")
def served(prefect_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    corpus = write_corpus(folder / "corpus")
    config = folder / "vectormill.toml"
    config.write_text(CONFIG)
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server.api_url,
        "PREFECT_HOME": str(folder / "client-home"),
        "PREFECT_LOCAL_STORAGE_PATH": str(folder / "prefect-storage"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # look for scheduled runs every second (default 10)
    }
    env.pop("PREFECT_LOGGING_LEVEL", None)  # serve's own default applies
    stale = folder / "prefect-storage" / STALE_RECORD
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"parameters")
    written = time.time() - STALE_AFTER.total_seconds() - 60
    os.utime(stale, (written, written))
    log = folder / "serve.log"
    process = subprocess.Popen([VECTORMILL, "serve", "--config", str(config)], env=env,
                               stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    served = Served(prefect_server, config, env, folder, folder / "prefect-storage", corpus)

    def deployed() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"vectormill serve exited {process.returncode}: {log.read_text()[-3000:]}")
        with prefect_server.client() as client:
            names = {d["name"] for d in client.post("/deployments/filter", json={}).json()}
        return {"docs", "mixed", "broken", "notes", "all", "weekly", "store-drill"} <= names

    try:
        wait_until(deployed, 120, "vectormill serve to register its deployments")
        yield served
    finally:
        stop(process)
