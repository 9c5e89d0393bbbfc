"""The public Python API (`vectormill.open_store`) and `search --filter`, on a store of real embeddings."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import vectormill
from vectormill.flows.search import HIT_FIELDS, RANK_FIELDS
from vectormill.stores.faiss_store import FaissStore, StoreError
from vectormill.stores.settings import StoreSettings

from .cli_process import run_many
from .servers.processes import free_port
from .corpus import TOPICS
from .topic_store import PLACES, topic_upsert, write_topic_store


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return write_topic_store(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def store(config):
    with vectormill.open_store(config) as opened:
        yield opened


def test_open_store_finds_each_known_sentence_and_imports_no_prefect(config):
    code = ("import json, sys, vectormill\n"
            f"store = vectormill.open_store({str(config)!r})\n"
            f"hits = {{topic: store.search(sentence, k=1)[0] for topic, sentence in {TOPICS!r}.items()}}\n"
            "print(json.dumps({'prefect': 'prefect' in sys.modules, 'hits': hits}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["prefect"] is False
    for topic, hit in out["hits"].items():
        assert (hit["source"], hit["document"], hit["text"]) == (PLACES[topic][0], PLACES[topic][1], TOPICS[topic])
        assert tuple(hit) == HIT_FIELDS + RANK_FIELDS and hit["pages"] == [2] and hit["modified"] == PLACES[topic][2]


def test_filters_choose_the_documents_before_the_top_k(store):
    query = TOPICS["baking"]
    assert store.search(query, k=1)[0]["document"] == "recipes/baking.pdf"
    hits = store.search(query, k=9, filter={"source": "wiki"})
    assert len(hits) == 9 and {hit["source"] for hit in hits} == {"wiki"}  # 3 wiki documents of 3 chunks
    hits = store.search(query, k=10, filter={"document_prefix": "reports/", "modified_after": "2026-01-01"})
    assert {hit["document"] for hit in hits} == {"reports/chess.pdf"} and len(hits) == 3
    hits = store.search(query, k=10, filter={"modified_before": "2026-01-01T00:00:00Z"})
    assert {hit["document"] for hit in hits} == {"Science/Volcanoes", "reports/taxes.pdf"}
    hits = store.search(query, k=10, filter={"source": ["docs", "wiki"], "metadata": {"title": "Sailing"}})
    assert {hit["document"] for hit in hits} == {"Sport/Sailing"}
    assert store.search(query, k=3, filter={"source": "nowhere"}) == []
    with pytest.raises(ValueError, match="unknown filter key"):
        store.search(query, filter={"folder": "reports/"})


def test_each_mode_is_searched_and_vector_hits_keep_their_fields(store):
    assert [tuple(hit) for hit in store.search(TOPICS["chess"], k=2, mode="vector")] == [HIT_FIELDS] * 2
    assert store.search("Sicilian", k=3, mode="keyword")[0]["document"] == "reports/chess.pdf"
    hybrid = store.search("Sicilian pawn", k=3, mode="hybrid")
    assert hybrid[0]["document"] == "reports/chess.pdf" and hybrid[0]["keyword_rank"] == 1
    assert store.search(store.searcher.embed(TOPICS["chess"]), k=1)[0]["document"] == "reports/chess.pdf"
    with pytest.raises(StoreError, match="a query vector can only be searched in vector mode"):
        store.search(store.searcher.embed("x"), k=1, mode="hybrid")
    with pytest.raises(StoreError, match="search mode must be one of vector, keyword, hybrid"):
        store.search("x", mode="fuzzy")


def test_search_takes_a_vector_and_get_returns_a_document(store):
    vector = store.searcher.embed(TOPICS["chess"])
    assert store.search(vector.tolist(), k=1)[0]["document"] == "reports/chess.pdf"
    with pytest.raises(StoreError, match="384 finite numbers"):
        store.search([0.5, 0.5], k=1)
    document = store.get("reports/chess.pdf")
    assert document["source"] == "docs" and document["title"] == "Chess" and TOPICS["chess"] in document["text"]
    assert [chunk["position"] for chunk in document["chunks"]] == [0, 1, 2]
    assert store.get("no/such.pdf") is None


def test_a_long_lived_store_sees_new_writes_and_checkpoints_without_reopening(config, store):
    moved = topic_upsert("chess", lambda texts: np.stack([store.searcher.embed(text) for text in texts]),
                         document="archive/chess-copy.pdf")
    assert store.get("archive/chess-copy.pdf") is None
    settings = StoreSettings(path=config.parent / "store")
    with FaissStore.open(settings) as writer:
        writer.write([moved])
        assert store.get("archive/chess-copy.pdf")["document"] == "archive/chess-copy.pdf"  # pending: seen before a checkpoint
        writer.checkpoint()
        hits = store.search(TOPICS["chess"], k=2, filter={"document_prefix": "archive/"})
        assert [hit["document"] for hit in hits] == ["archive/chess-copy.pdf"] * 2
        from vectormill.stores.records import DocumentDelete

        writer.write([DocumentDelete(moved.source, "archive/chess-copy.pdf")])
        writer.checkpoint()
    assert store.search(TOPICS["chess"], k=2, filter={"document_prefix": "archive/"}) == []


def test_search_command_takes_a_filter_and_refuses_a_bad_one_in_one_line(config):
    bad_filters = (('{"sorce": "wiki"}', "error: unknown filter key(s) 'sorce'"),
                   ('{"source": ', "error: --filter is not JSON"))
    # One process for the command lines: a process start and its imports cost seconds.
    result, keyword, *refused = run_many(
        [["search", TOPICS["baking"], "-k", "2", "--json", "--filter", '{"source": "wiki"}', "--config", str(config)],
         ["search", 'VAT "returns', "--mode", "keyword", "-k", "1", "--json", "--config", str(config)],
         *(["search", "x", "--filter", bad, "--config", str(config)] for bad, _ in bad_filters)], cwd=config.parent,
        env=dict(os.environ))
    assert result["code"] == 0, result["stderr"][-3000:]
    hits = json.loads(result["stdout"])
    assert len(hits) == 2 and {hit["source"] for hit in hits} == {"wiki"} and tuple(hits[0]) == HIT_FIELDS + RANK_FIELDS
    assert keyword["code"] == 0, keyword["stderr"][-3000:]
    assert [(hit["document"], tuple(hit)) for hit in json.loads(keyword["stdout"])] == [("reports/taxes.pdf", HIT_FIELDS)]
    for (_, message), result in zip(bad_filters, refused, strict=True):
        assert result["code"] == 2 and "Traceback" not in result["stderr"]
        assert len(result["stderr"].strip().splitlines()) == 1 and result["stderr"].startswith(message), result["stderr"]


def test_queries_and_filters_past_the_limits_are_clear_errors_not_crashes(store):
    from vectormill.flows.search import QueryError
    from vectormill.stores.filters import FilterError

    with pytest.raises(QueryError, match="over the model's limit of 256 tokens: shorten it"):
        store.search("a paragraph-long question about lava " * 60)
    with pytest.raises(QueryError, match="the query is empty"):
        store.search(" \n ")
    with pytest.raises(FilterError, match="'metadata' holds 1000 entries, over the limit of 64"):
        store.search("lava", filter={"metadata": {f"key{i}": "x" for i in range(1000)}})
    with pytest.raises(QueryError, match="k must be a whole number"):
        store.search("lava", k=2.0)
    with pytest.raises(FilterError, match="unknown metadata key"):  # at the limit: SQLite ran it, and found none
        store.search("lava", filter={"metadata": {f"key{i}": "x" for i in range(64)}})


def test_a_damaged_store_is_one_clear_error_in_the_api_the_cli_and_the_service(tmp_path, config):
    from vectormill.stores.errors import StoreCorruptError

    damaged, file_store = tmp_path / "damaged", tmp_path / "file"
    for folder in (damaged, file_store):
        folder.mkdir()
        (folder / "vectormill.toml").write_text('[store]\npath = "store"\n')
    (damaged / "store").mkdir()
    (damaged / "store" / "identity.json").write_text('{"model": "all-MiniLM-L6-v2", "dimen')
    (file_store / "store").write_text("not a folder")
    with pytest.raises(StoreCorruptError, match="identity.json' is damaged"):
        vectormill.open_store(damaged / "vectormill.toml")
    with pytest.raises(StoreError, match="is a file, not a store's folder"):
        vectormill.open_store(file_store / "vectormill.toml")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        key = "VECTORMILL_SEARCH_API_KEY=a-key"
        results = run_many(
            [["search", "lava", "--config", str(damaged / "vectormill.toml")],
             ["search", "lava", "--config", str(file_store / "vectormill.toml")],
             [key, "serve-search", "--port", str(free_port()), "--config", str(damaged / "vectormill.toml")],
             [key, "serve-search", "--port", str(busy.getsockname()[1]), "--config", str(config)],
             ["VECTORMILL_SEARCH_API_KEY=   ", "serve-search", "--config", str(config)],
             ["VECTORMILL_SEARCH_API_KEY= a-key", "serve-search", "--config", str(config)]],
            cwd=tmp_path, env={name: value for name, value in os.environ.items() if not name.startswith("VECTORMILL")})
    says = ["identity.json' is damaged", "is a file, not a store's folder", "identity.json' is damaged",
            "cannot listen on 127.0.0.1", "is blank: set a real secret", "white space at its start or end"]
    for result, message in zip(results, says, strict=True):
        assert result["code"] == 1 and "Traceback" not in result["stderr"], result
        assert len(result["stderr"].strip().splitlines()) == 1 and message in result["stderr"], result["stderr"]
        assert "a-key" not in result["stderr"]


def test_store_restore_rebuilds_a_damaged_identity_that_readers_refuse(tmp_path):
    from vectormill.stores.errors import StoreCorruptError
    from vectormill.stores.records import ChunkRecord, DocumentUpsert
    from vectormill.stores.restore import restore_store, verify_store

    settings = StoreSettings(path=tmp_path / "store")
    with FaissStore.open(settings, model="tiny", dimension=8) as writer:
        chunk = ChunkRecord("ab" * 16, 0, "a", "h", None, None, 1)
        vector = np.eye(8, dtype=np.float32)[:1]
        writer.write([DocumentUpsert("docs", "a.txt", "v1", "A", "a.txt", None, (chunk,), vector)])
        writer.checkpoint()
    (settings.path / "identity.json").write_text("{\"model\": ")
    with pytest.raises(StoreCorruptError, match="is damaged"):
        FaissStore.open(settings, writable=False)
    assert any("is damaged" in problem["detail"] for problem in verify_store(settings)["problems"])
    restore_store(settings)
    with FaissStore.open(settings, writable=False) as reader:
        assert [hit.document for hit in reader.search(np.eye(8, dtype=np.float32)[0], 1)] == ["a.txt"]
