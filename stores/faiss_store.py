"""A FAISS vector store with chunk metadata in SQLite, made durable by a write-ahead log and checkpoints.

State = the newest valid checkpoint generation + the WAL records after it. Every `write` is
appended to the WAL and fsync'd before it is applied in memory and acknowledged; a checkpoint
writes the FAISS index and a SQLite snapshot as a new generation (temp folder, fsync, rename)
with a checksummed manifest, then copies it to the configured replicas. WAL segments are kept
back to the oldest kept generation, so a damaged newest generation falls back to an older one
(or a replica's copy) plus the log, losing nothing; damaged generations are moved to
`quarantine/`, never deleted.

Raw vectors are kept in SQLite beside the FAISS index: vectors are expensive to recreate, and
with them the index can be rebuilt (another factory, an index type that cannot remove ids, a
trained index built once enough vectors exist) and unchanged chunks are never re-embedded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from . import wal
from .lock import WriterLock
from .manifest import MANIFEST, ManifestError, Problem, build_manifest, file_sha256, parse_manifest
from .records import (
    BaselineRecord, ChunkRecord, CursorUpdate, DocumentDelete, DocumentFailed, DocumentUpsert, Operation, PropertyUpdate,
    QueuedDocument, SearchHit,
)
from .replicas import Location, Replicator, generation_name
from .settings import StoreSettings

log = logging.getLogger("vectormill.store")

IDENTITY = "identity.json"
INDEX_FILE = "index.faiss"
META_FILE = "meta.sqlite"
QUARANTINE = "quarantine"
# Rows read at a time when an index is rebuilt from the stored vectors.
REBUILD_BATCH = 65_536

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    source TEXT NOT NULL, document TEXT NOT NULL, version TEXT NOT NULL, title TEXT NOT NULL,
    location TEXT NOT NULL, modified TEXT, chunks INTEGER NOT NULL,
    PRIMARY KEY (source, document));
CREATE TABLE IF NOT EXISTS chunks (
    faiss_id INTEGER PRIMARY KEY, chunk_id TEXT NOT NULL UNIQUE, source TEXT NOT NULL,
    document TEXT NOT NULL, position INTEGER NOT NULL, text TEXT NOT NULL, content_hash TEXT NOT NULL,
    page INTEGER, last_page INTEGER, tokens INTEGER NOT NULL, vector BLOB NOT NULL, ocr INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks (source, document);
CREATE TABLE IF NOT EXISTS cursors (source TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS baselines (
    source TEXT NOT NULL, run_id TEXT NOT NULL, created_at TEXT NOT NULL, stats TEXT NOT NULL,
    PRIMARY KEY (source, run_id));
CREATE TABLE IF NOT EXISTS retry_queue (
    source TEXT NOT NULL, document TEXT NOT NULL, ref TEXT NOT NULL, reason TEXT NOT NULL,
    attempts INTEGER NOT NULL, first_failed TEXT NOT NULL, last_failed TEXT NOT NULL,
    PRIMARY KEY (source, document));
CREATE TABLE IF NOT EXISTS properties (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
CHUNK_COLUMNS = ("faiss_id, chunk_id, source, document, position, text, content_hash, page, last_page, tokens, "
                 "vector, ocr")


class StoreError(RuntimeError):
    pass


class StoreCorruptError(StoreError):
    pass


def faiss_id(chunk_id: str) -> int:
    """FAISS ids are int64: the chunk id's first 63 bits."""
    return int(chunk_id[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


# ---- index factory ---------------------------------------------------------------------------
def new_index(dimension: int, factory: str) -> faiss.Index:
    """The configured index over inner product, taking our ids: IVF indexes natively, others in an IDMap2.

    (IDMap over IVF must not be used: its remove_ids assumes the sub-index compacts like a flat one.)
    """
    try:
        index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
        if "IDMap" in factory or faiss.try_extract_index_ivf(index) is not None:
            return index
        return faiss.index_factory(dimension, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise StoreError(f"[store] index_factory = {factory!r} is not a valid FAISS index factory string: "
                         f"{str(exc).splitlines()[0]}") from None


def index_ids(index: faiss.Index) -> list[int]:
    """Every id an index holds, duplicates included."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return faiss.vector_to_array(faiss.downcast_index(index).id_map).tolist()
    lists = ivf.invlists
    return [int(i) for n in range(lists.nlist)
            for i in faiss.rev_swig_ptr(lists.get_ids(n), lists.list_size(n))]


def needs_training(dimension: int, factory: str) -> bool:
    return not new_index(dimension, factory).is_trained


def supports_removal(dimension: int, factory: str) -> bool:
    """HNSW graphs cannot remove ids; IDMap2 over Flat, IVF or PQ can."""
    try:
        new_index(dimension, factory).remove_ids(np.empty(0, dtype=np.int64))
    except RuntimeError:
        return False
    return True


class FaissStore:
    """The `VectorStore` of vectormill. Open with `FaissStore.open`; use as a context manager.

    Index kinds: "final" is built with the configured factory; "staging" is an exact flat index
    used while a factory that needs training (IVF, PQ) has fewer than `train_vectors` vectors.
    For factories that cannot remove ids (HNSW), removed ids stay in the index as "stale" until
    the next checkpoint rebuilds it from the stored vectors; searches skip them meanwhile.
    """

    def __init__(self, settings: StoreSettings, writable: bool):
        self.settings = settings
        self.path = Path(settings.path)
        self.writable = writable
        self.generations_dir = self.path / "generations"
        self.wal_dir = self.path / "wal"
        self.quarantine_dir = self.path / QUARANTINE
        self.notes: list[str] = []  # recovery and replication warnings, shown to the user
        self.generation = 0
        self.lsn = 0
        self.identity: dict[str, Any] = {}
        self.replicator = Replicator(settings)
        self.index_kind = "final"
        self._removable = True
        self._stale: dict[int, bytes] = {}  # ids still in a non-removing index, with their vectors
        self._lock = WriterLock(self.path / "LOCK") if writable else None
        self._wal: wal.WalWriter | None = None
        self._changed_vectors = 0
        self._last_checkpoint = time.monotonic()

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        settings: StoreSettings,
        *,
        model: str | None = None,
        dimension: int | None = None,
        writable: bool = True,
    ) -> "FaissStore":
        """Open (creating it if writable and new) and recover the store.

        `model` and `dimension` say what the writer embeds with; a store built with another model
        is refused rather than mixed.
        """
        store = cls(settings, writable)
        try:
            store._open(model, dimension)
        except BaseException:
            store.close()
            raise
        return store

    def _open(self, model: str | None, dimension: int | None) -> None:
        if self.writable:
            for folder in (self.path, self.generations_dir, self.wal_dir):
                folder.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
            for leftover in self.generations_dir.glob(".tmp-*"):
                shutil.rmtree(leftover)  # a checkpoint or restore that a crash interrupted
        elif not (self.path / IDENTITY).is_file():
            raise StoreError(f"no store at {str(self.path)!r}: run `vectormill backfill` first")
        self._load_identity(model, dimension)
        self._recover()
        if self.writable:
            self._wal = wal.WalWriter(self.wal_dir, self.lsn + 1)

    def _load_identity(self, model: str | None, dimension: int | None) -> None:
        identity_path = self.path / IDENTITY
        if identity_path.is_file():
            self.identity = json.loads(identity_path.read_text())
            stored = (self.identity["model"], self.identity["dimension"])
            if model is not None and stored != (model, dimension or stored[1]):
                raise StoreError(
                    f"store {str(self.path)!r} holds vectors of model {self.identity['model']!r} "
                    f"({self.identity['dimension']} dims), but the config embeds with {model!r} ({dimension} dims): "
                    "point [store] path at a new folder to build a store for this model"
                )
            if self.identity["index_factory"] != self.settings.index_factory:
                self.notes.append(
                    f"store {str(self.path)!r} was built with index_factory {self.identity['index_factory']!r}; "
                    f"the config's {self.settings.index_factory!r} applies only to new stores")
            return
        if model is None or dimension is None:
            raise StoreError(f"store {str(self.path)!r} is new: open it with the model and dimension it stores")
        self._refuse_to_shadow_replicas()
        new_index(int(dimension), self.settings.index_factory)  # a bad factory string fails here, before any write
        self.identity = {
            "model": model,
            "dimension": int(dimension),
            "index_factory": self.settings.index_factory,
            "created_at": datetime.now(timezone.utc).isoformat(),
        }
        write_identity(self.path, self.identity)

    def _refuse_to_shadow_replicas(self) -> None:
        """A lost primary must be restored, not silently replaced: its replicas would prune the backups."""
        for replica in self.settings.replicas:
            try:
                location = Location.replica(replica)
                held = [g for g in location.generations()
                        if location.fs.exists(location.path(generation_name(g), MANIFEST))]
            except Exception as exc:  # noqa: BLE001 - an unreachable replica cannot hold us back
                self.notes.append(f"replica {replica.name!r} could not be checked before creating the store: {exc}")
                continue
            if held:
                raise StoreError(
                    f"store {str(self.path)!r} does not exist, but replica {replica.name!r} holds generation "
                    f"{held[0]}: run `vectormill store restore --from {replica.name}` to bring it back, or point "
                    "[store] path or the replica at another location to start a new store")

    @staticmethod
    def exists(path: Path) -> bool:
        return (Path(path) / IDENTITY).is_file()

    @property
    def model(self) -> str:
        return self.identity["model"]

    @property
    def dimension(self) -> int:
        return int(self.identity["dimension"])

    @property
    def factory(self) -> str:
        return self.identity["index_factory"]

    def generation_dirs(self) -> list[Path]:
        """Checkpoint folders, newest first."""
        if not self.generations_dir.is_dir():
            return []
        return sorted((p for p in self.generations_dir.iterdir() if p.name.isdigit()), reverse=True)

    def _recover(self) -> None:
        primary = Location.primary(self.generations_dir)
        damaged: list[tuple[Path, list[Problem]]] = []
        chosen: tuple[Path, dict[str, Any], str] | None = None
        for folder in self.generation_dirs():
            manifest, problems = primary.verify(int(folder.name))
            if problems:
                damaged.append((folder, problems))
                continue
            chosen = (folder, manifest, "primary")
            break

        scratch: tempfile.TemporaryDirectory | None = None
        if damaged:
            newer_than = chosen[1]["generation"] if chosen else 0
            if self.writable:
                fetched = self._fetch_from_replica(newer_than, self.generations_dir / f".tmp-fetch-{_utc_stamp()}")
            else:
                scratch = tempfile.TemporaryDirectory(prefix="vectormill-restore-")
                fetched = self._fetch_from_replica(newer_than, Path(scratch.name) / "generation")
            if fetched:
                chosen = fetched
        try:
            self._check_log_reaches(chosen, damaged)
            if damaged and self.writable:
                chosen = self._quarantine_damaged(damaged, chosen)
            if damaged:
                self._warn_recovered(damaged, chosen)
            self._load(chosen)
        finally:
            if scratch is not None:
                scratch.cleanup()
        self._replay()

    def _fetch_from_replica(self, newer_than: int, destination: Path) -> tuple[Path, dict[str, Any], str] | None:
        """The newest valid replica generation newer than `newer_than`, downloaded and checked."""
        candidates: list[tuple[int, Location]] = []
        for replica in self.settings.replicas:
            try:
                location = Location.replica(replica)
                candidates.extend((g, location) for g in location.generations() if g > newer_than)
            except Exception as exc:  # noqa: BLE001 - an unreachable replica is reported, others are tried
                self.notes.append(f"replica {replica.name!r} unreachable while recovering: {exc}")
        for generation, location in sorted(candidates, key=lambda item: -item[0]):
            try:
                manifest = location.fetch(generation, destination)
            except Exception as exc:  # noqa: BLE001 - a damaged replica copy: try the next one
                self.notes.append(f"replica {location.name!r} generation {generation} unusable: {exc}")
                shutil.rmtree(destination, ignore_errors=True)
                continue
            return destination, manifest, f"replica {location.name!r}"
        return None

    def _quarantine_damaged(self, damaged: list[tuple[Path, list[Problem]]],
                            chosen: tuple[Path, dict[str, Any], str] | None) -> tuple[Path, dict[str, Any], str] | None:
        """Move damaged generations aside (kept for inspection) and install a fetched replica copy."""
        for folder, _ in damaged:
            self.quarantine_dir.mkdir(exist_ok=True)
            folder.rename(self.quarantine_dir / f"{folder.name}-{_utc_stamp()}")
        if chosen and chosen[0].name.startswith(".tmp-"):
            final = self.generations_dir / generation_name(chosen[1]["generation"])
            chosen[0].rename(final)
            chosen = (final, chosen[1], chosen[2])
        wal.fsync_dir(self.generations_dir)
        return chosen

    def _check_log_reaches(self, chosen: tuple[Path, dict[str, Any], str] | None,
                           damaged: list[tuple[Path, list[Problem]]]) -> None:
        damage = "; ".join(f"{p.file}: {p.detail}" for _, problems in damaged for p in problems)
        if chosen is None and damaged:
            raise StoreCorruptError(
                f"store {str(self.path)!r} is corrupt and no valid checkpoint was found on the primary or a "
                f"replica: {damage}. Run `vectormill store verify` to see every copy")
        start_lsn = chosen[1]["lsn"] if chosen else 0
        oldest = self._oldest_wal_lsn()
        if oldest is not None and oldest > start_lsn + 1:
            raise StoreCorruptError(
                f"store {str(self.path)!r}: the newest valid checkpoint is generation {chosen[1]['generation'] if chosen else 0} "
                f"(log position {start_lsn}), but the write-ahead log starts at {oldest}: writes in between would be "
                f"lost ({damage or 'log segments missing'}). Nothing was changed; run `vectormill store restore` "
                "to go back to a valid generation knowingly")

    def _warn_recovered(self, damaged: list[tuple[Path, list[Problem]]],
                        chosen: tuple[Path, dict[str, Any], str]) -> None:
        damage = "; ".join(f"{p.file}: {p.detail}" for _, problems in damaged for p in problems)
        where = "moved to quarantine/" if self.writable else "left in place (opened read-only)"
        message = (
            f"CORRUPT CHECKPOINT in {str(self.path)!r}: {damage} ({where}). Recovered from generation "
            f"{chosen[1]['generation']} of the {chosen[2]} plus the write-ahead log; no acknowledged write was lost. "
            "Run `vectormill store verify` to check every copy.")
        self.notes.append(message)
        log.warning(message)

    def _load(self, chosen: tuple[Path, dict[str, Any], str] | None) -> None:
        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        self._removable = supports_removal(self.dimension, self.factory)
        if chosen:
            folder, manifest, _ = chosen
            source = sqlite3.connect(f"file:{folder / META_FILE}?mode=ro", uri=True)
            source.backup(self.db)
            source.close()
            self.index = faiss.read_index(str(folder / INDEX_FILE))
            self.index_kind = manifest.get("index_kind", "final")
            self.generation = manifest["generation"]
            self.lsn = manifest["lsn"]
        else:
            if needs_training(self.dimension, self.factory):
                self.index, self.index_kind = new_index(self.dimension, "Flat"), "staging"
            else:
                self.index, self.index_kind = new_index(self.dimension, self.factory), "final"
        if self.index_kind == "staging":
            self._removable = True
        self.db.executescript(SCHEMA)
        if "ocr" not in {row[1] for row in self.db.execute("PRAGMA table_info(chunks)")}:
            self.db.execute("ALTER TABLE chunks ADD COLUMN ocr INTEGER NOT NULL DEFAULT 0")  # generations before OCR
        self._apply_search_parameters()

    def _apply_search_parameters(self) -> None:
        if self.settings.search_parameters and self.index_kind == "final":
            faiss.ParameterSpace().set_index_parameters(self.index, self.settings.search_parameters)

    def _oldest_wal_lsn(self) -> int | None:
        paths = wal.segments(self.wal_dir) if self.wal_dir.is_dir() else []
        return int(paths[0].stem) if paths else None

    def _replay(self) -> None:
        if not self.wal_dir.is_dir():
            return
        try:
            records, torn = wal.read_log(self.wal_dir)
        except wal.WalCorruptError as exc:
            raise StoreCorruptError(
                f"store {str(self.path)!r}: the write-ahead log is damaged ({exc}); acknowledged writes after "
                f"generation {self.generation} cannot be read. Run `vectormill store restore` to go back to "
                "the newest valid generation knowingly") from None
        for record in records:
            if record.lsn <= self.lsn:
                continue
            if record.lsn != self.lsn + 1:
                raise StoreCorruptError(
                    f"store {str(self.path)!r}: write-ahead log jumps from record {self.lsn} to {record.lsn}: "
                    "records are missing; restore it from a replica with `vectormill store restore`"
                )
            self._apply(decode_operations(record.payload, self.dimension))
            self.lsn = record.lsn
            self._changed_vectors += 1
        if torn is not None:
            message = f"dropped a torn write at the end of the log ({torn.segment.name}: {torn.detail}); it was never acknowledged"
            self.notes.append(message)
            log.warning(message)
            if self.writable:
                wal.truncate_torn_tail(torn)

    # ---- writing -------------------------------------------------------------------------
    def write(self, operations: Sequence[Operation]) -> int:
        """Make the operations durable (WAL + fsync), apply them, and return their log sequence number."""
        if not self.writable:
            raise StoreError("store was opened read-only")
        if not operations:
            return self.lsn
        self._validate(operations)
        lsn = self._wal.append(encode_operations(operations))
        self._apply(operations)
        self.lsn = lsn
        self._changed_vectors += sum(len(op.chunks) for op in operations if isinstance(op, DocumentUpsert)) or 1
        if self._checkpoint_due():
            self.checkpoint()
        return lsn

    def _validate(self, operations: Sequence[Operation]) -> None:
        """Refuse bad input before it reaches the log: a logged record must always replay."""
        owners: dict[int, tuple[str, str]] = {}
        for op in operations:
            if not isinstance(op, DocumentUpsert):
                continue
            name = f"{op.source}/{op.document}"
            if op.vectors.shape != (len(op.chunks), self.dimension):
                raise StoreError(f"{name}: {op.vectors.shape} vectors for {len(op.chunks)} chunks of {self.dimension} dims")
            if not np.isfinite(op.vectors).all():
                raise StoreError(f"{name}: vectors contain NaN or infinity")
            ids = [faiss_id(chunk.chunk_id) for chunk in op.chunks]
            if len(set(ids)) != len(ids):
                raise StoreError(f"{name}: two chunks share a chunk id (or its first 63 bits)")
            for identifier in ids:
                if owners.setdefault(identifier, (op.source, op.document)) != (op.source, op.document):
                    raise StoreError(f"{name}: a chunk id is also used by {'/'.join(owners[identifier])} in this write")
        # A stored chunk id may only come back in its own document (an upsert replaces that document).
        ids = list(owners)
        for start in range(0, len(ids), 10_000):
            part = ids[start : start + 10_000]
            for identifier, source, document in self.db.execute(
                    f"SELECT faiss_id, source, document FROM chunks WHERE faiss_id IN ({','.join('?' * len(part))})", part):
                if (source, document) != owners[identifier]:
                    raise StoreError(f"{'/'.join(owners[identifier])}: a chunk id is already stored for {source}/{document}")

    def _apply(self, operations: Sequence[Operation]) -> None:
        """Apply to SQLite, then bring the index to the same state, touching only ids whose vector changed."""
        before: dict[int, bytes | None] = {}  # what the index holds for an id before these operations
        after: dict[int, bytes | None] = {}  # what it must hold after them
        cursor = self.db.cursor()
        for op in operations:
            if isinstance(op, CursorUpdate):
                cursor.execute(
                    "INSERT INTO cursors(source, value) VALUES (?, ?) "
                    "ON CONFLICT(source) DO UPDATE SET value = excluded.value",
                    (op.source, op.cursor),
                )
                continue
            if isinstance(op, BaselineRecord):
                cursor.execute("INSERT OR REPLACE INTO baselines VALUES (?, ?, ?, ?)",
                               (op.source, op.run_id, op.created_at, json.dumps(op.stats, separators=(",", ":"))))
                continue
            if isinstance(op, DocumentFailed):
                cursor.execute(
                    "INSERT INTO retry_queue VALUES (?, ?, ?, ?, 1, ?, ?) ON CONFLICT(source, document) DO UPDATE SET "
                    "ref = excluded.ref, reason = excluded.reason, attempts = attempts + 1, "
                    "last_failed = excluded.last_failed",
                    (op.source, op.document, op.ref, op.reason, op.failed_at, op.failed_at))
                continue
            if isinstance(op, PropertyUpdate):
                if op.value is None:
                    cursor.execute("DELETE FROM properties WHERE key = ?", (op.key,))
                else:
                    cursor.execute("INSERT OR REPLACE INTO properties VALUES (?, ?)", (op.key, op.value))
                continue
            cursor.execute("DELETE FROM retry_queue WHERE source = ? AND document = ?", (op.source, op.document))
            for identifier, blob in cursor.execute(
                    "SELECT faiss_id, vector FROM chunks WHERE source = ? AND document = ?", (op.source, op.document)):
                before.setdefault(identifier, blob)
                after[identifier] = None
            cursor.execute("DELETE FROM chunks WHERE source = ? AND document = ?", (op.source, op.document))
            cursor.execute("DELETE FROM documents WHERE source = ? AND document = ?", (op.source, op.document))
            if isinstance(op, DocumentDelete):
                continue
            cursor.execute(
                "INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?, ?)",
                (op.source, op.document, op.version, op.title, op.location, op.modified, len(op.chunks)),
            )
            vectors = np.ascontiguousarray(op.vectors, dtype=np.float32)
            rows = []
            for chunk, vector in zip(op.chunks, vectors):
                identifier = faiss_id(chunk.chunk_id)
                blob = vector.tobytes()
                before.setdefault(identifier, self._stale.get(identifier))
                after[identifier] = blob
                rows.append((identifier, chunk.chunk_id, op.source, op.document, chunk.position, chunk.text,
                             chunk.content_hash, chunk.page, chunk.last_page, chunk.tokens, blob, int(chunk.ocr)))
            cursor.executemany(f"INSERT INTO chunks ({CHUNK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self.db.commit()
        self._update_index(before, after)

    def _update_index(self, before: dict[int, bytes | None], after: dict[int, bytes | None]) -> None:
        removed, added = [], []
        for identifier, vector in after.items():
            old = before[identifier]
            if old == vector:
                if vector is not None:
                    self._stale.pop(identifier, None)  # a stale id taken back with the same vector is live again
                continue
            if old is not None and vector is not None and not self._removable:
                self._rebuild_index()  # a changed vector under an id the index cannot drop: start afresh
                return
            if old is not None:
                removed.append(identifier)
                if not self._removable:
                    self._stale[identifier] = old
            if vector is not None:
                added.append((identifier, vector))
        if removed and self._removable:
            self.index.remove_ids(np.array(removed, dtype=np.int64))
        if added:
            self._add(added)

    def _add(self, rows: list[tuple[int, bytes]]) -> None:
        ids = np.fromiter((identifier for identifier, _ in rows), dtype=np.int64, count=len(rows))
        vectors = np.frombuffer(b"".join(blob for _, blob in rows), dtype=np.float32).reshape(len(rows), self.dimension)
        self.index.add_with_ids(vectors, ids)

    def _rebuild_index(self) -> None:
        """Build the configured index afresh from the vectors in SQLite.

        A final index keeps its training (an empty clone); a staging one is replaced by the
        configured factory, trained on `train_vectors` stored vectors.
        """
        if self.index_kind == "final":
            index = faiss.clone_index(self.index)
            index.reset()
        else:
            index = new_index(self.dimension, self.factory)
        if not index.is_trained:
            sample = [blob for (blob,) in self.db.execute(
                "SELECT vector FROM chunks ORDER BY faiss_id LIMIT ?", (self.settings.train_vectors,))]
            # Ordered by id, i.e. by a hash of the chunk: a deterministic, well-mixed sample.
            index.train(np.frombuffer(b"".join(sample), dtype=np.float32).reshape(len(sample), self.dimension))
        self.index, self.index_kind, self._stale = index, "final", {}
        self._removable = supports_removal(self.dimension, self.factory)
        rows = self.db.execute("SELECT faiss_id, vector FROM chunks ORDER BY faiss_id")
        while batch := rows.fetchmany(REBUILD_BATCH):
            self._add(batch)
        self._apply_search_parameters()

    def _prepare_index_for_checkpoint(self) -> None:
        if self.index_kind == "staging" and self.vector_count() >= self.settings.train_vectors:
            try:
                self._rebuild_index()
            except RuntimeError as exc:  # too few or degenerate training vectors: keep searching exactly
                message = (f"could not train index {self.factory!r} on {self.settings.train_vectors} vectors "
                           f"({str(exc).splitlines()[0]}); the store keeps its exact flat index meanwhile")
                self.notes.append(message)
                log.warning(message)
        elif self._stale:
            self._rebuild_index()

    def _checkpoint_due(self) -> bool:
        if self._changed_vectors >= self.settings.checkpoint_every_vectors:
            return True
        seconds = self.settings.checkpoint_every_seconds
        return seconds is not None and self._changed_vectors > 0 and time.monotonic() - self._last_checkpoint >= seconds

    def checkpoint(self) -> int | None:
        """Write the current state as a new generation and replicate it; returns it, or None when nothing changed.

        With nothing changed, the newest generation is still offered to the replicas (a copy that
        is already there costs one manifest read), so a replica that was down catches up.
        """
        if not self.writable:
            raise StoreError("store was opened read-only")
        if self.generation and self._changed_vectors == 0:
            newest = self.generation_dirs()
            if newest:
                self._replicate(newest[0], int(newest[0].name))
            return None
        self._prepare_index_for_checkpoint()
        generation = self._next_generation()
        temporary = self.generations_dir / f".tmp-{generation_name(generation)}"
        if temporary.exists():
            shutil.rmtree(temporary)
        temporary.mkdir()
        faiss.write_index(self.index, str(temporary / INDEX_FILE))
        snapshot = sqlite3.connect(temporary / META_FILE)
        self.db.backup(snapshot)
        snapshot.close()
        body = {
            "generation": generation,
            "lsn": self.lsn,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "vectors": self.vector_count(),
            "documents": self.document_count(),
            "model": self.model,
            "dimension": self.dimension,
            "index_factory": self.factory,
            "index_kind": self.index_kind,
        }
        final = seal_generation(temporary, body, self.generations_dir / generation_name(generation))
        self.generation = generation
        self._changed_vectors = 0
        self._last_checkpoint = time.monotonic()
        self._wal.rotate()
        self._prune()
        self._replicate(final, generation)
        return generation

    def _next_generation(self) -> int:
        """Past every number present, damaged and quarantined ones included, so none is ever reused."""
        return max([self.generation, *used_generation_numbers(self.path)]) + 1

    def _prune(self) -> None:
        folders = self.generation_dirs()
        for folder in folders[self.settings.keep_generations :]:
            # Manifest first: a removal cut short must not leave a generation that looks valid.
            (folder / MANIFEST).unlink(missing_ok=True)
            wal.fsync_dir(folder)
            shutil.rmtree(folder)
        wal.fsync_dir(self.generations_dir)
        try:
            oldest = parse_manifest((folders[: self.settings.keep_generations][-1] / MANIFEST).read_bytes())
        except (OSError, ManifestError) as exc:
            self.notes.append(f"kept all log segments: the oldest kept generation's manifest is unreadable ({exc})")
            return
        # The log is kept back to the oldest kept generation: if a newer one turns out damaged, it replays from there.
        self._wal.remove_segments_before(oldest["lsn"])

    def _replicate(self, folder: Path, generation: int) -> None:
        if not self.settings.replicas:
            return
        self.replicator.replicate(folder, generation)
        problem = self.replicator.problem()
        failed = [s for s in self.replicator.statuses.values() if s.ok is False]
        for status in failed:
            self.notes.append(f"replica {status.name!r} ({status.url}): {status.error}")
        if problem:
            log.error(problem)

    def replication_problem(self) -> str | None:
        """Why the last checkpoint is not confirmed by `min_replicas_confirmed` replicas; None when it is."""
        return self.replicator.problem()

    # ---- reading -------------------------------------------------------------------------
    def document_versions(self, source: str) -> dict[str, str]:
        return dict(self.db.execute("SELECT document, version FROM documents WHERE source = ?", (source,)))

    def stored_vectors(self, source: str, document: str) -> dict[str, np.ndarray]:
        """Vectors of a document's stored chunks by content hash, so unchanged text is not re-embedded."""
        rows = self.db.execute(
            "SELECT content_hash, vector FROM chunks WHERE source = ? AND document = ?", (source, document))
        return {digest: np.frombuffer(blob, dtype=np.float32) for digest, blob in rows}

    def cursor(self, source: str) -> str | None:
        row = self.db.execute("SELECT value FROM cursors WHERE source = ?", (source,)).fetchone()
        return row[0] if row else None

    def baselines(self, source: str | None = None) -> list[BaselineRecord]:
        """Embedding baselines, oldest first: of one source, or of every source."""
        query = "SELECT source, run_id, created_at, stats FROM baselines"
        rows = (self.db.execute(f"{query} WHERE source = ? ORDER BY created_at, rowid", (source,)) if source is not None
                else self.db.execute(f"{query} ORDER BY source, created_at, rowid"))
        return [BaselineRecord(name, run_id, created_at, json.loads(stats)) for name, run_id, created_at, stats in rows]

    def retry_queue(self, source: str | None = None) -> list[QueuedDocument]:
        """Documents that failed and have not landed since (of one source, or all), oldest failure first."""
        query = ("SELECT source, document, ref, reason, attempts, first_failed, last_failed FROM retry_queue"
                 + (" WHERE source = ?" if source is not None else "") + " ORDER BY first_failed, source, document")
        return [QueuedDocument(*row) for row in self.db.execute(query, (source,) if source is not None else ())]

    def properties(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM properties"))

    def document_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM documents").fetchone()[0]

    def vector_count(self) -> int:
        """Live vectors: those in the index, less stale ids awaiting a rebuild."""
        return int(self.index.ntotal) - len(self._stale)

    def search(self, vector: np.ndarray, k: int = 5) -> list[SearchHit]:
        if self.vector_count() <= 0:
            return []
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        scores, ids = self.index.search(query, min(k + len(self._stale), int(self.index.ntotal)))
        hits = []
        for score, identifier in zip(scores[0], ids[0]):
            if identifier < 0 or int(identifier) in self._stale:
                continue
            row = self.db.execute(
                "SELECT c.chunk_id, c.source, c.document, d.title, d.location, c.page, c.text, c.ocr "
                "FROM chunks c JOIN documents d USING (source, document) WHERE c.faiss_id = ?",
                (int(identifier),),
            ).fetchone()
            if row:
                hits.append(SearchHit(float(score), *row[:-1], ocr=bool(row[-1])))
            if len(hits) == k:
                break
        return hits

    def chunk_vectors(self) -> dict[str, np.ndarray]:
        """Every stored chunk id with its vector (for checks and comparisons)."""
        return {cid: np.frombuffer(blob, dtype=np.float32) for cid, blob in self.db.execute(
            "SELECT chunk_id, vector FROM chunks ORDER BY chunk_id")}

    def index_ids(self) -> list[int]:
        """Ids the FAISS index holds, stale ones excluded (for checks: they must match SQLite's)."""
        return sorted(int(i) for i in index_ids(self.index) if int(i) not in self._stale)

    def generations_info(self) -> list[dict[str, Any]]:
        info = []
        for folder in self.generation_dirs():
            entry: dict[str, Any] = {"generation": int(folder.name)}
            try:
                manifest = parse_manifest((folder / MANIFEST).read_bytes())
                entry.update({key: manifest[key] for key in ("lsn", "created_at", "vectors", "documents")},
                             bytes=sum(f["bytes"] for f in manifest["files"].values()))
            except (OSError, ManifestError) as exc:
                entry["error"] = str(exc)
            info.append(entry)
        return info

    def replica_statuses(self) -> list[dict[str, Any]]:
        """This run's replication results; replicas not written in this process are looked at (no hashing)."""
        return [self.replicator.probe(status.name).as_dict() if status.ok is None else status.as_dict()
                for status in self.replicator.statuses.values()]

    def stats(self) -> dict[str, Any]:
        per_source = [
            {"source": source, "documents": documents, "vectors": vectors or 0, "cursor": self.cursor(source)}
            for source, documents, vectors in self.db.execute(
                "SELECT d.source, count(*), sum(d.chunks) FROM documents d GROUP BY d.source ORDER BY d.source")
        ]
        generations = self.generations_info()
        return {
            "path": str(self.path),
            "vectors": self.vector_count(),
            "documents": self.document_count(),
            "generation": self.generation,
            "lsn": self.lsn,
            "model": self.model,
            "dimension": self.dimension,
            "index_factory": self.factory,
            "index_kind": self.index_kind,
            "sources": per_source,
            "generations": generations,
            "generation_bytes": sum(g.get("bytes", 0) for g in generations),
            "wal_bytes": sum(p.stat().st_size for p in wal.segments(self.wal_dir)) if self.wal_dir.is_dir() else 0,
            "replicas": self.replica_statuses(),
            "min_replicas_confirmed": self.settings.replicas_required,
        }

    # ---- closing -------------------------------------------------------------------------
    def close(self) -> None:
        if self._wal is not None:
            self._wal.close()
            self._wal = None
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "FaissStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---- generation folders ---------------------------------------------------------------------
def seal_generation(temporary: Path, body: dict[str, Any], final: Path) -> Path:
    """fsync the data files, write the manifest (their sha256) last, and rename the folder into place."""
    files = {}
    for file in sorted(temporary.iterdir()):
        if file.name == MANIFEST:
            continue
        _fsync_file(file)
        files[file.name] = (file_sha256(file), file.stat().st_size)
    (temporary / MANIFEST).write_bytes(build_manifest(body, files))
    _fsync_file(temporary / MANIFEST)
    wal.fsync_dir(temporary)
    temporary.rename(final)
    wal.fsync_dir(final.parent)
    return final


def used_generation_numbers(path: Path) -> list[int]:
    """Generation numbers in generations/ and in quarantine/ (as NNNNNNNN-… or restore-…/NNNNNNNN)."""
    numbers = [int(p.name) for p in (path / "generations").glob("*") if p.name.isdigit()]
    quarantine = path / QUARANTINE
    for entry in [*quarantine.glob("*"), *quarantine.glob("restore-*/*")]:
        head = entry.name.split("-", 1)[0]
        if len(head) == 8 and head.isdigit():
            numbers.append(int(head))
    return numbers


def write_identity(path: Path, identity: dict[str, Any]) -> None:
    temporary = path / f"{IDENTITY}.tmp"
    temporary.write_text(json.dumps(identity, indent=2))
    _fsync_file(temporary)
    temporary.rename(path / IDENTITY)
    wal.fsync_dir(path)


# ---- WAL payloads: a JSON header of operations followed by their float32 vectors ------------
def encode_operations(operations: Sequence[Operation]) -> bytes:
    header = []
    blobs = []
    for op in operations:
        if isinstance(op, DocumentUpsert):
            header.append({
                "op": "upsert", "source": op.source, "document": op.document, "version": op.version,
                "title": op.title, "location": op.location, "modified": op.modified,
                "chunks": [[c.chunk_id, c.position, c.text, c.content_hash, c.page, c.last_page, c.tokens, c.ocr]
                           for c in op.chunks],
            })
            blobs.append(np.ascontiguousarray(op.vectors, dtype=np.float32).tobytes())
        elif isinstance(op, DocumentDelete):
            header.append({"op": "delete", "source": op.source, "document": op.document})
        elif isinstance(op, BaselineRecord):
            header.append({"op": "baseline", "source": op.source, "run_id": op.run_id,
                           "created_at": op.created_at, "stats": op.stats})
        elif isinstance(op, DocumentFailed):
            header.append({"op": "failed", "source": op.source, "document": op.document, "ref": op.ref,
                           "reason": op.reason, "failed_at": op.failed_at})
        elif isinstance(op, PropertyUpdate):
            header.append({"op": "property", "key": op.key, "value": op.value})
        else:
            header.append({"op": "cursor", "source": op.source, "cursor": op.cursor})
    encoded = json.dumps(header, separators=(",", ":")).encode()
    return len(encoded).to_bytes(4, "little") + encoded + b"".join(blobs)


def decode_operations(payload: bytes, dimension: int) -> list[Operation]:
    size = int.from_bytes(payload[:4], "little")
    header = json.loads(payload[4 : 4 + size])
    offset = 4 + size
    operations: list[Operation] = []
    for entry in header:
        if entry["op"] == "upsert":
            chunks = tuple(ChunkRecord(*fields) for fields in entry["chunks"])  # 7 fields before OCR: ocr=False
            count = len(chunks) * dimension
            vectors = np.frombuffer(payload, dtype=np.float32, count=count, offset=offset).reshape(len(chunks), dimension)
            offset += count * 4
            operations.append(DocumentUpsert(entry["source"], entry["document"], entry["version"], entry["title"],
                                             entry["location"], entry["modified"], chunks, vectors))
        elif entry["op"] == "delete":
            operations.append(DocumentDelete(entry["source"], entry["document"]))
        elif entry["op"] == "baseline":
            operations.append(BaselineRecord(entry["source"], entry["run_id"], entry["created_at"], entry["stats"]))
        elif entry["op"] == "failed":
            operations.append(DocumentFailed(entry["source"], entry["document"], entry["ref"], entry["reason"],
                                             entry["failed_at"]))
        elif entry["op"] == "property":
            operations.append(PropertyUpdate(entry["key"], entry["value"]))
        else:
            operations.append(CursorUpdate(entry["source"], entry["cursor"]))
    return operations
