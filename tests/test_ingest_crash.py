"""A real `vectormill backfill` process SIGKILLed at random points, then re-run: no lost, no duplicate vectors."""

import os
import random
import signal
import time

import numpy as np
import pytest

from vectormill.flows.config import load_config
from vectormill.flows.retry_queue import INTERRUPTED_ALONE
from vectormill.flows.ingest import ingest
from vectormill.stores.faiss_store import FaissStore

from .cli_process import Preloaded
from .corpus import write_config, write_corpus
from .servers.store_batches import stored_vectors

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

TOPICS = {f"topic{i:02d}": f"Distinct sentence number {i} about subject {i * 7919 % 1000}." for i in range(16)}


def snapshot(config_file):
    with FaissStore.open(load_config(config_file).store, writable=False) as store:
        rows = store.db.execute("SELECT count(*), count(DISTINCT chunk_id) FROM chunks").fetchone()
        return store.chunk_vectors(), store.stats(), rows


def test_killed_runs_resume_to_exactly_the_uninterrupted_result(tmp_path):
    from prefect.settings import PREFECT_API_URL

    # The killed processes talk to the harness's server instead of starting one each.
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_LOGGING_LEVEL="WARNING")
    reference_dir, crashed_dir = tmp_path / "reference", tmp_path / "crashed"
    for folder in (reference_dir, crashed_dir):
        write_corpus(folder / "pdfs", TOPICS)
        write_config(folder, fetch_batch_size=2)
    reference_config, crashed_config = reference_dir / "vectormill.toml", crashed_dir / "vectormill.toml"

    ingest(config_file=str(reference_config))
    expected, expected_stats, _ = snapshot(reference_config)

    crashed_store = load_config(crashed_config).store
    rng = random.Random(20261125)
    kills = 0
    with Preloaded(env, tmp_path / "runs") as runs:
        for attempt in range(4):
            process = runs.start("backfill", "--json", "--config", str(crashed_config), cwd=crashed_dir)
            start_vectors = stored_vectors(crashed_store)
            deadline = time.monotonic() + 120
            # Wait until this run has written something, then kill it a random moment later.
            while (process.poll() is None and stored_vectors(crashed_store) <= start_vectors
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 1.5))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.communicate(timeout=60)
    assert kills >= 2, "the runs finished before they could be killed: make the corpus larger"

    # The run that finishes the job needs no process of its own (its model is this one's, already loaded).
    finished = ingest(config_file=str(crashed_config))
    assert finished["failures"] == []  # it completed: a failed run raises
    if finished["stuck"]:
        # A kill that fell while a suspect was handled alone quarantined it (it cannot be told from a poison pill):
        # reported and warned about by name, and --full fetches it again.
        assert all(entry["reason"] == INTERRUPTED_ALONE for entry in finished["stuck"])
        assert any("stuck" in warning for warning in finished["warnings"])
        assert ingest(config_file=str(crashed_config), full=True)["stuck"] == []

    got, stats, (rows, distinct) = snapshot(crashed_config)
    assert rows == distinct == stats["vectors"] == expected_stats["vectors"]
    assert stats["documents"] == expected_stats["documents"] == len(TOPICS)
    assert got.keys() == expected.keys()
    assert max(float(np.abs(got[k] - expected[k]).max()) for k in expected) < 1e-5
