"""vectormill's public Python API: read the store from your app.

    import vectormill
    store = vectormill.open_store("vectormill.toml")   # the config the command line reads
    for hit in store.search("how do I reset my password?", k=5, filter={"source": "wiki"}):
        print(hit["score"], hit["document"], hit["pages"], hit["text"][:80])
    store.get("reports/2026-q1.pdf")

Hits are dicts with the fields of `vectormill search --json`. The store object follows new checkpoints
without being reopened. Importing this package loads nothing else: `open_store` loads the reader (never Prefect).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .reader import Store

__all__ = ["open_store"]


def open_store(config_file: str | os.PathLike[str] | None = None) -> "Store":
    """Open the store a vectormill config file names (default: $VECTORMILL_CONFIG, else ./vectormill.toml)."""
    from .reader import Store

    return Store.open(config_file)
