"""A FAISS vector store whose costs follow the change: a SQLite catalog as the source of truth, plus
immutable, content-addressed FAISS segments grouped in generations.

* `write` is one catalog transaction (SQLite WAL, synchronous=FULL): acknowledged once it commits,
  it survives SIGKILL and power loss. It touches only the rows of the documents it names.
* `checkpoint` seals the vectors written since the previous one as a new segment and commits a
  generation (a manifest naming its segments by sha256); merges segments when the policy says so
  (`compact` merges everything); copies to each replica only the files it lacks.
* Readers open the catalog in place and read its newest committed state: each `search` (or a block
  under `snapshot()`) is one short read transaction, so a long-lived reader follows the writer and
  never keeps SQLite's write-ahead log from resetting. `search` maps the segment files read-only and
  skips the ids they hold that were deleted or replaced since (tombstones, filtered by a structure
  built once per segment and tombstone count, not per query), plus searches the vectors not yet
  sealed; its view is rebuilt only for what changed since the last search (new generation: the new
  segments' files; new writes: the pending vectors and the filters of the segments they touched).
  Opening costs a few rows and a stat per segment file, whatever the store's size; a file whose stat
  changed (a copy, chmod, chown) is hashed once and its new fingerprint recorded, by a reader too
  when it may write the database; `store verify` hashes everything.

A store has an id and a timeline (identity.json, and every manifest): a replica holding another store's
generations is refused, and a restore starts a new timeline, as PostgreSQL does.

Layout of a store folder: identity.json (model, dimension, factory, format, current database, store id, timeline),
store.sqlite (the catalog), segments/<sha256>.faiss|.rows, manifests/NNNNNNNN.json, quarantine/.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from . import keywords, row_checks
from .catalog import Catalog, faiss_id, record_checked_files
from .durable import file_sha256, write_atomically
from .errors import StoreCorruptError, StoreError
from .filters import SearchFilter
from .fusion import Fusion, FusedHit, SearchModeError, check_mode, reciprocal_rank_fusion
from .generations import Generations, current_manifest, damaged_files, rollback_problem
from .keywords import KeywordIndexMissing
from .legacy import migrate, refuse_to_read, set_aside_old_layout
from .lock import WriterLock
from .manifest import SEGMENTS, FileEntry, files_of, manifest_bytes, parse_manifest, segments_of
from .records import DocumentPart, DocumentPartsCommit, DocumentUpsert, Operation, QueuedDocument, SearchHit, page_span
from .settings import ReplicaSettings, StoreSettings, concrete_factory

if TYPE_CHECKING:  # FAISS and fsspec load only for what needs them: `store stats` reads a few rows
    from .replicas import Replicator
    from .search import Part

__all__ = ["FaissStore", "StoreCorruptError", "StoreError", "faiss_id"]

log = logging.getLogger("vectormill.store")
T = TypeVar("T")

IDENTITY = "identity.json"
DATABASE = "store.sqlite"
FORMAT = 2
# A reader whose snapshot's files were pruned by the writer before it opened them moves to the newer
# generation; this many times.
VIEW_ATTEMPTS = 8
FD_FOLDER = Path("/dev/fd")  # open descriptors by number (Linux, macOS)


def write_identity(path: Path, identity: dict[str, Any]) -> None:
    write_atomically(path / IDENTITY, json.dumps(identity, indent=2).encode())


def new_store_id() -> str:
    return uuid.uuid4().hex


def read_identity(path: Path) -> dict[str, Any] | None:
    """The store's identity; None where there is no store. A store path that is a file, or an identity.json that
    is not a JSON object, is a StoreError that says so (never a raw exception)."""
    try:
        identity = json.loads((path / IDENTITY).read_text())
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise StoreError(f"store path {str(path)!r} is a file, not a store's folder: set [store] path to the folder "
                         "`vectormill backfill` writes the store in") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreCorruptError(f"{str(path / IDENTITY)!r} is damaged ({exc}): `vectormill store restore` "
                                "rebuilds the store from a valid generation") from None
    if not isinstance(identity, dict) or ("format" in identity
                                          and not {"model", "dimension", "database"} <= set(identity)):
        raise StoreCorruptError(f"{str(path / IDENTITY)!r} is damaged (not a store identity): `vectormill store "
                                "restore` rebuilds the store from a valid generation")
    return identity


class FaissStore:
    """The `VectorStore` of vectormill. Open with `FaissStore.open`; use as a context manager."""

    def __init__(self, settings: StoreSettings, writable: bool):
        self.settings = settings
        self.path = Path(settings.path)
        self.writable = writable
        self.notes: list[str] = []  # recovery, migration and replication warnings, shown to the user
        self.identity: dict[str, Any] = {}
        self.catalog: Catalog | None = None
        self._lock = WriterLock(self.path / "LOCK") if writable else None
        self._replicator: Replicator | None = None
        self._generations: Generations | None = None
        self._view: list[Part] | None = None
        self._view_key: tuple[int, int] | None = None  # (generation, lsn) the view was built for
        self._indexes: dict[int, Any] = {}  # mapped segment indexes by seq (immutable files)
        self._segment_parts: dict[int, tuple[int, Part]] = {}  # seq -> (dead ids it filters, part)
        self._verified: dict[str, str] = {}  # fingerprints of files this object hashed and found intact
        self._reported: set[str] = set()
        self._pinned: dict[str, int] = {}  # a reader's open descriptors of its generation's files
        self._pinned_generation: int | None = None
        self._broken: str | None = None
        self._changed_vectors = 0
        self._last_checkpoint = time.monotonic()

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, settings: StoreSettings, *, model: str | None = None, dimension: int | None = None,
             writable: bool = True) -> "FaissStore":
        """Open (creating it if writable and new) the store.

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
        # Without a model to create it with, a missing store is an error, and leaves no folder behind.
        identity = read_identity(self.path)
        if identity is None and (not self.writable or model is None or dimension is None):
            raise StoreError(f"no store at {str(self.path)!r}: run `vectormill backfill` first")
        if not self.writable:
            if "format" not in identity:
                refuse_to_read(self.path)
            self.identity = identity
            self._check_model(model, dimension)
            self._open_catalog()
            return
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        identity = read_identity(self.path)  # under the lock: a restore may have switched it
        migrated = False
        if identity is None:
            self.identity = self._new_identity(model, dimension)
            self._open_catalog(create=True)
            write_identity(self.path, self.identity)  # last: a store exists once its database does
        else:
            if "format" not in identity:
                identity = migrate(self.path, identity, DATABASE, write_identity, self.notes)
                migrated = True
            if "store_id" not in identity:  # written before stores had ids
                identity = {**identity, "store_id": new_store_id(), "timeline": 1}
                write_identity(self.path, identity)
            self.identity = identity
            self._check_model(model, dimension)
            self._open_catalog()
        self._generations = Generations(self.path, self.settings, self.identity, self.catalog, self.notes)
        leftover = set_aside_old_layout(self.path)  # a migration interrupted after its switch
        if leftover:
            self.notes.append(f"finished migrating store {str(self.path)!r}: the older layout's files are in "
                              f"{leftover}/: delete them once you no longer need them")
        self._generations.tidy()
        self._check_current_files()
        self._discard_unfinished_parts()
        self._changed_vectors = self.catalog.pending_vectors()
        if migrated:
            self.checkpoint()

    def _discard_unfinished_parts(self) -> None:
        """Parts of documents a writer stopped writing before their commit (it crashed, or was killed): their
        documents stay at the version stored before, and the run that fetches them again writes them anew."""
        with self.catalog.transaction():
            dropped = self.catalog.discard_parts()
        if dropped:
            self.notes.append(f"store {str(self.path)!r}: discarded {dropped} chunk(s) of documents whose writing in "
                              "parts stopped before its commit; their previous versions stay, and the next run writes "
                              "them again")

    def _check_model(self, model: str | None, dimension: int | None) -> None:
        # A store keeps its factory; only a factory the config names (not its default) is worth a word.
        if (self.identity.get("index_factory") != self.settings.index_factory
                and "index_factory" in self.settings.model_fields_set):
            self.notes.append(
                f"store {str(self.path)!r} was built with index_factory {self.identity['index_factory']!r}; "
                f"the config's {self.settings.index_factory!r} applies only to new stores")
        stored = (self.identity["model"], self.identity["dimension"])
        if model is not None and stored != (model, dimension or stored[1]):
            raise StoreError(
                f"store {str(self.path)!r} holds vectors of model {self.identity['model']!r} "
                f"({self.identity['dimension']} dims), but the config embeds with {model!r} ({dimension} dims): "
                "point [store] path at a new folder to build a store for this model")

    def _new_identity(self, model: str | None, dimension: int | None) -> dict[str, Any]:
        if model is None or dimension is None:
            raise StoreError(f"store {str(self.path)!r} is new: open it with the model and dimension it stores")
        self._refuse_to_shadow_replicas()
        from .segments import IndexFactoryError, check_factory

        try:
            check_factory(self.path, int(dimension), self.settings.index_factory)  # before any write
        except IndexFactoryError as exc:
            raise StoreError(str(exc)) from None
        return {"model": model, "dimension": int(dimension), "index_factory": self.settings.index_factory,
                "created_at": datetime.now(timezone.utc).isoformat(), "format": FORMAT, "database": DATABASE,
                "store_id": new_store_id(), "timeline": 1}

    def _refuse_to_shadow_replicas(self) -> None:
        """A lost primary must be restored, not silently replaced: its replicas would prune the backups."""
        from .replicas import Location, redactor

        for replica in self.settings.replicas:
            try:
                held = Location.replica(replica).generations()
            except Exception as exc:  # noqa: BLE001 - an unreachable replica cannot hold us back
                self.notes.append(redactor(replica)(
                    f"replica {replica.name!r} could not be checked before creating the store: {exc}"))
                continue
            if held:
                raise StoreError(
                    f"store {str(self.path)!r} does not exist, but replica {replica.name!r} holds generation "
                    f"{held[0]}: run `vectormill store restore --from {replica.name}` to bring it back, or point "
                    "[store] path or the replica at another location to start a new store")

    def _open_catalog(self, create: bool = False) -> None:
        database = self.path / self.identity["database"]
        if create:
            self.catalog = Catalog.open(database, self.dimension, self.writable)
            return
        if not database.is_file():
            raise StoreCorruptError(
                f"store {str(self.path)!r}: its database {database.name} is missing; run `vectormill store restore` "
                "to rebuild it from the newest valid generation of any copy")
        try:
            self.catalog = Catalog.open(database, self.dimension, self.writable)
            rolled_back = rollback_problem(self.path, lambda: self.catalog.counter("generation"))
            if rolled_back:
                raise StoreCorruptError(rolled_back)
            if not self.writable:
                with self.snapshot():  # reads the database, and pins the files of its newest generation
                    pass
        except sqlite3.DatabaseError as exc:
            raise StoreCorruptError(
                f"store {str(self.path)!r}: its database {database.name} is damaged ({exc}); run "
                "`vectormill store restore` to rebuild it from the newest valid generation (writes after it are "
                "lost unless a replica holds a newer one)") from None

    def _check_current_files(self) -> None:
        """Damaged files of the current generation: fetched again from a replica, else rebuilt from the catalog."""
        manifest = self._generations.current_manifest()
        if manifest is None:
            return
        damaged, rechecked = damaged_files(manifest, self.catalog.checked_files(), self._locate)
        self._remember(rechecked)
        if damaged:
            self._generations.repair(damaged, [self._fetcher(replica) for replica in self.settings.replicas])

    def _fetcher(self, replica: ReplicaSettings) -> Callable[[FileEntry, Path], str]:
        """Fetches a segment file from `replica` into a folder; returns the replica's name."""

        def fetch(entry: FileEntry, folder: Path) -> str:
            from .replicas import Location

            Location.replica(replica).fetch_file(entry, folder)
            return replica.name

        return fetch

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
    def store_id(self) -> str | None:
        return self.identity.get("store_id")

    @property
    def factory(self) -> str:
        return self.identity["index_factory"]

    @property
    def generation(self) -> int:
        return self.catalog.counter("generation")

    @property
    def lsn(self) -> int:
        """Number of the last acknowledged write."""
        return self.catalog.counter("lsn")

    @property
    def db(self) -> sqlite3.Connection:
        """The catalog's connection (tables chunks, documents…), for checks and comparisons."""
        return self.catalog.db

    @property
    def replicator(self) -> "Replicator":
        if self._replicator is None:
            from .replicas import Replicator

            self._replicator = Replicator(self.settings)
        return self._replicator

    # ---- writing -------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if not self.writable:
            raise StoreError("store was opened read-only")
        if self._broken:
            raise StoreError(f"store {str(self.path)!r} is unusable after a failed write or checkpoint "
                             f"({self._broken}): open it again (every acknowledged write is kept)")

    def write(self, operations: Sequence[Operation]) -> int:
        """Apply the operations in one durable transaction; returns the write's number once it is acknowledged. Raises
        only when the write was not committed: a checkpoint it makes due that fails is reported in `notes`."""
        self._check_writable()
        if not operations:
            return self.lsn
        self._validate(operations)
        lsn = self.lsn + 1
        try:
            with self.catalog.transaction():
                self.catalog.apply(operations, lsn)
        except Exception as exc:
            # The COMMIT may have failed after reaching the disk (fsync error): what this object
            # believes could be wrong, so it takes nothing more until the store is opened again.
            self._broken = f"write {lsn}: {type(exc).__name__}: {exc}"
            raise StoreError(f"store {str(self.path)!r}: write {lsn} failed and was not acknowledged "
                             f"({type(exc).__name__}: {exc}); open the store again to go on") from exc
        self._changed_vectors += sum(len(op.chunks) if isinstance(op, DocumentUpsert) else op.chunks
                                     for op in operations if isinstance(op, DocumentUpsert | DocumentPartsCommit)) or 1
        if self._checkpoint_due():
            self._automatic_checkpoint()
        return lsn

    def _automatic_checkpoint(self) -> None:
        """A checkpoint a write made due. Its failure is not the write's (committed: a caller told otherwise would
        write it twice): it goes to `notes` and the log, and the next due or explicit checkpoint tries again, after
        this object has reopened its database as a new open would."""
        try:
            self.checkpoint()
        except Exception as exc:  # noqa: BLE001 - reported apart; the pending rows stay in the catalog
            self._changed_vectors, self._last_checkpoint = 0, time.monotonic()  # next try one interval later
            message = (f"store {str(self.path)!r}: the automatic checkpoint after write {self.lsn} failed "
                       f"({type(exc).__name__}: {exc}); the write is committed, and the next checkpoint tries again")
            self.notes.append(message)
            log.warning(message)
            try:
                self._reopen_catalog()
            except Exception as again:  # noqa: BLE001 - the next write, not yet committed, is refused instead
                self._broken = f"checkpoint, then reopening: {type(again).__name__}: {again}"

    def _reopen_catalog(self) -> None:
        """After a failed checkpoint: take the database afresh (a failed COMMIT may have reached the disk) and tidy
        what the checkpoint left, as an open does. Should that fail too, the store stays unusable until reopened."""
        self.catalog.close()
        self.catalog = None
        self._view = None
        self._indexes.clear()
        self._segment_parts.clear()
        self._open_catalog()
        self._generations = Generations(self.path, self.settings, self.identity, self.catalog, self.notes)
        self._generations.tidy()
        self._check_current_files()
        self._broken = None

    def _validate(self, operations: Sequence[Operation]) -> None:
        """Refuse bad input before anything is written."""
        owners: dict[int, tuple[str, str]] = {}
        staging: dict[tuple[str, str], int] = {}  # chunks staged so far for a document written in parts
        for op in operations:
            if not isinstance(op, DocumentUpsert | DocumentPart | DocumentPartsCommit):
                continue
            name, key = f"{op.source}/{op.document}", (op.source, op.document)
            if isinstance(op, DocumentPartsCommit):
                staged = staging.pop(key, None)
                staged = self.catalog.staged_count(*key) if staged is None else staged
                if staged != op.chunks:
                    raise StoreError(f"{name}: {staged} chunks were written in parts, but its commit names {op.chunks}")
                clash = self.catalog.staged_clash(*key)
                if clash:
                    raise StoreError(f"{name}: a chunk id is already stored for {'/'.join(clash)}")
                continue
            if op.vectors.shape != (len(op.chunks), self.dimension):
                raise StoreError(f"{name}: {op.vectors.shape} vectors for {len(op.chunks)} chunks of {self.dimension} dims")
            if not np.isfinite(op.vectors).all():
                raise StoreError(f"{name}: vectors contain NaN or infinity")
            ids = [faiss_id(chunk.chunk_id) for chunk in op.chunks]
            if len(set(ids)) != len(ids):
                raise StoreError(f"{name}: two chunks share a chunk id (or its first 63 bits)")
            if isinstance(op, DocumentPart):  # its ids are checked against other documents' at its commit
                before = 0 if op.first else staging[key] if key in staging else self.catalog.staged_count(*key)
                staging[key] = before + len(op.chunks)
                continue
            for identifier in ids:
                if owners.setdefault(identifier, (op.source, op.document)) != (op.source, op.document):
                    raise StoreError(f"{name}: a chunk id is also used by {'/'.join(owners[identifier])} in this write")
        # A stored chunk id may only come back in its own document (an upsert replaces that document).
        for identifier, (source, document) in self.catalog.owners(list(owners)).items():
            if (source, document) != owners[identifier]:
                raise StoreError(f"{'/'.join(owners[identifier])}: a chunk id is already stored for {source}/{document}")

    def _checkpoint_due(self) -> bool:
        if self._changed_vectors >= self.settings.checkpoint_every_vectors:
            return True
        seconds = self.settings.checkpoint_every_seconds
        return seconds is not None and self._changed_vectors > 0 and time.monotonic() - self._last_checkpoint >= seconds

    def checkpoint(self) -> int | None:
        """Seal what changed as a new generation (merging segments by policy) and replicate it.

        Returns the new generation, or None when nothing changed; then the newest generation is
        still offered to the replicas (one listing when a replica has it), so a replica that was down catches up.
        """
        self._check_writable()
        if self.generation and not self.catalog.has_pending():
            self._replicate(self.generation)
            return None
        generation = self._guarded(self._seal_and_merge)
        self._changed_vectors = 0
        self._last_checkpoint = time.monotonic()
        self._replicate(generation)
        return generation

    def _seal_and_merge(self) -> int:
        generation = self._generations.seal()
        return self._generations.compact(everything=False, replacing=generation) or generation

    def compact(self) -> dict[str, Any]:
        """Rewrite every segment: merge them (up to `max_segment_vectors` each), drop deleted and replaced vectors,
        and build trained factories afresh. What was written since the last checkpoint is sealed first."""
        self._check_writable()
        self._refuse_inconsistent_rows()
        before, dead = current_manifest(self.catalog), self.catalog.counter("dead")

        def run() -> int:
            sealed = self._generations.seal() if self.catalog.has_pending() or not self.generation else None
            return self._generations.compact(everything=True, replacing=sealed) or sealed or self.generation

        generation = self._guarded(run)
        self._changed_vectors = 0
        self._last_checkpoint = time.monotonic()
        self._replicate(generation)
        after = current_manifest(self.catalog)
        old = files_of(before) if before else {}
        return {"generation": generation, "vectors": self.vector_count(),
                "segments_before": len(segments_of(before)) if before else 0, "segments_after": len(segments_of(after)),
                "dead_dropped": dead - self.catalog.counter("dead"),
                "bytes_written": sum(f.bytes for name, f in files_of(after).items() if name not in old)}

    def _refuse_inconsistent_rows(self) -> None:
        """Before rewriting every segment from the catalog's rows: rows whose checksums fail would be written into
        the new segments (and their placements decide which rows a segment gets), so they stop it. Its cost is a pass
        over the rows, as the compaction's own."""
        damaged = {**self.catalog.damaged_rows(), **row_checks.misplaced_chunks(self.db),
                   **dict.fromkeys(row_checks.damaged_documents(self.db), 1)}
        if damaged:
            named = ", ".join("/".join(key) for key in sorted(damaged)[:10])
            raise StoreCorruptError(f"store {str(self.path)!r}: rows of {len(damaged)} document(s) fail their "
                                    f"checksum ({named}): nothing was compacted; run `vectormill store verify`, then "
                                    "`vectormill store restore --generation G` from an intact generation")

    def repair(self, source: str | None = None, also: dict[str, str] | None = None) -> dict[str, Any]:
        """Hash every file of the current generation; fetch damaged ones again from a replica (`source`: only that
        one; "primary": none) or rebuild their segments from the database. `also`: damaged files of older kept
        generations (found by `store verify`), fetched again too, or their generations set aside."""
        self._check_writable()
        before = self.generation
        manifest = current_manifest(self.catalog)
        damaged, rechecked = damaged_files(manifest, {}, self._locate) if manifest else ({}, [])
        self._remember(rechecked)
        current = files_of(manifest) if manifest else {}  # hashed just now
        kept = {name: entry for _, older in self.catalog.manifests() for name, entry in files_of(parse_manifest(older)).items()}
        for name, detail in (also or {}).items():
            path = self.path / SEGMENTS / name
            if name in kept and name not in current and (
                    not path.is_file() or file_sha256(path) != (kept[name].sha256, kept[name].bytes)):
                damaged[name] = detail
        if damaged:
            replicas = [r for r in self.settings.replicas if source in (None, r.name)]
            self._guarded(lambda: self._generations.repair(damaged, [self._fetcher(r) for r in replicas]))
            self._replicate(self.generation)
        return {"generation_before": before, "damaged": damaged}

    def _guarded(self, change: Callable[[], T]) -> T:
        """Run a change of generations; after a failure this object takes nothing more until the store is reopened."""
        try:
            result = change()
        except Exception as exc:
            self._broken = f"checkpoint: {type(exc).__name__}: {exc}"
            raise
        finally:
            self._view = None
        return result

    def _replicate(self, generation: int) -> None:
        if not self.settings.replicas:
            return
        manifest = dict(self.catalog.manifests())[generation]
        self.replicator.replicate(self.path, generation, manifest, self.catalog.replica_files())
        with self.catalog.transaction():
            for status in self.replicator.statuses.values():
                self.catalog.set_replica_files(status.name, status.confirmed)
                if status.newest_held is not None and status.newest_held > self.catalog.counter("seen_generation"):
                    self.catalog.set_counter("seen_generation", status.newest_held)  # numbered past it from now on
        failed = [s for s in self.replicator.statuses.values() if s.ok is False]
        for status in failed:
            self.notes.append(f"replica {status.name!r} ({status.url}): {status.error}")
        problem = self.replicator.problem()
        if problem:
            log.error(problem)

    def replication_problem(self) -> str | None:
        """Why the last checkpoint is not confirmed by `min_replicas_confirmed` replicas; None when it is."""
        return self._replicator.problem() if self._replicator else None

    # ---- reading -------------------------------------------------------------------------
    def document_versions(self, source: str) -> dict[str, str]:
        return self.catalog.document_versions(source)

    def stored_vectors(self, source: str, document: str,
                       content_hashes: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Vectors of a document's stored chunks by content hash (of these hashes only, when given), so unchanged
        text is not re-embedded."""
        return self.catalog.stored_vectors(source, document, content_hashes)

    def cursor(self, source: str) -> str | None:
        return self.catalog.cursor(source)

    def baselines(self, source: str | None = None):
        """Embedding baselines, oldest first: of one source, or of every source."""
        return self.catalog.baselines(source)

    def retry_queue(self, source: str | None = None) -> list[QueuedDocument]:
        """Documents that failed and have not landed since (of one source, or all), oldest failure first."""
        return self.catalog.retry_queue(source)

    def properties(self) -> dict[str, str]:
        return self.catalog.properties()

    def document_count(self) -> int:
        return self.catalog.counter("documents")

    def vector_count(self) -> int:
        return self.catalog.counter("vectors")

    def chunk_vectors(self) -> dict[str, np.ndarray]:
        """Every stored chunk id with its vector (for checks and comparisons)."""
        return self.catalog.chunk_vectors()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read one consistent, committed state of the store in the calls inside the block: for a reader, one read
        transaction as long as the block (outside one, every call reads the newest state). A writer's state is its own."""
        if self.writable or self.catalog.db.in_transaction:
            yield
            return
        self.catalog.begin_snapshot()
        try:
            if self.generation != self._pinned_generation:  # before anything is read: pinning may move the snapshot on
                self._unpin()
                self._pin_files()
            yield
        finally:
            self.catalog.end_snapshot()

    def search(self, vector: np.ndarray | None, k: int = 5, where: SearchFilter | None = None, *,
               text: str | None = None, mode: str = "vector", fusion: Fusion = Fusion()) -> list[SearchHit]:
        """The k best live chunks in the newest committed state, best first; with `where`, only chunks of documents
        passing it (chosen inside each ranking, before the top k).

        `mode` (stores/fusion.py): "vector" ranks by cosine similarity to `vector` (score: the similarity);
        "keyword" by BM25 over `text` (score: -bm25); "hybrid" fuses both rankings (score: the fused one; each hit
        carries its rank in either)."""
        from .search import search_parts

        check_mode(mode)
        if mode != "vector" and text is None:
            raise SearchModeError(f"a {mode} search needs the query's text, not only its vector")
        if mode != "keyword" and vector is None:
            raise SearchModeError(f"a {mode} search needs the query's vector")
        depth = k if mode != "hybrid" else max(k, fusion.depth)
        with self.snapshot():
            keyworded = mode == "keyword" or (mode == "hybrid" and self._keyword_index_present())
            allowed = self.catalog.filtered_ids(where) if where is not None and mode != "keyword" else None
            if allowed is not None and not allowed.size:
                return []
            by_vector = search_parts(self._parts(), vector, depth, allowed) if mode != "keyword" else []
            try:
                by_keyword = self._keyword_ranking(text, mode, depth, where) if keyworded else []
            except KeywordIndexMissing as exc:
                raise StoreError(f"store {str(self.path)!r}: {exc}") from None
            if mode == "hybrid" and keyworded:
                fused = reciprocal_rank_fusion([i for _, i in by_vector], [i for _, i in by_keyword], fusion, k)
            else:  # one ranking (a hybrid one without keyword index: its vector ranks)
                fused = [FusedHit(score, identifier, rank if mode == "hybrid" else None, None)
                         for rank, (score, identifier) in enumerate((by_vector or by_keyword)[:k], 1)]
            rows, damaged = self.catalog.hit_rows([hit.identifier for hit in fused])
        if damaged:
            self._report_damaged_rows(sorted(set(damaged)))
        if len(fused) > len(rows) + len(damaged):
            self._report_unheld_ids(len(fused) - len(rows) - len(damaged))
        hits = []
        for hit in fused:
            if hit.identifier in rows:
                chunk_id, source, document, title, location, page, body, ocr, last_page, modified = rows[hit.identifier]
                hits.append(SearchHit(hit.score, chunk_id, source, document, title, location, page, body, ocr=bool(ocr),
                                      pages=page_span(page, last_page), modified=modified,
                                      vector_rank=hit.vector_rank, keyword_rank=hit.keyword_rank))
        return hits

    def _keyword_ranking(self, text: str, mode: str, depth: int, where: SearchFilter | None) -> list[tuple[float, int]]:
        """Keyword mode: chunks holding any of the terms. Hybrid: chunks holding all of them, else all the terms that
        name something, else none (stores/keywords.py says why)."""
        if mode == "keyword":
            return self.catalog.keyword_ids(keywords.any_term(text), depth, where)
        every = keywords.every_term(text)
        found = self.catalog.keyword_ids(every, depth, where)
        named = keywords.named_terms(text)
        return found or (self.catalog.keyword_ids(named, depth, where) if named != every else [])

    def _keyword_index_present(self) -> bool:
        """Whether the catalog has its keyword index; a hybrid search of one written before it and not opened for
        writing since (a reader cannot build it) ranks by vector only, and says so once."""
        if self.catalog.has_keyword_index():
            return True
        if "keyword-index" not in self._reported:
            self._reported.add("keyword-index")
            message = (f"store {str(self.path)!r} has no keyword index yet (written before vectormill kept one): "
                       "hybrid searches rank by vector only until a command opens it for writing (backfill, "
                       "store compact), which builds it once")
            self.notes.append(message)
            log.warning(message)
        return False

    def document(self, document: str, source: str | None = None) -> list[dict[str, Any]]:
        """The stored documents with this id (of `source`, or of any source), with their chunks."""
        found, damaged = self.catalog.document(document, source)
        if damaged:
            self._report_damaged_rows(damaged)
        return found

    def index_ids(self) -> list[int]:
        """Live ids the segments and the pending vectors hold (for checks: they must match the catalog's)."""
        with self.snapshot():
            return sorted(identifier for part in self._parts() for identifier in part.live_ids().tolist())

    def _pin_files(self) -> None:
        """Open every file of the snapshot's generation now, so that the writer's pruning cannot take them away
        (an unlinked file stays readable through an open descriptor). A file pruned before we got to it means the
        writer moved on: pin the newer generation instead, before anything was read from this one."""
        for _ in range(VIEW_ATTEMPTS):
            manifest = current_manifest(self.catalog)
            missing = False
            for name in files_of(manifest) if manifest else ():
                try:
                    self._pinned[name] = os.open(self.path / SEGMENTS / name, os.O_RDONLY)
                except FileNotFoundError:
                    missing = True
            if not missing or not self._generation_moved():
                self._pinned_generation = self.generation
                return  # a file missing from the current generation is damage, reported when searched
            self._unpin()
        raise StoreError(f"store {str(self.path)!r}: a writer replaced generations faster than this reader could open "
                         "one; try again")

    def _unpin(self) -> None:
        for fd in self._pinned.values():
            os.close(fd)
        self._pinned.clear()
        self._pinned_generation = None

    def _locate(self, name: str) -> Path:
        """A segment file by name: through the reader's pinned descriptor when it has one."""
        fd = self._pinned.get(name)
        return FD_FOLDER / str(fd) if fd is not None and FD_FOLDER.is_dir() else self.path / SEGMENTS / name

    def _parts(self) -> list["Part"]:
        """The searchable parts of the store's generation: its segments and the vectors written since. Rebuilt when
        the state read changed since the last call (a reader follows the writer), reusing every unchanged part."""
        key = (self.generation, self.lsn)
        if self._view is None or key != self._view_key:
            self._view, self._view_key = self._build_parts(), key
        return self._view

    def _build_parts(self) -> list["Part"]:
        from .search import Part, exact_part
        from .segments import FACTORY, is_ivf, open_index

        manifest = current_manifest(self.catalog)
        parts: list[Part] = []
        segments = segments_of(manifest) if manifest else []
        seqs = {s.seq for s in segments}
        self._indexes = {seq: index for seq, index in self._indexes.items() if seq in seqs}
        self._segment_parts = {seq: part for seq, part in self._segment_parts.items() if seq in seqs}
        if manifest is not None:
            damaged, rechecked = damaged_files(manifest, self.catalog.checked_files() | self._verified, self._locate)
            self._remember(rechecked)
            dead = self.catalog.dead_counts()
            for segment in segments:
                if segment.index is None:
                    continue
                index = self._indexes.get(segment.seq)
                if index is None and segment.index.name not in damaged:
                    try:
                        index = open_index(self._locate(segment.index.name), segment.kind,
                                           segment.kind == FACTORY and is_ivf(self.dimension, self.factory))
                    except RuntimeError as exc:  # its header or layout is damaged after all
                        damaged[segment.index.name] = f"unreadable ({str(exc).strip().splitlines()[-1][:200]})"
                    else:
                        if segment.kind == FACTORY and self.settings.search_parameters:
                            import faiss

                            faiss.ParameterSpace().set_index_parameters(index, self.settings.search_parameters)
                        self._indexes[segment.seq] = index
                if index is None:
                    parts.append(exact_part(*self.catalog.live_vectors(segment.seq)))
                    continue
                count = dead.get(segment.seq, 0)
                known = self._segment_parts.get(segment.seq)
                if known is None or known[0] != count or known[1].index is not index:  # dead ids only ever grow
                    gone = self.catalog.dead_ids(segment.seq) if count else np.empty(0, dtype=np.int64)
                    known = self._segment_parts[segment.seq] = (count, Part(index, gone, segment.vectors - len(gone)))
                parts.append(known[1])
            self._report_damage(damaged)
        parts.append(exact_part(*self.catalog.live_vectors(None)))
        return parts

    def _remember(self, rechecked: list[tuple[str, str, int, str]]) -> None:
        """Files found intact on re-hashing (their stat changed: a copy, chmod, chown) are not hashed again: by this
        object, and by any later open once recorded in the database (a reader records them when it may write it)."""
        if not rechecked:
            return
        self._verified.update({name: found for name, _, _, found in rechecked})
        if self.writable:
            with self.catalog.transaction():
                self.catalog.record_files(rechecked)
        else:
            record_checked_files(self.path / self.identity["database"], rechecked)

    def _generation_moved(self) -> bool:
        """For a reader whose files vanished: whether the writer committed a newer generation (then take it)."""
        seen = self.catalog.counter("generation")
        self.catalog.end_snapshot()
        self.catalog.begin_snapshot()
        return self.catalog.counter("generation") != seen

    def _report_damaged_rows(self, documents: list[tuple[str, str]]) -> None:
        new = [document for document in documents if f"row:{document}" not in self._reported]
        self._reported.update(f"row:{document}" for document in new)
        if new:
            message = (f"DAMAGED CHUNK ROW in {str(self.path)!r} (its checksum, or its document row's, does not "
                       f"match): {', '.join('/'.join(d) for d in new)}; left out of search results. Run `vectormill "
                       "store verify` to list every damaged row, then `vectormill store restore --generation G` from "
                       "an intact copy, or ingest the document again.")
            self.notes.append(message)
            log.warning(message)

    def _report_unheld_ids(self, count: int) -> None:
        """The index returned live ids the database holds no row of: the two disagree (a damaged row or tombstone)."""
        if "unheld" not in self._reported:
            self._reported.add("unheld")
            message = (f"DAMAGED CATALOG in {str(self.path)!r}: the index returned {count} chunk id(s) the database "
                       "holds no row of; left out of search results. Run `vectormill store verify`.")
            self.notes.append(message)
            log.warning(message)

    def _report_damage(self, damaged: dict[str, str]) -> None:
        new = {name: detail for name, detail in damaged.items() if name not in self._reported}
        if not new:
            return
        self._reported.update(new)
        how = "; ".join(f"{name}: {detail}" for name, detail in new.items())
        message = (f"CORRUPT SEGMENT FILE in {str(self.path)!r}: {how} (left in place: opened read-only). The "
                   "segment is searched from the database instead, so nothing is missing; the next writable open "
                   "repairs it. Run `vectormill store verify` to check every copy.")
        self.notes.append(message)
        log.warning(message)

    def generations_info(self) -> list[dict[str, Any]]:
        """Kept generations, newest first: counts, bytes of the files each names, and bytes new in each."""
        manifests = [parse_manifest(m) for _, m in self.catalog.manifests()]
        info = []
        for manifest, older in zip(manifests, [*manifests[1:], None]):
            files = files_of(manifest)
            previous = files_of(older) if older else {}
            info.append({key: manifest[key] for key in ("generation", "lsn", "created_at", "vectors", "documents")}
                        | {"segments": len(manifest["segments"]), "bytes": manifest_bytes(manifest),
                           "new_bytes": sum(f.bytes for name, f in files.items() if name not in previous)})
        return info

    def replica_statuses(self) -> list[dict[str, Any]]:
        """This run's replication results; replicas not written in this process are looked at (no hashing)."""
        if not self.settings.replicas:
            return []
        return [self.replicator.probe(status.name).as_dict() if status.ok is None else status.as_dict()
                for status in self.replicator.statuses.values()]

    def stats(self) -> dict[str, Any]:
        generations = self.generations_info()
        database = self.path / self.identity["database"]
        return {
            "path": str(self.path),
            "vectors": self.vector_count(),
            "documents": self.document_count(),
            "generation": self.generation,
            "lsn": self.lsn,
            "model": self.model,
            "dimension": self.dimension,
            "index_factory": self.factory,
            "segments": generations[0]["segments"] if generations else 0,
            "dead": self.catalog.counter("dead"),
            "pending": self.catalog.pending_vectors(),
            "sources": self.catalog.sources(),
            "generations": generations,
            "generation_bytes": generations[0]["bytes"] if generations else 0,
            "database_bytes": sum(p.stat().st_size for p in self.path.glob(f"{database.name}*") if p.is_file()),
            "replicas": self.replica_statuses(),
            "min_replicas_confirmed": self.settings.replicas_required,
            "recall_target": self.settings.recall_target,
            "segment_indexes": self.segment_indexes(),
        }

    def segment_indexes(self) -> list[dict[str, Any]]:
        """Each segment of the current generation: its index (exact or approximate), vectors, dead ones, and for an
        approximate one the recall@10 measured on its own vectors and the search effort it holds at (exact: 1.0)."""
        manifest = current_manifest(self.catalog)
        dead = self.catalog.dead_counts()
        return [{"seq": s.seq, "index": "exact" if s.kind == "flat" else concrete_factory(self.factory),
                 "vectors": s.vectors, "dead": dead.get(s.seq, 0),
                 "recall": 1.0 if s.kind == "flat" else s.recall, "effort": s.effort}
                for s in (segments_of(manifest) if manifest else []) if s.index is not None]

    # ---- closing -------------------------------------------------------------------------
    def close(self) -> None:
        self._view = None
        self._indexes.clear()
        self._unpin()
        if self.catalog is not None:
            self.catalog.close()
            self.catalog = None
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "FaissStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
