"""Chunks per embedding task: planned where the model runs, asked only once enough chunks wait, a setting wins."""

from __future__ import annotations

import pytest

from vectormill.embedding.capacity import CPU_TASK_CHUNKS
from vectormill.embedding.loader import loader_for
from vectormill.embedding.settings import EmbeddingSettings
from vectormill.flows.execution import LocalExecution
from vectormill.flows.pipeline import TaskChunks, embedding_task_chunks


@pytest.mark.usefixtures("prefect_harness")  # the question is a task run, as an embedding call is
def test_planned_task_chunks_are_asked_of_the_loaded_model_once_enough_chunks_wait():
    settings = EmbeddingSettings(device="cpu", max_batch_tokens=4321)  # a model key of its own: a fresh loader
    loader = loader_for(settings)
    try:
        chunks = TaskChunks(settings, LocalExecution())
        assert not chunks.reached(CPU_TASK_CHUNKS - 1)
        assert not loader.started  # a run embedding fewer chunks never waits for the model to decide it
        assert chunks.reached(CPU_TASK_CHUNKS)
        assert loader.loaded and loader.get().plan.task_chunks == CPU_TASK_CHUNKS  # the CPU plan's, as before
        assert not chunks.reached(CPU_TASK_CHUNKS - 1) and chunks.reached(CPU_TASK_CHUNKS + 1)
        # The loaded model is shared by settings that differ only in task_chunks: the task answers for each.
        assert embedding_task_chunks.fn(settings.model_copy(update={"task_chunks": 9})) == 9
        assert embedding_task_chunks.fn(settings) == CPU_TASK_CHUNKS
    finally:
        loader.close()


def test_a_task_chunks_setting_is_used_without_asking():
    settings = EmbeddingSettings(device="cpu", task_chunks=5, max_batch_tokens=4322)
    chunks = TaskChunks(settings, LocalExecution())
    assert not chunks.reached(4) and chunks.reached(5)
    assert not loader_for(settings).started
