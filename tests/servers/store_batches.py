"""Deterministic store writes for the store tests and the crash writer: batch i, and the state after n batches.

Batch i adds document d{i} (1–3 chunks); every 5th batch also changes an earlier document (its
first chunk's text changes, the others stay and keep their vectors); every 7th deletes one. Each
batch ends with the cursor "i", as the ingest flow does, so a writer knows where to resume.
"""

from __future__ import annotations

import hashlib

import numpy as np

from vectormill.stores.faiss_store import FaissStore, StoreError
from vectormill.stores.records import ChunkRecord, CursorUpdate, DocumentDelete, DocumentUpsert, Operation
from vectormill.stores.settings import StoreSettings

DIMENSION = 8
SOURCE = "s"


def chunk_text(document: str, position: int, version: int) -> str:
    return f"{document} chunk {position} v{version if position == 0 else 1}"


def vector_for(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(DIMENSION).astype(np.float32)
    return vector / np.linalg.norm(vector)


def upsert(document: str, version: int, chunks: int) -> DocumentUpsert:
    records, vectors = [], []
    for position in range(chunks):
        text = chunk_text(document, position, version)
        digest = hashlib.sha256(text.encode()).hexdigest()
        records.append(ChunkRecord(hashlib.sha256(f"{SOURCE}/{document}/{position}/{digest}".encode()).hexdigest()[:32],
                                   position, text, digest, 1, 1, 5))
        vectors.append(vector_for(text))
    return DocumentUpsert(SOURCE, document, f"v{version}", document, f"{document}.txt", None, tuple(records),
                          np.stack(vectors))


def batch(i: int) -> list[Operation]:
    operations: list[Operation] = [upsert(f"d{i}", 1, 1 + i % 3)]
    if i % 5 == 4:
        operations.append(upsert(f"d{i - 2}", 2, 1 + (i - 2) % 3))
    if i % 7 == 6:
        operations.append(DocumentDelete(SOURCE, f"d{i - 4}"))
    operations.append(CursorUpdate(SOURCE, str(i)))
    return operations


def expected_after(count: int) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Document versions and chunk vectors after batches 0 … count-1."""
    documents: dict[str, DocumentUpsert] = {}
    for i in range(count):
        for op in batch(i):
            if isinstance(op, DocumentUpsert):
                documents[op.document] = op
            elif isinstance(op, DocumentDelete):
                documents.pop(op.document, None)
    versions = {name: op.version for name, op in documents.items()}
    vectors = {chunk.chunk_id: vector for op in documents.values() for chunk, vector in zip(op.chunks, op.vectors)}
    return versions, vectors


def stored_vectors(settings: StoreSettings) -> int:
    """Vectors a store holds (acknowledged writes only), as a reader sees them while a writer runs; 0 before it exists."""
    try:
        with FaissStore.open(settings, writable=False) as store:
            return store.vector_count()
    except StoreError:
        return 0
