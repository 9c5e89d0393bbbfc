"""Copies of a store on fsspec locations (the primary folder, a local path, s3://…): list, verify, copy, fetch, prune.

A location holds `manifests/NNNNNNNN.json` (one per generation) and `segments/<sha256>.<kind>`
(content-addressed segment files that generations share). A copy sends only the segment files
the location lacks, each under a temporary name, read back and checked against its sha256 and
only then renamed to its own name, and writes the manifest last the same way: a file that failed
its check never appears under its name, and a generation whose manifest is missing or invalid is
never used, so a copy cut short anywhere is harmless. A file already there under its name and size
is trusted only once its hash was confirmed (by this store's copy or a read-back, recorded in the
primary's catalog); any other is read back first. Copying only ever reads the primary. Every message naming a location goes through its
redaction: no credential from its URL or storage options is ever shown.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec
from fsspec.implementations.local import LocalFileSystem
from tenacity import Retrying, retry_if_not_exception_type, stop_after_attempt, wait_exponential

from .durable import file_sha256, fsync_dir, fsync_file
from .manifest import (
    MANIFESTS, SEGMENTS, FileEntry, ManifestError, Problem, files_of, generation_of, manifest_name, parse_manifest,
    referenced_files,
)
from .settings import ReplicaSettings, StoreSettings

log = logging.getLogger("vectormill.store.replicas")

PRIMARY = "primary"
TEMPORARY = ".tmp-"  # the prefix of a file being copied, not yet checked
# The words the HTTP sources mask too (connectors/http.py; the store imports nothing else of ours).
SECRET_WORDS = re.compile(r"token|key|secret|pass|auth|signature|sig|credential", re.IGNORECASE)
SECRET_QUERY_VALUE = re.compile(r"([?&][^=&\s]*(?:token|key|secret|pass|auth|signature|sig|credential)[^=&\s]*=)"
                                r"[^&\s\"']*", re.IGNORECASE)


class ReplicaCopyError(RuntimeError):
    """A copied file did not read back with the checksum it was sent with."""


class ReplicaRefusedError(RuntimeError):
    """The replica holds another store's generations, or another timeline's under our numbers: it is not written."""


def redact_url(url: str) -> str:
    """The URL without user:password@ and with secret-looking query values masked."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return SECRET_QUERY_VALUE.sub(r"\1***", urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")))


def _secret_values(options: Any, secret_key: bool = False) -> list[str]:
    """String values of storage options under secret-looking keys (nested dicts included)."""
    if isinstance(options, dict):
        return [value for key, item in options.items()
                for value in _secret_values(item, secret_key or bool(SECRET_WORDS.search(str(key))))]
    return [options] if secret_key and isinstance(options, str) and options else []


def redactor(settings: ReplicaSettings) -> Callable[[str], str]:
    """Masks the replica's URL credentials and secret storage options in any text (an error message…)."""
    parts = urlsplit(settings.url)
    secrets = [s for s in (parts.password, parts.username, *_secret_values(settings.storage_options)) if s]
    shown = redact_url(settings.url)

    def redact(text: str) -> str:
        text = SECRET_QUERY_VALUE.sub(r"\1***", text.replace(settings.url, shown))
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    return redact


def _no_redaction(text: str) -> str:
    return text


