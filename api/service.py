"""`vectormill serve-search`: the store's search over HTTP (FastAPI on uvicorn).

POST /search {"query": text or vector, "k": n, "filter": {...}} -> {"hits": [...], "generation", "lsn"} (hits with
the fields of `search --json`); GET /health; the OpenAPI page at /docs. Every search needs `Authorization: Bearer
<key>`. Load shedding: `concurrency` searches run at once and `queue` more wait (by default one per core but one,
and half as many: flows.settings); a search beyond both is answered 429 with Retry-After at once, so an answered
search waits at most about half a search's time, never behind an unbounded queue. Bad input gets a 4xx
that says what is wrong (413: a body over the limit, before it is read; 422: not JSON, or not a search request;
401: a missing or wrong key, checked before the request's fields; 400: a bad k, query or filter), never a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from vectormill.flows.search import Searcher
from vectormill.flows.settings import SearchServiceSettings
from vectormill.stores.errors import StoreError
from vectormill.stores.filters import FilterError


class SearchRequest(BaseModel):
    query: str | list[float] = Field(description="A text (embedded with the store's model) or a query vector.")
    k: int = Field(default=5, description="How many hits (1 to the service's max_k).")
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


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class BodyLimit:
    """Refuse a request body over `limit` bytes (413) before anything reads it (pure ASGI middleware)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if not length.isdigit() or int(length) > self.limit:
                response = problem(413, f"request body over {self.limit} bytes")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Admission:
    """A bounded queue of searches (pure ASGI middleware): at most `capacity` requests to /search inside the service
    at once, from their arrival (before their body is read) to their answer; the next is answered 429 at once.
    Beyond the searches running, the rest wait for the search pool: a bounded wait, never an unbounded one."""

    def __init__(self, app, capacity: int, retry_after: int):
        self.app, self.capacity, self.retry_after = app, capacity, retry_after
        self.admitted = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/search":
            await self.app(scope, receive, send)
            return
        if self.admitted >= self.capacity:
            response = problem(429, "too many searches at once: retry later", {"Retry-After": str(self.retry_after)})
            await response(scope, receive, send)
            return
        self.admitted += 1  # one event loop: no other request is admitted between the check and this
        try:
            await self.app(scope, receive, send)
        finally:
            self.admitted -= 1


def create_app(searcher: Searcher, api_key: str, limits: SearchServiceSettings) -> FastAPI:
    pool = ThreadPoolExecutor(max_workers=limits.searches_at_once, thread_name_prefix="search")

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        pool.shutdown(wait=True)

    app = FastAPI(title="vectormill search", version="1", lifespan=lifespan,
                  description="Nearest chunks of the vectormill store. Searches need `Authorization: Bearer <key>`.")
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    app.add_middleware(Admission, capacity=limits.searches_at_once + limits.searches_waiting,
                       retry_after=limits.retry_after_seconds)
    bearer = HTTPBearer(auto_error=False, description="The key of $VECTORMILL_SEARCH_API_KEY or the Secret block")

    def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        """Checked before the body is read or validated: without the key, nothing about the request is answered."""
        given = credentials.credentials.encode() if credentials and credentials.scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(given, api_key.encode()):
            raise HTTPException(401, "missing or wrong API key: send Authorization: Bearer <key>",
                                {"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/search", response_model=SearchResponse, response_model_exclude_unset=True, responses={
        400: {"description": "A bad query, k or filter"}, 401: {"description": "A missing or wrong API key"},
        413: {"description": "A body over max_body_bytes"}, 429: {"description": "Too many searches: retry later"}})
    async def search(body: SearchRequest, _: None = Depends(authorized)):
        if not 1 <= body.k <= limits.max_k:
            return problem(400, f"k must be between 1 and {limits.max_k}, got {body.k}")
        if len(body.query) > limits.max_query_chars or not body.query:
            return problem(400, f"query must hold 1 to {limits.max_query_chars} characters (or numbers)")
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                pool, searcher.search, body.query, body.k, body.filter, body.mode)
        except (FilterError, StoreError) as exc:
            return problem(400, str(exc))
        return {"hits": result.hits, "generation": result.generation, "lsn": result.lsn}

    return app


def serve(searcher: Searcher, api_key: str, limits: SearchServiceSettings, host: str, port: int) -> None:
    import faiss
    import uvicorn

    # Parallel searches, one core each: FAISS's OpenMP threads inside one search only contend with the other
    # searches (measured: a 20k-vector search took 6 ms with 1 thread, 63 ms with 2 on a busy 2-core machine).
    faiss.omp_set_num_threads(1)

    uvicorn.run(create_app(searcher, api_key, limits), host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=5)
