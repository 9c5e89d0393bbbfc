"""Segments: immutable, content-addressed files holding what one checkpoint (or one merge) added to the store.

A segment is two files in a `segments/` folder, each named by its sha256:
* `<sha256>.faiss`: a FAISS index over the segment's vectors under their ids. Exact (IndexIDMap
  over IndexFlatIP) with the Flat factory or below `train_vectors` vectors; else built with the
  configured factory (IVF, PQ, HNSW…), trained on the segment's own vectors. Readers map it.
* `<sha256>.rows`: a SQLite file with its chunk rows (by id, the index's order), the tombstones it
  carries (copies of chunks in older segments that are no longer live), the rows of the other
  tables it sets and the keys it removes. It holds the raw vectors too when the index is not
  exact, so that any copy of the store can bring back every raw vector.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from .durable import publish
from .manifest import SegmentEntry
from .recall import QUERIES, ExactNeighbours, Measured, tune
from .settings import concrete_factory
from .tables import CHUNK_COLUMNS, TABLES

FLAT = "flat"
EMPTY_IDS = np.empty(0, dtype=np.int64)
FACTORY = "factory"
FACTORY_SAMPLE = 1_024  # vectors the factory check trains on and adds: enough for IVF1024 and PQ, and fast
ROWS_SCHEMA = f"""
CREATE TABLE chunks ({', '.join(CHUNK_COLUMNS)}, vector BLOB);
CREATE TABLE tombstones (segment INTEGER NOT NULL, faiss_id INTEGER NOT NULL);
CREATE TABLE deletions (tbl TEXT NOT NULL, key TEXT NOT NULL);
{''.join(f'CREATE TABLE {table.name} ({", ".join(table.columns)});' for table in TABLES)}
"""


class IndexFactoryError(ValueError):
    pass


@dataclass
class SegmentExtras:
    """What a segment holds besides its chunks: the tombstones it carries, the rows of the other tables it sets
    and the keys it removes."""

    tombstones: list[tuple[int, int]] = field(default_factory=list)  # (segment, faiss_id)
    tables: dict[str, list[tuple]] = field(default_factory=dict)
    deletions: list[tuple[str, str]] = field(default_factory=list)  # (table, JSON key)

    def is_empty(self) -> bool:
        return not (self.tombstones or self.deletions or any(self.tables.values()))


# Chunk rows (CHUNK_COLUMNS) and their vectors in batches, by ascending id. A callable: a factory that
# trains reads the first batches twice (its sample, then everything).
Batches = Callable[[], Iterable[tuple[np.ndarray, list[tuple]]]]


def new_index(dimension: int, factory: str) -> faiss.Index:
    """The configured index over inner product, taking our ids: IVF indexes natively, others in an IDMap."""
    factory = concrete_factory(factory)
    try:
        index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexFactoryError(f"[store] index_factory = {factory!r} is not a valid FAISS index factory string: "
                                f"{str(exc).splitlines()[0]}") from None
    if _takes_ids(index):
        return index
    return faiss.index_factory(dimension, f"IDMap,{factory}", faiss.METRIC_INNER_PRODUCT)


def _takes_ids(index: faiss.Index) -> bool:
    """Whether the index's own add_with_ids keeps our ids: an IVF or an IDMap, alone or behind a transform. A refined
    IVF ("IVF…,RFlat", "…,Refine(…)") does not: it goes in an IDMap like any other."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexPreTransform):
        return _takes_ids(index.index)
    return isinstance(index, (faiss.IndexIVF, faiss.IndexIDMap, faiss.IndexIDMap2))