@dataclass
class Location:
    """Where generations live: the primary store folder or a replica's root."""

    name: str
    url: str  # shown to users: redacted
    fs: fsspec.AbstractFileSystem
    root: str
    redact: Callable[[str], str] = _no_redaction

    @classmethod
    def primary(cls, store_path: Path) -> "Location":
        return cls(PRIMARY, str(store_path), LocalFileSystem(), str(store_path))

    @classmethod
    def replica(cls, settings: ReplicaSettings) -> "Location":
        redact = redactor(settings)
        try:
            fs, root = fsspec.core.url_to_fs(settings.url, **settings.storage_options)
        except Exception as exc:  # noqa: BLE001 - the driver's message may quote the URL: redacted, then raised
            raise ReplicaCopyError(redact(f"cannot open replica {settings.name!r}: {type(exc).__name__}: {exc}")) from None
        return cls(settings.name, redact_url(settings.url), fs, root.rstrip("/"), redact)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _names(self, folder: str) -> dict[str, int]:
        path = self.path(folder)
        self.fs.invalidate_cache(path)
        if not self.fs.exists(path):
            return {}
        return {entry["name"].rstrip("/").rsplit("/", 1)[-1]: int(entry.get("size") or 0)
                for entry in self.fs.ls(path, detail=True) if entry.get("type") != "directory"}

    def generations(self) -> list[int]:
        """Generation numbers with a manifest file (valid or not), newest first."""
        numbers = (generation_of(name) for name in self._names(MANIFESTS))
        return sorted((n for n in numbers if n is not None), reverse=True)

    def segment_files(self) -> dict[str, int]:
        """Segment file names held here, with their sizes."""
        return {name: size for name, size in self._names(SEGMENTS).items() if not name.startswith(".")}

    def read_manifest(self, generation: int) -> dict[str, Any]:
        """The parsed manifest; FileNotFoundError if there is none, ManifestError if it is damaged."""
        path = self.path(MANIFESTS, manifest_name(generation))
        self.fs.invalidate_cache(path)
        return parse_manifest(self.fs.cat_file(path), f"{self.name}:{MANIFESTS}/{manifest_name(generation)}")

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

    def verify(self, generation: int, checked: dict[str, tuple[str, int] | None]) -> tuple[dict[str, Any] | None,
                                                                                        list[Problem]]:
        """The manifest and every problem of one generation; `checked` caches file hashes across generations."""
        where = f"{MANIFESTS}/{manifest_name(generation)}"
        try:
            manifest = self.read_manifest(generation)
        except FileNotFoundError:
            return None, [Problem(self.name, where, "missing: an incomplete copy, never used")]
        except ManifestError as exc:
            return None, [Problem(self.name, where, str(exc))]
        problems = []
        for name, entry in files_of(manifest).items():
            if name not in checked:
                try:
                    checked[name] = self.digest(self.path(SEGMENTS, name))
                except FileNotFoundError:
                    checked[name] = None
            found = checked[name]
            if found is None:
                problems.append(Problem(self.name, f"{SEGMENTS}/{name}", "missing"))
            elif found != (entry.sha256, entry.bytes):
                detail = (f"size {found[1]} bytes, manifest says {entry.bytes}" if found[1] != entry.bytes
                          else "sha256 mismatch (file corrupt)")
                problems.append(Problem(self.name, f"{SEGMENTS}/{name}", detail))
        return manifest, problems

    def put_file(self, local: Path, relative: str, expected: tuple[str, int]) -> None:
        """Copy one file here under a temporary name, check it by reading it back, then rename it to its name: a copy
        that fails its check never appears under its name."""
        remote = self.path(*relative.split("/"))
        folder, name = remote.rsplit("/", 1)
        temporary = f"{folder}/{TEMPORARY}{uuid.uuid4().hex[:12]}-{name}"
        self.fs.makedirs(folder, exist_ok=True)
        try:
            self.fs.put_file(str(local), temporary)
            if self.is_local:
                fsync_file(Path(temporary))
            try:
                found = self.digest(temporary)
            except FileNotFoundError:
                raise ReplicaCopyError(f"{self.name}: {relative} was not there when read back") from None
            if found != expected:
                raise ReplicaCopyError(f"{self.name}: {relative} read back as {found[1]} bytes with another sha256")
            self.fs.mv(temporary, remote)
        finally:
            if self.fs.exists(temporary):
                self.fs.rm(temporary)
        if self.is_local:
            fsync_dir(Path(folder))
        self.fs.invalidate_cache(remote)
        if int(self.fs.info(remote).get("size") or 0) != expected[1]:
            raise ReplicaCopyError(f"{self.name}: {relative} is not the size it was sent with after its rename")

    def holds(self, relative: str, expected: tuple[str, int]) -> bool:
        """Whether the file here reads back with this sha256 and size."""
        try:
            return self.digest(self.path(*relative.split("/"))) == expected
        except FileNotFoundError:
            return False

    def leftovers(self) -> list[str]:
        """Temporary files of copies cut short (relative paths)."""
        return [f"{folder}/{name}" for folder in (SEGMENTS, MANIFESTS) for name in self._names(folder)
                if name.startswith(TEMPORARY)]

    def fetch_file(self, entry: FileEntry, folder: Path) -> None:
        """Download a segment file into `folder` under its name, checked against its sha256 before it appears there."""
        temporary = folder / f".tmp-fetch-{entry.name}"
        self.fs.get_file(self.path(SEGMENTS, entry.name), str(temporary))
        found = file_sha256(temporary)
        if found != (entry.sha256, entry.bytes):
            temporary.unlink(missing_ok=True)
            raise ReplicaCopyError(f"{self.name}: {SEGMENTS}/{entry.name} does not match its manifest")
        fsync_file(temporary)
        os.replace(temporary, folder / entry.name)
        fsync_dir(folder)

    def remove(self, relative: str) -> None:
        path = self.path(*relative.split("/"))
        if self.fs.exists(path):
            self.fs.rm(path)


def unknown_replica(location: Location, exc: Exception) -> str:
    return (f"replica {location.name!r} is unknown: {exc}. Whose generations it holds cannot be proven, so nothing is "
            "written or removed there; run `vectormill store verify --repair` to rewrite the manifest from the primary "
            "(once the replica's other manifests prove it holds this store)")


