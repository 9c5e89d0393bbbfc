"""Check every copy of a store (`store verify`) and bring back a generation (`store restore`).

Neither opens the store the usual way: they must work on a store that no longer opens.

A restore that rebuilds the database works in this order, so that a crash anywhere leaves either
the store as it was or the restored generation, never anything in between: it writes a RESTORING
marker; fetches the generation's files (content-addressed, so files already there are kept);
builds a new database from them and seals the restored generation under a new number (manifest
written and fsync'd, database committed); switches identity.json to the new database (the commit
point); then sets aside, never deletes, everything the new database does not name, and removes
the marker. An open that finds the marker finishes that last step.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import row_checks
from .catalog import Catalog, forget_replica_files
from .durable import file_sha256, fingerprint, fsync_dir, write_atomically
from .errors import StoreCorruptError, StoreError
from .faiss_store import IDENTITY, FaissStore, new_store_id, read_identity, write_identity
from .generations import (
    QUARANTINE, RESTORING, current_manifest, record_committed, rollback_problem, set_aside, used_generation_numbers,
    utc_stamp,
)
from .lock import WriterLock
from .manifest import (
    MANIFESTS, SEGMENTS, FileEntry, ManifestError, Problem, build_manifest, files_of, manifest_name, parse_manifest,
    segments_of,
)
from .replicas import PRIMARY, Location, redact_url
from .settings import StoreSettings

COUNTED = {"vectors": "SELECT count(*) FROM chunks", "documents": "SELECT count(*) FROM documents",
           "dead": "SELECT count(*) FROM dead"}


def _reachable(settings: StoreSettings, problems: list[Problem]) -> list[Location]:
    found = [Location.primary(Path(settings.path))]
    for replica in settings.replicas:
        try:
            found.append(Location.replica(replica))
        except Exception as exc:  # noqa: BLE001 - a bad URL or missing driver is reported per replica (redacted)
            problems.append(Problem(replica.name, redact_url(replica.url), str(exc)))
    return found


def verify_store(settings: StoreSettings) -> dict[str, Any]:
    """Hash every file of every generation on the primary and each replica, and check the database.

    Returns {"ok", "generations": [{"where", "generation", "lsn", "vectors", "documents", "ok"}],
    "problems": [{"where", "file", "detail"}]}; a damaged file shared by generations is named once.
    """
    path = Path(settings.path)
    generations: list[dict[str, Any]] = []
    problems: list[Problem] = []
    try:
        identity = read_identity(path)
    except StoreCorruptError as exc:
        identity = None
        problems.append(Problem(PRIMARY, IDENTITY, str(exc)))
    else:
        problems.extend(_primary_identity_problems(path, identity))
    replayed: dict[str, str | None] = {}  # by manifest checksum: a generation copied to several places is read once
    first_seen: dict[int, tuple[str, dict[str, Any]]] = {}  # by number: where a generation was read first, and it
    for location in _reachable(settings, problems):
        numbers = _listed(location, problems)
        if numbers is None:
            continue
        if not numbers and location.name != PRIMARY:
            problems.append(Problem(location.name, location.url, "holds no generation"))
        checked: dict[str, tuple[str, int] | None] = {}
        for number in numbers:
            manifest, found = location.verify(number, checked)
            found = [*found, *_foreign_generation_problems(location, number, manifest, identity or {})]
            if manifest:
                found += _same_number_problems(location, number, manifest, first_seen.setdefault(
                    number, (location.name, manifest)))
            if manifest and not found and location.is_local:
                found = _replay_problems(location, number, manifest, replayed)
            if found and _pruned_meanwhile(location, number):
                # A writer's checkpoint dropped this generation after it was listed (its manifest goes first, then
                # the files no kept generation names): not damage. Files it alone named are hashed afresh if named again.
                checked = {name: digest for name, digest in checked.items() if digest is not None}
                continue
            problems.extend(problem for problem in found if problem not in problems)
            entry = {"where": location.name, "generation": number, "ok": not found}
            if manifest:
                entry.update({key: manifest[key] for key in ("lsn", "vectors", "documents", "created_at")})
            generations.append(entry)
    return {"ok": not problems, "generations": generations, "problems": [asdict(p) for p in problems]}


def _listed(location: Location, problems: list[Problem]) -> list[int] | None:
    """The generation numbers a copy holds; None, with the problem reported, when it cannot be reached."""
    try:
        return location.generations()
    except Exception as exc:  # noqa: BLE001 - an unreachable replica is a problem to report
        problems.append(Problem(location.name, location.url,
                                location.redact(f"unreachable: {type(exc).__name__}: {exc}")))
        return None


def scrub_replicas(settings: StoreSettings) -> dict[str, Any]:
    """Hash every file of every generation each replica holds (a scheduled `store verify` of the replicas): damage
    that happened there after a checkpoint confirmed it is found within one scrub interval. The primary's record of
    what each replica holds forgets the damaged files, so the next checkpoint reads them back and sends them again.
    Returns {"ok", "replicas": [{"name", "generations", "files", "bytes", "seconds"}], "problems", "forgotten"}."""
    path = Path(settings.path)
    identity = read_identity(path) or {}
    problems: list[Problem] = []
    replicas = []
    for location in _reachable(settings, problems)[1:]:
        started = time.perf_counter()
        checked: dict[str, tuple[str, int] | None] = {}
        numbers = _listed(location, problems)
        if numbers is None:
            continue
        for number in numbers:
            manifest, found = location.verify(number, checked)
            found += _foreign_generation_problems(location, number, manifest, identity)
            problems.extend(problem for problem in found if problem not in problems)
        replicas.append({"name": location.name, "generations": len(numbers), "files": len(checked),
                         "bytes": sum(found[1] for found in checked.values() if found),
                         "seconds": round(time.perf_counter() - started, 3)})
    damaged: dict[str, set[str]] = {}
    for problem in problems:
        if problem.file.startswith(f"{SEGMENTS}/"):
            damaged.setdefault(problem.where, set()).add(problem.file.split("/", 1)[1])
    forgotten = bool(damaged) and "database" in identity and forget_replica_files(path / identity["database"], damaged)
    return {"ok": not problems, "replicas": replicas, "problems": [asdict(p) for p in problems],
            "forgotten": forgotten}


def _same_number_problems(location: Location, number: int, manifest: dict[str, Any],
                          first: tuple[str, dict[str, Any]]) -> list[Problem]:
    """Generation `number` here differs from the copy of that number read first elsewhere (e.g. a catalog rolled back
    and a generation committed again under a number a replica already held)."""
    where, other = first
    if other["checksum"] == manifest["checksum"]:
        return []
    return [Problem(location.name, f"{MANIFESTS}/{manifest_name(number)}",
                    f"differs from {where}'s generation {number} (timeline {manifest.get('timeline', 1)} here, "
                    f"{other.get('timeline', 1)} there; {manifest.get('vectors')} vectors here, {other.get('vectors')} "
                    "there): two histories under one number")]


def _foreign_generation_problems(location: Location, number: int, manifest: dict[str, Any] | None,
                                 identity: dict[str, Any]) -> list[Problem]:
    """A generation of another store where this store's replica is."""
    if manifest and identity and manifest.get("store_id") not in (None, identity.get("store_id")):
        return [Problem(location.name, f"{MANIFESTS}/{manifest_name(number)}",
                        f"a generation of store {manifest['store_id']}, not of this store {identity.get('store_id')}: "
                        "another store writes to this location")]
    return []


