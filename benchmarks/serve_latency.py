"""Scheduled runs: time from a trigger to the first embedded chunk of a one-document change.

    .venv/bin/python benchmarks/serve_latency.py [--documents 30] [--changes 3] [--poll 1]

Starts a real `prefect server start` (tests/servers/prefect_server.py), fills a store from a
generated PDF corpus, then for `vectormill serve --no-warm-model` (each flow run in its own
subprocess loads the model, as Prefect's runner runs them) and `vectormill serve` (a Prefect
task worker in the serve process keeps the model loaded) rewrites one PDF, runs
`vectormill trigger docs` and reads from the server when the first `embed-chunks` task run
ended. Prints, per mode, the median over `--changes` triggers of: trigger → flow run start
(the runner's pickup, bounded by PREFECT_RUNNER_POLL_FREQUENCY, set to --poll seconds here),
flow run start → first embedded chunk, and trigger → first embedded chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import make_corpus  # noqa: E402
from tests.cli_process import VECTORMILL  # noqa: E402
from tests.servers.prefect_server import _stop, start_prefect_server, wait_until  # noqa: E402
from vectormill.flows.sample import write_pdf  # noqa: E402

CONFIG = '[store]\npath = "store"\n\n[[sources]]\nname = "docs"\ntype = "filesystem"\nroot = "pdfs"\n'


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def first_embedding_end(client, after: datetime) -> datetime | None:
    answer = client.post("/task_runs/filter", json={"task_runs": {
        "name": {"like_": "embed-chunks"}, "start_time": {"after_": after.isoformat()}}})
    answer.raise_for_status()
    ends = [when(run["end_time"]) for run in answer.json() if run["end_time"] and run["state_type"] == "COMPLETED"]
    return min(ends) if ends else None


def measure(server, folder: Path, env: dict[str, str], warm: bool, changes: int) -> list[dict[str, float]]:
    log = folder / f"serve-{'warm' if warm else 'cold'}.log"
    process = subprocess.Popen([VECTORMILL, "serve", "--config", str(folder / "vectormill.toml"),
                                "--warm-model" if warm else "--no-warm-model"], env=env, stdout=log.open("wb"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    results = []
    try:
        with server.client() as client:
            def deployed() -> bool:
                if process.poll() is not None:
                    raise RuntimeError(f"vectormill serve exited: {log.read_text()[-2000:]}")
                return "docs" in {d["name"] for d in client.post("/deployments/filter", json={}).json()}

            wait_until(deployed, 180, "vectormill serve to register its deployments")
            time.sleep(20)  # the served model finishes loading; a scheduled run comes long after serve starts
            for change in range(changes):
                write_pdf([f"Revision {change} of {'warm' if warm else 'cold'}: the backup window moved to "
                           f"{change + 1} a.m. and restores are tested weekly."] * 3,
                          folder / "pdfs" / "doc0000.pdf")
                triggered = datetime.now(timezone.utc)
                started = subprocess.run([VECTORMILL, "trigger", "docs", "--json", "--config",
                                          str(folder / "vectormill.toml")], env=env, capture_output=True, text=True,
                                         check=True)
                run_id = json.loads(started.stdout.strip().splitlines()[-1])["flow_run_id"]
                run = wait_until(lambda: (r := client.get(f"/flow_runs/{run_id}").json())["state_type"]
                                 in ("COMPLETED", "FAILED", "CRASHED") and r, 300, "the flow run", interval=0.5)
                assert run["state_type"] == "COMPLETED", run["state"]
                embedded = first_embedding_end(client, triggered)
                assert embedded is not None, "no embed-chunks task run after the trigger"
                start = when(run["start_time"])
                results.append({"pickup": (start - triggered).total_seconds(),
                                "to_first_chunk": (embedded - start).total_seconds(),
                                "trigger_to_first_chunk": (embedded - triggered).total_seconds(),
                                "run": run["total_run_time"]})
    finally:
        _stop(process)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=30)
    parser.add_argument("--changes", type=int, default=3)
    parser.add_argument("--poll", type=float, default=1.0, help="PREFECT_RUNNER_POLL_FREQUENCY for serve")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server, server_process = start_prefect_server(folder)
        try:
            make_corpus(folder / "pdfs", args.documents)
            (folder / "vectormill.toml").write_text(CONFIG)
            env = {**os.environ, "PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(folder / "client-home"),
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_RUNNER_POLL_FREQUENCY": str(args.poll)}
            subprocess.run([VECTORMILL, "backfill", "--json", "--config", str(folder / "vectormill.toml")], env=env,
                           capture_output=True, check=True)
            figures = {mode: measure(server, folder, env, warm, args.changes)
                       for mode, warm in (("serve --no-warm-model", False), ("serve (warm model)", True))}
        finally:
            _stop(server_process)
    print(f"one changed PDF of {args.documents}, {args.changes} triggers per mode, runner poll {args.poll:g} s; "
          "medians in seconds")
    print(f"{'mode':<24}{'pickup':>8}{'start→chunk':>13}{'trigger→chunk':>15}{'run':>8}")
    for mode, rows in figures.items():
        median = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        print(f"{mode:<24}{median['pickup']:8.2f}{median['to_first_chunk']:13.2f}"
              f"{median['trigger_to_first_chunk']:15.2f}{median['run']:8.2f}")
    cold, warm = (statistics.median(r["to_first_chunk"] for r in rows) for rows in figures.values())
    print(f"flow run start → first embedded chunk, warm / cold: {warm / cold:.2f}")


if __name__ == "__main__":
    main()
