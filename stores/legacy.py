"""Stores written before segments: read them once and migrate them in place.

The older layout: identity.json without "format"; generations/NNNNNNNN/ holding index.faiss,
meta.sqlite (every row, raw vectors included) and manifest.json (format 1); and a hand-written
write-ahead log wal/NNNNNNNNNNNNNNNN.wal of records `<QII` (sequence number, payload length,
CRC-32) + payload. Its state is the newest valid generation plus the log records after it.

The migration copies that state into a new catalog and switches identity.json to it (the commit
point; a crash before it leaves the old store as it was), then moves the old files to
quarantine/legacy-…/. It never truncates nor rewrites the old log: a record damaged with a valid
record after it is corruption and stops the migration, changing nothing; only a record cut short
or failing its checksum at the very end of the newest log file is a torn, never-acknowledged write.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import row_checks
from .catalog import Catalog
from .durable import file_sha256, fsync_dir
from .errors import StoreCorruptError, StoreError
from .generations import QUARANTINE, utc_stamp
from .manifest import ManifestError, parse_manifest
from .records import (
    BaselineRecord, ChunkRecord, CursorUpdate, DocumentDelete, DocumentFailed, DocumentUpsert, Operation, PropertyUpdate,
)
from .tables import CHUNK_COLUMNS, TABLES

GENERATIONS = "generations"
LOG = "wal"
MAGIC = b"VMWAL001"
HEADER = struct.Struct("<QII")
# How far past the last good record a damaged one may be followed by a valid one (sequence numbers).
LSN_WINDOW = 1 << 20


def refuse_to_read(path: Path) -> None:
    raise StoreError(f"store {str(path)!r} was written by an older vectormill (one index per generation and a "
                     "write-ahead log): run `vectormill store compact` once to migrate it in place (a backfill "
                     "migrates it too)")


# ---- the old log ------------------------------------------------------------------------------
def _crc(lsn: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<Q", lsn)))


def _record_at(data: bytes, offset: int) -> tuple[int, bytes] | None:
    """The valid record starting at `offset`, if one does."""
    if offset + HEADER.size > len(data):
        return None
    lsn, length, crc = HEADER.unpack_from(data, offset)
    payload = data[offset + HEADER.size : offset + HEADER.size + length]
    return (lsn, payload) if len(payload) == length and _crc(lsn, payload) == crc else None


def _valid_record_after(data: bytes, start: int, last_lsn: int) -> bool:
    """Whether a valid record begins anywhere from `start` on, numbered after `last_lsn` (as one written later would be)."""
    for alignment in range(8):
        first = start + alignment
        count = (len(data) - first) // 8
        if count <= 0:
            continue
        words = np.frombuffer(data, dtype="<u8", count=count, offset=first)
        for index in np.flatnonzero((words > last_lsn) & (words <= last_lsn + LSN_WINDOW)):
            if _record_at(data, first + 8 * int(index)) is not None:
                return True
    return False


def read_segment(path: Path, newest: bool) -> tuple[list[tuple[int, bytes]], str | None]:
    """A log file's valid records, and the torn write at its end, if any. Any other damage raises."""
    data = path.read_bytes()
    if len(data) < len(MAGIC):
        if newest:
            return [], "file header cut short"
        raise StoreCorruptError(f"{path}: log file header cut short, and newer log files follow it")
    if data[: len(MAGIC)] != MAGIC:
        raise StoreCorruptError(f"{path}: not a vectormill write-ahead log file (bad header)")
    records: list[tuple[int, bytes]] = []
    offset = len(MAGIC)
    while offset < len(data):
        record = _record_at(data, offset)
        if record is None:
            problem = f"record at byte {offset} is cut short or fails its checksum"
            last = records[-1][0] if records else 0
            # Appends are fsync'd one at a time: only the very last record can be torn. A damaged record
            # (a flipped length field, a bad checksum) with a valid one after it is damage to acknowledged writes.
            if not newest or _valid_record_after(data, offset + 1, last):
                raise StoreCorruptError(
                    f"{path}: {problem}, and valid records follow it: the log is damaged in the middle")
            return records, problem
        records.append(record)
        offset += HEADER.size + len(record[1])
    return records, None


def read_log(folder: Path) -> tuple[list[tuple[int, bytes]], str | None]:
    paths = sorted(folder.glob("*.wal")) if folder.is_dir() else []
    records: list[tuple[int, bytes]] = []
    torn = None
    for number, path in enumerate(paths):
        found, torn = read_segment(path, newest=number == len(paths) - 1)
        records.extend(found)
    return records, torn


def decode_operations(payload: bytes, dimension: int) -> list[Operation]:
    """A log record: a JSON header of operations followed by their float32 vectors."""
    size = int.from_bytes(payload[:4], "little")
    header = json.loads(payload[4 : 4 + size])
    offset = 4 + size
    operations: list[Operation] = []
    for entry in header:
        kind = entry["op"]
        if kind == "upsert":
            chunks = tuple(ChunkRecord(*fields) for fields in entry["chunks"])  # 7 fields before OCR: ocr=False
            count = len(chunks) * dimension
            vectors = np.frombuffer(payload, dtype=np.float32, count=count, offset=offset).reshape(len(chunks), dimension)
            offset += count * 4
            operations.append(DocumentUpsert(entry["source"], entry["document"], entry["version"], entry["title"],
                                             entry["location"], entry["modified"], chunks, vectors))
        elif kind == "delete":
            operations.append(DocumentDelete(entry["source"], entry["document"]))
        elif kind == "baseline":
            operations.append(BaselineRecord(entry["source"], entry["run_id"], entry["created_at"], entry["stats"]))
        elif kind == "failed":
            operations.append(DocumentFailed(entry["source"], entry["document"], entry["ref"], entry["reason"],
                                             entry["failed_at"]))
        elif kind == "property":
            operations.append(PropertyUpdate(entry["key"], entry["value"]))
        else:
            operations.append(CursorUpdate(entry["source"], entry["cursor"]))
    return operations


