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
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from .durable import publish
from .manifest import SegmentEntry
from .tables import CHUNK_COLUMNS, TABLES

FLAT = "flat"
FACTORY = "factory"
ROWS_SCHEMA = f"""
CREATE TABLE chunks ({', '.join(CHUNK_COLUMNS)}, vector BLOB);
CREATE TABLE tombstones (segment INTEGER NOT NULL, faiss_id INTEGER NOT NULL);
CREATE TABLE deletions (tbl TEXT NOT NULL, key TEXT NOT NULL);
{''.join(f'CREATE TABLE {table.name} ({", ".join(table.columns)});' for table in TABLES)}
"""


class IndexFactoryError(ValueError):
    pass


@dataclass
class SegmentContent:
    """What a segment holds; `chunks` are rows of CHUNK_COLUMNS by ascending id, `vectors` in the same order."""

    vectors: np.ndarray
    chunks: list[tuple]
    tombstones: list[tuple[int, int]] = field(default_factory=list)  # (segment, faiss_id)
    tables: dict[str, list[tuple]] = field(default_factory=dict)
    deletions: list[tuple[str, str]] = field(default_factory=list)  # (table, JSON key)

    @property
    def ids(self) -> np.ndarray:
        return np.fromiter((row[0] for row in self.chunks), dtype=np.int64, count=len(self.chunks))

    def is_empty(self) -> bool:
        return not (self.chunks or self.tombstones or self.deletions or any(self.tables.values()))


def new_index(dimension: int, factory: str) -> faiss.Index:
    """The configured index over inner product, taking our ids: IVF indexes natively, others in an IDMap."""
    try:
        index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexFactoryError(f"[store] index_factory = {factory!r} is not a valid FAISS index factory string: "
                                f"{str(exc).splitlines()[0]}") from None
    if "IDMap" in factory or faiss.try_extract_index_ivf(index) is not None:
        return index
    return faiss.index_factory(dimension, f"IDMap,{factory}", faiss.METRIC_INNER_PRODUCT)


def build_index(ids: np.ndarray, vectors: np.ndarray, factory: str, train_vectors: int) -> tuple[faiss.Index, str]:
    """The segment's index and its kind: the factory's once the segment is large enough to train it, else exact.

    Raises RuntimeError when the factory cannot be trained on these vectors (the caller keeps it exact).
    """
    dimension = vectors.shape[1]
    if factory == "Flat" or len(ids) < train_vectors:
        index = faiss.index_factory(dimension, "IDMap,Flat", faiss.METRIC_INNER_PRODUCT)
        kind = FLAT
    else:
        index = new_index(dimension, factory)
        if not index.is_trained:
            # Ids are hashes of the chunks, so the first rows by id are a well-mixed sample.
            index.train(vectors[:train_vectors])
        kind = FACTORY
    if len(ids):
        index.add_with_ids(vectors, ids)
    return index, kind


def write_segment(content: SegmentContent, folder: Path, seq: int, index: faiss.Index | None, kind: str) -> SegmentEntry:
    """Write a segment's files (index, if it has vectors, and rows), publish them by sha256, and describe it."""
    index_entry = None
    if index is not None and content.chunks:
        temporary = folder / f".tmp-{seq}.faiss"
        faiss.write_index(index, str(temporary))
        index_entry = publish(temporary, folder, "faiss")
    temporary = folder / f".tmp-{seq}.rows"
    temporary.unlink(missing_ok=True)
    rows = sqlite3.connect(temporary)
    try:
        rows.execute("PRAGMA journal_mode=OFF")  # a new file, published (fsync'd, renamed) only once complete
        rows.execute("PRAGMA page_size=1024")  # a table takes a page at least: small segments stay small
        rows.executescript(ROWS_SCHEMA)
        raw = kind != FLAT  # an exact index gives the vectors back; a trained one does not
        rows.executemany(f"INSERT INTO chunks VALUES ({', '.join('?' * (len(CHUNK_COLUMNS) + 1))})",
                         [(*row, vector.tobytes() if raw else None) for row, vector in zip(content.chunks, content.vectors)])
        rows.executemany("INSERT INTO tombstones VALUES (?, ?)", content.tombstones)
        rows.executemany("INSERT INTO deletions VALUES (?, ?)", content.deletions)
        for table in TABLES:
            rows.executemany(f"INSERT INTO {table.name} VALUES ({', '.join('?' * len(table.columns))})",
                             content.tables.get(table.name, []))
        rows.commit()
    finally:
        rows.close()
    return SegmentEntry(seq, kind, len(content.chunks), index_entry, publish(temporary, folder, "rows"))


def read_segment(folder: Path, entry: SegmentEntry, dimension: int) -> SegmentContent:
    """Everything a segment holds, raw vectors included (from its exact index, or from its rows file)."""
    rows = sqlite3.connect(f"{(folder / entry.rows.name).resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        chunks = rows.execute(f"SELECT {', '.join(CHUNK_COLUMNS)}, vector FROM chunks ORDER BY faiss_id").fetchall()
        content = SegmentContent(
            np.zeros((0, dimension), dtype=np.float32), [row[:-1] for row in chunks],
            rows.execute("SELECT segment, faiss_id FROM tombstones").fetchall(),
            {table.name: rows.execute(f"SELECT * FROM {table.name}").fetchall() for table in TABLES},
            rows.execute("SELECT tbl, key FROM deletions").fetchall())
    finally:
        rows.close()
    if entry.kind == FLAT and entry.index is not None:
        index = faiss.read_index(str(folder / entry.index.name))
        if not np.array_equal(index_ids(index), content.ids):
            raise ValueError(f"segment {entry.seq}: its index and rows file list different ids")
        content.vectors = faiss.downcast_index(index.index).reconstruct_n(0, index.ntotal)
    elif chunks:
        content.vectors = np.frombuffer(b"".join(row[-1] for row in chunks), dtype=np.float32).reshape(
            len(chunks), dimension)
    return content


def open_index(path: Path, kind: str, ivf: bool) -> faiss.Index:
    """Map a segment's index read-only: flat codes in place (IO_FLAG_MMAP_IFC), IVF lists with IO_FLAG_MMAP."""
    mapping = faiss.IO_FLAG_MMAP if kind == FACTORY and ivf else faiss.IO_FLAG_MMAP_IFC
    return faiss.read_index(str(path), faiss.IO_FLAG_READ_ONLY | mapping)


def is_ivf(dimension: int, factory: str) -> bool:
    return faiss.try_extract_index_ivf(new_index(dimension, factory)) is not None


def index_ids(index: faiss.Index) -> np.ndarray:
    """Every id an index holds, in its order."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return faiss.vector_to_array(faiss.downcast_index(index).id_map)
    lists = ivf.invlists
    return np.array([int(i) for n in range(lists.nlist)
                     for i in faiss.rev_swig_ptr(lists.get_ids(n), lists.list_size(n))], dtype=np.int64)
