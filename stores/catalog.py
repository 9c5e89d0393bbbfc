"""The catalog: the store's source of truth, one SQLite database in WAL mode with synchronous=FULL, opened in place.

It holds every chunk (text, raw vector, and the segment whose index holds its vector), the
documents, cursors, baselines, retry queue and properties, the copies of chunks that sealed
segments still hold but that were deleted or replaced since ("dead"), the kept generations'
manifests and counters kept in the same transactions as the rows they count, so that `store
stats` reads a few rows whatever the store's size. A `write` is one transaction; it is
acknowledged when its COMMIT returns, by then fsync'd to the database's write-ahead log.

Rows written since the last checkpoint have `segment` NULL ("pending"): a checkpoint seals them
into a new segment, a compaction moves the live rows of a run of segments into a new one.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from . import keywords, row_checks
from .filters import DOCUMENT_FIELDS, FilterError, SearchFilter, epoch
from .records import (
    BaselineRecord, CursorUpdate, DocumentDelete, DocumentFailed, DocumentPart, DocumentPartsCommit,
    DocumentPartsDiscard, DocumentUpsert, Operation, PropertyUpdate, QueuedDocument,
)
from .tables import BASELINES, BY_NAME, CHUNK_COLUMNS, CURSORS, DOCUMENTS, PROPERTIES, RETRY_QUEUE, TABLES, Table

SCHEMA = """
-- Rows are appended in write order (row), not placed by faiss_id: random ids would split pages and leave them
-- half empty. A faiss_id is the chunk id's first 63 bits, so its uniqueness is the chunk id's too.
CREATE TABLE IF NOT EXISTS chunks (
    row INTEGER PRIMARY KEY, faiss_id INTEGER NOT NULL UNIQUE, chunk_id TEXT NOT NULL, source TEXT NOT NULL,
    document TEXT NOT NULL,
    position INTEGER NOT NULL, text TEXT NOT NULL, content_hash TEXT NOT NULL, page INTEGER, last_page INTEGER,
    tokens INTEGER NOT NULL, ocr INTEGER NOT NULL, vector BLOB NOT NULL, segment INTEGER, checksum TEXT);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks (source, document);
CREATE INDEX IF NOT EXISTS chunks_by_segment ON chunks (segment);
CREATE TABLE IF NOT EXISTS documents (
    source TEXT NOT NULL, document TEXT NOT NULL, version TEXT NOT NULL, title TEXT NOT NULL, location TEXT NOT NULL,
    modified TEXT, chunks INTEGER NOT NULL, metadata TEXT NOT NULL DEFAULT '{}', segment INTEGER,
    PRIMARY KEY (source, document));
CREATE INDEX IF NOT EXISTS documents_by_segment ON documents (segment);
CREATE TABLE IF NOT EXISTS cursors (source TEXT PRIMARY KEY, value TEXT, segment INTEGER);
CREATE TABLE IF NOT EXISTS baselines (
    source TEXT NOT NULL, run_id TEXT NOT NULL, created_at TEXT NOT NULL, stats TEXT NOT NULL, segment INTEGER,
    PRIMARY KEY (source, run_id));
CREATE TABLE IF NOT EXISTS retry_queue (
    source TEXT NOT NULL, document TEXT NOT NULL, ref TEXT NOT NULL, reason TEXT NOT NULL, attempts INTEGER NOT NULL,
    first_failed TEXT NOT NULL, last_failed TEXT NOT NULL, segment INTEGER, PRIMARY KEY (source, document));
CREATE TABLE IF NOT EXISTS properties (key TEXT PRIMARY KEY, value TEXT NOT NULL, segment INTEGER);
-- Keys removed from the tables above; segment: the one that records the removal (NULL: not sealed yet).
CREATE TABLE IF NOT EXISTS deletions (
    tbl TEXT NOT NULL, key TEXT NOT NULL, segment INTEGER, PRIMARY KEY (tbl, key));
