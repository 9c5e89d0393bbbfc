"""A FAISS vector store with chunk metadata in SQLite, made durable by a write-ahead log and checkpoints.

State = the newest valid checkpoint generation + the WAL records after it. Every `write` is
appended to the WAL and fsync'd before it is applied in memory and acknowledged; a checkpoint
writes the FAISS index and a SQLite snapshot as a new generation (temp folder, fsync, rename)
with a checksummed manifest. WAL segments are kept back to the oldest kept generation, so a
damaged newest generation falls back to an older one plus the log, losing nothing.

Raw vectors are kept in SQLite beside the FAISS index: vectors are expensive to recreate, and
with them the index can be rebuilt with another factory and unchanged chunks are never re-embedded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from . import wal
from .lock import WriterLock
from .manifest import MANIFEST, ManifestError, Problem, build_manifest, check_files, file_sha256, parse_manifest
from .records import ChunkRecord, CursorUpdate, DocumentDelete, DocumentUpsert, Operation, SearchHit
from .settings import StoreSettings

log = logging.getLogger("vectormill.store")

IDENTITY = "identity.json"
INDEX_FILE = "index.faiss"
META_FILE = "meta.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    source TEXT NOT NULL, document TEXT NOT NULL, version TEXT NOT NULL, title TEXT NOT NULL,
    location TEXT NOT NULL, modified TEXT, chunks INTEGER NOT NULL,
    PRIMARY KEY (source, document));
CREATE TABLE IF NOT EXISTS chunks (
    faiss_id INTEGER PRIMARY KEY, chunk_id TEXT NOT NULL UNIQUE, source TEXT NOT NULL,
    document TEXT NOT NULL, position INTEGER NOT NULL, text TEXT NOT NULL, content_hash TEXT NOT NULL,
    page INTEGER, last_page INTEGER, tokens INTEGER NOT NULL, vector BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_document ON chunks (source, document);
CREATE TABLE IF NOT EXISTS cursors (source TEXT PRIMARY KEY, value TEXT);
"""


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


def _new_index(dimension: int, factory: str) -> faiss.Index:
    description = factory if "IDMap" in factory else f"IDMap2,{factory}"
    return faiss.index_factory(dimension, description, faiss.METRIC_INNER_PRODUCT)


