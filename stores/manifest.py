"""Checkpoint manifests: which files make a generation, their sha256, and a checksum of the manifest itself.

Pure functions over bytes and dicts, plus one helper that hashes a file in blocks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT = 1


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Problem:
    where: str  # "primary" or a replica name
    file: str
    detail: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _body_checksum(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()


def build_manifest(body: dict[str, Any], files: dict[str, tuple[str, int]]) -> bytes:
    """`files` maps a file name to (sha256, size in bytes)."""
    full = dict(body, format=FORMAT, files={name: {"sha256": h, "bytes": n} for name, (h, n) in files.items()})
    full["checksum"] = _body_checksum(full)
    return json.dumps(full, indent=2, sort_keys=True).encode()


def parse_manifest(data: bytes, where: str = "manifest") -> dict[str, Any]:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or "checksum" not in manifest:
        raise ManifestError(f"{where}: no checksum")
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    if _body_checksum(body) != manifest["checksum"]:
        raise ManifestError(f"{where}: manifest checksum mismatch (edited or damaged)")
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{where}: unknown manifest format {manifest.get('format')!r}")
    return manifest


def check_files(manifest: dict[str, Any], actual: dict[str, tuple[str, int] | None], where: str) -> list[Problem]:
    """Compare listed files with what is there; `actual` maps a name to (sha256, size) or None if missing."""
    problems = []
    for name, expected in manifest["files"].items():
        found = actual.get(name)
        if found is None:
            problems.append(Problem(where, name, "missing"))
        elif found[1] != expected["bytes"]:
            problems.append(Problem(where, name, f"size {found[1]} bytes, manifest says {expected['bytes']}"))
        elif found[0] != expected["sha256"]:
            problems.append(Problem(where, name, "sha256 mismatch (file corrupt)"))
    return problems
