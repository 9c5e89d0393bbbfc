"""Sources side by side in one run: each lists and fetches within its own rate limit while the
others do, all share one embedding pool (round-robin across sources) and one store writer, and a
source that fails stops only itself. Real test servers, the packaged model, a real store."""

from __future__ import annotations

import threading

import pytest

from vectormill.connectors.base import DocumentRef
from vectormill.flows.config import load_config
from vectormill.flows.retry_queue import INTERRUPTED
from vectormill.flows.side_by_side import FairEmbedding, FairQueue
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.records import DocumentFailed

from .servers.hubspot_server import hubspot_server
from .servers.mediawiki_server import MediaWikiServer

TOKEN = "pat-na1-0b8d6c3e-2f11-4c5a-9d7e-sides0000001"


# ---- the fair queue (pure) --------------------------------------------------------------------------
def test_the_fair_queue_takes_the_sources_in_turn_whatever_each_has_waiting():
    queue: FairQueue[str] = FairQueue()
    for n in range(4):
        queue.put("big", f"big{n}")
    queue.put("small", "small0")
    queue.put("other", "other0")
    queue.put("small", "small1")
    taken = [queue.take() for _ in range(len(queue))]
    assert taken == ["big0", "small0", "other0", "big1", "small1", "big2", "big3"]
    assert queue.take() is None and len(queue) == 0
    queue.put("other", "other1")  # a source that comes back joins the line again
    assert queue.take() == "other1"


class _Recording:
    """An execution whose embed runs the call at once, recording the order of the sources."""

    def __init__(self, gate: threading.Event):
        self.gate, self.order, self.busy = gate, [], threading.Event()

    def embed(self, task, parameters):
        self.busy.set()
        self.gate.wait(5)
        self.order.append(parameters["source"])
        if parameters.get("fail"):
            raise ValueError("model lost")
        return task(parameters)


class _Value:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def test_the_pool_serves_waiting_sources_round_robin_and_hands_each_its_own_error():
    gate = threading.Event()
    execution = _Recording(gate)
    with FairEmbedding(execution) as pool:
        calls = [pool.for_source("a").embed(lambda p: _Value(p["n"]), {"source": "a", "n": 0})]
        assert execution.busy.wait(5)  # the first call is running: the others wait in their queues
        calls += [pool.for_source(source).embed(lambda p: _Value(p["n"]), {"source": source, "n": n})
                  for source, n in [("a", 1), ("a", 2), ("b", 3), ("b", 4)]]
        failing = pool.for_source("c").embed(lambda p: _Value(None), {"source": "c", "fail": True})
        gate.set()
        assert [call.result() for call in calls] == [0, 1, 2, 3, 4]
        with pytest.raises(ValueError, match="model lost"):
            failing.result()
    assert execution.order == ["a", "a", "b", "c", "a", "b"]


# ---- the flow ---------------------------------------------------------------------------------------
def throttled_sources(folder, crm, wiki, extra: str = ""):
    """A config of the CRM and the wiki, both throttled to a few requests a second: one after the
    other, the CRM's requests would all come before the wiki's first."""
    for n in range(8):
        crm.app.add("companies", name=f"Company {n}", description=f"Company {n} makes widget model {n}.")
    wiki.import_pages({f"Runbook {n}": f"Runbook {n}: restart service {n} at midnight." for n in range(6)})
    config = folder / "vectormill.toml"
    config.write_text(
        '[store]\npath = "store"\n\n[chunking]\ntokens = 64\noverlap = 8\n\n'
        '[[sources]]\nname = "crm"\ntype = "hubspot"\ntoken_env = "HUBSPOT_SIDES_TOKEN"\n'
        f'base_url = "{crm.url}"\nobject_type = "companies"\nproperties = ["name", "description"]\n'
        'page_size = 1\nrequests_per_second = 4\nburst = 1\nfetch_batch_size = 2\n\n'
        f'[[sources]]\nname = "wiki"\ntype = "mediawiki"\napi_url = "{wiki.api_url}"\n'
        f'requests_per_second = 4\nburst = 1\nfetch_batch_size = 2\n{extra}')
    return config


def overlap(crm, wiki) -> bool:
    """Whether the two servers received requests over a common stretch of time."""
    crm_times = [request.arrived for request in crm.requests]
    wiki_times = [request.arrived for request in wiki.requests]
    return min(wiki_times) < max(crm_times) and min(crm_times) < max(wiki_times)


@pytest.mark.slow
def test_throttled_sources_fetch_side_by_side_and_a_failing_one_stops_only_itself(
        tmp_path, monkeypatch, prefect_harness):
    from vectormill.flows.ingest import IngestFailed, ingest

    monkeypatch.setenv("HUBSPOT_SIDES_TOKEN", TOKEN)
    with hubspot_server(TOKEN) as crm, MediaWikiServer() as wiki:
        # The third source fails at once (its folder is missing).
        config = throttled_sources(tmp_path, crm, wiki,
                                   '\n[[sources]]\nname = "missing"\ntype = "filesystem"\nroot = "not-mounted"\n')

        with pytest.raises(IngestFailed, match="source 'missing' failed") as caught:
            ingest(config_file=str(config))

        assert overlap(crm, wiki)
    summary = caught.value.summary
    assert {s["name"]: s["status"] for s in summary["sources"]} == {
        "crm": "completed", "wiki": "completed", "missing": "failed"}
    assert [s["name"] for s in summary["sources"]] == ["crm", "wiki", "missing"]  # per source, in config order
    with FaissStore.open(load_config(config).store, writable=False) as store:
        assert len(store.document_versions("crm")) == 8 and len(store.document_versions("wiki")) == 6
        assert store.cursor("crm") and store.cursor("wiki") and not store.cursor("missing")


@pytest.mark.slow
def test_after_a_process_died_mid_run_the_sources_go_side_by_side_and_the_suspect_goes_last_alone(
        tmp_path, monkeypatch, prefect_harness):
    from vectormill.flows.ingest import ingest
    from vectormill.flows.pipeline import embedder_for

    from .servers.mediawiki_server import request_params

    monkeypatch.setenv("HUBSPOT_SIDES_TOKEN", TOKEN)
    with hubspot_server(TOKEN) as crm, MediaWikiServer() as wiki:
        config = throttled_sources(tmp_path, crm, wiki)
        settings = load_config(config)
        # As a process that died while it fetched a wiki page leaves the store: the page queued, interrupted.
        ref = DocumentRef("Runbook 5", "1")
        with FaissStore.open(settings.store, model=settings.embedding.model,
                             dimension=embedder_for(settings.embedding).dimension) as store:
            store.write([DocumentFailed("wiki", ref.id, ref.to_json(), INTERRUPTED, "2024-01-01T00:00:00+00:00")])

        summary = ingest(config_file=str(config))

        assert overlap(crm, wiki)  # a suspect holds no source back
        wiki_fetches = [(request.arrived, request_params(request).get("titles")) for request in wiki.requests
                        if request_params(request).get("prop") == "info|revisions"]
        suspect = min(arrived for arrived, title in wiki_fetches if title == "Runbook 5")
        # Fetched once every source's other work was done: after the CRM's last request and every other page.
        assert suspect > max(request.arrived for request in crm.requests)
        assert suspect > max(arrived for arrived, title in wiki_fetches if title != "Runbook 5")
    assert summary["documents"]["new"] == 8 + 6 and summary["retry_queue"] == {"crm": 0, "wiki": 0}
