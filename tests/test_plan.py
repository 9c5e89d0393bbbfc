"""The run plan (flows/plan.py) with a real filesystem source and a real store: no Prefect, no model."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np

from vectormill.connectors.filesystem import FilesystemSource
from vectormill.connectors.settings import FilesystemSourceSettings
from vectormill.flows.plan import Window, plan_source
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.records import ChunkRecord, DocumentUpsert
from vectormill.stores.settings import StoreSettings


def counts() -> dict[str, int]:
    return {"seen": 0, "unchanged": 0}


def stored(store: FaissStore, source: FilesystemSource, document: str, version: str) -> None:
    chunk = ChunkRecord(hashlib.sha256(document.encode()).hexdigest()[:32], 0, "text", "hash", None, None, 1)
    store.write([DocumentUpsert(source.name, document, version, document, document, None, (chunk,),
                                np.ones((1, 2), dtype=np.float32) / np.sqrt(2))])


def setup(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    for name in ("same.md", "changed.md", "new.md"):
        (root / name).write_text(f"# {name}\n")
    source = FilesystemSource(FilesystemSourceSettings(name="docs", type="filesystem", root=root))
    store = FaissStore.open(StoreSettings(path=tmp_path / "store"), model="m", dimension=2)
    versions = {ref.id: ref.version for ref in source.list_documents()}
    stored(store, source, "same.md", versions["same.md"])
    stored(store, source, "changed.md", "an older version")
    stored(store, source, "gone.md", "1-1")
    return root, source, store


def test_a_full_listing_fetches_new_and_changed_documents_and_deletes_the_missing(tmp_path):
    _, source, store = setup(tmp_path)
    seen = counts()
    plan = plan_source(source, store, seen, full=False, max_attempts=10)
    assert sorted((ref.id, is_new) for ref, is_new in plan.refs) == [("changed.md", False), ("new.md", True)]
    assert plan.deletions == ["gone.md"]  # filled once the listing is read
    assert (plan.cursor, plan.incremental, seen) == (None, False, {"seen": 3, "unchanged": 1})
    store.close()


def test_a_window_redoes_what_was_modified_in_it_and_deletes_nothing(tmp_path):
    root, source, store = setup(tmp_path)
    old = datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp()
    os.utime(root / "changed.md", (old, old))
    seen = counts()
    plan = plan_source(source, store, seen, full=False, max_attempts=10,
                       window=Window(since=datetime(2024, 1, 1, tzinfo=timezone.utc)))
    assert sorted(ref.id for ref, _ in plan.refs) == ["new.md", "same.md"]  # unchanged, but in the window
    assert (plan.deletions, plan.cursor, seen) == ([], None, {"seen": 2, "unchanged": 0})
    store.close()


def test_planning_imports_no_prefect(tmp_path):
    setup(tmp_path)[2].close()
    code = ("import sys\nfrom vectormill.connectors.filesystem import FilesystemSource\n"
            "from vectormill.connectors.settings import FilesystemSourceSettings\n"
            "from vectormill.flows.plan import plan_source\nfrom vectormill.stores.faiss_store import FaissStore\n"
            "from vectormill.stores.settings import StoreSettings\n"
            f"source = FilesystemSource(FilesystemSourceSettings(name='docs', type='filesystem', root={str(tmp_path / 'docs')!r}))\n"
            f"store = FaissStore.open(StoreSettings(path={str(tmp_path / 'store')!r}), model='m', dimension=2)\n"
            "plan = plan_source(source, store, {'seen': 0, 'unchanged': 0}, full=False, max_attempts=10)\n"
            "print(len(list(plan.refs)), 'PREFECT' if 'prefect' in sys.modules else 'NO PREFECT')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["2", "NO", "PREFECT"], result.stderr
