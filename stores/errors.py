"""Errors of the store a user can act on: one line saying what is wrong and what to run."""

from __future__ import annotations


class StoreError(RuntimeError):
    pass


class StoreCorruptError(StoreError):
    pass
