"""A text file too large to hold whole goes through a run in parts: its text read in pieces, chunked, embedded
and written a part at a time, with the chunks and vectors a whole-document run gives it."""

import random

import numpy as np
import pytest

from vectormill.connectors import filesystem
from vectormill.embedding import tokenizer
from vectormill.flows import pipeline
from vectormill.flows.config import load_config
from vectormill.flows.ingest import ingest
from vectormill.stores.faiss_store import FaissStore

from .corpus import write_config

pytestmark = pytest.mark.usefixtures("prefect_harness")

WORDS = "request served cache miss upstream latency retry queue worker shard replica timeout naïve 数据 😀".split()


def log_lines(count: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(f"{n} {' '.join(rng.choices(WORDS, k=10))} in {rng.randrange(1000)} ms\r\n" for n in range(count))


def stored(config):
    with FaissStore.open(load_config(config).store, writable=False) as store:
        rows = store.db.execute("SELECT chunk_id, position, text FROM chunks WHERE document = 'big.txt' "
                                "ORDER BY position").fetchall()
        staged = store.db.execute("SELECT count(*) FROM staged_chunks").fetchone()[0]
        return rows, store.chunk_vectors(), store.document_versions("docs"), staged


def run(folder, text: bytes, in_parts: bool, monkeypatch):
    (folder / "pdfs").mkdir(parents=True, exist_ok=True)
    (folder / "pdfs" / "big.txt").write_bytes(text)
    if in_parts:
        monkeypatch.setattr(filesystem, "STREAM_TEXT_BYTES", 1000)
        monkeypatch.setattr(filesystem, "TEXT_BLOCK_BYTES", 777)
        monkeypatch.setattr(pipeline, "PART_CHUNKS", 7)
    config = write_config(folder, "max_failed_ratio = 1.0\n", chunk_tokens=40)  # a failure is the summary's
    summary = ingest(config_file=str(config))
    monkeypatch.undo()
    return config, summary


@pytest.mark.slow  # three runs embedding on CPU
def test_a_large_text_file_is_written_in_parts_as_it_would_be_whole(tmp_path, monkeypatch):
    text = log_lines(60, seed=1).encode()
    whole, _ = run(tmp_path / "whole", text, in_parts=False, monkeypatch=monkeypatch)
    parts, summary = run(tmp_path / "parts", text, in_parts=True, monkeypatch=monkeypatch)
    assert summary["documents"]["new"] == 1 and summary["chunks_embedded"] > 3 * 7  # several parts
    rows, vectors, versions, staged = stored(parts)
    whole_rows, whole_vectors, whole_versions, _ = stored(whole)
    assert rows == whole_rows and versions.keys() == whole_versions.keys() and staged == 0
    for chunk_id, vector in whole_vectors.items():  # embedded in other batches (bf16 on CPU): nearly the same
        assert float(np.dot(vectors[chunk_id], vector)) > 0.999

    # Lines appended: the changed document is written in parts again, the chunks of unchanged text reuse their vectors.
    grown = text + log_lines(15, seed=2).encode()
    _, again = run(tmp_path / "parts", grown, in_parts=True, monkeypatch=monkeypatch)
    assert again["documents"]["changed"] == 1 and again["chunks_reused"] > 0
    rows, vectors, versions, staged = stored(parts)
    assert [text for _, _, text in rows][0] == whole_rows[0][2] and staged == 0
    assert "".join(text for _, _, text in rows).count("\r\n") >= 75 - len(rows)  # the new lines are in
    assert set(vectors) == {chunk_id for chunk_id, _, _ in rows} | (set(whole_vectors) - {r[0] for r in whole_rows})


@pytest.mark.slow  # two runs embedding on CPU
def test_a_large_text_file_that_fails_while_read_keeps_its_stored_version(tmp_path, monkeypatch):
    text = log_lines(30, seed=1).encode()
    config, _ = run(tmp_path, text, in_parts=True, monkeypatch=monkeypatch)
    before = stored(config)
    broken = text + log_lines(100, seed=3).encode() + b"\xff tail\r\n"  # not UTF-8 past the first windows
    monkeypatch.setattr(tokenizer, "WINDOW_CHARS", 2000)  # read no further ahead than a few small windows
    monkeypatch.setattr(tokenizer, "WINDOWS_PER_BATCH", 1)
    _, summary = run(tmp_path, broken, in_parts=True, monkeypatch=monkeypatch)
    assert summary["documents"]["failed"] == 1
    assert "not UTF-8 text: invalid start byte at byte" in summary["failures"][0]["reason"]
    assert summary["chunks_embedded"] > 7, summary  # it failed after parts were written
    rows, vectors, versions, staged = stored(config)
    assert (rows, versions, staged) == before[:1] + before[2:]  # the old version whole, the parts dropped
    assert vectors.keys() == before[1].keys()
    assert all(np.array_equal(vectors[chunk_id], vector) for chunk_id, vector in before[1].items())