def verify_and_repair(settings: StoreSettings) -> dict[str, Any]:
    """`verify_store`, then copy again every file a replica lacks or holds damaged from the primary, and the primary's
    damaged files from a replica (under the writer's lock), then verify again. The report adds
    "repaired": [{"where", "file"}], the copies that were written."""
    report = verify_store(settings)
    repaired: list[dict[str, str]] = []
    damaged = [(p["where"], p["file"]) for p in report["problems"]
               if p["file"].startswith((f"{SEGMENTS}/", f"{MANIFESTS}/"))]
    if damaged:
        on_primary = sorted(file for where, file in damaged if where == PRIMARY)
        if on_primary:  # the writable open fixes what it sees (manifests, changed files), `repair` the rest
            with FaissStore.open(settings) as store:
                store.repair(also={file.split("/", 1)[1]: "damaged (store verify)" for file in on_primary
                                   if file.startswith(f"{SEGMENTS}/")})
        repaired = _copy_to_replicas(settings, damaged)
        report = verify_store(settings)
        if any(item["file"].startswith(f"{MANIFESTS}/") for item in repaired):
            # A manifest copied again names files no verify had read there yet: those found damaged now go too.
            repaired += _copy_to_replicas(settings, [(p["where"], p["file"]) for p in report["problems"]])
            report = verify_store(settings)
        left = {(p["where"], p["file"]) for p in report["problems"]}
        repaired = [{"where": PRIMARY, "file": file} for file in on_primary if (PRIMARY, file) not in left] + repaired
    report["repaired"] = repaired
    return report


