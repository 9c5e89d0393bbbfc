"""Generation manifests: the segments that make a generation, the sha256 and size of every file they name,
and a checksum of the manifest itself. Pure functions over bytes and dicts.

Segment files are content-addressed (named by their sha256), so generations share every file
they have in common and a copy only needs the names it lacks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

FORMAT = 2
MANIFEST_SUFFIX = ".json"
# Folders of a store and of each replica: one manifest per generation, and the segment files they name.
MANIFESTS = "manifests"
SEGMENTS = "segments"


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Problem:
    where: str  # "primary" or a replica name
    file: str
    detail: str


@dataclass(frozen=True)
class FileEntry:
    name: str  # "<sha256>.<kind>"
    sha256: str
    bytes: int


@dataclass(frozen=True)
class SegmentEntry:
    """One segment of a generation. `index` is None for a segment that adds no vector (only other rows)."""

    seq: int  # never reused in a store
    kind: str  # "flat": exact, its vectors read back from the index; "trained": built with the factory
    vectors: int  # rows in its index, deleted ones included
    index: FileEntry | None
    rows: FileEntry
    # An approximate index's recall@10 on its own vectors and the search effort it holds at (stores/recall.py);
    # None for an exact one (and for segments written before the recall guard).
    recall: float | None = None
    effort: str | None = None

    @property
    def files(self) -> list[FileEntry]:
        return [entry for entry in (self.index, self.rows) if entry is not None]


def manifest_name(generation: int) -> str:
    return f"{generation:08d}{MANIFEST_SUFFIX}"


def generation_of(name: str) -> int | None:
    """The generation a manifest file name stands for, or None for any other name."""
    stem = name.removesuffix(MANIFEST_SUFFIX)
    return int(stem) if name.endswith(MANIFEST_SUFFIX) and len(stem) == 8 and stem.isdigit() else None


def body_checksum(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def _file_dict(entry: FileEntry | None) -> dict[str, Any] | None:
    return None if entry is None else {"name": entry.name, "sha256": entry.sha256, "bytes": entry.bytes}


def build_manifest(body: dict[str, Any], segments: Sequence[SegmentEntry]) -> bytes:
    """`body` holds the generation's facts (generation, lsn, counts, model…); files are listed from `segments`."""
    full = dict(body, format=FORMAT, segments=[
        {"seq": s.seq, "kind": s.kind, "vectors": s.vectors, "index": _file_dict(s.index), "rows": _file_dict(s.rows)}
        | ({"recall": s.recall, "effort": s.effort} if s.recall is not None else {}) for s in segments])
    full["checksum"] = body_checksum(full)
    return json.dumps(full, indent=1, sort_keys=True).encode()


def parse_manifest(data: bytes, where: str = "manifest", expected_format: int = FORMAT) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or "checksum" not in manifest:
        raise ManifestError(f"{where}: no checksum")
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    if body_checksum(body) != manifest["checksum"]:
        raise ManifestError(f"{where}: manifest checksum mismatch (edited or damaged)")
    if manifest.get("format") != expected_format:
        raise ManifestError(f"{where}: unknown manifest format {manifest.get('format')!r}")
    return manifest


def _file_entry(data: dict[str, Any] | None) -> FileEntry | None:
    return None if data is None else FileEntry(data["name"], data["sha256"], data["bytes"])


def segments_of(manifest: dict[str, Any]) -> list[SegmentEntry]:
    return [SegmentEntry(s["seq"], s["kind"], s["vectors"], _file_entry(s["index"]), _file_entry(s["rows"]),
                         s.get("recall"), s.get("effort")) for s in manifest["segments"]]


def files_of(manifest: dict[str, Any]) -> dict[str, FileEntry]:
    return {entry.name: entry for segment in segments_of(manifest) for entry in segment.files}


def referenced_files(manifests: Iterable[dict[str, Any]]) -> set[str]:
    return {name for manifest in manifests for name in files_of(manifest)}


def manifest_bytes(manifest: dict[str, Any]) -> int:
    """Bytes of every file a generation names (shared files counted in each generation)."""
    return sum(entry.bytes for entry in files_of(manifest).values())


def check_files(manifest: dict[str, Any], actual: dict[str, tuple[str, int] | None], where: str) -> list[Problem]:
    """Compare listed files with what is there; `actual` maps a name to (sha256, size) or None if missing."""
    problems = []
    for name, expected in files_of(manifest).items():
        found = actual.get(name)
        if found is None:
            problems.append(Problem(where, name, "missing"))
        elif found[1] != expected.bytes:
            problems.append(Problem(where, name, f"size {found[1]} bytes, manifest says {expected.bytes}"))
        elif found[0] != expected.sha256:
            problems.append(Problem(where, name, "sha256 mismatch (file corrupt)"))
    return problems
