"""Work per task: embedding tasks and fetch batches sized by tokens, planned where the model runs, a setting wins."""

from __future__ import annotations

import pytest

from vectormill.embedding.capacity import CPU_TASK_CHUNKS, TASK_CHUNKS_CEILING
from vectormill.embedding.loader import loader_for
from vectormill.embedding.settings import EmbeddingSettings
from vectormill.flows.execution import LocalExecution
from vectormill.flows.pipeline import TaskChunks, embedding_task_chunks
from vectormill.flows.task_sizes import (DEFAULT_FETCH_BATCH, MAX_FETCH_BATCH, FetchBatchSize,
                                         embedding_task_full)

FULL = 254  # tokens of a full-length chunk


@pytest.mark.usefixtures("prefect_harness")  # the question is a task run, as an embedding call is
def test_planned_task_chunks_are_asked_of_the_loaded_model_once_enough_tokens_wait():
    settings = EmbeddingSettings(device="cpu", max_batch_tokens=4321)  # a model key of its own: a fresh loader
    loader = loader_for(settings)
    try:
        chunks = TaskChunks(settings, LocalExecution(), FULL)
        assert not chunks.reached(CPU_TASK_CHUNKS - 1, (CPU_TASK_CHUNKS - 1) * FULL)
        assert not chunks.reached(4 * CPU_TASK_CHUNKS, 4 * CPU_TASK_CHUNKS * 10)  # many short chunks, few tokens
        assert not loader.started  # a run embedding fewer tokens never waits for the model to decide it
        assert chunks.reached(CPU_TASK_CHUNKS, CPU_TASK_CHUNKS * FULL)
        assert loader.loaded and loader.get().plan.task_chunks == CPU_TASK_CHUNKS  # the CPU plan's, as before
        assert not chunks.reached(CPU_TASK_CHUNKS - 1, (CPU_TASK_CHUNKS - 1) * FULL)
        assert chunks.reached(CPU_TASK_CHUNKS + 1, (CPU_TASK_CHUNKS + 1) * FULL)
        # Short chunks: a task holds the tokens of CPU_TASK_CHUNKS full-length ones.
        assert chunks.reached(CPU_TASK_CHUNKS * FULL // 40, CPU_TASK_CHUNKS * FULL)
        # The loaded model is shared by settings that differ only in task_chunks: the task answers for each.
        assert embedding_task_chunks.fn(settings.model_copy(update={"task_chunks": 9})) == 9
        assert embedding_task_chunks.fn(settings) == CPU_TASK_CHUNKS
    finally:
        loader.close()


def test_a_task_chunks_setting_counts_chunks_without_asking():
    settings = EmbeddingSettings(device="cpu", task_chunks=5, max_batch_tokens=4322)
    chunks = TaskChunks(settings, LocalExecution(), FULL)
    assert not chunks.reached(4, 4 * FULL) and chunks.reached(5, 5 * 10)
    assert not loader_for(settings).started


def test_a_planned_embedding_task_is_full_at_its_tokens_or_at_the_ceiling_of_chunks():
    assert not embedding_task_full(100, 64 * FULL - 1, 64, FULL, by_hand=False)
    assert embedding_task_full(300, 64 * FULL, 64, FULL, by_hand=False)
    assert embedding_task_full(TASK_CHUNKS_CEILING, TASK_CHUNKS_CEILING, 64, FULL, by_hand=False)  # 1-token chunks
    assert not embedding_task_full(63, 64 * FULL, 64, FULL, by_hand=True)


def test_fetch_batches_grow_for_small_documents_within_their_bounds():
    sizes = FetchBatchSize(None, FULL)
    assert sizes.next() == DEFAULT_FETCH_BATCH  # nothing fetched yet
    sizes.observe(16, 16 * 4 * FULL)  # documents of four full chunks or more: batches as before
    assert sizes.next() == DEFAULT_FETCH_BATCH
    sizes.observe(16, 16 * 40 * FULL)
    assert sizes.next() == DEFAULT_FETCH_BATCH
    notes = FetchBatchSize(None, FULL)
    notes.observe(16, 16 * 200)  # documents of 200 tokens: a batch holds one embedding task's tokens
    assert notes.next() == -(-CPU_TASK_CHUNKS * FULL // 200)
    notes.observe(1000, 1000 * 40)  # one-paragraph notes
    assert notes.next() == MAX_FETCH_BATCH
    empty = FetchBatchSize(None, FULL)
    empty.observe(16, 0)  # all failed or removed
    assert empty.next() == MAX_FETCH_BATCH
    fixed = FetchBatchSize(2, FULL)
    fixed.observe(1000, 1000)
    assert fixed.next() == 2  # a setting wins