def _copy_to_replicas(settings: StoreSettings, damaged: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Copy again, from the primary, each (replica, file) of `damaged` that names a segment or manifest file."""
    copied: list[dict[str, str]] = []
    store_id = (read_identity(Path(settings.path)) or {}).get("store_id")
    for location in _reachable(settings, []):
        if location.name != PRIMARY:
            proven = _holds_this_store(location, store_id)
            copied += _copy_again(Path(settings.path), location, sorted(
                file for where, file in damaged
                if where == location.name and (file.startswith(f"{SEGMENTS}/")
                                               or (file.startswith(f"{MANIFESTS}/") and proven))))
    return copied


def _holds_this_store(location: Location, store_id: str | None) -> bool:
    """Whether the replica's readable manifests prove it holds this store (all name it, or it holds none): only then
    may a damaged manifest there be rewritten from the primary, never over another store's generations."""
    named = set()
    try:
        for number in location.generations():
            try:
                named.add(location.read_manifest(number).get("store_id"))
            except (FileNotFoundError, ManifestError):
                continue
    except Exception:  # noqa: BLE001 - unreachable: nothing is written there
        return False
    return named <= {store_id}


def _copy_again(path: Path, location: Location, files: list[str]) -> list[dict[str, str]]:
    """Copy these files (relative paths) from the primary to a replica, each checked: those the primary holds intact."""
    copied = []
    for relative in files:
        local = path / relative
        if not local.is_file():
            continue
        found = file_sha256(local)
        if relative.startswith(f"{SEGMENTS}/") and found[0] != Path(relative).stem:
            continue  # damaged on the primary too: repaired there first, or reported again
        try:
            location.put_file(local, relative, found)
        except Exception:  # noqa: BLE001 - the verify that follows reports the file again
            continue
        copied.append({"where": location.name, "file": relative})
    return copied


def _pruned_meanwhile(location: Location, number: int) -> bool:
    try:
        return number not in location.generations()
    except Exception:  # noqa: BLE001 - unreachable now: what was found stands
        return False


def _replay_problems(location: Location, number: int, manifest: dict[str, Any],
                     replayed: dict[str, str | None]) -> list[Problem]:
    """Whether a generation whose files are intact replays into the store its manifest describes (local copies)."""
    from .segments import replay_problem

    if manifest["checksum"] not in replayed:
        try:
            replayed[manifest["checksum"]] = replay_problem(Path(location.path(SEGMENTS)), segments_of(manifest))
        except sqlite3.Error as exc:  # a rows file gone since it was hashed (pruned, or removed by hand)
            return [Problem(location.name, f"{MANIFESTS}/{manifest_name(number)}", f"could not be replayed: {exc}")]
    detail = replayed[manifest["checksum"]]
    return [Problem(location.name, f"{MANIFESTS}/{manifest_name(number)}", detail)] if detail else []


def _database_problems(path: Path, identity: dict[str, Any]) -> list[Problem]:
    """The catalog's own checks: SQLite's structure, counters against rows, manifest files against its copies."""
    database = path / identity["database"]
    if not database.is_file():
        return [Problem(PRIMARY, database.name, "missing: run `vectormill store restore` to rebuild it")]
    problems = []
    try:
        catalog = Catalog.open(database, int(identity["dimension"]), writable=False)
        try:
            rolled_back = rollback_problem(path, lambda: catalog.counter("generation"))
            if rolled_back:
                problems.append(Problem(PRIMARY, database.name, rolled_back))
            catalog.begin_snapshot()
            # integrity_check, not quick_check: it also compares every index with its table (a flipped rowid in an
            # index entry would send a write to another document's rows).
            result = [row[0] for row in catalog.db.execute("PRAGMA integrity_check")]
            if result != ["ok"]:
                problems.append(Problem(PRIMARY, database.name, f"{'; '.join(result[:5])}: run `vectormill store "
                                                                "restore` to rebuild the database"))
            for name, query in COUNTED.items():
                rows = catalog.db.execute(query).fetchone()[0]
                if catalog.counter(name) != rows:
                    problems.append(Problem(PRIMARY, database.name,
                                            f"counter {name} = {catalog.counter(name)} but it holds {rows} rows"))
            damaged = catalog.damaged_rows()
            if damaged:
                problems.append(Problem(PRIMARY, database.name, f"chunk rows whose checksum does not match, of "
                                        f"{len(damaged)} document(s): {_named(damaged)}: restore an intact generation "
                                        "(`vectormill store restore --generation G`) or ingest them again"))
            problems.extend(Problem(PRIMARY, database.name, detail) for detail in row_check_problems(catalog.db))
            counted = dict(catalog.db.execute("SELECT segment, count(*) FROM dead GROUP BY segment"))
            if counted != catalog.dead_counts():
                problems.append(Problem(PRIMARY, database.name, "tombstone counts per segment do not match its rows"))
            problems.extend(Problem(PRIMARY, database.name, detail)
                            for detail in [*_source_count_problems(catalog.db), *_placement_problems(path, catalog)])
            mismatched = _manifest_files_mismatched(path, catalog.manifests())
            catalog.end_snapshot()  # a writer may have dropped generations since the snapshot began: ask its newest state
            for name in _manifest_files_mismatched(path, [m for m in catalog.manifests() if m[0] in mismatched]).values():
                problems.append(Problem(PRIMARY, f"{MANIFESTS}/{name}", "missing or not the database's copy "
                                                                        "(the next writable open rewrites it)"))
        finally:
            catalog.close()
    except sqlite3.DatabaseError as exc:
        problems.append(Problem(PRIMARY, database.name, f"damaged ({exc}): run `vectormill store restore`"))
    return problems


def _source_count_problems(db: sqlite3.Connection) -> list[str]:
    """The per-source counts `store stats` shows, against the rows they count."""
    kept = {source: (documents, vectors) for source, documents, vectors in db.execute("SELECT * FROM source_counts")
            if documents or vectors}
    rows = {source: (documents, 0) for source, documents in db.execute(
        "SELECT source, count(*) FROM documents GROUP BY source")}
    for source, vectors in db.execute("SELECT source, count(*) FROM chunks GROUP BY source"):
        rows[source] = (rows.get(source, (0, 0))[0], vectors)
    wrong = sorted(source for source in kept.keys() | rows.keys() if kept.get(source) != rows.get(source))
    return [f"per-source counts do not match the rows of source(s) {', '.join(map(repr, wrong[:10]))}"] if wrong else []


def _placement_problems(path: Path, catalog: Catalog) -> list[str]:
    """Whether each segment of the current generation holds exactly the chunks the catalog places in it plus the copies
    its tombstones name. A chunk's segment or a tombstone that SQLite's structure accepts but is wrong changes what
    search returns (a replaced chunk served again, a live one skipped)."""
    try:
        manifest = current_manifest(catalog)
    except ManifestError as exc:
        return [f"its copy of the current generation's manifest is damaged ({exc}): run `vectormill store restore`"]
    if manifest is None:
        return []
    found = []
    for segment in segments_of(manifest):
        try:
            rows = sqlite3.connect(f"{(path / SEGMENTS / segment.rows.name).resolve().as_uri()}?mode=ro&immutable=1",
                                   uri=True)
            try:
                held = np.array([row[0] for row in rows.execute("SELECT faiss_id FROM chunks")], dtype=np.int64)
            finally:
                rows.close()
        except sqlite3.Error:
            continue  # missing or damaged (named by the file checks), or pruned by a writer since the snapshot began
        dead = catalog.dead_ids(segment.seq)
        placed = np.array([row[0] for row in catalog.db.execute("SELECT faiss_id FROM chunks WHERE segment = ?",
                                                                (segment.seq,))], dtype=np.int64)
        if not np.isin(dead, held).all():
            found.append(f"segment {segment.seq}: tombstones name ids it does not hold")
        live = np.setdiff1d(held, dead)
        if not np.array_equal(live, np.unique(placed)) or len(placed) != len(live):
            found.append(f"segment {segment.seq}: its live ids and the chunks the database places in it differ "
                         f"({len(live)} live, {len(placed)} placed)")
    seqs = [segment.seq for segment in segments_of(manifest)]
    marks = ",".join("?" * len(seqs))
    stray = catalog.db.execute(f"SELECT count(*) FROM chunks WHERE segment IS NOT NULL AND segment NOT IN ({marks})",
                               seqs).fetchone()[0]
    if stray:
        found.append(f"{stray} chunk row(s) placed in segments the current generation does not name")
    return found


def row_check_problems(db: sqlite3.Connection) -> list[str]:
    """Documents rows and chunk placements whose checksum does not hold (stores/row_checks.py)."""
    found = []
    documents = row_checks.damaged_documents(db)
    if documents:
        found.append(f"document rows whose checksum does not match: {_named(dict.fromkeys(documents, 1))}: restore "
                     "an intact generation (`vectormill store restore --generation G`) or ingest them again")
    misplaced = row_checks.misplaced_chunks(db)
    if misplaced:
        found.append(f"chunk rows whose segment does not match its checksum, of {len(misplaced)} document(s): "
                     f"{_named(misplaced)}: restore an intact generation (`vectormill store restore --generation G`)")
    return found


def _named(rows: dict[tuple[str, str], int]) -> str:
    return ", ".join(f"{source}/{document} ({count} row(s))" for (source, document), count in sorted(rows.items())[:20])


def _manifest_files_mismatched(path: Path, manifests: list[tuple[int, bytes]]) -> dict[int, str]:
    """Kept generations whose manifest file is missing or differs from the database's copy, with its file name."""
    mismatched = {}
    for generation, manifest in manifests:
        file = path / MANIFESTS / manifest_name(generation)
        try:
            same = file.read_bytes() == manifest
        except FileNotFoundError:
            same = False
        if not same:
            mismatched[generation] = file.name
    return mismatched


def _primary_identity_problems(path: Path, identity: dict[str, Any] | None) -> list[Problem]:
    if identity is None:
        return [Problem(PRIMARY, IDENTITY, f"no store at {str(path)!r}")]
    if "format" not in identity:
        return [Problem(PRIMARY, IDENTITY, "written by an older vectormill: run `vectormill store compact` once to "
                                           "migrate it in place")]
    return _database_problems(path, identity)


def _sound_identity(path: Path) -> dict[str, Any] | None:
    """The store's identity; None where it is missing or damaged (a restore writes it anew)."""
    try:
        return read_identity(path)
    except StoreCorruptError:
        return None


def _database_sound(path: Path, identity: dict[str, Any] | None) -> bool:
    return (identity is not None and "format" in identity
            and not [p for p in _database_problems(path, identity) if not p.file.startswith(MANIFESTS)])


def restore_store(settings: StoreSettings, source: str | None = None, generation: int | None = None) -> dict[str, Any]:
    """Bring back generation `generation` (default: repair) from `source` (default: any copy).

    With `generation` given, the store becomes exactly that generation: a new database is built
    from its segments and the current one, with every write after it, is set aside in quarantine/.
    Without it, this is a repair: a sound database is kept (it holds every acknowledged write) and
    every file of the current generation is hashed, damaged ones fetched again from a replica (or
    `source`) or rebuilt from the database; a damaged or missing database is rebuilt from the newest
    valid generation of any copy. Nothing is deleted; a rebuilt store gets a new generation number.
    """
    path = Path(settings.path)
    path.mkdir(parents=True, exist_ok=True)
    names = [PRIMARY] + [r.name for r in settings.replicas]
    if source is not None and source not in names:
        raise StoreError(f"no copy named {source!r}: choose one of {', '.join(names)}")
    if generation is None and _database_sound(path, _sound_identity(path)):
        return _repair(settings, source)
    lock = WriterLock(path / "LOCK")
    lock.acquire()
    try:
        return _rebuild(settings, path, source, generation)
    finally:
        lock.release()


def _repair(settings: StoreSettings, source: str | None) -> dict[str, Any]:
    with FaissStore.open(settings) as store:
        repaired = store.repair(source)
        stats = store.stats()
    return {"restored_generation": repaired["generation_before"], "from": source or PRIMARY,
            "as_generation": stats["generation"], "lsn": stats["lsn"], "vectors": stats["vectors"],
            "documents": stats["documents"], "log": "kept: the database holds every acknowledged write",
            "repaired": repaired["damaged"], "quarantined": [], "skipped": []}


def _rebuild(settings: StoreSettings, path: Path, source: str | None, generation: int | None) -> dict[str, Any]:
    problems: list[Problem] = []
    choices: list[tuple[int, int, Location]] = []
    newest_anywhere = 0  # a restored generation is numbered past every copy's, so that no copy is overwritten
    for order, location in enumerate(_reachable(settings, problems)):
        try:
            numbers = location.generations()
        except Exception as exc:  # noqa: BLE001
            problems.append(Problem(location.name, location.url, location.redact(f"unreachable: {exc}")))
            continue
        newest_anywhere = max([newest_anywhere, *numbers])
        if source in (None, location.name):
            choices.extend((number, -order, location) for number in numbers if generation in (None, number))
    # Newest first; for one number the primary first (its files are here), then replicas in config order.
    for number, _, location in sorted(choices, key=lambda c: (c[0], c[1]), reverse=True):
        try:
            return _install(settings, path, location, number, generation is not None, newest_anywhere, problems)
        except Exception as exc:  # noqa: BLE001 - a damaged copy: try the next one
            problems.append(Problem(location.name, f"{MANIFESTS}/{manifest_name(number)}",
                                    location.redact(f"{type(exc).__name__}: {exc}")))
    wanted = f"generation {generation}" if generation is not None else "a valid generation"
    where = f"copy {source!r}" if source else "the primary or any replica"
    detail = "; ".join(f"{p.where} {p.file}: {p.detail}" for p in problems) or "none found"
    raise StoreError(f"cannot restore {str(path)!r}: no intact {wanted} in {where} ({detail})")


def _install(settings: StoreSettings, path: Path, location: Location, number: int, rollback: bool,
             newest_anywhere: int, skipped: list[Problem]) -> dict[str, Any]:
    manifest = location.read_manifest(number)
    stamp = utc_stamp()
    quarantine = path / QUARANTINE / f"restore-{stamp}"
    previous = _sound_identity(path)
    if previous and manifest.get("store_id") not in (None, previous.get("store_id")):
        raise StoreError(f"a generation of store {manifest['store_id']}, not of this store {previous.get('store_id')}")
    write_atomically(path / RESTORING, json.dumps({"quarantine": quarantine.name}).encode())
    database = f"store-{stamp}.sqlite"
    try:
        for folder in (path / SEGMENTS, path / MANIFESTS):
            folder.mkdir(exist_ok=True)
        for entry in files_of(manifest).values():
            _bring(entry, path, location, settings, quarantine)
        # The same store, on a new timeline: generations written from here on are told apart from those written
        # after `number` before the restore (a copy out of reach now may hold some).
        lineage = {"store_id": manifest.get("store_id") or (previous or {}).get("store_id") or new_store_id(),
                   "timeline": max(manifest.get("timeline", 1), (previous or {}).get("timeline", 1)) + 1}
        restored = _build_database(settings, path, database, manifest, location.name, newest_anywhere, lineage)
    except BaseException:
        for leftover in path.glob(f"{database}*"):
            leftover.unlink()
        (path / RESTORING).unlink(missing_ok=True)
        raise
    identity = {"model": manifest["model"], "dimension": manifest["dimension"],
                "index_factory": manifest["index_factory"],
                "created_at": (previous or {}).get("created_at", manifest["created_at"]), "format": 2,
                "database": database, "store_id": lineage["store_id"], "timeline": lineage["timeline"]}
    write_identity(path, identity)  # the switch: from here on the store is the restored generation
    record_committed(path, restored)
    catalog = Catalog.open(path / database, int(manifest["dimension"]), writable=False)
    try:
        moved = set_aside(path, catalog, database, quarantine)
    finally:
        catalog.close()
    (path / RESTORING).unlink()
    fsync_dir(path)
    if rollback:
        log = ("moved to quarantine: restoring a chosen generation drops the writes after it (the database that "
               f"held them is in {QUARANTINE}/{quarantine.name}/)")
    else:
        log = (f"lost after generation {number}: the database was damaged or missing"
               + (f" (set aside in {QUARANTINE}/{quarantine.name}/)" if previous else ""))
    return {"restored_generation": number, "from": location.name, "as_generation": restored, "lsn": manifest["lsn"],
            "vectors": manifest["vectors"], "documents": manifest["documents"], "log": log, "quarantined": moved,
            "skipped": [asdict(p) for p in skipped]}


def _bring(entry: FileEntry, path: Path, location: Location, settings: StoreSettings, quarantine: Path) -> None:
    """Make segments/<name> an intact copy: the one there, else fetched from `location`, else from any replica."""
    target = path / SEGMENTS / entry.name
    if target.is_file():
        if file_sha256(target) == (entry.sha256, entry.bytes):
            return
        quarantine.mkdir(parents=True, exist_ok=True)
        os.replace(target, quarantine / f"damaged-{entry.name}")
    sources = [location] + [Location.replica(r) for r in settings.replicas if r.name != location.name]
    failures = []
    for copy in sources:
        if copy.name == PRIMARY:
            continue
        try:
            copy.fetch_file(entry, path / SEGMENTS)
            return
        except Exception as exc:  # noqa: BLE001 - the next copy may hold it
            failures.append(copy.redact(f"{copy.name}: {type(exc).__name__}: {exc}"))
    raise StoreError(f"{SEGMENTS}/{entry.name}: no intact copy ({'; '.join(failures) or 'damaged on the primary'})")


def _build_database(settings: StoreSettings, path: Path, database: str, manifest: dict[str, Any], where: str,
                    newest_anywhere: int, lineage: dict[str, Any]) -> int:
    """A new database replaying the generation's segments, sealed as a new generation; returns its number."""
    from .segments import read_segment

    dimension = int(manifest["dimension"])
    segments = segments_of(manifest)
    present = {segment.seq for segment in segments}
    number = max([manifest["generation"], newest_anywhere, *used_generation_numbers(path)]) + 1
    catalog = Catalog.open(path / database, dimension, writable=True)
    try:
        read = [read_segment(path / SEGMENTS, segment, dimension) for segment in segments]
        dead: dict[int, set[int]] = {}  # every copy a tombstone of the generation names, by its segment
        for extras, _ in read:
            for target, identifier in extras.tombstones:
                dead.setdefault(target, set()).add(identifier)
        with catalog.transaction():
            for segment, (extras, chunks) in zip(segments, read):
                catalog.load_extras(segment.seq, present, extras.tombstones, extras.tables, extras.deletions)
                for vectors, rows in chunks:
                    catalog.load_chunks(segment.seq, vectors, rows, dead.get(segment.seq, set()))
            catalog.recount()
            catalog.set_counter("lsn", manifest["lsn"])
            catalog.set_counter("next_segment", max(present, default=0))
        body = {key: value for key, value in manifest.items() if key not in ("segments", "checksum", "format")}
        body.update(generation=number, restored_from={"where": where, "generation": manifest["generation"]},
                    created_at=datetime.now(timezone.utc).isoformat(), **lineage)
        sealed = build_manifest(body, segments)
        write_atomically(path / MANIFESTS / manifest_name(number), sealed)
        with catalog.transaction():
            catalog.add_generation(number, sealed, settings.keep_generations)
            catalog.record_files([(f.name, f.sha256, f.bytes, fingerprint(path / SEGMENTS / f.name))
                                  for f in files_of(parse_manifest(sealed)).values()])
    finally:
        catalog.close()
    return number

