"""Approximate segments by default, with the recall guard: segments from `train_vectors` up get an HNSW graph at the
least efSearch whose recall@10 on their own vectors reaches the target (or stay exact), `store stats` shows what was
measured, and filtered searches keep their k hits however few vectors the filter keeps."""

from __future__ import annotations

import hashlib

import faiss
import numpy as np
import pytest

from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.filters import parse_filter
from vectormill.stores.recall import ExactNeighbours, recall_at
from vectormill.stores.records import ChunkRecord, DocumentUpsert
from vectormill.stores.settings import StoreSettings

DIMENSION = 24
DOCUMENTS, CHUNKS = 300, 10  # 3,000 vectors


def clustered(count: int, seed: int) -> np.ndarray:
    """Vectors around 30 centres, as texts on a few subjects are: neighbours are close, and hard to tell apart."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((30, DIMENSION))
    vectors = centres[rng.integers(0, 30, count)] + 0.35 * rng.standard_normal((count, DIMENSION))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def near(vectors: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Queries close to the stored vectors (a question about what the store holds), none of them equal to one."""
    rng = np.random.default_rng(seed)
    queries = vectors[rng.integers(0, len(vectors), count)] + 0.2 * rng.standard_normal((count, DIMENSION))
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def documents(vectors: np.ndarray) -> list[DocumentUpsert]:
    found = []
    for number in range(len(vectors) // CHUNKS):
        source = "rare" if number % 100 == 0 else "common"  # 1 % of the documents
        chunks = tuple(ChunkRecord(hashlib.sha256(f"{number}/{p}".encode()).hexdigest()[:32], p, f"doc {number} {p}",
                                   f"h{number}{p}", None, None, 3) for p in range(CHUNKS))
        found.append(DocumentUpsert(source, f"doc{number}", "v1", "T", "L", None, chunks,
                                    vectors[number * CHUNKS:(number + 1) * CHUNKS]))
    return found


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    vectors = clustered(DOCUMENTS * CHUNKS, 1)
    settings = StoreSettings(path=tmp_path_factory.mktemp("guard") / "store", train_vectors=1_000,
                             checkpoint_every_seconds=None)
    assert settings.index_factory == "auto" and settings.recall_target == 0.95  # the defaults
    with FaissStore.open(settings, model="test", dimension=DIMENSION) as writer:
        writer.write(documents(vectors[:500]))  # below train_vectors: exact
        writer.checkpoint()
        writer.write(documents(vectors)[50:])
        writer.checkpoint()
    with FaissStore.open(settings, writable=False) as reader:
        yield reader, vectors


def test_a_large_segment_gets_a_graph_at_the_effort_its_measured_recall_needs(store):
    reader, vectors = store
    exact, graph = reader.stats()["segment_indexes"]
    assert (exact["index"], exact["vectors"], exact["recall"], exact["effort"]) == ("exact", 500, 1.0, None)
    assert graph["index"] == "HNSW32" and graph["vectors"] == 2_500 and graph["recall"] >= 0.95
    assert graph["effort"].startswith("efSearch=")
    # What was recorded holds for other queries too: recall@10 of the store's search against brute force.
    queries = near(vectors, 100, 2)
    found = [[hit.chunk_id for hit in reader.search(query, 10)] for query in queries]
    ids = [c.chunk_id for d in documents(vectors) for c in d.chunks]
    expected = [[ids[i] for i in np.argsort(-(vectors @ query))[:10]] for query in queries]
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, expected)])
    assert recall >= 0.9, recall


@pytest.mark.parametrize("kept", ["rare", "common"])
def test_a_filtered_search_returns_k_hits_whatever_share_of_vectors_the_filter_keeps(store, kept):
    reader, vectors = store
    chosen = [d for d in documents(vectors) if d.source == kept]
    ids = [c.chunk_id for d in chosen for c in d.chunks]
    candidates = np.concatenate([d.vectors for d in chosen])
    for query in near(vectors, 20, 3):
        hits = reader.search(query, 10, parse_filter({"source": kept}))
        assert len(hits) == 10 and {hit.source for hit in hits} == {kept}
        expected = [ids[i] for i in np.argsort(-(candidates @ query))[:10]]
        if kept == "rare":  # 1 % of the vectors: searched exactly among them
            assert [hit.chunk_id for hit in hits] == expected


def test_a_segment_whose_index_misses_the_target_at_every_effort_stays_exact(tmp_path):
    vectors = clustered(2_000, 4)
    settings = StoreSettings(path=tmp_path / "store", index_factory="PQ2x4", train_vectors=1_000,
                             checkpoint_every_seconds=None)
    with FaissStore.open(settings, model="test", dimension=DIMENSION) as store:
        store.write(documents(vectors))
        store.checkpoint()
        [segment] = store.stats()["segment_indexes"]
        assert (segment["index"], segment["recall"]) == ("exact", 1.0)
        assert any("below the target 0.95" in note and "stays exact" in note for note in store.notes), store.notes
        query = vectors[7]
        assert store.search(query, 1)[0].score == pytest.approx(1.0, abs=1e-5)


def test_recall_counts_ties_and_leaves_each_query_itself_out():
    vectors = np.array([[1, 0], [1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1], [1, 0]], dtype=np.float32)
    ids = np.arange(10, 16)  # 10 is the query; 11 and 15 are copies of it (ties); then 12 (0.8), 13 (0.6), 14 (0)
    exact = ExactNeighbours(ids[:1], vectors[:1], top=4)  # its 3 nearest besides itself: 11, 15, 12
    exact.add(vectors[:3], ids[:3])
    exact.add(vectors[3:], ids[3:])
    index = faiss.IndexIDMap(faiss.IndexFlatIP(2))
    index.add_with_ids(vectors, ids)
    scores, found = index.search(vectors[:1], 4)
    assert recall_at(exact, scores, found) == 1.0
    assert recall_at(exact, np.array([[1, 1, 0.8]]), np.array([[15, 11, 12]])) == 1.0  # ties in any order
    assert recall_at(exact, np.array([[1, 1, 0.6, 0]]), np.array([[10, 15, 13, 14]])) == pytest.approx(1 / 3)
    assert recall_at(exact, np.array([[1, 0.6, -1]]), np.array([[11, 13, -1]])) == pytest.approx(1 / 3)
