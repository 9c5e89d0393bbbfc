"""A fault-injecting fsspec filesystem for replicas: `faulty:///path` is a local folder whose uploads (put_file) are,
one in `every` at random (seeded), corrupted (one byte flipped, same size), truncated or silently dropped.

Register it with `register()`; its storage options are `seed`, `every` and `faults`. `log` lists (path, fault).
"""

from __future__ import annotations

import os
import random

import fsspec
from fsspec.implementations.local import LocalFileSystem

FAULTS = ("corrupt", "truncate", "drop")


class FaultyFileSystem(LocalFileSystem):
    protocol = "faulty"

    def __init__(self, seed: int = 0, every: int = 5, faults: tuple[str, ...] = FAULTS, **kwargs):
        super().__init__(**kwargs)
        self.random = random.Random(seed)
        self.every = every
        self.faults = tuple(faults)
        self.log: list[tuple[str, str]] = []

    @classmethod
    def _strip_protocol(cls, path):
        path = fsspec.utils.stringify_path(path)
        if path.startswith("faulty://"):
            path = path[len("faulty://"):]
        return super()._strip_protocol(path)

    def put_file(self, lpath, rpath, **kwargs):
        super().put_file(lpath, rpath, **kwargs)
        if self.random.randrange(self.every):
            return
        fault = self.random.choice(self.faults)
        path = self._strip_protocol(rpath)
        self.log.append((path, fault))
        if fault == "drop":
            os.remove(path)
            return
        with open(path, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if fault == "truncate":
                handle.truncate(size // 2)
            elif size:
                handle.seek(size // 2)
                byte = handle.read(1)
                handle.seek(size // 2)
                handle.write(bytes([byte[0] ^ 0x20]))


def register() -> None:
    fsspec.register_implementation("faulty", FaultyFileSystem, clobber=True)
