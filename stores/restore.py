"""Check every copy of a store (`store verify`) and bring back a generation (`store restore`).

Neither opens the store the usual way: they must work on a store that no longer opens.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import wal
from .faiss_store import (
    IDENTITY, MANIFEST, QUARANTINE, FaissStore, StoreError, seal_generation, used_generation_numbers, write_identity,
)
from .lock import WriterLock
from .manifest import Problem
from .replicas import PRIMARY, Location, generation_name
from .settings import StoreSettings


def locations(settings: StoreSettings) -> list[Location]:
    return [Location.primary(Path(settings.path) / "generations")] + [Location.replica(r) for r in settings.replicas]


def verify_store(settings: StoreSettings) -> dict[str, Any]:
    """Hash every file of every generation on the primary and each replica, and read the whole log.

    Returns {"ok", "generations": [{"where", "generation", "lsn", "vectors", "documents", "ok"}],
    "problems": [{"where", "file", "detail"}]}.
    """
    generations: list[dict[str, Any]] = []
    problems: list[Problem] = []
    if not FaissStore.exists(settings.path):
        problems.append(Problem(PRIMARY, IDENTITY, f"no store at {str(settings.path)!r}"))
    for location in _reachable(settings, problems):
        try:
            numbers = location.generations()
        except Exception as exc:  # noqa: BLE001 - an unreachable replica is a problem to report
            problems.append(Problem(location.name, location.url, f"unreachable: {type(exc).__name__}: {exc}"))
            continue
        if not numbers and location.name != PRIMARY:
            problems.append(Problem(location.name, location.url, "holds no generation"))
        for number in numbers:
            manifest, found = location.verify(number)
            problems.extend(found)
            entry = {"where": location.name, "generation": number, "ok": not found}
            if manifest:
                entry.update({key: manifest[key] for key in ("lsn", "vectors", "documents", "created_at")})
            generations.append(entry)
    problems.extend(_log_problems(Path(settings.path) / "wal"))
    return {"ok": not problems, "generations": generations, "problems": [asdict(p) for p in problems]}


def _reachable(settings: StoreSettings, problems: list[Problem]) -> list[Location]:
    found = [Location.primary(Path(settings.path) / "generations")]
    for replica in settings.replicas:
        try:
            found.append(Location.replica(replica))
        except Exception as exc:  # noqa: BLE001 - a bad URL or missing driver is reported per replica
            problems.append(Problem(replica.name, replica.url, f"cannot open: {type(exc).__name__}: {exc}"))
    return found


def _log_problems(wal_dir: Path) -> list[Problem]:
    if not wal_dir.is_dir():
        return []
    try:
        _, torn = wal.read_log(wal_dir)
    except wal.WalCorruptError as exc:
        return [Problem(PRIMARY, "wal", str(exc))]
    if torn is not None:
        # A torn tail is the normal trace of a crash; the next writer drops it. Reported, since
        # verify promises to name everything that is not intact.
        return [Problem(PRIMARY, f"wal/{torn.segment.name}", f"torn write at the end ({torn.detail}); "
                                                                "never acknowledged, dropped at the next open")]
    return []


def restore_store(settings: StoreSettings, source: str | None = None, generation: int | None = None) -> dict[str, Any]:
    """Bring back generation `generation` (default: the newest valid one) from `source` (default: any copy).

    With `generation` given, the store becomes exactly that generation: newer generations and the
    write-ahead log are moved to quarantine/. Without it, this is a repair: the newest valid copy is
    installed and the log, when it continues that generation, is kept and replayed at the next open.
    Nothing is deleted. The result becomes a new generation number, so no copy is ever overwritten.
    """
    path = Path(settings.path)
    path.mkdir(parents=True, exist_ok=True)
    names = [PRIMARY] + [r.name for r in settings.replicas]
    if source is not None and source not in names:
        raise StoreError(f"no copy named {source!r}: choose one of {', '.join(names)}")
    lock = WriterLock(path / "LOCK")
    lock.acquire()
    try:
        return _restore_locked(settings, path, source, generation)
    finally:
        lock.release()


def _restore_locked(settings: StoreSettings, path: Path, source: str | None, generation: int | None) -> dict[str, Any]:
    generations_dir = path / "generations"
    generations_dir.mkdir(exist_ok=True)
    problems: list[Problem] = []
    candidates = [loc for loc in _reachable(settings, problems) if source in (None, loc.name)]
    choices: list[tuple[int, int, Location]] = []
    for order, location in enumerate(candidates):
        try:
            numbers = location.generations()
        except Exception as exc:  # noqa: BLE001
            problems.append(Problem(location.name, location.url, f"unreachable: {exc}"))
            continue
        choices.extend((number, -order, location) for number in numbers if generation in (None, number))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    staging = generations_dir / f".tmp-restore-{stamp}"
    # Newest first; for one number the primary first (no copy needed), then replicas in config order.
    for number, _, location in sorted(choices, key=lambda c: (c[0], c[1]), reverse=True):
        shutil.rmtree(staging, ignore_errors=True)
        try:
            manifest = _stage(location, number, staging)
        except Exception as exc:  # noqa: BLE001 - a damaged copy: try the next one
            problems.append(Problem(location.name, generation_name(number), f"{type(exc).__name__}: {exc}"))
            continue
        return _install(settings, path, staging, manifest, location.name, rollback=generation is not None,
                        stamp=stamp, skipped=problems)
    shutil.rmtree(staging, ignore_errors=True)
    wanted = f"generation {generation}" if generation is not None else "a valid generation"
    where = f"copy {source!r}" if source else "the primary or any replica"
    detail = "; ".join(f"{p.where} {p.file}: {p.detail}" for p in problems) or "none found"
    raise StoreError(f"cannot restore {str(path)!r}: no intact {wanted} in {where} ({detail})")


def _stage(location: Location, number: int, staging: Path) -> dict[str, Any]:
    if location.name == PRIMARY:
        manifest, problems = location.verify(number)
        if problems:
            raise StoreError("; ".join(f"{p.file}: {p.detail}" for p in problems))
        shutil.copytree(Path(location.root) / generation_name(number), staging)
        return manifest
    return location.fetch(number, staging)


def _install(settings: StoreSettings, path: Path, staging: Path, manifest: dict[str, Any], where: str,
             rollback: bool, stamp: str, skipped: list[Problem]) -> dict[str, Any]:
    generations_dir = path / "generations"
    quarantine = path / QUARANTINE / f"restore-{stamp}"
    moved: list[str] = []

    def set_aside(item: Path) -> None:
        quarantine.mkdir(parents=True, exist_ok=True)
        item.rename(quarantine / item.name)
        moved.append(f"{item.parent.name}/{item.name}")

    restored = manifest["generation"]
    # Everything newer than the restored state is set aside: damaged generations on a repair, and
    # on a rollback the newer generations and the log too (their writes are not part of it).
    for folder in sorted(p for p in generations_dir.iterdir() if p.name.isdigit()):
        if int(folder.name) > restored or (int(folder.name) == restored and where != PRIMARY):
            set_aside(folder)
    wal_dir = path / "wal"
    segments = wal.segments(wal_dir) if wal_dir.is_dir() else []
    log = "none"
    if segments:
        if not rollback and _log_continues(segments, manifest["lsn"]):
            log = "kept: its writes after this generation replay at the next open"
        else:
            log = "moved to quarantine: " + ("restoring a chosen generation drops later writes" if rollback
                                             else "it does not continue this generation")
            for segment in segments:
                set_aside(segment)
            wal.fsync_dir(wal_dir)
    number = max([restored, *used_generation_numbers(path)]) + 1
    body = {key: value for key, value in manifest.items() if key not in ("files", "checksum", "format")}
    body.update(generation=number, restored_from={"where": where, "generation": restored},
                created_at=datetime.now(timezone.utc).isoformat())
    (staging / MANIFEST).unlink()
    seal_generation(staging, body, generations_dir / generation_name(number))
    if not (path / IDENTITY).is_file():  # the primary was lost: its identity comes back from the manifest
        write_identity(path, {"model": manifest["model"], "dimension": manifest["dimension"],
                              "index_factory": manifest["index_factory"], "created_at": manifest["created_at"]})
    return {
        "restored_generation": restored,
        "from": where,
        "as_generation": number,
        "lsn": manifest["lsn"],
        "vectors": manifest["vectors"],
        "documents": manifest["documents"],
        "log": log,
        "quarantined": moved,
        "skipped": [asdict(p) for p in skipped],
    }


def _log_continues(segments: list[Path], lsn: int) -> bool:
    """Whether the log holds every record after `lsn` (its oldest segment starts at or before lsn + 1)."""
    return bool(segments) and int(segments[0].stem) <= lsn + 1
