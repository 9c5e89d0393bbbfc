"""Shares that are not mounted, read through fsspec: S3 buckets (s3fs) and SMB shares (smbprotocol).

A listing is complete or raises SourceError (one line, no secret in it), so no run plans deletions
from part of one; a file is streamed from the share in blocks, never fetched whole before the size
limit is checked. S3's throttling (`SlowDown`, 503) is retried by s3fs and by botocore's "adaptive"
retry mode, which also slows this client down while the store throttles it.
"""

from __future__ import annotations

import json
import contextlib
import posixpath
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any, BinaryIO

import fsspec

from .errors import DocumentError, DocumentGone, SourceError
from .file_trees import FileEntry, iso
from .secrets import resolve_secret

READ_BLOCK_BYTES = 4 * 1024 * 1024  # what a file is fetched by from the share
S3_DEFAULTS: dict[str, Any] = {
    # botocore: retries with backoff on throttling and 5xx; "adaptive" also rate-limits this client.
    "config_kwargs": {"retries": {"max_attempts": 8, "mode": "adaptive"}, "connect_timeout": 10,
                      "read_timeout": 60},
    "use_listings_cache": False,
}
# Read while others may keep writing, renaming or deleting (SMB locks a file for exclusive use otherwise).
SMB_DEFAULTS: dict[str, Any] = {"share_access": "rwd", "register_session_retries": 1}


def storage_options(settings) -> dict[str, Any]:
    """The fsspec options of a source's URL root: defaults, the config's `storage_options`, then its secret."""
    scheme = settings.root.split("://", 1)[0].lower()
    options = json.loads(json.dumps(S3_DEFAULTS if scheme == "s3" else SMB_DEFAULTS))
    _merge(options, settings.storage_options)
    if settings.storage_secret_env or settings.storage_secret_block:
        text = resolve_secret(env=settings.storage_secret_env, block=settings.storage_secret_block,
                              what=f"storage secret of source {settings.name!r}")
        try:
            secret = json.loads(text)
        except ValueError:
            secret = None
        if not isinstance(secret, dict):
            raise SourceError(f"storage secret of source {settings.name!r} is not a JSON object of storage options "
                              '(e.g. {"password": "…"} or {"key": "…", "secret": "…"})')
        _merge(options, secret)
    options["skip_instance_cache"] = True  # a source's own client: its settings may change between runs
    return options


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def secret_values(options: Any) -> list[str]:
    """Every string in the options that could be a secret (all of them: messages carry none)."""
    if isinstance(options, dict):
        return [value for item in options.values() for value in secret_values(item)]
    return [options] if isinstance(options, str) and len(options) >= 4 else []


