"""`store drill`: prove that a replica's newest generation restores and answers queries, without touching the primary.

A backup counts only once a restore from it has worked. The drill restores the replica's newest generation
into a temporary folder (only that replica is read: no other copy can fill a gap in it), verifies the result
(files, database, row checksums), opens it read-only and searches it with a sample of its own stored chunks'
vectors: each must come back first. It measures what a user gets from the backups: the recovery point (how old
the newest restorable generation is) and the recovery time (how long its restore took). The folder is removed
afterwards, whatever happened; a killed drill's, by the next drill.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError
from .faiss_store import FaissStore, read_identity
from .generations import COMMITTED, committed_generation, current_manifest, used_generation_numbers
from .manifest import MANIFESTS, manifest_name, parse_manifest, segments_of
from .replicas import Location, redact_url
from .restore import restore_store, verify_store
from .segments import FLAT
from .settings import ReplicaSettings, StoreSettings

QUERIES = 20  # sampled chunks, spread over the store's rows
# An approximate index may rank another chunk above a query's own now and then; one that misses more than
# half of its own chunks does not answer queries.
APPROXIMATE_AGREEMENT = 0.5
SAME_SCORE = 1e-5  # chunks with the same vector (the same text twice) tie: either one coming first agrees


def chosen_replica(settings: StoreSettings, name: str | None) -> ReplicaSettings:
    """The replica named `name`, or the first configured one; StoreError when there is none to drill."""
    if not settings.replicas:
        raise StoreError("no replica configured: a drill restores from a replica; add one under [[store.replicas]]")
    if name is None:
        return settings.replicas[0]
    for replica in settings.replicas:
        if replica.name == name:
            return replica
    raise StoreError(f"no replica named {name!r}: choose one of {', '.join(r.name for r in settings.replicas)}")


def required_agreement(exact: bool) -> float:
    """The share of queries whose own chunk must come first: all of them on exact (flat) segments."""
    return 1.0 if exact else APPROXIMATE_AGREEMENT


SCRATCH_PREFIX = "vectormill-drill-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


@contextmanager
def scratch_folder() -> Iterator[str]:
    """A temporary folder named after this process; first removes those of drills whose process is gone (a killed
    drill cannot remove its own). A folder whose process may still run is left alone."""
    for left in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        owner = left.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(left, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as folder:
        yield folder


class DrillProblems(StoreError):
    """The drill restored the replica's generation, but it is not this store's current state or does not answer its
    own chunks: `report` is the drill's report with "ok": false and its "problems"."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


def primary_state(settings: StoreSettings) -> dict[str, Any]:
    """What the drill compares a restored generation with: the primary's store id, timeline, newest committed
    generation and its manifest. Read from identity.json, COMMITTED and the manifest file, never the database: a
    drill leaves the primary as it was, byte for byte (a reader of the database would add its -wal and -shm)."""
    path = Path(settings.path)
    identity = read_identity(path)
    # A store that has not committed a generation since it records them: its newest manifest file (a leftover of a
    # crashed checkpoint is removed by the next writable open).
    generation = committed_generation(path) or max(used_generation_numbers(path, quarantined=False), default=None)
    if identity is None or generation is None:
        raise StoreError(f"no store at {str(path)!r}, or it holds no generation ({COMMITTED}, {MANIFESTS}/)")
    manifest = parse_manifest((path / MANIFESTS / manifest_name(generation)).read_bytes(),
                              f"primary {MANIFESTS}/{manifest_name(generation)}")
    return {"store_id": identity.get("store_id"), "timeline": identity.get("timeline", 1), "generation": generation,
            "manifest": manifest}


def identity_problems(primary: dict[str, Any], restored: dict[str, Any], counts: dict[str, int]) -> list[str]:
    """How a generation restored from a replica (`restored`: its manifest; `counts`: what the restored store holds)
    differs from the primary's newest generation: another store, or other content (an older timeline, a generation
    behind), or counts that are not the manifest's. The same content under another number and timeline is the same
    state: a store restored from this generation seals it anew. Pure."""
    problems = []
    ours = primary["manifest"]
    if restored.get("store_id") != primary["store_id"]:
        problems.append(f"restored store id {restored.get('store_id')}, the primary's is {primary['store_id']}: the "
                        "replica holds another store's data")
    same = restored.get("checksum") == ours.get("checksum") or (
        restored["segments"] == ours.get("segments")
        and all(restored.get(key) == ours.get(key) for key in ("lsn", "vectors", "documents")))
    if not same:
        if restored.get("timeline", 1) != primary["timeline"]:
            problems.append(f"restored timeline {restored.get('timeline', 1)}, the primary's is {primary['timeline']}")
        if restored["generation"] != primary["generation"]:
            problems.append(f"restored generation {restored['generation']}, the primary's newest is "
                            f"{primary['generation']}: the replica does not hold the last checkpoint")
        else:
            problems.append(f"generation {restored['generation']} differs from the primary's generation of that "
                            "number")
        for key in ("documents", "vectors"):
            if restored[key] != ours.get(key):
                problems.append(f"restored {restored[key]} {key}, the primary's generation {primary['generation']} "
                                f"holds {ours.get(key)}")
    for key in ("documents", "vectors"):
        if counts[key] != restored[key]:
            problems.append(f"restored store holds {counts[key]} {key}, its manifest says {restored[key]}")
    return problems