def held_manifests(location: Location) -> dict[int, dict[str, Any]]:
    """Every manifest the replica holds, by generation, newest first; ReplicaRefusedError when one is unreadable (the
    replica is "unknown": which store and timeline it holds cannot be proven)."""
    held = {}
    for number in location.generations():
        try:
            held[number] = location.read_manifest(number)
        except FileNotFoundError:
            continue  # removed since it was listed (a prune)
        except ManifestError as exc:
            raise ReplicaRefusedError(unknown_replica(location, exc)) from None
    return held


def history_problem(location: Location, held: dict[int, dict[str, Any]], ours: dict[str, Any]) -> str | None:
    """Why the replica may not take (or count for) generation `ours`: it holds another store's generations, one of
    a newer timeline, one newer than ours, or ours under another content (another timeline); None when it may."""
    name = location.name
    for number, theirs in held.items():
        if theirs.get("store_id") not in (None, ours["store_id"]):
            return (f"replica {name!r} holds generations of store {theirs['store_id']}, not of this store "
                    f"{ours['store_id']}: point the replica at a location of its own")
        if theirs.get("timeline", 1) > ours["timeline"]:
            return (f"replica {name!r} holds generation {number} of timeline {theirs['timeline']}, newer than this "
                    f"store's timeline {ours['timeline']} (restored elsewhere?): kept, not written")
    newest = max(held, default=0)
    same = held.get(ours["generation"])
    if same is not None and same.get("checksum") != ours["checksum"]:
        return (f"replica {name!r} holds generation {ours['generation']} of timeline {same.get('timeline', 1)} "
                f"(written before this store was restored to timeline {ours['timeline']}), and generations up to "
                f"{newest}: kept; the next checkpoint is numbered past {newest}")
    if newest > ours["generation"]:
        return (f"replica {name!r} holds generation {newest} (timeline {held[newest].get('timeline', 1)}), newer than "
                f"this store's {ours['generation']} (timeline {ours['timeline']}): kept, not written or counted; the "
                f"next checkpoint is numbered past {newest}")
    return None


def refuse_another_history(location: Location, ours: dict[str, Any], status: "ReplicaStatus") -> None:
    """Raise ReplicaRefusedError unless the replica may take generation `ours`; notes its newest generation."""
    held = held_manifests(location)
    status.newest_held = max(held, default=None)
    problem = history_problem(location, held, ours)
    if problem:
        raise ReplicaRefusedError(problem)


def confirm_held(location: Location, ours: dict[str, Any]) -> None:
    """A replica confirms a generation only once it holds it after its own pruning: its manifest read back as ours,
    among its kept generations, with every file it names there at its size (each was read back when copied)."""
    held = held_manifests(location)
    if held.get(ours["generation"], {}).get("checksum") != ours["checksum"]:
        raise ReplicaCopyError(f"{location.name}: generation {ours['generation']} is not held after its pruning "
                               f"(it keeps {', '.join(map(str, held)) or 'none'}): not confirmed")
    problem = history_problem(location, held, ours)
    if problem:
        raise ReplicaRefusedError(problem)
    sizes = location.segment_files()
    wrong = [name for name, entry in files_of(ours).items() if sizes.get(name) != entry.bytes]
    if wrong:
        raise ReplicaCopyError(f"{location.name}: {len(wrong)} file(s) of generation {ours['generation']} missing or "
                               f"of another size after its pruning ({wrong[0]}): not confirmed")


@dataclass
class ReplicaStatus:
    name: str
    url: str
    ok: bool | None = None  # None: not tried yet in this process
    generation: int | None = None  # the generation this replica confirmed last
    error: str | None = None
    attempts: int = 0  # file operations tried, retries included, in the last replication
    files_sent: int = 0  # in the last replication: only what the replica lacked
    bytes_sent: int = 0
    seconds: float = 0.0
    checked_at: str | None = None
    confirmed: set[str] = field(default_factory=set)  # files it holds whose hash was confirmed (not shown)
    newest_held: int | None = None  # its newest generation when that was not ours: later ones are numbered past it

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key not in ("confirmed", "newest_held")}


CopyListener = Callable[[str, int, str], None]  # (replica, generation, file) after each verified file