def _train_roughly(index: faiss.Index) -> None:
    """The factory check needs a trained index, not a good one: one k-means iteration, no polysemous training."""
    index = faiss.downcast_index(index)
    for inner in ("index", "base_index", "refine_index", "storage"):  # IDMap, transforms, refinement, graphs
        if isinstance(getattr(index, inner, None), faiss.Index):
            _train_roughly(getattr(index, inner))
    if isinstance(index, faiss.IndexPreTransform):
        for position in range(index.chain.size()):
            transform = faiss.downcast_VectorTransform(index.chain.at(position))
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter = transform.niter_pq = 1
    if isinstance(index, faiss.IndexIVF):
        index.cp.niter = 1
    if isinstance(getattr(index, "pq", None), faiss.ProductQuantizer):
        index.pq.cp.niter = 1
    if hasattr(index, "do_polysemous_training"):
        index.do_polysemous_training = False


def check_factory(folder: Path, dimension: int, factory: str) -> None:
    """Build the configured index, train it and add a small seeded sample in two batches under sparse ids, write it
    and map it back, as a checkpoint will: a factory FAISS cannot checkpoint is refused before the store's first
    write, in one line, not at a run's final checkpoint."""
    index = new_index(dimension, factory)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # a small job: OpenMP threads on a busy machine cost more than they give
    try:
        _add_and_read_back(index, folder / ".tmp-factory-check.faiss")
    except RuntimeError as exc:
        raise IndexFactoryError(
            f"[store] index_factory = {factory!r} cannot be checkpointed: FAISS fails to add vectors to it in batches "
            f"under their ids ({str(exc).strip().splitlines()[-1][:160]}); use one that can, e.g. \"HNSW32\", "
            "\"IVF1024,Flat\" or \"IVF1024,PQ48\"") from None
    finally:
        faiss.omp_set_num_threads(threads)
        (folder / ".tmp-factory-check.faiss").unlink(missing_ok=True)


def _add_and_read_back(index: faiss.Index, path: Path) -> None:
    """Train the index roughly on a seeded sample, add it in two batches, write it to `path` and map it back."""
    sample = np.random.default_rng(0).standard_normal((FACTORY_SAMPLE, index.d)).astype(np.float32)
    faiss.normalize_L2(sample)
    ids = np.arange(FACTORY_SAMPLE, dtype=np.int64) * 7_919 + 1
    _train_roughly(index)
    try:
        index.train(sample)
    except RuntimeError:
        return  # too few vectors to train it on here; a segment trains on `train_vectors` and stays exact if that fails
    half = FACTORY_SAMPLE // 2
    index.add_with_ids(sample[:half], ids[:half])
    index.add_with_ids(sample[half:], ids[half:])
    faiss.write_index(index, str(path))
    mapped = open_index(path, FACTORY, faiss.try_extract_index_ivf(index) is not None)
    found = mapped.search(sample[:1], 1)[1]
    if not np.array_equal(np.sort(index_ids(mapped)), ids) or found[0, 0] not in ids:
        raise RuntimeError("the index does not give back the ids it was given")


def _segment_index(dimension: int, factory: str, count: int, train_vectors: int) -> tuple[faiss.Index, str]:
    if factory == "Flat" or count < train_vectors:
        index = faiss.index_factory(dimension, "IDMap,Flat", faiss.METRIC_INNER_PRODUCT)
        _reserve(faiss.downcast_index(index.index), count)
        return index, FLAT
    return new_index(dimension, factory), FACTORY


def _reserve(flat: faiss.IndexFlatCodes, count: int) -> None:
    """Allocate an exact index's storage for `count` vectors before the adds: grown by them, the vector under
    it doubles, holding the old buffer and the new at once (a seal of 50,000 vectors peaked at 1.5 times
    their 73 MiB). Shrinking it back to empty keeps the capacity (std::vector::resize)."""
    flat.codes.resize(count * flat.code_size)
    flat.codes.resize(0)


def _train(index: faiss.Index, batches: Batches, train_vectors: int) -> None:
    """Train on the first `train_vectors` rows: ids are hashes of the chunks, so these are a well-mixed sample."""
    sample, held = [], 0
    for vectors, _ in batches():
        sample.append(vectors[: train_vectors - held])
        held += len(sample[-1])
        if held >= train_vectors:
            break
    index.train(np.concatenate(sample))


