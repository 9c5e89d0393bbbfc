"""`vectormill serve-search` as a real process: searches, auth, limits, load shedding, and readers that follow a
writer that writes, deletes, checkpoints and compacts while it answers."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from vectormill.flows.search import HIT_FIELDS, RANK_FIELDS
from vectormill.flows.settings import SearchServiceSettings
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.records import ChunkRecord, DocumentDelete, DocumentUpsert
from vectormill.stores.settings import StoreSettings

from .corpus import TOPICS
from .servers.search_service import search_service
from .topic_store import PLACES, write_topic_store

LIMITS = "\n[search_service]\nmax_k = 50\nmax_query_chars = 1000\nmax_body_bytes = 8192\nconcurrency = 1\nqueue = 2\n"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    config = write_topic_store(tmp_path_factory.mktemp("service"))
    config.write_text(config.read_text() + LIMITS)
    with search_service(config) as running:
        yield running
    assert "Traceback" not in running.log.read_text(), running.log.read_text()[-3000:]


def search(service, body, key=None, **kwargs) -> httpx.Response:
    return httpx.post(f"{service.url}/search", json=body, headers=service.headers(*([key] if key else [])),
                      timeout=60, **kwargs)


def test_searches_answer_with_the_fields_of_search_json(service):
    for topic, sentence in TOPICS.items():
        response = search(service, {"query": sentence, "k": 2})
        assert response.status_code == 200, response.text
        hits = response.json()["hits"]
        assert tuple(hits[0]) == HIT_FIELDS + RANK_FIELDS and (hits[0]["source"], hits[0]["document"]) == PLACES[topic][:2]
    for mode, query, fields in (("vector", TOPICS["taxes"], HIT_FIELDS), ("keyword", "VAT", HIT_FIELDS),
                                ("hybrid", "quarterly VAT", HIT_FIELDS + RANK_FIELDS)):
        hits = search(service, {"query": query, "k": 1, "mode": mode}).json()["hits"]
        assert [(hit["document"], tuple(hit)) for hit in hits] == [("reports/taxes.pdf", fields)], mode
    response = search(service, {"query": TOPICS["chess"], "k": 5, "filter": {"source": "wiki"}})
    assert {hit["source"] for hit in response.json()["hits"]} == {"wiki"}
    body = response.json()
    assert body["generation"] >= 1 and body["lsn"] >= 1
    assert httpx.get(f"{service.url}/health").json() == {"status": "ok"}
    schema = httpx.get(f"{service.url}/openapi.json").json()
    assert "/search" in schema["paths"] and httpx.get(f"{service.url}/docs").status_code == 200


@pytest.mark.parametrize("body, headers, status, says", [
    ({"query": "lava", "k": 0}, None, 400, "k must be between 1 and 50"),
    ({"query": "lava", "k": 10**6}, None, 400, "k must be between 1 and 50"),
    ({"query": "x" * 1001}, None, 400, "query must hold 1 to 1000"),
    ({"query": "x" * 1_000_000}, None, 413, "request body over 8192 bytes"),
    ({"query": ""}, None, 400, "query must hold"),
    ({"query": [0.1, 0.2]}, None, 400, "384 finite numbers"),
    ({"query": "lava", "filter": {"folder": "x"}}, None, 400, "unknown filter key(s) 'folder'"),
    ({"query": "lava", "filter": {"modified_after": "soon"}}, None, 400, "ISO 8601"),
    ({"query": [0.0] * 384, "mode": "keyword"}, None, 400, "can only be searched in vector mode"),
    ({"query": "lava", "mode": "fuzzy"}, None, 422, "mode"),
    ({"query": "lava"}, {"Authorization": "Bearer wrong"}, 401, "missing or wrong API key"),
    ({"query": "lava"}, {}, 401, "missing or wrong API key"),
    ({"query": "lava", "k": "many"}, None, 422, "k"),
    ({"k": 3}, None, 422, "query"),
    (b'{"query": "lava", ', None, 422, "JSON decode error"),
    (b"[1, 2]", None, 422, ""),
])
def test_bad_requests_get_a_clear_4xx(service, body, headers, status, says):
    headers = service.headers() if headers is None else headers
    if isinstance(body, bytes):
        response = httpx.post(f"{service.url}/search", content=body, timeout=60,
                              headers=headers | {"Content-Type": "application/json"})
    else:
        response = httpx.post(f"{service.url}/search", json=body, headers=headers, timeout=60)
    assert response.status_code == status, response.text
    assert says in response.text and "Traceback" not in response.text
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_searches_beyond_the_queue_are_shed_with_429_and_the_rest_answered(service):
    vector = np.random.default_rng(0).standard_normal(384).tolist()

    def one(_):
        return search(service, {"query": vector, "k": 50})

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(one, range(48)))
    assert {response.status_code for response in responses} <= {200, 429}
    for response in responses:
        if response.status_code == 429:
            assert response.headers["Retry-After"] == "1" and "retry later" in response.json()["detail"]
        else:
            assert len(response.json()["hits"]) == 18  # every stored chunk


def test_the_default_shedding_runs_a_search_per_core_but_one_and_lets_half_as_many_wait():
    cores = len(os.sched_getaffinity(0))
    default = SearchServiceSettings()
    assert (default.searches_at_once, default.searches_waiting) == (max(1, cores - 1), max(1, cores - 1) // 2)
    assert (SearchServiceSettings(concurrency=6).searches_waiting, SearchServiceSettings(queue=0).searches_waiting,
            SearchServiceSettings(concurrency=3, queue=5).searches_waiting) == (3, 0, 5)
    with pytest.raises(ValueError, match="concurrency"):
        SearchServiceSettings(concurrency=0)


def test_admission_holds_its_capacity_of_searches_and_sheds_the_next_at_once():
    from vectormill.service import Admission

    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    admission = Admission(slow_app, capacity=3, retry_after=7)

    async def call(path="/search") -> tuple[int, dict]:
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await admission(
            {"type": "http", "path": path, "method": "POST", "headers": [], "query_string": b""}, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"])

    async def scenario():
        held = [asyncio.ensure_future(call()) for _ in range(3)]
        await asyncio.sleep(0.05)
        status, headers = await call()  # answered at once, while the 3 are held
        assert status == 429 and headers[b"retry-after"] == b"7"
        other = asyncio.ensure_future(call("/health"))  # only searches are counted
        release.set()
        assert [(await task)[0] for task in held] == [200, 200, 200] and (await other)[0] == 200
        assert (await call())[0] == 200 and admission.admitted == 0

    asyncio.run(scenario())


def test_every_answer_is_one_committed_state_while_a_writer_writes_checkpoints_and_compacts(service):
    """The writer adds documents near one vector and deletes some, checkpointing and compacting between writes; an
    answer naming write `lsn` holds exactly the documents near that vector that were live after that write."""
    rng = np.random.default_rng(5)
    target = rng.standard_normal(384).astype(np.float32)
    target /= np.linalg.norm(target)
    live_after: dict[int, frozenset[str]] = {}
    settings = StoreSettings(path=service.log.parent / "store")
    done = threading.Event()

    def write() -> None:
        live: set[str] = set()
        with FaissStore.open(settings) as writer:
            live_after[writer.lsn] = frozenset()
            for i in range(24):
                vector = target + 0.05 * rng.standard_normal(384).astype(np.float32)
                chunk = ChunkRecord(f"{i:02d}" + "e" * 30, 0, f"near {i}", f"h{i}", None, None, 2)
                operations = [DocumentUpsert("near", f"near/{i}", "v1", "near", "near", None, (chunk,),
                                             (vector / np.linalg.norm(vector))[None, :])]
                live.add(f"near/{i}")
                if i % 4 == 3:
                    operations.append(DocumentDelete("near", f"near/{i - 2}"))
                    live.discard(f"near/{i - 2}")
                lsn = writer.write(operations)
                live_after[lsn] = frozenset(live)
                if i % 3 == 2:
                    writer.checkpoint()
                if i % 8 == 7:
                    writer.compact()
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    answers = []
    while not done.is_set() or len(answers) < 5:
        response = search(service, {"query": target.tolist(), "k": 30, "filter": {"source": "near"}})
        assert response.status_code == 200, response.text
        answers.append(response.json())
    thread.join()
    seen = set()
    for answer in answers:
        if answer["lsn"] in live_after:  # answers before the writer's first write name the corpus's lsn
            assert {hit["document"] for hit in answer["hits"]} == live_after[answer["lsn"]], answer["lsn"]
            seen.add(answer["lsn"])
    assert max(seen) == max(live_after) and len(seen) >= 2