@dataclass
class Replicator:
    """Copies each new generation to every configured replica and keeps their last K generations."""

    settings: StoreSettings
    statuses: dict[str, ReplicaStatus] = field(default_factory=dict)
    on_copied: CopyListener | None = None

    def __post_init__(self) -> None:
        for replica in self.settings.replicas:
            self.statuses[replica.name] = ReplicaStatus(replica.name, redact_url(replica.url))

    def _retrying(self, status: ReplicaStatus, redact: Callable[[str], str]) -> Retrying:
        def count(_state: Any) -> None:
            status.attempts += 1

        return Retrying(
            stop=stop_after_attempt(self.settings.replica_attempts),
            wait=wait_exponential(multiplier=self.settings.replica_backoff_seconds, max=30),
            retry=retry_if_not_exception_type(ReplicaRefusedError),
            before=count,
            before_sleep=lambda state: log.warning(
                "replica %s: attempt %d failed (%s), retrying", status.name, state.attempt_number,
                redact(str(state.outcome.exception())) if state.outcome else "?"),
            reraise=True,
        )

    def replicate(self, store_path: Path, generation: int, manifest: bytes,
                  confirmed: dict[str, set[str]]) -> list[ReplicaStatus]:
        """Copy one primary generation to every replica; never raises for a replica's failure. `confirmed`: by
        replica, the files whose hash it was seen to hold; each status's `confirmed` says what it holds now."""
        for replica in self.settings.replicas:
            status = self.statuses[replica.name]
            status.attempts, status.error, status.files_sent, status.bytes_sent = 0, None, 0, 0
            status.confirmed, status.newest_held = set(confirmed.get(replica.name, ())), None
            started = time.perf_counter()
            redact = redactor(replica)
            try:
                self._replicate_one(Location.replica(replica), store_path, generation, manifest, status)
                status.ok, status.generation = True, generation
            except Exception as exc:  # noqa: BLE001 - any failure of a replica is reported, not raised
                status.ok = False
                status.error = redact(f"generation {generation} not confirmed after {status.attempts} attempt(s): "
                                      f"{type(exc).__name__}: {exc}")
                log.error("replica %s (%s): %s", status.name, status.url, status.error)
            status.seconds = round(time.perf_counter() - started, 3)
            status.checked_at = datetime.now(timezone.utc).isoformat()
        return list(self.statuses.values())

    def _replicate_one(self, location: Location, store_path: Path, generation: int, manifest: bytes,
                       status: ReplicaStatus) -> None:
        retrying = self._retrying(status, location.redact)
        ours = parse_manifest(manifest, "primary manifest")
        retrying(refuse_another_history, location, ours, status)
        held = retrying(location.segment_files)
        for name, entry in sorted(files_of(parse_manifest(manifest, "primary manifest")).items()):
            relative, expected = f"{SEGMENTS}/{name}", (entry.sha256, entry.bytes)
            if held.get(name) == entry.bytes and (name in status.confirmed or retrying(location.holds, relative, expected)):
                status.confirmed.add(name)
                continue  # content-addressed, and its hash confirmed: the same file
            retrying(location.put_file, store_path / SEGMENTS / name, relative, expected)
            status.confirmed.add(name)
            status.files_sent += 1
            status.bytes_sent += entry.bytes
            if self.on_copied:
                self.on_copied(location.name, generation, name)
        name = manifest_name(generation)
        retrying(location.put_file, store_path / MANIFESTS / name, f"{MANIFESTS}/{name}",
                 (hashlib.sha256(manifest).hexdigest(), len(manifest)))
        status.files_sent += 1
        status.bytes_sent += len(manifest)
        if self.on_copied:
            self.on_copied(location.name, generation, name)
        try:
            status.confirmed &= retrying(self._prune, location)
        except ReplicaRefusedError:
            raise
        except Exception as exc:  # noqa: BLE001 - leftovers only cost space; what it holds is confirmed below
            log.warning("replica %s: could not remove old generations: %s", location.name, location.redact(str(exc)))
        retrying(confirm_held, location, ours)

    def _prune(self, location: Location) -> set[str]:
        """Keep the newest K generations with a valid manifest and the files they name; remove the rest (and the
        temporary files of copies cut short). Returns the names of the files kept."""
        kept: list[dict[str, Any]] = []
        for generation in location.generations():
            if len(kept) < self.settings.keep_generations:
                try:
                    kept.append(location.read_manifest(generation))
                    continue
                except FileNotFoundError:
                    pass
                except ManifestError as exc:  # whose generation it is cannot be told: nothing is removed
                    raise ReplicaRefusedError(unknown_replica(location, exc)) from None
            location.remove(f"{MANIFESTS}/{manifest_name(generation)}")
        named = referenced_files(kept)
        for name in location.segment_files():
            if name not in named:
                location.remove(f"{SEGMENTS}/{name}")
        for leftover in location.leftovers():
            location.remove(leftover)
        return named

    def probe(self, name: str) -> ReplicaStatus:
        """What a replica holds now, without copying or hashing: its newest generation that has a manifest."""
        replica = next(r for r in self.settings.replicas if r.name == name)
        status = ReplicaStatus(name, redact_url(replica.url), checked_at=datetime.now(timezone.utc).isoformat())
        try:
            held = Location.replica(replica).generations()
        except Exception as exc:  # noqa: BLE001 - reported in the status
            status.ok, status.error = False, redactor(replica)(f"unreachable: {type(exc).__name__}: {exc}")
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