def write_segment(folder: Path, seq: int, count: int, batches: Batches, extras: SegmentExtras, factory: str,
                  train_vectors: int, dimension: int, recall_target: float = 0.0) -> tuple[SegmentEntry, str | None]:
    """Write a segment of `count` chunks (index and rows file), publish its files by sha256; returns its entry and,
    when the factory could not be trained on it or misses `recall_target` at every search effort, why it stayed
    exact. Holds only the index and one batch in memory (and the recall guard's sampled queries)."""
    index, kind = _segment_index(dimension, factory, count, train_vectors)
    problem = None
    if count and not index.is_trained:
        try:
            _train(index, batches, train_vectors)
        except RuntimeError as exc:  # too few or degenerate vectors: the segment stays exact until a later merge
            problem = f"could not train index {factory!r} on {count} vectors ({str(exc).strip().splitlines()[0]})"
            index, kind = _segment_index(dimension, "Flat", count, train_vectors)
    guard: ExactNeighbours | None = None
    measured: Measured | None = None
    temporary = folder / f".tmp-{seq}.rows"
    temporary.unlink(missing_ok=True)
    rows = sqlite3.connect(temporary)
    try:
        rows.execute("PRAGMA journal_mode=OFF")  # a new file, published (fsync'd, renamed) only once complete
        rows.execute("PRAGMA page_size=1024")  # a table takes a page at least: small segments stay small
        rows.executescript(ROWS_SCHEMA)
        raw = kind != FLAT  # an exact index gives the vectors back; a trained one does not
        for vectors, chunks in batches() if count else ():
            ids = np.fromiter((row[0] for row in chunks), dtype=np.int64, count=len(chunks))
            if raw and recall_target > 0:  # the recall guard's queries: the first rows, a sample (ids are hashes)
                guard = guard or ExactNeighbours(ids[:QUERIES], vectors[:QUERIES])
                guard.add(vectors, ids)
            index.add_with_ids(vectors, ids)
            rows.executemany(f"INSERT INTO chunks VALUES ({', '.join('?' * (len(CHUNK_COLUMNS) + 1))})",
                             [(*row, vector.tobytes() if raw else None) for row, vector in zip(chunks, vectors)])
        if guard is not None:
            measured, holds = tune(index, guard, recall_target)
            if not holds:  # the raw vectors stay in the rows file too: this is rare, and a later merge tries again
                problem = (f"index {factory!r} reaches recall@10 {measured.recall} at most ({measured.effort}) on "
                           f"segment {seq}'s {count} vectors, below the target {recall_target}")
                index, kind = _segment_index(dimension, "Flat", count, train_vectors)
                for vectors, chunks in batches():
                    index.add_with_ids(vectors, np.fromiter((row[0] for row in chunks), dtype=np.int64,
                                                            count=len(chunks)))
                measured = None
        rows.executemany("INSERT INTO tombstones VALUES (?, ?)", extras.tombstones)
        rows.executemany("INSERT INTO deletions VALUES (?, ?)", extras.deletions)
        for table in TABLES:
            rows.executemany(f"INSERT INTO {table.name} VALUES ({', '.join('?' * len(table.columns))})",
                             extras.tables.get(table.name, []))
        rows.commit()
    finally:
        rows.close()
    if index.ntotal != count:
        raise ValueError(f"segment {seq}: {index.ntotal} vectors read for {count} rows")
    index_entry = None
    if count:
        faiss.write_index(index, str(folder / f".tmp-{seq}.faiss"))
        index_entry = publish(folder / f".tmp-{seq}.faiss", folder, "faiss")
    return SegmentEntry(seq, kind, count, index_entry, publish(temporary, folder, "rows"),
                        measured.recall if measured else None, measured.effort if measured else None), problem


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def read_segment(folder: Path, entry: SegmentEntry, dimension: int, batch: int = 65_536
                 ) -> tuple[SegmentExtras, Iterator[tuple[np.ndarray, list[tuple]]]]:
    """What a segment holds: its extras, and its chunk rows with raw vectors (from its exact index, or from its
    rows file) in batches."""
    rows = sqlite3.connect(f"{(folder / entry.rows.name).resolve().as_uri()}?mode=ro&immutable=1", uri=True,
                           check_same_thread=False)
    extras = SegmentExtras(rows.execute("SELECT segment, faiss_id FROM tombstones").fetchall(),
                           {table.name: rows.execute(f"SELECT {', '.join(table.selected(_columns(rows, table.name)))} "
                                                     f"FROM {table.name}").fetchall() for table in TABLES},
                           rows.execute("SELECT tbl, key FROM deletions").fetchall())

    def chunks() -> Iterator[tuple[np.ndarray, list[tuple]]]:
        exact = faiss.read_index(str(folder / entry.index.name)) if entry.kind == FLAT and entry.index else None
        cursor = rows.execute(f"SELECT {', '.join(CHUNK_COLUMNS)}, vector FROM chunks ORDER BY faiss_id")
        start = 0
        try:
            while part := cursor.fetchmany(batch):
                if exact is not None:
                    if not np.array_equal(index_ids(exact)[start : start + len(part)], [row[0] for row in part]):
                        raise ValueError(f"segment {entry.seq}: its index and rows file list different ids")
                    vectors = faiss.downcast_index(exact.index).reconstruct_n(start, len(part))
                else:
                    vectors = np.frombuffer(b"".join(row[-1] for row in part), dtype=np.float32).reshape(
                        len(part), dimension)
                yield vectors, [row[:-1] for row in part]
                start += len(part)
        finally:
            rows.close()

    return extras, chunks()


