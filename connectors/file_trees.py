"""Where the filesystem source's files live: a local folder, or a share read through fsspec
(connectors/shares.py). Both list every file under their root with a version, or fail whole, and
open one file for reading."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO, Protocol

from .errors import DocumentError, SourceError


@dataclass(frozen=True)
class FileEntry:
    path: str  # POSIX path relative to the root: the document's id
    size: int
    version: str  # changes with the content: size + mtime, or the object's ETag
    modified: str | None  # ISO 8601


class FileTree(Protocol):
    root_label: str  # the root as people name it, for messages

    def entries(self) -> Iterator[FileEntry]:
        """Every file under the root; a listing that cannot be completed raises SourceError."""
        ...

    def open(self, path: str) -> tuple[BinaryIO, FileEntry]:
        """The file opened for reading and what was opened; DocumentError when it cannot be."""
        ...

    def unchanged(self, handle: BinaryIO, entry: FileEntry) -> bool:
        """Whether the file behind an open handle is still the version `entry` names."""
        ...

    def location(self, path: str) -> str:
        ...


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()


class LocalTree:
    """A folder on this machine; never follows a path out of its root."""

    def __init__(self, root: Path, source: str):
        self.root = root.resolve()
        self.root_label = str(self.root)
        self.source = source

    def entries(self) -> Iterator[FileEntry]:
        def unreadable(exc: OSError) -> None:
            raise self._unreadable(exc) from exc

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=unreadable, followlinks=False):
            dirnames.sort()
            for filename in sorted(filenames):
                path = Path(dirpath, filename)
                try:
                    stat = path.stat()
                except (FileNotFoundError, NotADirectoryError):
                    # A dangling link or a file removed while listing: fetch reports it if listed again.
                    continue
                except OSError as exc:
                    raise self._unreadable(exc) from exc
                yield FileEntry(path.relative_to(self.root).as_posix(), stat.st_size,
                                f"{stat.st_size}-{stat.st_mtime_ns}", iso(stat.st_mtime))

    def _unreadable(self, exc: OSError) -> SourceError:
        path = exc.filename or str(self.root)
        if exc.errno == errno.ENOENT and path == str(self.root):
            return SourceError(f"source {self.source!r}: root folder {path!r} does not exist (is the share mounted?); "
                               "nothing is deleted")
        return SourceError(f"source {self.source!r}: cannot list {path!r}: {exc.strerror or exc}; the listing would "
                           "be incomplete, so nothing is deleted")

    def resolve(self, document_id: str) -> Path:
        """The file behind an id, refusing any path (via `..` or a symlink) that leaves the root."""
        candidate = (self.root / document_id).resolve()
        if not candidate.is_relative_to(self.root) or candidate == self.root:
            raise DocumentError(f"refused: path leaves the source root {str(self.root)!r}")
        return candidate

    def location(self, path: str) -> str:
        return str(self.root / path)

    def open(self, path: str) -> tuple[BinaryIO, FileEntry]:
        """Open the file behind an id, so that what is opened is what was checked.

        `resolve` checks the path; it is then opened one component at a time from the root,
        following no symbolic link, so a link swapped in after the check (for the file or for
        any folder above it) makes the open fail instead of leading out of the root.
        """
        parts = self.resolve(path).relative_to(self.root).parts
        no_links = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        folders: list[int] = []
        try:
            folders.append(os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            for part in parts[:-1]:
                folders.append(os.open(part, no_links | os.O_DIRECTORY, dir_fd=folders[-1]))
            # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
            descriptor = os.open(parts[-1], no_links | os.O_NONBLOCK, dir_fd=folders[-1])
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a link where the checked path had a file or folder
                raise DocumentError(f"refused: its path changed while it was opened (no symbolic link is "
                                    f"followed out of the source root {str(self.root)!r})") from exc
            raise DocumentError(f"cannot read file: {exc.strerror or exc}") from exc
        finally:
            for folder in folders:
                os.close(folder)
        handle = os.fdopen(descriptor, "rb")
        stat = os.fstat(descriptor)
        if not S_ISREG(stat.st_mode):
            handle.close()
            raise DocumentError("not a regular file")
        return handle, FileEntry(path, stat.st_size, f"{stat.st_size}-{stat.st_mtime_ns}", iso(stat.st_mtime))

    def unchanged(self, handle: BinaryIO, entry: FileEntry) -> bool:
        stat = os.fstat(handle.fileno())
        return f"{stat.st_size}-{stat.st_mtime_ns}" == entry.version
