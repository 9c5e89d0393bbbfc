"""Files that survive a crash: fsync, atomic replacement, content-addressed publication, sha256 and stat fingerprints."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .manifest import FileEntry


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: a temporary file, fsync'd, renamed over it, and the folder fsync'd."""
    temporary = path.with_name(f".tmp-{path.name}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)


def file_sha256(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def publish(temporary: Path, folder: Path, kind: str) -> FileEntry:
    """fsync a finished file and rename it to `<sha256>.<kind>` in `folder`; an identical file there is kept."""
    fsync_file(temporary)
    sha, size = file_sha256(temporary)
    name = f"{sha}.{kind}"
    final = folder / name
    if final.exists() and file_sha256(final) == (sha, size):
        temporary.unlink()
    else:
        os.replace(temporary, final)
        fsync_dir(folder)
    return FileEntry(name, sha, size)


def fingerprint(path: Path) -> str | None:
    """What changes whenever a file is written, replaced or copied (the ctime cannot be set back); None if missing.

    A file whose fingerprint is the one recorded when it was checked is not read again at open:
    opening costs a stat per file, not a hash of the store.
    """
    try:
        fd = os.open(path, os.O_RDONLY)  # opened, not just stat'ed: a file we cannot read is as good as missing
    except FileNotFoundError:
        return None
    try:
        stat = os.fstat(fd)
    finally:
        os.close(fd)
    return f"{stat.st_size}:{stat.st_ino}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"
