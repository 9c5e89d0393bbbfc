"""Stores as vectormill wrote them before segments (main at cf9dd16 and earlier), written file by file the way that
code did: identity.json, generations/NNNNNNNN/{index.faiss, meta.sqlite, manifest.json} and a write-ahead log in
wal/. The migration is tested against these files, not against the old code (which cannot be imported beside
the new one). Only the operations the store tests write (upserts, deletes, cursors) are supported.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from vectormill.stores.records import CursorUpdate, DocumentDelete, DocumentUpsert, Operation

MAGIC = b"VMWAL001"
HEADER = struct.Struct("<QII")  # sequence number, payload length, CRC-32 of sequence number + payload
SCHEMA = """
CREATE TABLE documents (
    source TEXT NOT NULL, document TEXT NOT NULL, version TEXT NOT NULL, title TEXT NOT NULL,
    location TEXT NOT NULL, modified TEXT, chunks INTEGER NOT NULL, PRIMARY KEY (source, document));
CREATE TABLE chunks (
    faiss_id INTEGER PRIMARY KEY, chunk_id TEXT NOT NULL UNIQUE, source TEXT NOT NULL,
    document TEXT NOT NULL, position INTEGER NOT NULL, text TEXT NOT NULL, content_hash TEXT NOT NULL,
    page INTEGER, last_page INTEGER, tokens INTEGER NOT NULL, vector BLOB NOT NULL, ocr INTEGER NOT NULL DEFAULT 0);
CREATE INDEX chunks_by_document ON chunks (source, document);
CREATE TABLE cursors (source TEXT PRIMARY KEY, value TEXT);
CREATE TABLE baselines (
    source TEXT NOT NULL, run_id TEXT NOT NULL, created_at TEXT NOT NULL, stats TEXT NOT NULL,
    PRIMARY KEY (source, run_id));
CREATE TABLE retry_queue (
    source TEXT NOT NULL, document TEXT NOT NULL, ref TEXT NOT NULL, reason TEXT NOT NULL,
    attempts INTEGER NOT NULL, first_failed TEXT NOT NULL, last_failed TEXT NOT NULL,
    PRIMARY KEY (source, document));
CREATE TABLE properties (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def old_faiss_id(chunk_id: str) -> int:
    return int(chunk_id[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF


def encode_operations(operations: Sequence[Operation]) -> bytes:
    """A log record's payload: a JSON header of operations followed by their float32 vectors."""
    header, blobs = [], []
    for op in operations:
        if isinstance(op, DocumentUpsert):
            header.append({"op": "upsert", "source": op.source, "document": op.document, "version": op.version,
                           "title": op.title, "location": op.location, "modified": op.modified,
                           "chunks": [[c.chunk_id, c.position, c.text, c.content_hash, c.page, c.last_page, c.tokens,
                                       c.ocr] for c in op.chunks]})
            blobs.append(np.ascontiguousarray(op.vectors, dtype=np.float32).tobytes())
        elif isinstance(op, DocumentDelete):
            header.append({"op": "delete", "source": op.source, "document": op.document})
        else:
            assert isinstance(op, CursorUpdate)
            header.append({"op": "cursor", "source": op.source, "cursor": op.cursor})
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return len(encoded).to_bytes(4, "little") + encoded + b"".join(blobs)


def log_record(lsn: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(struct.pack("<Q", lsn)))
    return HEADER.pack(lsn, len(payload), crc) + payload


def _apply(db: sqlite3.Connection, operations: Sequence[Operation]) -> None:
    for op in operations:
        if isinstance(op, CursorUpdate):
            db.execute("INSERT OR REPLACE INTO cursors VALUES (?, ?)", (op.source, op.cursor))
            continue
        db.execute("DELETE FROM chunks WHERE source = ? AND document = ?", (op.source, op.document))
        db.execute("DELETE FROM documents WHERE source = ? AND document = ?", (op.source, op.document))
        if isinstance(op, DocumentUpsert):
            db.execute("INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (op.source, op.document, op.version, op.title, op.location, op.modified, len(op.chunks)))
            db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
                (old_faiss_id(c.chunk_id), c.chunk_id, op.source, op.document, c.position, c.text, c.content_hash,
                 c.page, c.last_page, c.tokens, np.asarray(v, dtype=np.float32).tobytes(), int(c.ocr))
                for c, v in zip(op.chunks, op.vectors)])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_generation(folder: Path, generation: int, lsn: int, db: sqlite3.Connection, dimension: int) -> None:
    folder.mkdir(parents=True)
    rows = db.execute("SELECT faiss_id, vector FROM chunks ORDER BY faiss_id").fetchall()
    index = faiss.index_factory(dimension, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
    if rows:
        index.add_with_ids(np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dimension),
                           np.array([r[0] for r in rows], dtype=np.int64))
    faiss.write_index(index, str(folder / "index.faiss"))
    snapshot = sqlite3.connect(folder / "meta.sqlite")
    db.backup(snapshot)
    snapshot.close()
    body = {"generation": generation, "lsn": lsn, "created_at": "2026-01-01T00:00:00+00:00", "vectors": len(rows),
            "documents": db.execute("SELECT count(*) FROM documents").fetchone()[0], "model": "test-model",
            "dimension": dimension, "index_factory": "Flat", "index_kind": "final", "format": 1,
            "files": {name: {"sha256": _sha256(folder / name), "bytes": (folder / name).stat().st_size}
                      for name in ("index.faiss", "meta.sqlite")}}
    body["checksum"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(body, indent=2, sort_keys=True))


def write_legacy_store(path: Path, batches: Sequence[Sequence[Operation]], checkpointed: int, dimension: int) -> None:
    """A store holding `batches`: the first `checkpointed` in generation 1 (none: 0), every one in the log, whose
    file rotated at the checkpoint as the old writer's did."""
    path.mkdir(parents=True)
    (path / "identity.json").write_text(json.dumps(
        {"model": "test-model", "dimension": dimension, "index_factory": "Flat",
         "created_at": "2026-01-01T00:00:00+00:00"}, indent=2))
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    log = path / "wal"
    log.mkdir()
    segment = bytearray(MAGIC)
    first = 1
    for lsn, operations in enumerate(batches, start=1):
        _apply(db, operations)
        segment += log_record(lsn, encode_operations(operations))
        if lsn == checkpointed:
            db.commit()
            _write_generation(path / "generations" / "00000001", 1, lsn, db, dimension)
            (log / f"{first:016d}.wal").write_bytes(bytes(segment))
            segment, first = bytearray(MAGIC), lsn + 1
    (log / f"{first:016d}.wal").write_bytes(bytes(segment))


def records_of(segment: Path) -> list[tuple[int, int]]:
    """(offset, length) of each record in a log file, for tests that damage one."""
    data = segment.read_bytes()
    offset, found = len(MAGIC), []
    while offset < len(data):
        _, length, _ = HEADER.unpack_from(data, offset)
        found.append((offset, HEADER.size + length))
        offset += HEADER.size + length
    return found
