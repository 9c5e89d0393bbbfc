"""What a backfill starts before its flow: the model only when the run will embed (decided on a real store and folder)."""

from __future__ import annotations

import os
import tomllib

import numpy as np

from vectormill.connectors.filesystem import FilesystemSource
from vectormill.flows.config import parse_config
from vectormill.flows.warmup import will_embed
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.records import DocumentFailed, DocumentUpsert

CONFIG = """
[store]
path = "store"

[[sources]]
name = "docs"
type = "filesystem"
root = "docs"
"""
WIKI = """
[[sources]]
name = "wiki"
type = "mediawiki"
api_url = "http://127.0.0.1:9/api.php"
"""


def config_in(tmp_path, extra: str = ""):
    (tmp_path / "docs").mkdir(exist_ok=True)
    return parse_config(tomllib.loads(CONFIG + extra), tmp_path, environ={})


def store_everything_listed(config) -> None:
    """A store holding every document of the folder at its current version (no chunks: the listing is what counts)."""
    source = FilesystemSource(config.source("docs"))
    with FaissStore.open(config.store, model=config.embedding.model, dimension=8) as store:
        store.write([DocumentUpsert("docs", ref.id, ref.version, ref.id, ref.id, ref.modified, (),
                                    np.zeros((0, 8), dtype=np.float32)) for ref in source.list_documents()])
        store.checkpoint()


def test_a_new_store_will_embed(tmp_path):
    config = config_in(tmp_path)
    assert will_embed(config, list(config.sources), full=False)


def test_an_unchanged_folder_will_not_and_a_new_or_changed_file_will(tmp_path):
    config = config_in(tmp_path)
    for name in ("a.txt", "b.txt"):
        (tmp_path / "docs" / name).write_text(f"text of {name}\n")
    store_everything_listed(config)
    assert not will_embed(config, list(config.sources), full=False)
    assert not will_embed(config, list(config.sources), full=True)

    stat = (tmp_path / "docs" / "b.txt").stat()
    os.utime(tmp_path / "docs" / "b.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert will_embed(config, list(config.sources), full=False)
    store_everything_listed(config)
    (tmp_path / "docs" / "c.txt").write_text("new\n")
    assert will_embed(config, list(config.sources), full=False)
    # A deletion alone embeds nothing.
    store_everything_listed(config)
    (tmp_path / "docs" / "a.txt").unlink()
    assert not will_embed(config, list(config.sources), full=False)


def test_a_document_stuck_by_its_sources_max_document_attempts_will_not_embed(tmp_path):
    config = config_in(tmp_path, "max_document_attempts = 2\n")
    (tmp_path / "docs" / "a.txt").write_text("text of a\n")
    store_everything_listed(config)
    (tmp_path / "docs" / "broken.txt").write_bytes(b"\xff not UTF-8\n")
    [ref] = [ref for ref in FilesystemSource(config.source("docs")).list_documents() if ref.id == "broken.txt"]
    with FaissStore.open(config.store) as store:
        store.write([DocumentFailed("docs", ref.id, ref.to_json(), "not UTF-8 text", "2026-11-01T00:00:00+00:00")])
        assert will_embed(config, list(config.sources), full=False)  # one failed run: it is tried again
        store.write([DocumentFailed("docs", ref.id, ref.to_json(), "not UTF-8 text", "2026-11-02T00:00:00+00:00")])
        store.checkpoint()
    # Failed in 2 runs, the source's max_document_attempts: stuck, fetched again only once it changes.
    assert not will_embed(config, list(config.sources), full=False)
    assert will_embed(config, list(config.sources), full=True)


def test_sources_behind_http_and_dask_runs_are_left_to_the_flow(tmp_path):
    config = config_in(tmp_path, WIKI)
    store_everything_listed(config)
    # The wiki is not asked (no request before the run; nothing listens on that port anyway).
    assert not will_embed(config, [config.source("wiki")], full=False)
    (tmp_path / "docs" / "new.txt").write_text("new\n")
    assert will_embed(config, list(config.sources), full=False)
    dask = parse_config(tomllib.loads(CONFIG + '[execution]\ntask_runner = "dask"\n'), tmp_path, environ={})
    assert not will_embed(dask, list(dask.sources), full=False)  # the workers load their own models