def drill(settings: StoreSettings, replica: str | None = None, queries: int = QUERIES) -> dict[str, Any]:
    """Restore, verify, open and search the newest generation of `replica` (default: the first configured) in a
    temporary folder, and compare it with the primary's current generation. Returns {"ok", "replica", "generation",
    "identity": {"store_id", "timeline", "generation"}, "problems", "documents", "vectors", "age_seconds",
    "restore_seconds", "queries", "agreement", "exact", "required_agreement"}; raises StoreError when it does not
    restore, DrillProblems (with the report) when the restored store is not the primary's or does not answer."""
    chosen = chosen_replica(settings, replica)
    where = f"replica {chosen.name!r} ({redact_url(chosen.url)})"
    location = Location.replica(chosen)
    try:
        held = location.generations()
    except Exception as exc:  # noqa: BLE001 - an unreachable replica fails the drill, redacted
        raise StoreError(location.redact(f"drill: {where} is unreachable: {type(exc).__name__}: {exc}")) from None
    if not held:
        raise StoreError(f"drill: {where} holds no generation: nothing to restore (has a checkpoint reached it?)")
    newest = held[0]
    try:
        primary = primary_state(settings)
    except (StoreError, OSError, ValueError) as exc:  # ValueError: a damaged record or manifest
        raise StoreError(f"drill: the primary cannot be read to compare with ({exc})") from None
    with scratch_folder() as folder:
        # Only this replica: a file it lacks must fail the drill, not be fetched from another copy.
        scratch = settings.model_copy(update={"path": Path(folder) / "store", "replicas": (chosen,)})
        started = time.perf_counter()
        try:
            restore_store(scratch, chosen.name, newest)
        except StoreError as exc:
            raise StoreError(f"drill: generation {newest} of {where} does not restore ({exc}): run `vectormill store "
                             "verify --repair` to copy its damaged files again from the primary") from None
        restore_seconds = time.perf_counter() - started
        restored = location.read_manifest(newest)
        created_at = datetime.fromisoformat(restored["created_at"])
        report = verify_store(scratch.model_copy(update={"replicas": ()}))
        if not report["ok"]:
            found = "; ".join(f"{p['file']}: {p['detail']}" for p in report["problems"])
            raise StoreError(f"drill: generation {newest} of {where} restores but does not verify: {found}")
        with FaissStore.open(scratch, writable=False) as store:
            with store.snapshot():
                exact = all(segment.kind == FLAT for segment in segments_of(current_manifest(store.catalog)))
                sample = sample_chunks(store, queries)
                agreeing = sum(comes_first(store, chunk_id, vector) for chunk_id, vector in sample)
                stats = store.stats()
    agreement = agreeing / len(sample) if sample else 1.0
    problems = identity_problems(primary, restored, stats)
    if agreement < required_agreement(exact):
        problems.append(f"only {agreeing} of {len(sample)} sampled chunks come back first when searched with their "
                        f"own vector (required: {required_agreement(exact):.0%}{', exact segments' if exact else ''})")
    result = {"ok": not problems, "replica": chosen.name, "generation": newest,
              "identity": {"store_id": restored.get("store_id"), "timeline": restored.get("timeline", 1),
                           "generation": newest}, "problems": problems,
              "documents": stats["documents"], "vectors": stats["vectors"],
              "age_seconds": round((datetime.now(timezone.utc) - created_at).total_seconds(), 3),
              "restore_seconds": round(restore_seconds, 3), "queries": len(sample), "agreement": agreement,
              "exact": exact, "required_agreement": required_agreement(exact)}
    if problems:
        raise DrillProblems(f"drill: generation {newest} of {where} restores, but {'; '.join(problems)}", result)
    return result


def sample_chunks(store: FaissStore, count: int) -> list[tuple[str, np.ndarray]]:
    """Up to `count` (chunk id, vector) of stored chunks spread evenly over the rows (a few index look-ups)."""
    low, high = store.db.execute("SELECT min(row), max(row) FROM chunks").fetchone()
    if low is None:
        return []
    found: dict[str, np.ndarray] = {}
    for target in np.linspace(low, high, num=count).round().astype(int).tolist():
        row = store.db.execute("SELECT chunk_id, vector FROM chunks WHERE row >= ? ORDER BY row LIMIT 1",
                               (target,)).fetchone()
        found.setdefault(row[0], np.frombuffer(row[1], dtype=np.float32))
    return list(found.items())


def comes_first(store: FaissStore, chunk_id: str, vector: np.ndarray) -> bool:
    """Whether searching the store with a chunk's own vector ranks that chunk first (ties of equal score agree)."""
    hits = store.search(vector, k=5)
    return any(hit.chunk_id == chunk_id for hit in hits if hits[0].score - hit.score <= SAME_SCORE)