# ---- the old generations -----------------------------------------------------------------------
def newest_valid_generation(path: Path) -> tuple[tuple[Path, dict[str, Any]] | None, list[str]]:
    """The newest generation folder whose manifest and files check out, and what is wrong with newer ones."""
    damaged = []
    folders = sorted((p for p in (path / GENERATIONS).glob("*") if p.name.isdigit() and p.is_dir()), reverse=True)
    for folder in folders:
        try:
            manifest = parse_manifest((folder / "manifest.json").read_bytes(), f"{folder.name}/manifest.json",
                                      expected_format=1)
        except (OSError, ManifestError) as exc:
            damaged.append(f"{folder.name}: {exc}")
            continue
        wrong = [name for name, entry in manifest["files"].items()
                 if not (folder / name).is_file() or file_sha256(folder / name) != (entry["sha256"], entry["bytes"])]
        if wrong:
            damaged.append(f"{folder.name}: {', '.join(wrong)} missing or not matching its manifest")
            continue
        return (folder, manifest), damaged
    return None, damaged


def _import_snapshot(catalog: Catalog, snapshot: Path) -> None:
    db = catalog.db
    db.execute("ATTACH DATABASE ? AS old", (str(snapshot),))
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM old.sqlite_master WHERE type = 'table'")}
        old_columns = {row[1] for row in db.execute("PRAGMA old.table_info(chunks)")}
        selected = [column if column in old_columns else "0" for column in CHUNK_COLUMNS]  # before OCR: ocr = 0
        with catalog.transaction():
            db.execute(f"INSERT INTO main.chunks ({', '.join(CHUNK_COLUMNS)}, vector, segment, checksum) "
                       f"SELECT {', '.join(selected)}, vector, NULL, row_checksum({', '.join(selected)}, vector) "
                       "FROM old.chunks")
            for table in TABLES:
                if table.name in tables:
                    present = {row[1] for row in db.execute(f"PRAGMA old.table_info({table.name})")}
                    db.execute(f"INSERT INTO main.{table.name} ({', '.join(table.columns)}, segment) "
                               f"SELECT {', '.join(table.selected(present))}, NULL FROM old.{table.name}")
            row_checks.checksum_all(db)
    finally:
        db.execute("DETACH DATABASE old")


def migrate(path: Path, identity: dict[str, Any], database: str,
            write_identity: Callable[[Path, dict[str, Any]], None], notes: list[str]) -> dict[str, Any]:
    """Build the catalog from the old state, switch identity.json to it, set the old files aside; the new identity."""
    dimension = int(identity["dimension"])
    for leftover in path.glob(f"{database}*"):
        leftover.unlink()  # a migration that a crash interrupted before its switch
    chosen, damaged = newest_valid_generation(path)
    start = chosen[1]["lsn"] if chosen else 0
    try:
        records, torn = read_log(path / LOG)
    except StoreCorruptError as exc:
        raise StoreCorruptError(f"store {str(path)!r} cannot be migrated: {exc}. Nothing was changed; the writes "
                                f"after generation {chosen[1]['generation'] if chosen else 0} cannot be read") from None
    later = [(lsn, payload) for lsn, payload in records if lsn > start]
    if [lsn for lsn, _ in later] != list(range(start + 1, start + 1 + len(later))):
        raise StoreCorruptError(
            f"store {str(path)!r} cannot be migrated: its newest valid generation ends at write {start} but its log "
            f"continues with {[lsn for lsn, _ in later][:3]}: writes in between are missing"
            + (f" ({'; '.join(damaged)})" if damaged else "") + ". Nothing was changed")
    catalog = Catalog.open(path / database, dimension, writable=True)
    try:
        if chosen:
            _import_snapshot(catalog, chosen[0] / "meta.sqlite")
        with catalog.transaction():
            catalog.recount()
            catalog.set_counter("lsn", start)
        for lsn, payload in later:
            with catalog.transaction():
                catalog.apply(decode_operations(payload, dimension), lsn)
        generation = chosen[1]["generation"] if chosen else 0
        with catalog.transaction():
            catalog.set_counter("generation", generation)  # new generations are numbered after the old ones
    finally:
        catalog.close()
    fsync_dir(path)
    migrated = {**identity, "format": 2, "database": database}
    write_identity(path, migrated)
    quarantine = set_aside_old_layout(path)
    details = [f"generation {chosen[1]['generation']}" if chosen else "no generation",
               f"{len(later)} write(s) replayed from its log"]
    if torn:
        details.append(f"a torn write at the end of the log dropped, never acknowledged ({torn})")
    if damaged:
        details.append(f"damaged generations skipped: {'; '.join(damaged)}")
    notes.append(f"migrated store {str(path)!r} in place from the older layout to segments ({', '.join(details)}); "
                 f"the old files are in {quarantine}/: delete them once you no longer need them")
    return migrated


def set_aside_old_layout(path: Path) -> str | None:
    """Move the older layout's folders of a migrated store to quarantine/legacy-…/ (a crash may have left them)."""
    old = [path / name for name in (GENERATIONS, LOG) if (path / name).is_dir()]
    if not old:
        return None
    quarantine = path / QUARANTINE / f"legacy-{utc_stamp()}"
    quarantine.mkdir(parents=True)
    for folder in old:
        os.replace(folder, quarantine / folder.name)
    fsync_dir(quarantine)
    fsync_dir(path)
    return f"{QUARANTINE}/{quarantine.name}"