def replay_problem(folder: Path, segments: Sequence[SegmentEntry]) -> str | None:
    """Why a generation's segments (intact files in `folder`) would not replay into a store: a chunk id live in two
    segments (a tombstone missing); None when they would."""
    present = {segment.seq for segment in segments}
    held: dict[int, np.ndarray] = {}
    dead: dict[int, list[int]] = {}
    for segment in segments:
        rows = sqlite3.connect(f"{(folder / segment.rows.name).resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            held[segment.seq] = np.array([row[0] for row in rows.execute("SELECT faiss_id FROM chunks")],
                                         dtype=np.int64)
            for target, identifier in rows.execute("SELECT segment, faiss_id FROM tombstones"):
                if target in present:
                    dead.setdefault(target, []).append(identifier)
        finally:
            rows.close()
    live = np.concatenate([ids[~np.isin(ids, dead.get(seq, []))] for seq, ids in held.items()] or [EMPTY_IDS])
    twice = len(live) - len(np.unique(live))
    if twice:
        return (f"{twice} chunk id(s) live in two segments (a tombstone is missing): this generation cannot be "
                "restored as it is")
    return None


def open_index(path: Path, kind: str, ivf: bool) -> faiss.Index:
    """Map a segment's index read-only: flat codes in place (IO_FLAG_MMAP_IFC), IVF lists with IO_FLAG_MMAP."""
    mapping = faiss.IO_FLAG_MMAP if kind == FACTORY and ivf else faiss.IO_FLAG_MMAP_IFC
    return faiss.read_index(str(path), faiss.IO_FLAG_READ_ONLY | mapping)


def is_ivf(dimension: int, factory: str) -> bool:
    return faiss.try_extract_index_ivf(new_index(dimension, factory)) is not None


def index_ids(index: faiss.Index) -> np.ndarray:
    """Every id an index holds, in its order."""
    outer = faiss.downcast_index(index)
    if isinstance(outer, (faiss.IndexIDMap, faiss.IndexIDMap2)):  # an IVF inside one (refined) numbers by position
        return faiss.vector_to_array(outer.id_map)
    ivf = faiss.try_extract_index_ivf(index)
    lists = ivf.invlists
    return np.array([int(i) for n in range(lists.nlist)
                     for i in faiss.rev_swig_ptr(lists.get_ids(n), lists.list_size(n))], dtype=np.int64)
