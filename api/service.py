"""`vectormill serve-search`: the store's search over HTTP (FastAPI on uvicorn).

POST /search {"query": text or vector, "k": n, "filter": {...}} -> {"hits": [...], "generation", "lsn"} (hits with
the fields of `search --json`); GET /health; GET /metrics (Prometheus); the OpenAPI page at /docs. Every search
needs `Authorization: Bearer <key>`: the all-sources key, or a named key whose filter is ANDed with the request's.
The key is checked from the headers, then the search admitted, then its body read (http_gate). Load shedding:
`concurrency` searches run at once and `queue` more wait (by default one per core but one, and half as many:
flows.settings); a search beyond both is answered 429 with Retry-After at once, so an answered search waits at most
about half a search's time, never behind an unbounded queue. Bad input gets a 4xx that says what is wrong (401: a
missing or wrong key, before anything else; 413: a body over the limit; 408: a body too slow to arrive; 422: not
JSON, or not a search request; 400: a bad k, query or filter), never a traceback; 503: the store cannot be read.
"""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, Field

from vectormill.flows.search import QueryError, Searcher
from vectormill.flows.search_keys import ServiceKey
from vectormill.flows.settings import SearchServiceSettings
from vectormill.stores.errors import StoreError
from vectormill.stores.filters import FilterError
from vectormill.stores.fusion import SearchModeError

from .http_gate import (KEY_SCOPE, Admission, Authentication, BodyReader, KeyRing, Occupancy, header_deadline_protocol,
                        problem)
from .service_metrics import CONTENT_TYPE, Measured, ServiceMetrics


class SearchRequest(BaseModel):
    query: str | list[float] = Field(description="A text (embedded with the store's model) or a query vector.")
    k: int = Field(default=5, strict=True, description="How many hits (1 to the service's max_k).")
    filter: dict[str, Any] | None = Field(
        default=None, description='{"source", "document_prefix", "modified_after", "modified_before", "metadata"}')
    mode: Literal["vector", "keyword", "hybrid"] | None = Field(
        default=None, description="vector, keyword (BM25) or hybrid (both fused); default: the config's [search] mode "
                                  "for a text, vector for a query vector.")


class Hit(BaseModel):
    document: str
    source: str
    page: int | None
    pages: list[int]
    score: float
    text: str
    title: str
    location: str
    chunk_id: str
    modified: str | None
    ocr: bool
    vector_rank: int | None = Field(default=None, description="Hybrid: the hit's rank by vector (None: not in it).")
    keyword_rank: int | None = Field(default=None, description="Hybrid: the hit's rank by keyword (None: not in it).")


class SearchResponse(BaseModel):
    hits: list[Hit]
    generation: int = Field(description="The store checkpoint every hit comes from.")
    lsn: int = Field(description="The last write the hits include.")


def create_app(searcher: Searcher, keys: list[ServiceKey], limits: SearchServiceSettings) -> FastAPI:
    pool = ThreadPoolExecutor(max_workers=limits.searches_at_once, thread_name_prefix="search")
    occupancy = Occupancy()
    metrics = ServiceMetrics(occupancy)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        pool.shutdown(wait=True)

    app = FastAPI(title="vectormill search", version="1", lifespan=lifespan,
                  description="Nearest chunks of the vectormill store. Searches need `Authorization: Bearer <key>`.")
    # Innermost first: the request passes Measured, Authentication, Admission, BodyReader, then FastAPI.
    app.add_middleware(BodyReader, limit=limits.max_body_bytes, timeout=limits.body_timeout_seconds)
    app.add_middleware(Admission, capacity=limits.searches_at_once + limits.searches_waiting,
                       retry_after=limits.retry_after_seconds, occupancy=occupancy)
    guarded = {"/search": True} | ({} if limits.metrics_public else {"/metrics": False})
    app.add_middleware(Authentication, keys=KeyRing(keys), paths=guarded)
    app.add_middleware(Measured, metrics=metrics)
    # For the OpenAPI page only: Authentication has checked the key before the body was read.
    bearer = HTTPBearer(auto_error=False, description="The all-sources key ($VECTORMILL_SEARCH_API_KEY or the Secret "
                        "block) or a key of [search_service.keys]")

    def run_search(query, k: int, where, mode, scope):
        with metrics.running():
            return searcher.search(query, k, where, mode, scope=scope)

    @app.exception_handler(RequestValidationError)
    async def not_a_search_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, without the input it quotes: a value JSON cannot carry back (1e400 is infinity) made it
        a 500, and a huge body would be sent back whole."""
        return JSONResponse({"detail": [{"type": error["type"], "loc": list(error["loc"]), "msg": error["msg"]}
                                        for error in exc.errors()]}, status_code=422)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", response_class=Response, responses={401: {"description": "Without the all-sources key "
                                                                   "(unless [search_service] metrics_public)"}})
    def metrics_text() -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE)

    @app.post("/search", response_model=SearchResponse, response_model_exclude_unset=True,
              dependencies=[Security(bearer)], responses={
        400: {"description": "A bad query, k or filter"}, 401: {"description": "A missing or wrong API key"},
        408: {"description": "A body not received within body_timeout_seconds"},
        413: {"description": "A body over max_body_bytes"}, 429: {"description": "Too many searches: retry later"},
        503: {"description": "The store cannot be read"}})
    async def search(body: SearchRequest, request: Request):
        if not 1 <= body.k <= limits.max_k:
            return problem(400, f"k must be between 1 and {limits.max_k}, got {body.k}")
        if len(body.query) > limits.max_query_chars or not body.query:
            return problem(400, f"query must hold 1 to {limits.max_query_chars} characters (or numbers)")
        key: ServiceKey = request.scope[KEY_SCOPE]
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                pool, run_search, body.query, body.k, body.filter, body.mode, key.scope)
        except (FilterError, QueryError, SearchModeError) as exc:
            return problem(400, str(exc))
        except StoreError as exc:
            return problem(503, f"the store cannot be read: {exc}")
        metrics.served(result.generation, result.lsn)
        return {"hits": result.hits, "generation": result.generation, "lsn": result.lsn}

    return app


def listen(host: str, port: int) -> socket.socket:
    """The service's socket, bound now: a port in use is told before the model loads, not after."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve(searcher: Searcher, keys: list[ServiceKey], limits: SearchServiceSettings, sock: socket.socket) -> None:
    """Serve on `sock` (from `listen`) until SIGTERM or SIGINT."""
    import faiss
    import uvicorn

    # Parallel searches, one core each: FAISS's OpenMP threads inside one search only contend with the other
    # searches (measured: a 20k-vector search took 6 ms with 1 thread, 63 ms with 2 on a busy 2-core machine).
    faiss.omp_set_num_threads(1)

    # Every limit set here, none left to uvicorn's defaults (README: "The service's limits and auth").
    config = uvicorn.Config(
        create_app(searcher, keys, limits), log_level="warning",
        http=header_deadline_protocol(limits.header_timeout_seconds),
        h11_max_incomplete_event_size=limits.max_header_bytes, timeout_keep_alive=limits.keep_alive_seconds,
        limit_concurrency=limits.max_connections, backlog=2048, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
