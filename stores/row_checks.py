"""Checksums of the catalog rows that search and writes trust besides a chunk's contents (issue 30): which segment
holds a chunk's vector (`chunks.segment_checksum`), and a document's whole row (`documents.checksum`: its key,
version, title, location, modified, chunk count, metadata and segment).

SQLite keeps no checksums of its own: a flipped byte in a row that its structure still accepts is found only by
these, by `store verify`, and by search (which leaves such a row out). Stores written before them get them at
their first writable open (`add_missing`), detected by the columns' presence as the catalog's other migrations are.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from typing import Any

from .tables import DOCUMENTS

DOCUMENT_COLUMNS = (*DOCUMENTS.columns, "segment")
DOCUMENT_CHECKSUM = f"document_checksum({', '.join(DOCUMENT_COLUMNS)})"
SEGMENT_CHECKSUM = "segment_checksum(faiss_id, segment)"


def _digest(values: Any) -> str:
    return hashlib.sha256(json.dumps(values, separators=(",", ":")).encode()).hexdigest()[:32]


def document_checksum(*values: Any) -> str:
    """The checksum of a documents row: its DOCUMENT_COLUMNS values, in order."""
    return _digest(values)


def segment_checksum(identifier: int, segment: int | None) -> str:
    """The checksum of a chunk's placement: its id and the segment whose index holds its vector (None: pending)."""
    return _digest(["segment", identifier, segment])


def register(db: sqlite3.Connection) -> None:
    db.create_function("document_checksum", len(DOCUMENT_COLUMNS), document_checksum, deterministic=True)
    db.create_function("segment_checksum", 2, segment_checksum, deterministic=True)


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


def present(db: sqlite3.Connection) -> tuple[bool, bool]:
    """Whether the catalog has (documents.checksum and every column it covers, chunks.segment_checksum): a reader of
    an older store skips them."""
    documents = _columns(db, "documents")
    return {"checksum", *DOCUMENT_COLUMNS} <= documents, "segment_checksum" in _columns(db, "chunks")


def add_missing(db: sqlite3.Connection) -> None:
    """Add and fill the checksum columns a catalog written before them lacks (inside the caller's transaction, after
    the columns they cover were added)."""
    if "checksum" not in _columns(db, "documents"):
        db.execute("ALTER TABLE documents ADD COLUMN checksum TEXT")
    if "segment_checksum" not in _columns(db, "chunks"):
        db.execute("ALTER TABLE chunks ADD COLUMN segment_checksum TEXT")
    checksum_all(db)


def checksum_all(db: sqlite3.Connection) -> None:
    """Checksum every documents row and chunk placement (rows imported in bulk: a migration)."""
    refresh_documents(db)
    db.execute(f"UPDATE chunks SET segment_checksum = {SEGMENT_CHECKSUM}")


def refresh_documents(db: sqlite3.Connection, where: str = "1", args: tuple = ()) -> None:
    """Checksum the documents rows matching `where` again, after they were written."""
    db.execute(f"UPDATE documents SET checksum = {DOCUMENT_CHECKSUM} WHERE {where}", args)


def damaged_documents(db: sqlite3.Connection) -> list[tuple[str, str]]:
    """(source, document) of the documents rows whose checksum does not hold."""
    if not present(db)[0]:
        return []
    return db.execute(f"SELECT source, document FROM documents WHERE checksum IS NULL OR checksum != "
                      f"{DOCUMENT_CHECKSUM} ORDER BY source, document").fetchall()


def misplaced_chunks(db: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """Chunk rows whose segment does not match its checksum, counted by (source, document)."""
    if not present(db)[1]:
        return {}
    return {(source, document): rows for source, document, rows in db.execute(
        f"SELECT source, document, count(*) FROM chunks WHERE segment_checksum IS NULL OR "
        f"segment_checksum != {SEGMENT_CHECKSUM} GROUP BY source, document")}


def intact_document_sql(alias: str, checksummed: bool) -> str:
    """SQL truth value: the documents row of table alias `alias` (e.g. "d.") holds its checksum (true in a catalog
    written before document checksums: `checksummed` False)."""
    if not checksummed:
        return "1"
    return f"{alias}checksum IS document_checksum({', '.join(alias + column for column in DOCUMENT_COLUMNS)})"
