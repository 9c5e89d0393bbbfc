"""Fault-injecting fsspec filesystems for replicas: uploads (put_file) are, one in `every` at random (seeded),
corrupted (one byte flipped, same size), truncated or silently dropped, after the upload itself succeeded.

`faulty:///path` is a local folder; `faultys3://bucket/path` is S3 through s3fs (its usual storage options apply).
Register them with `register()`; their own storage options are `seed`, `every` and `faults`. `log` lists
(path, fault). fsspec caches one instance per set of options, so the seeded sequence runs on across the store's
uploads (leave out `skip_instance_cache`: a fresh instance would start the sequence again).
"""

from __future__ import annotations

import random

import fsspec
from fsspec.asyn import AsyncFileSystem, sync
from fsspec.implementations.local import LocalFileSystem
from s3fs import S3FileSystem

FAULTS = ("corrupt", "truncate", "drop")


class FaultInjection:
    """Put in front of a filesystem class: its put_file damages one upload in `every` once it has landed."""

    def __init__(self, *args, seed: int = 0, every: int = 5, faults: tuple[str, ...] = FAULTS, **kwargs):
        super().__init__(*args, **kwargs)
        self.random = random.Random(seed)
        self.every = every
        self.faults = tuple(faults)
        self.log: list[tuple[str, str]] = []

    def put_file(self, lpath, rpath, **kwargs):
        if isinstance(self, AsyncFileSystem):  # s3fs: its own (async) upload, not the generic open-and-write
            sync(self.loop, self._put_file, lpath, rpath, **kwargs)
        else:
            super().put_file(lpath, rpath, **kwargs)
        if self.random.randrange(self.every):
            return
        fault = self.random.choice(self.faults)
        path = self._strip_protocol(rpath)
        self.log.append((path, fault))
        if fault == "drop":
            self.rm_file(path)
            return
        data = bytearray(self.cat_file(path))
        if fault == "truncate":
            del data[len(data) // 2:]
        elif data:
            data[len(data) // 2] ^= 0x20
        self.pipe_file(path, bytes(data))
        self.invalidate_cache(path)


class FaultyFileSystem(FaultInjection, LocalFileSystem):
    protocol = "faulty"

    @classmethod
    def _strip_protocol(cls, path):
        path = fsspec.utils.stringify_path(path)
        if path.startswith("faulty://"):
            path = path[len("faulty://"):]
        return super()._strip_protocol(path)


class FaultyS3FileSystem(FaultInjection, S3FileSystem):
    protocol = ("faultys3", "s3")


def register() -> None:
    fsspec.register_implementation("faulty", FaultyFileSystem, clobber=True)
    fsspec.register_implementation("faultys3", FaultyS3FileSystem, clobber=True)