CREATE INDEX IF NOT EXISTS deletions_by_segment ON deletions (segment);
-- Copies of chunks that a sealed segment holds but that are no longer live: skipped at search;
-- recorded: the segment that carries this tombstone to replicas (NULL: not sealed yet).
CREATE TABLE IF NOT EXISTS dead (
    segment INTEGER NOT NULL, faiss_id INTEGER NOT NULL, recorded INTEGER, PRIMARY KEY (segment, faiss_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dead_by_recorded ON dead (recorded);
CREATE TABLE IF NOT EXISTS dead_counts (segment INTEGER PRIMARY KEY, dead INTEGER NOT NULL);  -- the merge policy's input
CREATE TABLE IF NOT EXISTS source_counts (source TEXT PRIMARY KEY, documents INTEGER NOT NULL, vectors INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS generations (generation INTEGER PRIMARY KEY, manifest BLOB NOT NULL);
-- Parts of documents written in parts (stores/records.py, DocumentPart): durable, not live until their commit;
-- rows in position order. kept: set at the commit for a row that equals the stored one (it stays where it is).
CREATE TABLE IF NOT EXISTS staged_chunks (
    faiss_id INTEGER NOT NULL, chunk_id TEXT NOT NULL, source TEXT NOT NULL, document TEXT NOT NULL,
    position INTEGER NOT NULL, text TEXT NOT NULL, content_hash TEXT NOT NULL, page INTEGER, last_page INTEGER,
    tokens INTEGER NOT NULL, ocr INTEGER NOT NULL, vector BLOB NOT NULL, kept INTEGER NOT NULL DEFAULT 0,
    UNIQUE (source, document, faiss_id));
-- Segment files as last checked: a file whose stat fingerprint is unchanged is not hashed again at open.
CREATE TABLE IF NOT EXISTS files (name TEXT PRIMARY KEY, sha256 TEXT NOT NULL, bytes INTEGER NOT NULL,
                                  fingerprint TEXT NOT NULL);
-- Segment files each replica was seen to hold with their sha256 (copied and read back, or read back): the next
-- checkpoint trusts these, and reads back any other file a replica holds under a name it needs.
CREATE TABLE IF NOT EXISTS replica_files (replica TEXT NOT NULL, name TEXT NOT NULL, PRIMARY KEY (replica, name))
    WITHOUT ROWID;
"""
COUNTERS = ("lsn", "vectors", "documents", "dead", "generation", "next_segment")
PARAMETERS_PER_STATEMENT = 900  # below SQLite's default limit of host parameters


def row_checksum(*values: Any) -> str:
    """The checksum written with every chunk row: sha256 of its CHUNK_COLUMNS values and its vector's bytes (last).
    SQLite keeps no checksums of its own: a flipped byte in a row is found by this, by `store verify` and `search`."""
    *row, vector = values
    digest = hashlib.sha256(json.dumps(row, separators=(",", ":")).encode())
    digest.update(vector)
    return digest.hexdigest()[:32]


def _row_checksum_sql(alias: str = "") -> str:
    """`row_checksum` in SQL (a function of the connection) over the columns of `alias` (a table alias, or none)."""
    return f"row_checksum({', '.join(alias + column for column in (*CHUNK_COLUMNS, 'vector'))})"


ROW_CHECKSUM = _row_checksum_sql()


def faiss_id(chunk_id: str) -> int:
    """FAISS ids are int64: the chunk id's first 63 bits."""
    return int(chunk_id[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF


def _members(column: str, segments: Sequence[int] | None) -> tuple[str, tuple[int, ...]]:
    """SQL condition: `column` in `segments`, or NULL (pending) when `segments` is None."""
    if segments is None:
        return f"{column} IS NULL", ()
    return f"{column} IN ({','.join('?' * len(segments))})", tuple(segments)


def _chunk_rows(source: str, document: str, chunks: Sequence[Any], vectors: np.ndarray) -> list[tuple]:
    """Chunk records with their vectors as rows of CHUNK_COLUMNS and the vector's bytes."""
    return [(faiss_id(c.chunk_id), c.chunk_id, source, document, c.position, c.text, c.content_hash, c.page,
             c.last_page, c.tokens, int(c.ocr), vector.tobytes()) for c, vector in zip(chunks, vectors)]


def _key_condition(table: Table) -> str:
    return " AND ".join(f"{column} = ?" for column in table.key)


def record_checked_files(path: Path, entries: Sequence[tuple[str, str, int, str]]) -> bool:
    """Record files a reader found intact on re-hashing, through a short write of its own; False when it may not
    write the database (permissions, read-only mount, a writer holding it): it hashes them again next time."""
    return _short_write(path, lambda catalog: catalog.record_files(entries))


def forget_replica_files(path: Path, damaged: dict[str, set[str]]) -> bool:
    """Forget that replicas hold these files intact (a scrub found them damaged), through a short write: the next
    checkpoint reads them back and sends them again. False when the database could not be written."""
    return _short_write(path, lambda catalog: catalog.forget_confirmed(damaged))


def _short_write(path: Path, change: Any) -> bool:
    """One short transaction by a process that does not hold the writer's lock; False when it could not commit."""
    try:
        db = sqlite3.connect(path, timeout=1, isolation_level=None)
    except sqlite3.Error:
        return False
    try:
        catalog = Catalog(db, 0)
        with catalog.transaction():
            change(catalog)
        return True
    except sqlite3.Error:
        return False
    finally:
        db.close()


class Catalog:
    def __init__(self, db: sqlite3.Connection, dimension: int):
        self.db = db
        self.dimension = dimension
        # Whether chunk and document rows carry checksums and the keyword index exists, once seen: neither is ever
        # dropped, so searches stop asking SQLite's schema then; until then each asks again (a writer may add them
        # to an older store).
        self._chunk_checksums = self._document_checksums = self._keyword_index = False

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path, dimension: int, writable: bool) -> "Catalog":
        if writable:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # the WAL is fsync'd at every COMMIT: an acknowledged write stays
            db.executescript(SCHEMA)
            db.executemany("INSERT OR IGNORE INTO counters VALUES (?, 0)", [(name,) for name in COUNTERS])
            db.create_function("row_checksum", len(CHUNK_COLUMNS) + 1, row_checksum, deterministic=True)
            row_checks.register(db)
            if "metadata" not in {row[1] for row in db.execute("PRAGMA table_info(documents)")}:
                db.execute("ALTER TABLE documents ADD COLUMN metadata TEXT NOT NULL DEFAULT '{}'")  # written before it
            catalog = cls(db, dimension)
            if "checksum" not in {row[1] for row in db.execute("PRAGMA table_info(chunks)")}:
                with catalog.transaction():  # a store written before row checksums: every row gets one, once
                    db.execute("ALTER TABLE chunks ADD COLUMN checksum TEXT")
                    db.execute(f"UPDATE chunks SET checksum = {ROW_CHECKSUM}")
            if not all(row_checks.present(db)):
                with catalog.transaction():  # written before document and segment checksums: once, as above
                    row_checks.add_missing(db)
            keywords.migrate(db)  # a store written before the keyword index: built once, from its chunks
            return catalog
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                             check_same_thread=False)
        db.create_function("row_checksum", len(CHUNK_COLUMNS) + 1, row_checksum, deterministic=True)
        row_checks.register(db)
        return cls(db, dimension)

    def close(self) -> None:
        self.end_snapshot()
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic, durable change: BEGIN IMMEDIATE … COMMIT, rolled back on any error."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def begin_snapshot(self) -> None:
        """Pin a reader to the state committed now, until `end_snapshot` (WAL mode keeps it for us)."""
        self.db.execute("BEGIN")
        self.db.execute("SELECT value FROM counters WHERE name = 'generation'").fetchone()

    def end_snapshot(self) -> None:
        if self.db.in_transaction:
            self.db.execute("COMMIT")

    # ---- counters ------------------------------------------------------------------------
    def counter(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def set_counter(self, name: str, value: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO counters VALUES (?, ?)", (name, value))

    def _add_to_counter(self, name: str, amount: int) -> None:
        if amount:
            self.db.execute("UPDATE counters SET value = value + ? WHERE name = ?", (amount, name))

    def _add_to_counts(self, source: str, documents: int, vectors: int) -> None:
        if not documents and not vectors:
            return
        self._add_to_counter("documents", documents)
        self._add_to_counter("vectors", vectors)
        self.db.execute(
            "INSERT INTO source_counts VALUES (?, ?, ?) ON CONFLICT(source) DO UPDATE SET "
            "documents = documents + excluded.documents, vectors = vectors + excluded.vectors",
            (source, documents, vectors))

    def recount(self) -> None:
        """Counters from the rows (after a restore or migration rebuilt them)."""
        self.set_counter("vectors", self.db.execute("SELECT count(*) FROM chunks").fetchone()[0])
        self.set_counter("documents", self.db.execute("SELECT count(*) FROM documents").fetchone()[0])
        self.set_counter("dead", self.db.execute("SELECT count(*) FROM dead").fetchone()[0])
        self.db.execute("DELETE FROM dead_counts")
        self.db.execute("INSERT INTO dead_counts SELECT segment, count(*) FROM dead GROUP BY segment")
        self.db.execute("DELETE FROM source_counts")
        self.db.execute("INSERT INTO source_counts SELECT source, count(*), sum(chunks) FROM documents GROUP BY source")

    # ---- writing -------------------------------------------------------------------------
    def owners(self, ids: Sequence[int]) -> dict[int, tuple[str, str]]:
        """The (source, document) that holds each of these chunk ids, for those stored."""
        found: dict[int, tuple[str, str]] = {}
        for start in range(0, len(ids), PARAMETERS_PER_STATEMENT):
            part = list(ids[start : start + PARAMETERS_PER_STATEMENT])
            for identifier, source, document in self.db.execute(
                    f"SELECT faiss_id, source, document FROM chunks WHERE faiss_id IN ({','.join('?' * len(part))})",
                    part):
                found[identifier] = (source, document)
        return found

    def apply(self, operations: Sequence[Operation], lsn: int) -> None:
        """Apply one write's operations; call inside `transaction()`."""
        for op in operations:
            if isinstance(op, CursorUpdate):
                self._set(CURSORS, (op.source,), (op.cursor,))
            elif isinstance(op, BaselineRecord):
                self._set(BASELINES, (op.source, op.run_id),
                          (op.created_at, json.dumps(op.stats, separators=(",", ":"))))
            elif isinstance(op, DocumentFailed):
                self.db.execute(
                    "INSERT INTO retry_queue VALUES (?, ?, ?, ?, 1, ?, ?, NULL) ON CONFLICT(source, document) DO UPDATE "
                    "SET ref = excluded.ref, reason = excluded.reason, attempts = attempts + ?, "
                    "last_failed = excluded.last_failed, segment = NULL",
                    (op.source, op.document, op.ref, op.reason, op.failed_at, op.failed_at, int(op.attempt)))
            elif isinstance(op, PropertyUpdate):
                if op.value is None:
                    self._remove(PROPERTIES, (op.key,))
                else:
                    self._set(PROPERTIES, (op.key,), (op.value,))
            elif isinstance(op, DocumentPart):
                self._stage(op)
            elif isinstance(op, DocumentPartsDiscard):
                self.discard_parts(op.source, op.document)
            elif isinstance(op, DocumentPartsCommit):
                self._remove(RETRY_QUEUE, (op.source, op.document))  # landed
                self._commit_parts(op)
            else:
                self._remove(RETRY_QUEUE, (op.source, op.document))  # landed, or gone at the source
                self._replace_document(op)
        self.set_counter("lsn", lsn)

    def _set(self, table: Table, key: tuple, values: tuple) -> None:
        columns = ", ".join(table.columns)
        updates = ", ".join(f"{column} = excluded.{column}" for column in table.values)
        self.db.execute(
            f"INSERT INTO {table.name} ({columns}, segment) VALUES ({', '.join('?' * len(table.columns))}, NULL) "
            f"ON CONFLICT({', '.join(table.key)}) DO UPDATE SET {updates}, segment = NULL", key + values)

    def _remove(self, table: Table, key: tuple) -> bool:
        removed = self.db.execute(f"DELETE FROM {table.name} WHERE {_key_condition(table)}", key).rowcount
        if removed:  # older segments may hold the key: the removal travels with the next one
            self.db.execute("INSERT OR REPLACE INTO deletions VALUES (?, ?, NULL)", (table.name, json.dumps(key)))
        return bool(removed)

    def _replace_document(self, op: DocumentUpsert | DocumentDelete) -> None:
        """Make the document's chunks exactly the upsert's; a chunk that is unchanged (row and vector) stays where it is."""
        stored = {row[0]: row[1:] for row in self.db.execute(
            "SELECT faiss_id, chunk_id, position, text, content_hash, page, last_page, tokens, ocr, vector, segment "
            "FROM chunks WHERE source = ? AND document = ?", (op.source, op.document))}
        rows = []
        if isinstance(op, DocumentUpsert):
            vectors = np.ascontiguousarray(op.vectors, dtype=np.float32)
            rows = _chunk_rows(op.source, op.document, op.chunks, vectors)
        unchanged = {row[0] for row in rows
                     if row[0] in stored and stored[row[0]][:-1] == (row[1], *row[4:])}
        self._retire([(identifier, row[-1]) for identifier, row in stored.items() if identifier not in unchanged])
        self.db.executemany(f"INSERT INTO chunks ({', '.join(CHUNK_COLUMNS)}, vector, segment, checksum, "
                            f"segment_checksum) VALUES ({', '.join('?' * (len(CHUNK_COLUMNS) + 1))}, NULL, ?, ?)",
                            [(*row, row_checksum(*row), row_checks.segment_checksum(row[0], None))
                             for row in rows if row[0] not in unchanged])
        upsert = op if isinstance(op, DocumentUpsert) else None
        self._record_document(op.source, op.document, upsert, len(op.chunks) if upsert else 0, len(rows) - len(stored))

    def _retire(self, removed: list[tuple[int, int | None]]) -> None:
        """Remove these (faiss id, segment) chunks; a sealed one's segment keeps its copy, now a tombstone."""
        self.db.executemany("DELETE FROM chunks WHERE faiss_id = ?", [(identifier,) for identifier, _ in removed])
        by_segment: dict[int, list[int]] = {}
        for identifier, segment in removed:
            if segment is not None:
                by_segment.setdefault(segment, []).append(identifier)
        for segment, identifiers in by_segment.items():
            killed = self.db.executemany("INSERT OR IGNORE INTO dead VALUES (?, ?, NULL)",
                                         [(segment, identifier) for identifier in identifiers]).rowcount
            self.db.execute("INSERT INTO dead_counts VALUES (?, ?) ON CONFLICT(segment) DO UPDATE SET "
                            "dead = dead + excluded.dead", (segment, killed))
            self._add_to_counter("dead", killed)

    def _record_document(self, source: str, document: str, upsert: DocumentUpsert | DocumentPartsCommit | None,
                         chunks: int, vectors_added: int) -> None:
        """The document's row (None: removed) and the counts, after its chunks were replaced."""
        key = (source, document)
        existed = self.db.execute(f"SELECT 1 FROM documents WHERE {_key_condition(DOCUMENTS)}", key).fetchone()
        if upsert is not None:
            self._set(DOCUMENTS, key, (upsert.version, upsert.title, upsert.location, upsert.modified, chunks,
                                       json.dumps(upsert.metadata, sort_keys=True, separators=(",", ":"))))
            row_checks.refresh_documents(self.db, _key_condition(DOCUMENTS), key)
        else:
            self._remove(DOCUMENTS, key)
        self._add_to_counts(source, (upsert is not None) - bool(existed), vectors_added)

    def _stage(self, op: DocumentPart) -> None:
        if op.first:
            self.discard_parts(op.source, op.document)
        rows = _chunk_rows(op.source, op.document, op.chunks, np.ascontiguousarray(op.vectors, dtype=np.float32))
        self.db.executemany(f"INSERT INTO staged_chunks ({', '.join(CHUNK_COLUMNS)}, vector) "
                            f"VALUES ({', '.join('?' * (len(CHUNK_COLUMNS) + 1))})", rows)

    def discard_parts(self, source: str | None = None, document: str | None = None) -> int:
        """Drop the staged parts of a document (None, None: of every document); how many rows were dropped."""
        if source is None:
            return self.db.execute("DELETE FROM staged_chunks").rowcount
        return self.db.execute("DELETE FROM staged_chunks WHERE source = ? AND document = ?",
                               (source, document)).rowcount

    def staged_count(self, source: str, document: str) -> int:
        return self.db.execute("SELECT count(*) FROM staged_chunks WHERE source = ? AND document = ?",
                               (source, document)).fetchone()[0]

    def staged_clash(self, source: str, document: str) -> tuple[str, str] | None:
        """Another document that holds a chunk id of this document's staged rows, if any."""
        clash = self.db.execute(
            "SELECT c.source, c.document FROM staged_chunks s JOIN chunks c ON c.faiss_id = s.faiss_id "
            "WHERE s.source = ? AND s.document = ? AND (c.source != s.source OR c.document != s.document) LIMIT 1",
            (source, document)).fetchone()
        return tuple(clash) if clash else None

    def _commit_parts(self, op: DocumentPartsCommit) -> None:
        """Make the document's staged rows its chunks, in SQL: memory does not follow the document."""
        key = (op.source, op.document)
        of_document = "source = ? AND document = ?"
        same_row = " AND ".join(f"c.{column} IS staged_chunks.{column}" for column in (*CHUNK_COLUMNS, "vector"))
        self.db.execute(f"UPDATE staged_chunks SET kept = 1 WHERE {of_document} AND EXISTS "
                        f"(SELECT 1 FROM chunks c WHERE {same_row})", key)
        stored = self.db.execute(f"SELECT count(*) FROM chunks WHERE {of_document}", key).fetchone()[0]
        self._retire(self.db.execute(
            f"SELECT faiss_id, segment FROM chunks WHERE {of_document} AND faiss_id NOT IN "
            f"(SELECT faiss_id FROM staged_chunks WHERE {of_document} AND kept)", key + key).fetchall())
        columns = ", ".join(CHUNK_COLUMNS)
        self.db.execute(f"INSERT INTO chunks ({columns}, vector, segment, checksum, segment_checksum) "
                        f"SELECT {columns}, vector, NULL, {ROW_CHECKSUM}, segment_checksum(faiss_id, NULL) "
                        f"FROM staged_chunks WHERE {of_document} AND NOT kept ORDER BY rowid", key)
        self.discard_parts(op.source, op.document)
        self._record_document(op.source, op.document, op, op.chunks, op.chunks - stored)

    # ---- sealing and merging: what a new segment holds, and recording that it holds it ---------
    def pending_vectors(self) -> int:
        return self.db.execute("SELECT count(*) FROM chunks WHERE segment IS NULL").fetchone()[0]

    def has_pending(self) -> bool:
        checks = ["SELECT 1 FROM chunks WHERE segment IS NULL", "SELECT 1 FROM dead WHERE recorded IS NULL",
                  "SELECT 1 FROM deletions WHERE segment IS NULL",
                  *(f"SELECT 1 FROM {table.name} WHERE segment IS NULL" for table in TABLES)]
        return any(self.db.execute(f"{check} LIMIT 1").fetchone() for check in checks)

    def chunk_ranges(self, segments: Sequence[int] | None, limit: int) -> list[tuple[int, int, int]]:
        """(low id, high id, rows): ranges splitting the chunks of `segments` (None: pending) into parts of at most
        `limit` rows."""
        where, args = _members("segment", segments)
        ids = [row[0] for row in self.db.execute(f"SELECT faiss_id FROM chunks WHERE {where} ORDER BY faiss_id", args)]
        return [(ids[start], ids[min(start + limit, len(ids)) - 1], min(limit, len(ids) - start))
                for start in range(0, len(ids), limit)]

    def chunk_batches(self, segments: Sequence[int] | None, low: int, high: int,
                      size: int = 2_048) -> Iterator[tuple[np.ndarray, list[tuple]]]:
        """Vectors and rows (CHUNK_COLUMNS) of the chunks of `segments` with ids in [low, high], by id, in batches
        (of texts and vectors: ~25 MB of rows at a time)."""
        where, args = _members("segment", segments)
        cursor = self.db.execute(f"SELECT {', '.join(CHUNK_COLUMNS)}, vector FROM chunks "
                                 f"WHERE {where} AND faiss_id BETWEEN ? AND ? ORDER BY faiss_id", (*args, low, high))
        while rows := cursor.fetchmany(size):
            vectors = np.frombuffer(b"".join(row[-1] for row in rows), dtype=np.float32).reshape(
                len(rows), self.dimension)
            yield vectors, [row[:-1] for row in rows]

    def tombstones(self, run: Sequence[int] | None) -> list[tuple[int, int]]:
        """(segment, faiss_id) copies killed by the pending writes, or recorded in `run` and outside it."""
        if run is None:
            return self.db.execute("SELECT segment, faiss_id FROM dead WHERE recorded IS NULL").fetchall()
        recorded, args = _members("recorded", run)
        inside, more = _members("segment", run)
        return self.db.execute(f"SELECT segment, faiss_id FROM dead WHERE {recorded} AND NOT {inside}",
                               args + more).fetchall()

    def table_rows(self, segments: Sequence[int] | None) -> dict[str, list[tuple]]:
        where, args = _members("segment", segments)
        return {table.name: self.db.execute(f"SELECT {', '.join(table.columns)} FROM {table.name} WHERE {where}",
                                            args).fetchall() for table in TABLES}

    def deletions(self, segments: Sequence[int] | None) -> list[tuple[str, str]]:
        where, args = _members("segment", segments)
        return self.db.execute(f"SELECT tbl, key FROM deletions WHERE {where}", args).fetchall()

    def reassign(self, run: Sequence[int] | None, parts: Sequence[tuple[int, int, int]],
                 carriers: Sequence[tuple[int, int]], prefix: bool = False) -> None:
        """Record that segments `parts` [(seq, low id, high id)] now hold the rows of `run` (None: the pending rows);
        that the new segments `carriers` [(seq, high id of its part)], in id order, carry its tombstones (each the
        ones up to its high id, the last the rest: see generations.tombstones_by_part); and that the last of them
        carries its table rows and removals. A run that starts the generation (`prefix`) has nothing older to
        remove keys from: its removals are dropped."""
        where, args = _members("segment", run)
        for seq, low, high in parts:
            self.db.execute(f"UPDATE chunks SET segment = ?, segment_checksum = segment_checksum(faiss_id, ?) "
                            f"WHERE {where} AND faiss_id BETWEEN ? AND ?", (seq, seq, *args, low, high))
        if run is not None:
            self._add_to_counter("dead", -self.db.execute(f"DELETE FROM dead WHERE {where}", args).rowcount)
            self.db.execute(f"DELETE FROM dead_counts WHERE {where}", args)
        if not carriers:  # the run held nothing live and nothing else: it just goes
            return
        recorded, recorded_args = _members("recorded", run)
        for number, (seq, high) in enumerate(carriers):
            bound = ("", ()) if number == len(carriers) - 1 else (" AND faiss_id <= ?", (high,))
            self.db.execute(f"UPDATE dead SET recorded = ? WHERE {recorded}{bound[0]}", (seq, *recorded_args, *bound[1]))
        last = carriers[-1][0]
        for table in TABLES:
            self.db.execute(f"UPDATE {table.name} SET segment = ? WHERE {where}", (last, *args))
        row_checks.refresh_documents(self.db, "segment = ?", (last,))
        if prefix:
            self.db.execute(f"DELETE FROM deletions WHERE {where}", args)
        else:
            self.db.execute(f"UPDATE deletions SET segment = ? WHERE {where}", (last, *args))

    def load_extras(self, seq: int, present: set[int], tombstones: Sequence[tuple[int, int]],
                    tables: dict[str, list[tuple]], deletions: Sequence[tuple[str, str]]) -> None:
        """Replay a segment of a generation being restored (in the generation's order), all but its chunks:
        its removals, its tombstones (the copies they name are never loaded: see `load_chunks`), its table rows."""
        for name, key in deletions:
            self.db.execute(f"DELETE FROM {name} WHERE {_key_condition(BY_NAME[name])}", tuple(json.loads(key)))
            self.db.execute("INSERT OR REPLACE INTO deletions VALUES (?, ?, ?)", (name, key, seq))
        self.db.executemany("INSERT OR IGNORE INTO dead VALUES (?, ?, ?)",
                            [(target, identifier, seq) for target, identifier in tombstones if target in present])
        for table in TABLES:
            self.db.executemany(
                f"INSERT OR REPLACE INTO {table.name} ({', '.join(table.columns)}, segment) "
                f"VALUES ({', '.join('?' * len(table.columns))}, ?)", [(*row, seq) for row in tables.get(table.name, ())])
        row_checks.refresh_documents(self.db, "segment = ?", (seq,))

    def load_chunks(self, seq: int, vectors: np.ndarray, chunks: Sequence[tuple], dead: set[int]) -> None:
        """Chunks of a segment being restored, but those that a tombstone anywhere in the generation names (`dead`):
        whatever order the segments carrying tombstones come in, no id is ever loaded twice."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.db.executemany(f"INSERT INTO chunks ({', '.join(CHUNK_COLUMNS)}, vector, segment, checksum, "
                            f"segment_checksum) VALUES ({', '.join('?' * (len(CHUNK_COLUMNS) + 4))})",
                            [(*row, vector.tobytes(), seq, row_checksum(*row, vector.tobytes()),
                              row_checks.segment_checksum(row[0], seq))
                             for row, vector in zip(chunks, vectors) if row[0] not in dead])

    # ---- generations and their files -------------------------------------------------------
    def add_generation(self, generation: int, manifest: bytes, keep: int) -> list[int]:
        """Record a generation as the current one; returns the generations no longer kept (removed here)."""
        self.db.execute("INSERT OR REPLACE INTO generations VALUES (?, ?)", (generation, manifest))
        self.set_counter("generation", generation)
        dropped = [row[0] for row in self.db.execute(
            "SELECT generation FROM generations ORDER BY generation DESC LIMIT -1 OFFSET ?", (keep,))]
        self.db.executemany("DELETE FROM generations WHERE generation = ?", [(g,) for g in dropped])
        return dropped

    def drop_generations(self, generations: Sequence[int]) -> None:
        self.db.executemany("DELETE FROM generations WHERE generation = ?", [(g,) for g in generations])

    def manifests(self) -> list[tuple[int, bytes]]:
        """Kept generations' manifests, newest first."""
        return self.db.execute("SELECT generation, manifest FROM generations ORDER BY generation DESC").fetchall()

    def next_segment(self) -> int:
        seq = self.counter("next_segment") + 1
        self.set_counter("next_segment", seq)
        return seq

    def record_files(self, entries: Sequence[tuple[str, str, int, str]]) -> None:
        """(name, sha256, bytes, fingerprint) of files just written or checked."""
        self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", entries)

    def checked_files(self) -> dict[str, str]:
        """Fingerprint of every file as last written or checked."""
        return dict(self.db.execute("SELECT name, fingerprint FROM files"))

    def forget_files(self, names: set[str]) -> None:
        self.db.executemany("DELETE FROM files WHERE name = ?", [(name,) for name in names])

    def replica_files(self) -> dict[str, set[str]]:
        """By replica, the files it was seen to hold with their sha256."""
        held: dict[str, set[str]] = {}
        for replica, name in self.db.execute("SELECT replica, name FROM replica_files"):
            held.setdefault(replica, set()).add(name)
        return held

    def set_replica_files(self, replica: str, names: set[str]) -> None:
        self.db.execute("DELETE FROM replica_files WHERE replica = ?", (replica,))
        self.db.executemany("INSERT INTO replica_files VALUES (?, ?)", [(replica, name) for name in sorted(names)])

    def forget_confirmed(self, damaged: dict[str, set[str]]) -> None:
        self.db.executemany("DELETE FROM replica_files WHERE replica = ? AND name = ?",
                            [(replica, name) for replica, names in damaged.items() for name in sorted(names)])

    # ---- reading -------------------------------------------------------------------------
    def dead_ids(self, segment: int) -> np.ndarray:
        """The ids a segment holds that are no longer live."""
        return np.array([row[0] for row in self.db.execute("SELECT faiss_id FROM dead WHERE segment = ?", (segment,))],
                        dtype=np.int64)

    def dead_counts(self) -> dict[int, int]:
        return dict(self.db.execute("SELECT segment, dead FROM dead_counts"))

    def live_vectors(self, segment: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Ids and vectors of the live chunks held by `segment` (None: pending, in no segment yet)."""
        where, args = _members("segment", None if segment is None else [segment])
        rows = self.db.execute(f"SELECT faiss_id, vector FROM chunks WHERE {where}", args).fetchall()
        ids = np.array([row[0] for row in rows], dtype=np.int64)
        return ids, np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32).reshape(len(rows), self.dimension)

    def hit_rows(self, ids: Sequence[int]) -> tuple[dict[int, tuple], list[tuple[str, str]]]:
        """(chunk_id, source, document, title, location, page, text, ocr, last_page, modified) by faiss id, of the rows
        whose checksum holds; and the (source, document) of each row whose checksum, or its document row's, does not
        hold, or that has no document row (damaged: never served)."""
        found: dict[int, tuple] = {}
        damaged = []
        intact = f"c.checksum = {_row_checksum_sql('c.')}" if self.has_checksums() else "1"
        intact_document = row_checks.intact_document_sql("d.", self.has_document_checksums())
        intact = f"({intact}) AND d.source IS NOT NULL AND {intact_document}"
        for start in range(0, len(ids), PARAMETERS_PER_STATEMENT):
            part = list(ids[start : start + PARAMETERS_PER_STATEMENT])
            for row in self.db.execute(
                    "SELECT c.faiss_id, c.chunk_id, c.source, c.document, d.title, d.location, c.page, c.text, c.ocr, "
                    f"c.last_page, d.modified, {intact} "
                    "FROM chunks c LEFT JOIN documents d USING (source, document) "
                    f"WHERE c.faiss_id IN ({','.join('?' * len(part))})", part):
                if row[-1]:
                    found[row[0]] = row[1:-1]
                else:
                    damaged.append((row[2], row[3]))
        return found, damaged

    def has_checksums(self) -> bool:
        if not self._chunk_checksums:
            self._chunk_checksums = "checksum" in {row[1] for row in self.db.execute("PRAGMA table_info(chunks)")}
        return self._chunk_checksums

    def has_keyword_index(self) -> bool:
        if not self._keyword_index:
            self._keyword_index = keywords.present(self.db)
        return self._keyword_index

    def has_document_checksums(self) -> bool:
        if not self._document_checksums:
            self._document_checksums = row_checks.present(self.db)[0]
        return self._document_checksums

    def damaged_rows(self) -> dict[tuple[str, str], int]:
        """Chunk rows whose checksum does not hold, counted by (source, document)."""
        counted: dict[tuple[str, str], int] = {}
        if not self.has_checksums():  # written before row checksums, not opened writable since
            return counted
        for source, document in self.db.execute(
                f"SELECT source, document FROM chunks WHERE checksum IS NULL OR checksum != {ROW_CHECKSUM}"):
            counted[(source, document)] = counted.get((source, document), 0) + 1
        return counted

    def filtered_ids(self, chosen: SearchFilter) -> np.ndarray:
        """Ids of the live chunks whose documents pass the filter (the candidates a filtered search may return)."""
        conditions, args = self._filter_conditions(chosen)
        rows = self.db.execute("SELECT c.faiss_id FROM chunks c JOIN documents d USING (source, document) "
                               f"WHERE {conditions}", args)
        found = np.fromiter((row[0] for row in rows), dtype=np.int64)
        if not found.size and chosen.metadata:
            self._check_metadata_keys(chosen)
        return found

    def _filter_conditions(self, chosen: SearchFilter | None) -> tuple[str, list[Any]]:
        """SQL over chunks `c` joined with documents `d`: the rows whose documents pass the filter (None: all)."""
        conditions, args = ["1"], []
        if chosen is None:
            return "1", args
        if chosen.sources:
            conditions.append(f"c.source IN ({','.join('?' * len(chosen.sources))})")
            args += chosen.sources
        if chosen.document_prefix is not None:
            conditions.append("substr(c.document, 1, ?) = ?")
            args += [len(chosen.document_prefix), chosen.document_prefix]
        if chosen.modified_after is not None:
            conditions.append("vectormill_epoch(d.modified) > ?")
            args.append(chosen.modified_after)
        if chosen.modified_before is not None:
            conditions.append("vectormill_epoch(d.modified) < ?")
            args.append(chosen.modified_before)
        for key, value in chosen.metadata.items():
            if key in DOCUMENT_FIELDS:
                conditions.append(f"d.{key} = ?")
                args.append(value)
            else:
                conditions.append(f"EXISTS (SELECT 1 FROM json_each({self._metadata('d.')}) m "
                                  "WHERE m.key = ? AND m.value = ?)")
                args += [key, value]
        self.db.create_function("vectormill_epoch", 1, epoch, deterministic=True)
        return " AND ".join(conditions), args

    def _check_metadata_keys(self, chosen: SearchFilter) -> None:
        """Nothing passed the filter: a metadata key no document has is a mistake, not a miss."""
        known = self.metadata_keys()
        unknown = sorted(set(chosen.metadata) - set(known))
        if unknown:
            raise FilterError(f"unknown metadata key(s) {', '.join(map(repr, unknown))}: the store's documents "
                              f"have {', '.join(known)}")

    def keyword_ids(self, expression: str | None, limit: int, chosen: SearchFilter | None = None
                    ) -> list[tuple[float, int]]:
        """The `limit` live chunks that best match an FTS5 query (stores/keywords.py builds it from user text) by BM25,
        best first, as (score, faiss id) with score = -bm25 (higher is better); with `chosen`, only chunks of documents
        passing it (before the limit). None: no query, no hits."""
        if not self.has_keyword_index():
            raise keywords.KeywordIndexMissing(
                "this store has no keyword index yet: it was written before vectormill kept one; any command that "
                "opens the store for writing (backfill, store compact) builds it once")
        if expression is None:
            return []
        conditions, args = self._filter_conditions(chosen)
        join = " JOIN documents d USING (source, document)" if chosen is not None else ""
        rows = self.db.execute(
            f"SELECT c.faiss_id, f.rank FROM {keywords.TABLE} f JOIN chunks c ON c.row = f.rowid{join} "
            f"WHERE {keywords.TABLE} MATCH ? AND {conditions} ORDER BY f.rank LIMIT ?",
            (expression, *args, limit)).fetchall()
        if not rows and chosen is not None and chosen.metadata:
            self._check_metadata_keys(chosen)
        return [(-float(rank), int(identifier)) for identifier, rank in rows]

    def _metadata(self, alias: str = "") -> str:
        """The documents' metadata column in SQL; '{}' in a catalog written before it and not opened writable since."""
        present = "metadata" in {row[1] for row in self.db.execute("PRAGMA table_info(documents)")}
        return f"{alias}metadata" if present else "'{}'"

    def metadata_keys(self) -> list[str]:
        """The keys a metadata filter may name: the document fields, then every key of the documents' metadata."""
        held = self.db.execute(f"SELECT DISTINCT m.key FROM documents d, json_each({self._metadata('d.')}) m "
                               "ORDER BY m.key")
        return [*DOCUMENT_FIELDS, *(key for (key,) in held if key not in DOCUMENT_FIELDS)]

    def document(self, document: str, source: str | None = None) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """Stored documents with this id (of one source, or of every source), each with its chunks in order; and the
        (source, document) of those whose row or a chunk row fails its checksum (damaged: never served)."""
        intact_document = row_checks.intact_document_sql("", self.has_document_checksums())
        query = (f"SELECT source, document, version, title, location, modified, {self._metadata()}, "
                 f"{intact_document} FROM documents WHERE document = ?"
                 + (" AND source = ?" if source is not None else "") + " ORDER BY source")
        intact_chunk = f"checksum IS {ROW_CHECKSUM}" if self.has_checksums() else "1"
        found, damaged = [], []
        for row in self.db.execute(query, (document, source) if source is not None else (document,)):
            chunks = self.db.execute(
                f"SELECT chunk_id, position, page, last_page, text, ocr, {intact_chunk} FROM chunks "
                "WHERE source = ? AND document = ? ORDER BY position", row[:2]).fetchall()
            if not row[7] or not all(chunk[6] for chunk in chunks):
                damaged.append((row[0], row[1]))
                continue
            found.append(dict(zip(("source", "document", "version", "title", "location", "modified"), row))
                         | {"metadata": json.loads(row[6])}
                         | {"chunks": [dict(zip(("chunk_id", "position", "page", "last_page", "text"), chunk[:5]))
                                       | {"ocr": bool(chunk[5])} for chunk in chunks]})
        return found, damaged

    def document_versions(self, source: str) -> dict[str, str]:
        return dict(self.db.execute("SELECT document, version FROM documents WHERE source = ?", (source,)))

    def stored_vectors(self, source: str, document: str,
                       content_hashes: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        query = "SELECT content_hash, vector FROM chunks WHERE source = ? AND document = ?"
        if content_hashes is None:
            rows = self.db.execute(query, (source, document))
        else:  # one pass over the document's rows, however many hashes
            rows = self.db.execute(f"{query} AND content_hash IN (SELECT value FROM json_each(?))",
                                   (source, document, json.dumps(list(content_hashes))))
        return {digest: np.frombuffer(blob, dtype=np.float32) for digest, blob in rows}

    def cursor(self, source: str) -> str | None:
        row = self.db.execute("SELECT value FROM cursors WHERE source = ?", (source,)).fetchone()
        return row[0] if row else None

    def baselines(self, source: str | None) -> list[BaselineRecord]:
        query = "SELECT source, run_id, created_at, stats FROM baselines"
        rows = (self.db.execute(f"{query} WHERE source = ? ORDER BY created_at, rowid", (source,))
                if source is not None else self.db.execute(f"{query} ORDER BY source, created_at, rowid"))
        return [BaselineRecord(name, run_id, created_at, json.loads(stats)) for name, run_id, created_at, stats in rows]

    def retry_queue(self, source: str | None) -> list[QueuedDocument]:
        query = ("SELECT source, document, ref, reason, attempts, first_failed, last_failed FROM retry_queue"
                 + (" WHERE source = ?" if source is not None else "") + " ORDER BY first_failed, source, document")
        return [QueuedDocument(*row) for row in self.db.execute(query, (source,) if source is not None else ())]

    def properties(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM properties"))

    def chunk_vectors(self) -> dict[str, np.ndarray]:
        return {chunk_id: np.frombuffer(blob, dtype=np.float32) for chunk_id, blob in self.db.execute(
            "SELECT chunk_id, vector FROM chunks ORDER BY chunk_id")}

    def sources(self) -> list[dict[str, Any]]:
        return [{"source": source, "documents": documents, "vectors": vectors, "cursor": cursor}
                for source, documents, vectors, cursor in self.db.execute(
                    "SELECT s.source, s.documents, s.vectors, c.value FROM source_counts s "
                    "LEFT JOIN cursors c USING (source) WHERE s.documents > 0 ORDER BY s.source")]
