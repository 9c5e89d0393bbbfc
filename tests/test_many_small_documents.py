"""Many small documents make few task runs (flows/task_sizes.py), and the store is the one small tasks make."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vectormill.flows.config import load_config
from vectormill.flows.ingest import ingest
from vectormill.flows.progress import SilentListener, progress_listener
from vectormill.flows.task_sizes import DEFAULT_FETCH_BATCH
from vectormill.stores.faiss_store import FaissStore

pytestmark = pytest.mark.usefixtures("prefect_harness")

NOTES = 400
WORDS = "harbour lantern copper meadow signal orchard ledger basalt violet tunnel".split()


class Recorder(SilentListener):
    """The documents of each fetch task and of each write (one write per embedding task)."""

    def __init__(self) -> None:
        self.fetched: list[int] = []
        self.written: list[int] = []

    def documents_found(self, source: str, to_process: int) -> None:
        self.fetched.append(to_process)

    def documents_done(self, source: str, count: int, chunks: int) -> None:
        if chunks:
            self.written.append(count)


def run(folder: Path, store: str, sizes: str = "") -> Recorder:
    config = folder / f"{store}.toml"
    # fp32: in bf16 a chunk's vector moves in the last bits with the batch it runs in, however the work is cut.
    config.write_text(f'[store]\npath = "{store}"\n\n[embedding]\ndevice = "cpu"\nprecision = "fp32"\n{sizes}\n'
                      '[[sources]]\nname = "notes"\ntype = "filesystem"\nroot = "notes"\n'
                      + ("fetch_batch_size = 16\n" if sizes else ""))
    recorder = Recorder()
    token = progress_listener.set(recorder)
    try:
        summary = ingest(config_file=str(config))
    finally:
        progress_listener.reset(token)
    assert summary["documents"]["new"] == NOTES and summary["chunks_embedded"] == NOTES
    return recorder


def stored(folder: Path, store: str) -> tuple[list, dict[str, np.ndarray]]:
    config = folder / f"{store}.toml"
    with FaissStore.open(load_config(config).store, writable=False) as opened:
        rows = opened.db.execute("SELECT chunk_id, document, position, text, tokens FROM chunks ORDER BY chunk_id")
        return rows.fetchall(), opened.chunk_vectors()


@pytest.mark.slow  # two runs of 400 notes through the packaged model
def test_many_notes_go_in_few_tasks_and_make_the_store_that_small_tasks_make(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").mkdir()
    for n in range(NOTES):
        words = " ".join(WORDS[(n * 3 + i) % len(WORDS)] for i in range(12))
        (tmp_path / "notes" / f"note{n:04d}.txt").write_text(f"Note {n}: {words}.\n")

    planned = run(tmp_path, "planned")
    by_hand = run(tmp_path, "by-hand", "task_chunks = 64\n")

    # Planned: the first batches as before, then batches of many notes; one embedding task holds them all
    # (400 short notes are fewer tokens than 64 full-length chunks).
    assert planned.fetched[0] == DEFAULT_FETCH_BATCH and max(planned.fetched) > 4 * DEFAULT_FETCH_BATCH
    assert len(planned.fetched) < NOTES // DEFAULT_FETCH_BATCH // 2
    assert sum(planned.fetched) == sum(planned.written) == NOTES and len(planned.written) < 3
    # Set by hand: documents and chunks counted as set.
    assert set(by_hand.fetched) == {DEFAULT_FETCH_BATCH} and len(by_hand.written) == -(-NOTES // 64)
    # The same chunks and vectors however the work was cut.
    (rows, vectors), (rows_by_hand, vectors_by_hand) = stored(tmp_path, "planned"), stored(tmp_path, "by-hand")
    assert rows == rows_by_hand and vectors.keys() == vectors_by_hand.keys()
    assert max(float(np.abs(vectors[key] - vectors_by_hand[key]).max()) for key in vectors) < 1e-5
