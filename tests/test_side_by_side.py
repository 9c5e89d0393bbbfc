"""Sources side by side in one run: each lists and fetches within its own rate limit while the
others do, all share one embedding pool (round-robin across sources) and one store writer, and a
source that fails stops only itself. Real test servers, the packaged model, a real store."""

from __future__ import annotations

import threading

import pytest

from vectormill.flows.config import load_config
from vectormill.flows.side_by_side import FairEmbedding, FairQueue
from vectormill.stores.faiss_store import FaissStore

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
@pytest.mark.slow
def test_throttled_sources_fetch_side_by_side_and_a_failing_one_stops_only_itself(
        tmp_path, monkeypatch, prefect_harness):
    from vectormill.flows.ingest import IngestFailed, ingest

    monkeypatch.setenv("HUBSPOT_SIDES_TOKEN", TOKEN)
    with hubspot_server(TOKEN) as crm, MediaWikiServer() as wiki:
        for n in range(8):
            crm.app.add("companies", name=f"Company {n}", description=f"Company {n} makes widget model {n}.")
        wiki.import_pages({f"Runbook {n}": f"Runbook {n}: restart service {n} at midnight." for n in range(6)})
        config = tmp_path / "vectormill.toml"
        # Both throttled to a few requests a second: one after the other, the CRM's requests would all
        # come before the wiki's first. The third source fails at once (its folder is missing).
        config.write_text(
            '[store]\npath = "store"\n\n[chunking]\ntokens = 64\noverlap = 8\n\n'
            '[[sources]]\nname = "crm"\ntype = "hubspot"\ntoken_env = "HUBSPOT_SIDES_TOKEN"\n'
            f'base_url = "{crm.url}"\nobject_type = "companies"\nproperties = ["name", "description"]\n'
            'page_size = 1\nrequests_per_second = 4\nburst = 1\nfetch_batch_size = 2\n\n'
            f'[[sources]]\nname = "wiki"\ntype = "mediawiki"\napi_url = "{wiki.api_url}"\n'
            'requests_per_second = 4\nburst = 1\nfetch_batch_size = 2\n\n'
            '[[sources]]\nname = "missing"\ntype = "filesystem"\nroot = "not-mounted"\n')

        with pytest.raises(IngestFailed, match="source 'missing' failed") as caught:
            ingest(config_file=str(config))

        crm_times = [request.arrived for request in crm.requests]
        wiki_times = [request.arrived for request in wiki.requests]
    # The two throttled sources sent their requests over the same stretch of time.
    assert min(wiki_times) < max(crm_times) and min(crm_times) < max(wiki_times)
    summary = caught.value.summary
    assert {s["name"]: s["status"] for s in summary["sources"]} == {
        "crm": "completed", "wiki": "completed", "missing": "failed"}  # per source, in config order
    assert [s["name"] for s in summary["sources"]] == ["crm", "wiki", "missing"]
    with FaissStore.open(load_config(config).store, writable=False) as store:
        assert len(store.document_versions("crm")) == 8 and len(store.document_versions("wiki")) == 6
        assert store.cursor("crm") and store.cursor("wiki") and not store.cursor("missing")
