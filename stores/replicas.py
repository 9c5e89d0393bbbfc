"""Generations on fsspec locations (the primary folder, a local path, s3://…): list, verify, copy, fetch, prune.

A generation is a folder `NNNNNNNN/` of data files plus `manifest.json`, which lists every data
file's sha256 and size. Copies write the data files first, read each back to check its sha256,
and write the manifest last: a generation without a valid manifest is never taken as valid, so a
copy cut short anywhere is harmless. Copying only ever reads the primary.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from .manifest import MANIFEST, ManifestError, Problem, check_files, file_sha256, parse_manifest
from .settings import ReplicaSettings, StoreSettings

log = logging.getLogger("vectormill.store.replicas")

PRIMARY = "primary"


class ReplicaCopyError(RuntimeError):
    """A copied file did not read back with the checksum it was sent with."""


def generation_name(generation: int) -> str:
    return f"{generation:08d}"


def redact_url(url: str) -> str:
    """The URL without credentials, for messages and status."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        return urlunsplit((parts.scheme, host + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))
    return url


@dataclass
class Location:
    """Where generations live: the primary's `generations/` folder or a replica's root."""

    name: str
    url: str
    fs: fsspec.AbstractFileSystem
    root: str

    @classmethod
    def primary(cls, generations_dir: Path) -> "Location":
        return cls(PRIMARY, str(generations_dir), LocalFileSystem(), str(generations_dir))

    @classmethod
    def replica(cls, settings: ReplicaSettings) -> "Location":
        fs, root = fsspec.core.url_to_fs(settings.url, **settings.storage_options)
        return cls(settings.name, redact_url(settings.url), fs, root.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def generations(self) -> list[int]:
        """Generation numbers present (complete or not), newest first."""
        self.fs.invalidate_cache(self.root)
        if not self.fs.exists(self.root):
            return []
        names = (entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(self.root, detail=False))
        return sorted((int(name) for name in names if name.isdigit()), reverse=True)

    def read_manifest(self, generation: int) -> dict[str, Any]:
        """The parsed manifest; FileNotFoundError if there is none, ManifestError if it is damaged."""
        path = self.path(generation_name(generation), MANIFEST)
        self.fs.invalidate_cache(path)
        return parse_manifest(self.fs.cat_file(path), f"{self.name}:{generation_name(generation)}/{MANIFEST}")

    def digest(self, path: str) -> tuple[str, int]:
        """sha256 and size of a file, read back in blocks."""
        digest = hashlib.sha256()
        size = 0
        self.fs.invalidate_cache(path)
        with self.fs.open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        return digest.hexdigest(), size

    def verify(self, generation: int) -> tuple[dict[str, Any] | None, list[Problem]]:
        """The manifest and every problem of one generation (an empty list: it is valid)."""
        folder = generation_name(generation)
        try:
            manifest = self.read_manifest(generation)
        except FileNotFoundError:
            return None, [Problem(self.name, f"{folder}/{MANIFEST}",
                                  "missing: an incomplete copy, never used; the next replication removes it")]
        except ManifestError as exc:
            return None, [Problem(self.name, f"{folder}/{MANIFEST}", str(exc))]
        actual: dict[str, tuple[str, int] | None] = {}
        for name in manifest["files"]:
            try:
                actual[name] = self.digest(self.path(folder, name))
            except FileNotFoundError:
                actual[name] = None
        problems = check_files(manifest, actual, self.name)
        return manifest, [Problem(p.where, f"{folder}/{p.file}", p.detail) for p in problems]

    def put_file(self, local: Path, name: str, expected: tuple[str, int]) -> None:
        """Copy one file here and check it by reading it back."""
        remote = self.path(*name.split("/"))
        self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(local), remote)
        if self.is_local:
            _fsync(Path(remote))
        found = self.digest(remote)
        if found != expected:
            raise ReplicaCopyError(f"{self.name}: {name} read back as {found[1]} bytes with another sha256")

    def fetch(self, generation: int, destination: Path) -> dict[str, Any]:
        """Download a generation into `destination` (data files, then the manifest), checking every sha256."""
        manifest = self.read_manifest(generation)
        destination.mkdir(parents=True, exist_ok=True)
        folder = generation_name(generation)
        for name, expected in manifest["files"].items():
            target = destination / name
            self.fs.get_file(self.path(folder, name), str(target))
            found = (file_sha256(target), target.stat().st_size)
            if found != (expected["sha256"], expected["bytes"]):
                raise ReplicaCopyError(f"{self.name}: {folder}/{name} does not match its manifest")
            _fsync(target)
        (destination / MANIFEST).write_bytes(self.fs.cat_file(self.path(folder, MANIFEST)))
        _fsync(destination / MANIFEST)
        return manifest

    def remove(self, generation: int) -> None:
        """Delete a generation, manifest first, so that a removal cut short leaves no valid-looking copy."""
        folder = self.path(generation_name(generation))
        manifest = self.path(generation_name(generation), MANIFEST)
        if self.fs.exists(manifest):
            self.fs.rm(manifest)
        if self.fs.exists(folder):
            self.fs.rm(folder, recursive=True)
        self.fs.invalidate_cache(self.root)




def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass
class ReplicaStatus:
    name: str
    url: str
    ok: bool | None = None  # None: not tried yet in this process
    generation: int | None = None  # the generation this replica confirmed last
    error: str | None = None
    attempts: int = 0  # file operations tried, retries included, in the last replication
    seconds: float = 0.0
    checked_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


CopyListener = Callable[[str, int, str], None]  # (replica, generation, file) after each verified file