class RemoteTree:
    """Files under a URL root. Versions: the object's ETag and size (S3), else its mtime and size."""

    def __init__(self, url: str, options: dict[str, Any], source: str):
        self.url, self.options, self.source = url, options, source
        # The URL without user:password@, for messages.
        self.root_label = url if "@" not in url.split("/", 3)[2] else url.split("://")[0] + "://" + url.split("@", 1)[1]
        self._secrets = sorted(set(secret_values(options)) - {"rwd"}, key=len, reverse=True)
        self.is_s3 = url.lower().startswith("s3://")
        # One SMB connection carries every request, and smbprotocol fails requests sent at once from several
        # threads once the server's credits run out ("requires 1 credits but only 0 credits are available"):
        # fetch tasks take turns on it. s3fs runs each request on its own event loop and needs no turns.
        self._turns = contextlib.nullcontext() if self.is_s3 else threading.Lock()
        self._fs: fsspec.AbstractFileSystem | None = None
        self.root = ""

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        """The share's client, connected on first use and again after a listing failed (a share that went
        away and came back: an SMB session does not survive its server's restart)."""
        if self._fs is None:
            try:
                self._fs, root = fsspec.core.url_to_fs(self.url, **self.options)
            except Exception as exc:  # noqa: BLE001 - any client's error: connection refused, bad option…
                raise SourceError(self._say(f"source {self.source!r}: cannot reach {self.root_label}: "
                                            f"{type(exc).__name__}: {exc}; nothing is deleted")) from None
            self.root = root.rstrip("/")
        return self._fs

    def _say(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return " ".join(text.split())

    def entries(self) -> Iterator[FileEntry]:
        fs = self.fs
        try:
            # s3fs lists a prefix in one paginated walk; others walk folder by folder, raising on any error
            # (fsspec's default leaves a folder it cannot read out, silently).
            with self._turns:
                found = fs.find(self.root, detail=True) if self.is_s3 else fs.find(self.root, detail=True,
                                                                                    on_error="raise")
            if not found and self.is_s3 and not fs.exists(self.root.split("/", 1)[0]):
                raise FileNotFoundError(f"bucket {self.root.split('/', 1)[0]!r} does not exist")
        except Exception as exc:  # noqa: BLE001 - a listing error of any client fails the source
            self._fs = None
            raise SourceError(self._say(f"source {self.source!r}: cannot list {self.root_label}: "
                                        f"{type(exc).__name__}: {exc}; the listing would be incomplete, so nothing "
                                        "is deleted")) from None
        for name in sorted(found):
            info = found[name]
            if info.get("type") == "file":
                yield self._entry(info)

    def _entry(self, info: dict[str, Any]) -> FileEntry:
        relative = posixpath.relpath(info["name"].rstrip("/"), self.root)
        size = int(info.get("size") or 0)
        etag = str(info.get("ETag") or "").strip('"')
        modified = info.get("LastModified") or info.get("mtime")
        if isinstance(modified, datetime):
            modified_iso, stamp = modified.isoformat(), modified.timestamp()
        elif modified is not None:
            modified_iso, stamp = iso(float(modified)), float(modified)
        else:
            modified_iso, stamp = None, 0.0
        return FileEntry(relative, size, f"{size}-{etag}" if etag else f"{size}-{round(stamp * 1e9)}", modified_iso)

    def _path(self, path: str) -> str:
        self.fs  # noqa: B018 - connects, which sets self.root
        normal = posixpath.normpath(path)
        if normal.startswith(("../", "/")) or normal in (".", ".."):
            raise DocumentError(f"refused: path leaves the source root {self.root_label!r}")
        return f"{self.root}/{normal}"

    def location(self, path: str) -> str:
        return f"{self.root_label.rstrip('/')}/{path}"

    def open(self, path: str) -> tuple[BinaryIO, FileEntry]:
        full = self._path(path)
        try:
            with self._turns:
                info = self.fs.info(full)
                if info.get("type") != "file":
                    raise DocumentError("not a regular file")
                entry = self._entry(info)
                # s3fs checks each block's ETag against the first: an object overwritten while read fails the read.
                handle = self.fs.open(full, "rb", block_size=READ_BLOCK_BYTES)
        except DocumentError:
            raise
        except FileNotFoundError:
            raise DocumentGone(f"no longer on the share {self.root_label}") from None
        except Exception as exc:  # noqa: BLE001
            raise DocumentError(self._say(f"cannot read from {self.root_label}: {type(exc).__name__}: {exc}")) \
                from None
        return _Guarded(handle, self._say, self._turns), entry

    def unchanged(self, handle: BinaryIO, entry: FileEntry) -> bool:
        try:
            with self._turns:
                return self._entry(self.fs.info(self._path(entry.path))).version == entry.version
        except FileNotFoundError:
            return False
        except Exception as exc:  # noqa: BLE001
            raise DocumentError(self._say(f"cannot read from {self.root_label}: {type(exc).__name__}: {exc}")) \
                from None


class _Guarded:
    """A remote file whose read errors become DocumentError with the secrets masked."""

    def __init__(self, handle: Any, say, turns):
        self._handle, self._say, self._turns = handle, say, turns

    def read(self, size: int = -1) -> bytes:
        try:
            with self._turns:
                return self._handle.read(size)
        except Exception as exc:  # noqa: BLE001
            raise DocumentError(self._say(f"reading it from the share failed: {type(exc).__name__}: {exc}")) \
                from None

    def close(self) -> None:
        with self._turns:
            self._handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
