"""`vectormill serve-search` as a real process: searches, auth, limits, load shedding, and readers that follow a
writer that writes, deletes, checkpoints and compacts while it answers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vectormill.flows.search import HIT_FIELDS, RANK_FIELDS
from vectormill.flows.settings import SearchServiceSettings
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.records import ChunkRecord, DocumentDelete, DocumentUpsert
from vectormill.stores.settings import StoreSettings

from .corpus import TOPICS
from .servers.search_service import API_KEY, search_service
from .topic_store import PLACES, write_topic_store

LIMITS = """
[search_service]
max_k = 50
max_query_chars = 1000
max_body_bytes = 8192
concurrency = 1
queue = 2
body_timeout_seconds = 2
header_timeout_seconds = 2

[search_service.keys.wiki-app]
secret_env = "WIKI_APP_KEY"
filter = {source = "wiki"}

[search_service.keys.reports-app]
secret_env = "REPORTS_APP_KEY"
filter = {source = ["docs", "wiki"], document_prefix = "reports/"}
"""
SCOPED = {"wiki-app": "wiki-app-secret-1", "reports-app": "reports-app-secret-2"}


def add_crm_records(store_path) -> None:
    """A CRM source beside the topics' wiki and docs (2 records, 1 chunk each): what a wiki-scoped key must never
    read. Their metadata name a source and a prefix, to tempt a filter that matches metadata."""
    vectors = np.random.default_rng(11).standard_normal((2, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with FaissStore.open(StoreSettings(path=store_path)) as writer:
        chunks = [ChunkRecord(f"c{i}" * 16, 0, f"contact {i}", f"c{i}", None, None, 3) for i in range(2)]
        writer.write([DocumentUpsert("crm", f"reports/contact-{i}", "v1", f"Contact {i}", f"crm://contact/{i}",
                                     "2026-02-01", (chunks[i],), vectors[i:i + 1],
                                     {"object_type": "contacts", "source": "wiki"})
                      for i in range(2)])
        writer.checkpoint()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    config = write_topic_store(tmp_path_factory.mktemp("service"))
    add_crm_records(config.parent / "store")
    config.write_text(config.read_text() + LIMITS)
    with search_service(config, WIKI_APP_KEY=SCOPED["wiki-app"], REPORTS_APP_KEY=SCOPED["reports-app"]) as running:
        yield running
    log = running.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert not any(secret in log for secret in (*SCOPED.values(), API_KEY)), log[-3000:]


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
    ({"query": "lava", "k": "5"}, None, 422, "k"),
    ({"query": "lava", "k": True}, None, 422, "k"),
    ({"query": "lava", "k": 3.0}, None, 422, "k"),
    ({"query": " \n\t "}, None, 400, "the query is empty"),
    ({"query": "x1 " * 300}, None, 400, "over the model's limit of 256 tokens"),
    ({"query": "lava", "filter": {"metadata": {f"k{i}": "x" for i in range(300)}}}, None, 400,
     "'metadata' holds 300 entries, over the limit of 64"),
    ({"query": "lava", "filter": {"source": ["wiki"] * 65}}, None, 400, "'source' holds 65 entries"),
    ({"query": "lava", "filter": {"document_prefix": "r" * 2000}}, None, 400, "2000 characters, over the limit"),
    ({"query": "lava", "filter": {"metadata": {"title": 7}}}, None, 400, "must be a non-empty string"),
    ({"query": "lava", "filter": ["wiki"]}, None, 422, "filter"),
    ({"query": [0.1] * 383 + [float("nan")]}, None, 400, "384 finite numbers"),
    (b'{"query": "lava", ', {}, 401, "missing or wrong API key"),
    ({"query": "lava"}, {"Authorization": "Basic d2lraTp4"}, 401, "missing or wrong API key"),
    ({"k": 3}, None, 422, "query"),
    (b'{"query": "lava", ', None, 422, "JSON decode error"),
    (b"[1, 2]", None, 422, ""),
    (b"[" * 8000, None, 400, "error parsing the body"),
    (b'{"query": ' + b'{"q": ' * 500 + b"1" + b"}" * 501, None, 422, "query"),
    (b'{"query": "\xff\xfe lava"}', None, 400, "error parsing the body"),
    (b'{"query": "lava", "k": 1e400}', None, 422, "k"),
    (b'{"query": "lava", "k": 100000000000000000000000000000}', None, 400, "k must be between 1 and 50"),
    (b'{"query": null}', None, 422, "query"),
    (b'{"query": ["0.1", true]}', None, 400, "384 finite numbers"),
    (b'{"query": "lava", "filter": {"source": {"$ne": "wiki"}}}', None, 400, "filter 'source'"),
    (b'{"query": "lava", "filter": {"modified_after": "9999-99-99"}}', None, 400, "ISO 8601"),
    (b'{"query": "lava", "filter": {"metadata": {"": "x"}}}', None, 400, "non-empty string"),
    (b'{"query": "lava\\u0000\\ud800"}', None, 400, "lone surrogate"),
    (b'{"query": "lava\\u0000 \\ud83c\\udf0b"}', None, 200, "hits"),
])
def test_bad_requests_get_a_clear_4xx(service, body, headers, status, says):
    headers = service.headers() if headers is None else headers
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()  # NaN as the bare word NaN, which JSON does not have
    response = httpx.post(f"{service.url}/search", content=body, timeout=60,
                          headers=headers | {"Content-Type": "application/json"})
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
            assert len(response.json()["hits"]) == 20  # every stored chunk


def test_the_default_shedding_runs_a_search_per_core_but_one_and_lets_half_as_many_wait():
    cores = len(os.sched_getaffinity(0))
    default = SearchServiceSettings()
    assert (default.searches_at_once, default.searches_waiting) == (max(1, cores - 1), max(1, cores - 1) // 2)
    assert (SearchServiceSettings(concurrency=6).searches_waiting, SearchServiceSettings(queue=0).searches_waiting,
            SearchServiceSettings(concurrency=3, queue=5).searches_waiting) == (3, 0, 5)
    with pytest.raises(ValueError, match="concurrency"):
        SearchServiceSettings(concurrency=0)


def test_admission_holds_its_capacity_of_searches_and_sheds_the_next_at_once():
    from vectormill.http_gate import Admission

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


def connect(service) -> socket.socket:
    return socket.create_connection(("127.0.0.1", int(service.url.rsplit(":", 1)[1])), timeout=60)


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    sock.close()
    return received


def request_head(headers: dict[str, str]) -> bytes:
    lines = ["POST /search HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_clients_that_stall_or_upload_without_a_key_take_no_search_slot_and_are_let_go(service):
    """Only 3 searches fit in the service (concurrency 1, queue 2). Without a key, stalled bodies and chunked
    uploads are answered 401 from their headers and disconnected; headers sent in part hold a socket until the
    header deadline (2 s), then it is closed. Meanwhile keyed searches are answered, never 429."""
    stalled = [connect(service) for _ in range(10)]
    for sock in stalled:
        sock.sendall(request_head({"Content-Length": "1000"}))
    uploaders = [connect(service) for _ in range(5)]
    for sock in uploaders:
        sock.sendall(request_head({"Transfer-Encoding": "chunked"}) + b"1000\r\n" + b"x" * 4096 + b"\r\n")
    trickled = [connect(service) for _ in range(20)]
    for sock in trickled:
        sock.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Len")
    vector = np.random.default_rng(1).standard_normal(384).tolist()
    with httpx.Client(timeout=60) as client:
        answers = [client.post(f"{service.url}/search", json={"query": vector, "k": 3}, headers=service.headers())
                   for _ in range(6)]
    assert [answer.status_code for answer in answers] == [200] * 6
    for sock in stalled + uploaders:
        answer = until_closed(sock)
        assert answer.startswith(b"HTTP/1.1 401 ") and b"missing or wrong API key" in answer, answer[:300]
    assert {until_closed(sock) for sock in trickled} == {b""}  # closed by the server, unanswered


def test_a_keyed_body_is_read_with_a_size_limit_that_holds_when_chunked_and_a_time_limit(service):
    key = service.headers()["Authorization"]
    slow = connect(service)
    slow.sendall(request_head({"Authorization": key, "Content-Length": "100"}) + b'{"query": ')
    big = connect(service)
    big.sendall(request_head({"Authorization": key, "Transfer-Encoding": "chunked"}))
    try:
        for _ in range(64):  # 64 KiB in chunks of 1 KiB, past max_body_bytes (8 KiB): refused on the way
            big.sendall(b"400\r\n" + b" " * 1024 + b"\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed: the rest was never read
    answer = until_closed(big)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"request body over 8192 bytes" in answer, answer[:300]
    answer = until_closed(slow)
    assert answer.startswith(b"HTTP/1.1 408 ") and b"not received within 2 s" in answer, answer[:300]


def search_as(service, secret: str, body: dict) -> httpx.Response:
    return httpx.post(f"{service.url}/search", json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=60)


SCOPES = {"wiki-app": lambda hit: hit["source"] == "wiki",
          "reports-app": lambda hit: hit["source"] in ("docs", "wiki") and hit["document"].startswith("reports/")}
texts = st.sampled_from(["wiki", "docs", "crm", "reports/", "report", "r", "Science/", "reports/contact-1", "%", "*",
                         "Sport/Sailing", "Chess", "contacts", "0", "2026-01-01", "wiki' OR 1=1 --"])
dates = st.sampled_from(["2025-01-01", "2026-01-01", "2026-02-01T00:00:00Z", "2030-01-01"])
adversarial_filters = st.fixed_dictionaries({}, optional={
    "source": st.one_of(texts, st.lists(texts, max_size=4)),
    "document_prefix": texts,
    "modified_after": dates, "modified_before": dates,
    "metadata": st.dictionaries(st.sampled_from(["title", "location", "object_type", "source", "namespace"]), texts,
                                max_size=2)}) | st.sampled_from([{}, {"source": []}, {"sources": "crm"}, {"or": []}])


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(request_filter=adversarial_filters, key=st.sampled_from(sorted(SCOPES)))
def test_a_scoped_key_never_reads_outside_its_scope_whatever_filter_it_sends(service, request_filter, key):
    """k covers every stored chunk, so the scoped answer must be exactly the all-sources answer to the same filter,
    less what the scope leaves out."""
    body = {"query": np.random.default_rng(3).standard_normal(384).tolist(), "k": 50, "filter": request_filter}
    everything = search_as(service, API_KEY, body)
    scoped = search_as(service, SCOPED[key], body)
    if everything.status_code != 200:  # a bad filter; or a disjoint one (the scope then answers no hits)
        assert everything.status_code == 400 and scoped.status_code in (200, 400), (scoped.text, everything.text)
        assert scoped.status_code == 400 or scoped.json()["hits"] == []
        return
    assert scoped.status_code == 200, scoped.text
    expected = [hit["chunk_id"] for hit in everything.json()["hits"] if SCOPES[key](hit)]
    assert all(SCOPES[key](hit) for hit in scoped.json()["hits"])
    assert [hit["chunk_id"] for hit in scoped.json()["hits"]] == expected


def test_metrics_count_searches_by_key_name_for_the_all_sources_key_only(service):
    assert search_as(service, SCOPED["wiki-app"], {"query": TOPICS["sailing"], "k": 1}).status_code == 200
    assert search_as(service, "not-a-key", {"query": "x"}).status_code == 401
    assert httpx.get(f"{service.url}/metrics", timeout=30).status_code == 401
    refused = httpx.get(f"{service.url}/metrics", headers={"Authorization": f"Bearer {SCOPED['wiki-app']}"}, timeout=30)
    assert refused.status_code == 403 and "all-sources key" in refused.text
    response = httpx.get(f"{service.url}/metrics", headers=service.headers(), timeout=30)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    for line in ('vectormill_search_requests_total{key="wiki-app",status="200"}',
                 'vectormill_search_requests_total{key="-",status="401"}',
                 'vectormill_search_seconds_bucket{key="wiki-app",le="0.5"}', "vectormill_searches_running 0.0",
                 "vectormill_searches_waiting 0.0", "vectormill_store_generation "):
        assert line in text, line
    assert not any(secret in text for secret in (*SCOPED.values(), API_KEY))


def test_the_keys_are_checked_before_the_service_starts(monkeypatch):
    from vectormill.connectors.errors import SourceError
    from vectormill.flows.search_keys import ALL_SOURCES, service_keys
    from vectormill.stores.filters import SearchFilter

    def keys(**tables):
        return SearchServiceSettings(keys={name: {"secret_env": env, "filter": {"source": "wiki"}}
                                           for name, env in tables.items()})

    monkeypatch.delenv("VECTORMILL_SEARCH_API_KEY", raising=False)
    monkeypatch.setenv("APP_A", "secret-a")
    monkeypatch.setenv("APP_B", "secret-a")
    with pytest.raises(SourceError, match="VECTORMILL_SEARCH_API_KEY is not set"):
        service_keys(SearchServiceSettings())
    only_named = service_keys(keys(a="APP_A"))  # scoped keys alone: no all-sources key
    assert [(key.name, key.scope) for key in only_named] == [("a", SearchFilter(sources=("wiki",)))]
    assert "secret-a" not in repr(only_named)
    with pytest.raises(SourceError, match="keys 'a' and 'b' have the same secret"):
        service_keys(keys(a="APP_A", b="APP_B"))
    with pytest.raises(SourceError, match="is the all-sources key's"):
        service_keys(keys(**{ALL_SOURCES: "APP_A"}))
    with pytest.raises(SourceError, match=r"search service key 'c': environment variable APP_C is not set"):
        service_keys(keys(c="APP_C"))
    monkeypatch.setenv("APP_B", "sécret")
    with pytest.raises(SourceError, match="beyond ASCII"):
        service_keys(keys(b="APP_B"))
    monkeypatch.setenv("VECTORMILL_SEARCH_API_KEY", "all-of-it")
    assert [key.name for key in service_keys(keys(a="APP_A"))] == [ALL_SOURCES, "a"]


def test_metrics_can_be_opened_to_scrapers_without_opening_the_searches(service):
    from fastapi.testclient import TestClient

    from vectormill.flows.config import load_config
    from vectormill.flows.search import Searcher
    from vectormill.flows.search_keys import ServiceKey
    from vectormill.service import create_app

    limits = SearchServiceSettings(metrics_public=True)
    config = load_config(service.log.parent / "vectormill.toml")
    with Searcher(config) as searcher, TestClient(create_app(searcher, [ServiceKey("a", b"secret", None)],
                                                             limits)) as app:
        assert app.get("/metrics").status_code == 200
        assert app.post("/search", json={"query": [0.0] * 384}).status_code == 401
        keyed = app.post("/search", json={"query": [1.0] * 384}, headers={"Authorization": "Bearer secret"})
        assert keyed.status_code == 200
        assert 'vectormill_search_requests_total{key="a",status="200"} 1.0' in app.get("/metrics").text
