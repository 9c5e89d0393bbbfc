"""How much work one task carries: fetch batches and embedding tasks sized by tokens, not by documents.

Every task run costs the same whatever it carries: the Prefect client's and server's bookkeeping
of the run (on a 2-core machine with the temporary server, the server's share alone took the
cores from the model), and, for an embedding call, the pool's round trip and a batch too small to
run the model at its speed. Many small documents (one-paragraph notes) therefore need tasks of
many documents, while large ones (PDFs, wiki pages) keep today's sizes.

- An embedding task is full when its chunks hold the tokens of `task_chunks` full-length chunks
  (the planned value: CPU_TASK_CHUNKS on CPU, a GPU's window of full-length rows), or when it
  holds TASK_CHUNKS_CEILING chunks. `[embedding] task_chunks` set by hand still counts chunks.
- A fetch batch (unless `fetch_batch_size` is set) holds about the tokens of the smallest planned
  embedding task, estimated from the documents fetched so far: DEFAULT_FETCH_BATCH documents until
  something is known, never fewer, and never more than MAX_FETCH_BATCH, which bounds what one
  task carries and what a killed process leaves to retry one at a time (flows/retry_queue.py).

Pure arithmetic: tested without Prefect or a model.
"""

from __future__ import annotations

import math

from vectormill.embedding.capacity import CPU_TASK_CHUNKS, TASK_CHUNKS_CEILING

DEFAULT_FETCH_BATCH = 16  # documents of the first fetch batches, and the fewest a planned batch holds
MAX_FETCH_BATCH = 256  # 256 one-paragraph notes: ~80 ms of CPU, a few times one task run's own cost


def embedding_task_full(pending_chunks: int, pending_tokens: int, task_chunks: int, chunk_tokens: int,
                        by_hand: bool) -> bool:
    """Whether the pending chunks make a whole embedding task (see the module docstring)."""
    if by_hand:
        return pending_chunks >= task_chunks
    return pending_tokens >= task_chunks * chunk_tokens or pending_chunks >= TASK_CHUNKS_CEILING


class FetchBatchSize:
    """Documents per fetch task of one source's run: the setting, else planned from what was fetched."""

    def __init__(self, setting: int | None, chunk_tokens: int):
        self._setting = setting
        self._target_tokens = CPU_TASK_CHUNKS * chunk_tokens
        self._documents = 0
        self._tokens = 0

    def observe(self, documents: int, tokens: int) -> None:
        """A fetch task's documents (failed and removed ones included: they cost a fetch too) and their chunks' tokens."""
        self._documents += documents
        self._tokens += tokens

    def next(self) -> int:
        if self._setting is not None:
            return self._setting
        if not self._documents:
            return DEFAULT_FETCH_BATCH
        per_document = max(self._tokens / self._documents, 1.0)
        return max(DEFAULT_FETCH_BATCH, min(MAX_FETCH_BATCH, math.ceil(self._target_tokens / per_document)))
