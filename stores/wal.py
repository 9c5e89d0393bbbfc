"""Write-ahead log: append-only segments of checksummed records, fsync'd before a write is acknowledged.

Record layout: header `<QII` (log sequence number, payload length, CRC-32 of lsn+payload),
then the payload. A record cut short or failing its checksum at the very end of the newest
segment is a torn write from a crash: it was never acknowledged and is dropped. Anywhere else
it is corruption, reported as such.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"VMWAL001"
HEADER = struct.Struct("<QII")
SEGMENT_SUFFIX = ".wal"


class WalCorruptError(RuntimeError):
    pass


@dataclass(frozen=True)
class WalRecord:
    lsn: int
    payload: bytes


@dataclass(frozen=True)
class TornTail:
    segment: Path
    offset: int  # where the valid part of the segment ends
    detail: str


def segment_name(first_lsn: int) -> str:
    return f"{first_lsn:016d}{SEGMENT_SUFFIX}"


def segments(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"*{SEGMENT_SUFFIX}"))


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _crc(lsn: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<Q", lsn)))


def read_segment(path: Path) -> tuple[list[WalRecord], TornTail | None]:
    """All valid records of a segment, and where it is torn, if it is."""
    data = path.read_bytes()
    if len(data) < len(MAGIC):
        return [], TornTail(path, 0, "segment header cut short")
    if data[: len(MAGIC)] != MAGIC:
        raise WalCorruptError(f"{path}: not a vectormill WAL segment (bad header)")
    records: list[WalRecord] = []
    offset = len(MAGIC)
    while offset < len(data):
        if len(data) - offset < HEADER.size:
            return records, TornTail(path, offset, f"record header cut short at byte {offset}")
        lsn, length, crc = HEADER.unpack_from(data, offset)
        body_start = offset + HEADER.size
        payload = data[body_start : body_start + length]
        if len(payload) < length:
            return records, TornTail(path, offset, f"record {lsn} cut short at byte {offset}")
        if _crc(lsn, payload) != crc:
            if _valid_record_at(data, body_start + length):
                # Appends are fsync'd one at a time, so only the last record can be torn: a bad
                # record followed by a good one is damage to acknowledged data, not a crash.
                raise WalCorruptError(f"{path}: record at byte {offset} fails its checksum and valid records follow it")
            return records, TornTail(path, offset, f"record at byte {offset} fails its checksum")
        records.append(WalRecord(lsn, payload))
        offset = body_start + length
    return records, None


def _valid_record_at(data: bytes, offset: int) -> bool:
    if offset + HEADER.size > len(data):
        return False
    lsn, length, crc = HEADER.unpack_from(data, offset)
    payload = data[offset + HEADER.size : offset + HEADER.size + length]
    return len(payload) == length and _crc(lsn, payload) == crc


def read_log(folder: Path) -> tuple[Iterator[WalRecord], TornTail | None]:
    """Records of every segment in order. Damage before the newest segment's end is corruption."""
    paths = segments(folder)
    all_records: list[WalRecord] = []
    torn: TornTail | None = None
    for index, path in enumerate(paths):
        records, torn_here = read_segment(path)
        if torn_here is not None and index != len(paths) - 1:
            raise WalCorruptError(
                f"{path}: {torn_here.detail}, and newer segments follow it: the log is damaged in the middle"
            )
        all_records.extend(records)
        torn = torn_here
    return iter(all_records), torn


class WalWriter:
    """Appends records to the newest segment; `append` returns once the record is on disk."""

    def __init__(self, folder: Path, next_lsn: int):
        self.folder = folder
        self.next_lsn = next_lsn
        self._file = None
        self._path: Path | None = None

    def _open_segment(self) -> None:
        existing = segments(self.folder)
        if existing:
            # Continue the newest segment (its torn tail, if any, was truncated at open).
            self._path = existing[-1]
            self._file = open(self._path, "ab")
        else:
            self.rotate()

    def rotate(self) -> None:
        """Start a new segment, so that older ones can be removed once a checkpoint covers them."""
        self.close()
        self._path = self.folder / segment_name(self.next_lsn)
        self._file = open(self._path, "wb")
        self._file.write(MAGIC)
        self._file.flush()
        os.fsync(self._file.fileno())
        fsync_dir(self.folder)

    def append(self, payload: bytes) -> int:
        if self._file is None:
            self._open_segment()
        lsn = self.next_lsn
        start = self._file.tell()
        try:
            self._file.write(HEADER.pack(lsn, len(payload), _crc(lsn, payload)) + payload)
            self._file.flush()
            os.fsync(self._file.fileno())
        except BaseException:
            # A failed append (disk full…) must not leave half a record for the next one to follow.
            self._file.close()
            self._file = None
            with open(self._path, "r+b") as handle:
                handle.truncate(start)
                os.fsync(handle.fileno())
            raise
        self.next_lsn += 1
        return lsn

    def remove_segments_before(self, lsn: int) -> None:
        """Delete segments whose records all have sequence numbers ≤ lsn (covered by a checkpoint)."""
        paths = segments(self.folder)
        for path, following in zip(paths, paths[1:]):
            if int(following.stem) - 1 <= lsn and path != self._path:
                path.unlink()
        fsync_dir(self.folder)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def truncate_torn_tail(torn: TornTail) -> None:
    with open(torn.segment, "r+b") as handle:
        if torn.offset == 0:
            handle.write(MAGIC)
            handle.truncate(len(MAGIC))
        else:
            handle.truncate(torn.offset)
        handle.flush()
        os.fsync(handle.fileno())
