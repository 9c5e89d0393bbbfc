"""Memory of a long-running process (`vectormill serve`, a Dask worker): flat over many flow runs?

    .venv/bin/python benchmarks/long_running_memory.py [--runs 100] [--records 300]

One process runs the ingest flow `--runs` times against a real `prefect server start`, as `serve`
does: sources a filesystem folder and a HubSpot API (tests/servers/hubspot_server.py, `--records`
companies). Between runs one file and one record change, and every run edits [embedding]
task_chunks (an edit that does not touch the model), the way an operator edits a served config.
Prints the resident set size (RSS) after 10 runs and after all of them, the growth per run in
between, and what the process-wide caches hold at the end (models, source objects, HubSpot's
listed records).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers.hubspot_server import hubspot_server  # noqa: E402
from tests.servers.prefect_server import _stop, start_prefect_server  # noqa: E402

TOKEN = "bench-token"
CONFIG = '''[store]
path = "store"

[embedding]
task_chunks = {task_chunks}

[[sources]]
name = "docs"
type = "filesystem"
root = "docs"

[[sources]]
name = "crm"
type = "hubspot"
base_url = "{url}"
object_type = "companies"
properties = ["name", "description"]
token_env = "BENCH_HUBSPOT_TOKEN"
requests_per_second = 500
burst = 50
'''


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--records", type=int, default=300)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="vectormill-memory-"))
    server, process = start_prefect_server(folder)
    os.environ.update(PREFECT_API_URL=server.api_url, PREFECT_HOME=str(folder / "client-home"),
                      PREFECT_LOGGING_LEVEL="WARNING", BENCH_HUBSPOT_TOKEN=TOKEN)
    from vectormill.connectors.hubspot import HubSpotSource
    from vectormill.flows.config import load_config
    from vectormill.flows.deploy import setup_limits
    from vectormill.embedding import loader
    from vectormill.flows import pipeline
    from vectormill.flows.ingest import ingest

    docs = folder / "docs"
    docs.mkdir()
    for n in range(5):
        (docs / f"note-{n}.md").write_text(f"# Note {n}\n\nBackups are tested every quarter, note {n}.\n")
    config = folder / "vectormill.toml"
    rss: dict[int, float] = {}
    try:
        with hubspot_server(TOKEN) as crm:
            ids = [crm.app.add("companies", name=f"Company {n}", description=f"Makes widget {n}.")
                   for n in range(args.records)]
            config.write_text(CONFIG.format(url=crm.url, task_chunks=16))
            setup_limits(load_config(config))  # as `vectormill serve` does
            started = time.perf_counter()
            for run in range(1, args.runs + 1):
                config.write_text(CONFIG.format(url=crm.url, task_chunks=16 + run % 2 * 16))
                (docs / f"note-{run % 5}.md").write_text(f"# Note {run % 5}\n\nEdited in run {run}.\n")
                crm.app.update("companies", ids[run % len(ids)], description=f"Pivoted in run {run}.")
                crm.requests.clear()  # the harness's own log of requests, not the process under test
                ingest(config_file=str(config))
                if run in (1, 10, args.runs):
                    rss[run] = rss_mb()
                    print(f"after run {run:3d}: RSS {rss[run]:7.1f} MiB  ({time.perf_counter() - started:.0f} s)",
                          flush=True)
            hubspot = [source for _, source in pipeline._sources.values() if isinstance(source, HubSpotSource)]
    finally:
        _stop(process)
    growth = (rss[args.runs] - rss[10]) / (args.runs - 10)
    print(f"\nRSS after 10 runs {rss[10]:.1f} MiB, after {args.runs} {rss[args.runs]:.1f} MiB: "
          f"{rss[args.runs] - rss[10]:+.1f} MiB ({growth * 1024:+.0f} KiB per run)")
    print(f"caches at the end: {len(loader._loaders)} model loader(s), {len(pipeline._sources)} source object(s), "
          f"{sum(len(source._listed) for source in hubspot)} HubSpot records held")


if __name__ == "__main__":
    main()