class FaissStore:
    """The `VectorStore` of vectormill. Open with `FaissStore.open`; use as a context manager."""

    def __init__(self, settings: StoreSettings, writable: bool):
        self.settings = settings
        self.path = Path(settings.path)
        self.writable = writable
        self.generations_dir = self.path / "generations"
        self.wal_dir = self.path / "wal"
        self.notes: list[str] = []  # recovery warnings, shown to the user
        self.generation = 0
        self.lsn = 0
        self.identity: dict[str, Any] = {}
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
                shutil.rmtree(leftover)  # a checkpoint that a crash interrupted
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
            return
        if model is None or dimension is None:
            raise StoreError(f"store {str(self.path)!r} is new: open it with the model and dimension it stores")
        self.identity = {
            "model": model,
            "dimension": int(dimension),
            "index_factory": self.settings.index_factory,
            "created_at": datetime.now(timezone.utc).isoformat(),
        }
        temporary = identity_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.identity, indent=2))
        _fsync_file(temporary)
        temporary.rename(identity_path)
        wal.fsync_dir(self.path)

    @staticmethod
    def exists(path: Path) -> bool:
        return (Path(path) / IDENTITY).is_file()

    @property
    def model(self) -> str:
        return self.identity["model"]

    @property
    def dimension(self) -> int:
        return int(self.identity["dimension"])

    def generation_dirs(self) -> list[Path]:
        """Checkpoint folders, newest first."""
        if not self.generations_dir.is_dir():
            return []
        return sorted((p for p in self.generations_dir.iterdir() if p.name.isdigit()), reverse=True)

    def verify_generation(self, folder: Path, where: str = "primary") -> tuple[dict[str, Any] | None, list[Problem]]:
        try:
            manifest = parse_manifest((folder / MANIFEST).read_bytes(), f"{folder / MANIFEST}")
        except FileNotFoundError:
            return None, [Problem(where, f"{folder.name}/{MANIFEST}", "missing")]
        except ManifestError as exc:
            return None, [Problem(where, f"{folder.name}/{MANIFEST}", str(exc))]
        actual = {}
        for name in manifest["files"]:
            file = folder / name
            actual[name] = (file_sha256(file), file.stat().st_size) if file.is_file() else None
        problems = check_files(manifest, actual, where)
        return manifest, [Problem(p.where, f"{folder.name}/{p.file}", p.detail) for p in problems]

    def _recover(self) -> None:
        oldest_wal_lsn = self._oldest_wal_lsn()
        damaged: list[str] = []
        chosen: tuple[Path, dict[str, Any]] | None = None
        for folder in self.generation_dirs():
            manifest, problems = self.verify_generation(folder)
            if problems:
                damaged.extend(f"{self.generations_dir.name}/{p.file}: {p.detail}" for p in problems)
                continue
            chosen = (folder, manifest)
            break

        if chosen is None and damaged:
            raise StoreCorruptError(
                f"store {str(self.path)!r} is corrupt and has no valid checkpoint: "
                + "; ".join(damaged)
                + ". Restore it from a replica with `vectormill store restore`"
            )
        start_lsn = chosen[1]["lsn"] if chosen else 0
        if damaged:
            if oldest_wal_lsn is not None and oldest_wal_lsn > start_lsn + 1:
                raise StoreCorruptError(
                    f"store {str(self.path)!r}: newest checkpoint is corrupt ({'; '.join(damaged)}) and the log "
                    f"no longer reaches back to generation {chosen[1]['generation']}: "
                    "restore it from a replica with `vectormill store restore`"
                )
            message = (
                f"CORRUPT CHECKPOINT in {str(self.path)!r}: {'; '.join(damaged)}. Recovered from generation "
                f"{chosen[1]['generation']} plus the write-ahead log; no acknowledged write was lost. "
                "Run `vectormill store verify` and replace the damaged files."
            )
            self.notes.append(message)
            log.warning(message)

        self.db = sqlite3.connect(":memory:", check_same_thread=False)
        if chosen:
            folder, manifest = chosen
            source = sqlite3.connect(f"file:{folder / META_FILE}?mode=ro", uri=True)
            source.backup(self.db)
            source.close()
            self.index = faiss.read_index(str(folder / INDEX_FILE))
            self.generation = manifest["generation"]
        else:
            self.index = _new_index(self.dimension, self.identity["index_factory"])
        self.db.executescript(SCHEMA)
        self.lsn = start_lsn
        self._replay()

    def _oldest_wal_lsn(self) -> int | None:
        paths = wal.segments(self.wal_dir) if self.wal_dir.is_dir() else []
        return int(paths[0].stem) if paths else None

    def _replay(self) -> None:
        if not self.wal_dir.is_dir():
            return
        records, torn = wal.read_log(self.wal_dir)
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
        for op in operations:
            if isinstance(op, DocumentUpsert):
                if op.vectors.shape != (len(op.chunks), self.dimension):
                    raise StoreError(
                        f"{op.source}/{op.document}: {op.vectors.shape} vectors for {len(op.chunks)} chunks "
                        f"of {self.dimension} dims"
                    )
                if not np.isfinite(op.vectors).all():
                    raise StoreError(f"{op.source}/{op.document}: vectors contain NaN or infinity")

    def _apply(self, operations: Sequence[Operation]) -> None:
        removed: set[int] = set()
        added: dict[int, np.ndarray] = {}
        cursor = self.db.cursor()
        for op in operations:
            if isinstance(op, CursorUpdate):
                cursor.execute(
                    "INSERT INTO cursors(source, value) VALUES (?, ?) "
                    "ON CONFLICT(source) DO UPDATE SET value = excluded.value",
                    (op.source, op.cursor),
                )
                continue
            old_ids = [row[0] for row in cursor.execute(
                "SELECT faiss_id FROM chunks WHERE source = ? AND document = ?", (op.source, op.document))]
            for old in old_ids:
                if added.pop(old, None) is None:
                    removed.add(old)
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
                added[identifier] = vector
                rows.append((identifier, chunk.chunk_id, op.source, op.document, chunk.position, chunk.text,
                             chunk.content_hash, chunk.page, chunk.last_page, chunk.tokens, vector.tobytes()))
            cursor.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        self.db.commit()
        if removed:
            self.index.remove_ids(np.fromiter(removed, dtype=np.int64))
        if added:
            ids = np.fromiter(added.keys(), dtype=np.int64, count=len(added))
            self.index.add_with_ids(np.stack(list(added.values())), ids)

    def _checkpoint_due(self) -> bool:
        if self._changed_vectors >= self.settings.checkpoint_every_vectors:
            return True
        seconds = self.settings.checkpoint_every_seconds
        return seconds is not None and self._changed_vectors > 0 and time.monotonic() - self._last_checkpoint >= seconds

    def checkpoint(self) -> int | None:
        """Write the current state as a new generation; returns it, or None when nothing changed."""
        if not self.writable:
            raise StoreError("store was opened read-only")
        if self.generation and self._changed_vectors == 0:
            return None
        # Numbered past every folder present, damaged ones included, so none is overwritten.
        existing = self.generation_dirs()
        generation = max(self.generation, int(existing[0].name) if existing else 0) + 1
        temporary = self.generations_dir / f".tmp-{generation:08d}"
        if temporary.exists():
            shutil.rmtree(temporary)
        temporary.mkdir()
        faiss.write_index(self.index, str(temporary / INDEX_FILE))
        snapshot = sqlite3.connect(temporary / META_FILE)
        self.db.backup(snapshot)
        snapshot.close()
        files = {}
        for name in (INDEX_FILE, META_FILE):
            _fsync_file(temporary / name)
            files[name] = (file_sha256(temporary / name), (temporary / name).stat().st_size)
        body = {
            "generation": generation,
            "lsn": self.lsn,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "vectors": int(self.index.ntotal),
            "documents": self.document_count(),
            "model": self.model,
            "dimension": self.dimension,
            "index_factory": self.identity["index_factory"],
        }
        (temporary / MANIFEST).write_bytes(build_manifest(body, files))
        _fsync_file(temporary / MANIFEST)
        wal.fsync_dir(temporary)
        final = self.generations_dir / f"{generation:08d}"
        temporary.rename(final)
        wal.fsync_dir(self.generations_dir)
        self.generation = generation
        self._changed_vectors = 0
        self._last_checkpoint = time.monotonic()
        self._wal.rotate()
        self._prune()
        return generation

    def _prune(self) -> None:
        kept = self.generation_dirs()[: self.settings.keep_generations]
        for folder in self.generation_dirs()[self.settings.keep_generations :]:
            shutil.rmtree(folder)
        wal.fsync_dir(self.generations_dir)
        oldest = parse_manifest((kept[-1] / MANIFEST).read_bytes())
        self._wal.remove_segments_before(oldest["lsn"])

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

    def document_count(self) -> int:
        return self.db.execute("SELECT count(*) FROM documents").fetchone()[0]

    def search(self, vector: np.ndarray, k: int = 5) -> list[SearchHit]:
        if self.index.ntotal == 0:
            return []
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        scores, ids = self.index.search(query, k)
        hits = []
        for score, identifier in zip(scores[0], ids[0]):
            if identifier < 0:
                continue
            row = self.db.execute(
                "SELECT c.chunk_id, c.source, c.document, d.title, d.location, c.page, c.text "
                "FROM chunks c JOIN documents d USING (source, document) WHERE c.faiss_id = ?",
                (int(identifier),),
            ).fetchone()
            if row:
                hits.append(SearchHit(float(score), *row))
        return hits

    def chunk_vectors(self) -> dict[str, np.ndarray]:
        """Every stored chunk id with its vector (for checks and comparisons)."""
        return {cid: np.frombuffer(blob, dtype=np.float32) for cid, blob in self.db.execute(
            "SELECT chunk_id, vector FROM chunks ORDER BY chunk_id")}

    def stats(self) -> dict[str, Any]:
        per_source = [
            {"source": source, "documents": documents, "vectors": vectors or 0, "cursor": self.cursor(source)}
            for source, documents, vectors in self.db.execute(
                "SELECT d.source, count(*), sum(d.chunks) FROM documents d GROUP BY d.source ORDER BY d.source")
        ]
        return {
            "path": str(self.path),
            "vectors": int(self.index.ntotal),
            "documents": self.document_count(),
            "generation": self.generation,
            "lsn": self.lsn,
            "model": self.model,
            "dimension": self.dimension,
            "index_factory": self.identity["index_factory"],
            "sources": per_source,
            "generations": [folder.name for folder in self.generation_dirs()],
            "wal_bytes": sum(p.stat().st_size for p in wal.segments(self.wal_dir)) if self.wal_dir.is_dir() else 0,
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


# ---- WAL payloads: a JSON header of operations followed by their float32 vectors ------------
def encode_operations(operations: Sequence[Operation]) -> bytes:
    header = []
    blobs = []
    for op in operations:
        if isinstance(op, DocumentUpsert):
            header.append({
                "op": "upsert", "source": op.source, "document": op.document, "version": op.version,
                "title": op.title, "location": op.location, "modified": op.modified,
                "chunks": [[c.chunk_id, c.position, c.text, c.content_hash, c.page, c.last_page, c.tokens]
                           for c in op.chunks],
            })
            blobs.append(np.ascontiguousarray(op.vectors, dtype=np.float32).tobytes())
        elif isinstance(op, DocumentDelete):
            header.append({"op": "delete", "source": op.source, "document": op.document})
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
            chunks = tuple(ChunkRecord(*fields) for fields in entry["chunks"])
            count = len(chunks) * dimension
            vectors = np.frombuffer(payload, dtype=np.float32, count=count, offset=offset).reshape(len(chunks), dimension)
            offset += count * 4
            operations.append(DocumentUpsert(entry["source"], entry["document"], entry["version"], entry["title"],
                                             entry["location"], entry["modified"], chunks, vectors))
        elif entry["op"] == "delete":
            operations.append(DocumentDelete(entry["source"], entry["document"]))
        else:
            operations.append(CursorUpdate(entry["source"], entry["cursor"]))
    return operations