@dataclass
class Replicator:
    """Copies each new checkpoint to every configured replica and keeps their last K generations."""

    settings: StoreSettings
    statuses: dict[str, ReplicaStatus] = field(default_factory=dict)
    on_copied: CopyListener | None = None

    def __post_init__(self) -> None:
        for replica in self.settings.replicas:
            self.statuses[replica.name] = ReplicaStatus(replica.name, redact_url(replica.url))

    def _retrying(self, status: ReplicaStatus) -> Retrying:
        def count(_state: Any) -> None:
            status.attempts += 1

        return Retrying(
            stop=stop_after_attempt(self.settings.replica_attempts),
            wait=wait_exponential(multiplier=self.settings.replica_backoff_seconds, max=30),
            retry=retry_if_exception_type(Exception),
            before=count,
            before_sleep=lambda state: log.warning(
                "replica %s: attempt %d failed (%s), retrying", status.name, state.attempt_number,
                state.outcome.exception() if state.outcome else "?"),
            reraise=True,
        )

    def replicate(self, folder: Path, generation: int) -> list[ReplicaStatus]:
        """Copy one primary generation folder to every replica; never raises for a replica's failure."""
        for replica in self.settings.replicas:
            status = self.statuses[replica.name]
            status.attempts, status.error = 0, None
            started = time.perf_counter()
            try:
                self._replicate_one(Location.replica(replica), folder, generation, status)
                status.ok, status.generation = True, generation
            except Exception as exc:  # noqa: BLE001 - any failure of a replica is reported, not raised
                status.ok = False
                status.error = (f"generation {generation} not confirmed after {status.attempts} attempt(s): "
                                f"{type(exc).__name__}: {exc}")
                log.error("replica %s (%s): %s", status.name, status.url, status.error)
            status.seconds = round(time.perf_counter() - started, 3)
            status.checked_at = datetime.now(timezone.utc).isoformat()
        return list(self.statuses.values())

    def _replicate_one(self, location: Location, folder: Path, generation: int, status: ReplicaStatus) -> None:
        retrying = self._retrying(status)
        local_manifest = (folder / MANIFEST).read_bytes()
        manifest = parse_manifest(local_manifest, str(folder / MANIFEST))
        name = generation_name(generation)
        remote_manifest = location.path(name, MANIFEST)

        def prepare() -> bool:
            location.fs.makedirs(location.root, exist_ok=True)
            location.fs.invalidate_cache(remote_manifest)
            if not location.fs.exists(remote_manifest):
                return False
            if location.fs.cat_file(remote_manifest) == local_manifest and all(
                    location.fs.info(location.path(name, file))["size"] == expected["bytes"]
                    for file, expected in manifest["files"].items()):
                return True  # already there (`store verify` reads every byte back; this only checks sizes)
            location.fs.rm(remote_manifest)  # another copy under this number: unmake it before overwriting
            return False

        if retrying(prepare):
            return
        for file_name, expected in sorted(manifest["files"].items()):
            retrying(location.put_file, folder / file_name, f"{name}/{file_name}",
                     (expected["sha256"], expected["bytes"]))
            if self.on_copied:
                self.on_copied(location.name, generation, file_name)
        digest = hashlib.sha256(local_manifest).hexdigest()
        retrying(location.put_file, folder / MANIFEST, f"{name}/{MANIFEST}", (digest, len(local_manifest)))
        if self.on_copied:
            self.on_copied(location.name, generation, MANIFEST)
        try:
            retrying(self._prune, location)
        except Exception as exc:  # noqa: BLE001 - the copy is confirmed; leftovers only cost space
            log.warning("replica %s: could not remove old generations: %s", location.name, exc)

    def _prune(self, location: Location) -> None:
        """Keep the newest K generations that have a manifest; remove the rest (incomplete copies too)."""
        kept = 0
        for generation in location.generations():
            if kept < self.settings.keep_generations and location.fs.exists(
                    location.path(generation_name(generation), MANIFEST)):
                kept += 1
                continue
            location.remove(generation)

    def probe(self, name: str) -> ReplicaStatus:
        """What a replica holds now, without copying or hashing: its newest generation that has a manifest."""
        replica = next(r for r in self.settings.replicas if r.name == name)
        status = ReplicaStatus(name, redact_url(replica.url), checked_at=datetime.now(timezone.utc).isoformat())
        try:
            location = Location.replica(replica)
            held = [g for g in location.generations()
                    if location.fs.exists(location.path(generation_name(g), MANIFEST))]
        except Exception as exc:  # noqa: BLE001 - reported in the status
            status.ok, status.error = False, f"unreachable: {type(exc).__name__}: {exc}"
            return status
        status.ok = bool(held)
        status.generation = held[0] if held else None
        status.error = None if held else "holds no generation yet"
        return status

    def problem(self) -> str | None:
        """Why the last replication does not satisfy `min_replicas_confirmed`, or None."""
        required = self.settings.replicas_required
        tried = [s for s in self.statuses.values() if s.ok is not None]
        if not required or not tried:
            return None
        confirmed = [s for s in tried if s.ok]
        if len(confirmed) >= required:
            return None
        failed = "; ".join(f"{s.name} ({s.url}): {s.error}" for s in tried if not s.ok)
        return (f"only {len(confirmed)} of {len(self.statuses)} replica(s) confirmed the last checkpoint, "
                f"min_replicas_confirmed = {required}: {failed}. The primary store is intact; fix the replica "
                "and re-run (the next checkpoint copies the newest generation)")
