"""An external Hugging Face text-embeddings-inference (TEI) server as the `Embedder`.

`GET /info` gives the served model (`model_id`), `max_client_batch_size` and `max_input_length`;
`POST /embed {"inputs": [...], "normalize": true, "truncate": false}` returns one vector per input.
Requests go through the connectors' `HttpClient`: its rate limiter keeps a shared service from
being saturated and its tenacity policy retries the 429 TEI answers when overloaded. At most
`concurrency` batches are in flight at once. `truncate: false` makes the server refuse an
over-long text instead of embedding a silently cut one.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vectormill.connectors.errors import SourceError
from vectormill.connectors.http import HttpClient, HttpStatusError
from vectormill.connectors.settings import HttpSourceSettings

from .base import EmbeddingError, unit_rows


class TeiEmbedder:
    def __init__(
        self,
        url: str,
        http: HttpSourceSettings,
        *,
        model: str | None = None,
        batch_size: int | None = None,
        concurrency: int = 4,
        token: str | None = None,
    ):
        """`http` carries the rate limit, timeouts and retry bounds (its `name` labels logs and errors);
        `model`, when given, must be the model the server serves; `batch_size` caps the server's limit."""
        self.url = url.rstrip("/")
        self.concurrency = concurrency
        self.http = HttpClient(http.name, http, headers={"Authorization": f"Bearer {token}"} if token else None,
                               secret_values=(token,) if token else ())
        self.shown_url = self.http.display_url(self.url).rstrip("/")  # for messages: credentials, secrets masked
        info = self._call("GET", "/info").json()
        served = info.get("model_id")
        if model is not None and served != model:
            raise EmbeddingError(f"embedding service {self.shown_url} serves model {served!r}, but [embedding] model is "
                                 f"{model!r}: set model to {served!r} (vectors of different models do not mix)")
        self.model = model or served
        self.max_input_length = int(info.get("max_input_length") or 0)  # tokens, for sizing chunks
        server_batch = int(info.get("max_client_batch_size") or 32)
        self.batch_size = min(batch_size, server_batch) if batch_size else server_batch
        self.dimension = int(self._embed_batch(["dimension probe"]).shape[1])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        batches = [list(texts[start:start + self.batch_size]) for start in range(0, len(texts), self.batch_size)]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(batches))) as pool:
            vectors = np.vstack(list(pool.map(self._embed_batch, batches)))
        if vectors.shape != (len(texts), self.dimension):
            raise EmbeddingError(f"embedding service {self.shown_url} returned vectors of shape {vectors.shape} for "
                                 f"{len(texts)} texts of dimension {self.dimension}")
        return vectors

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        answer = self._call("POST", "/embed", json={"inputs": texts, "normalize": True, "truncate": False}).json()
        vectors = np.asarray(answer, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise EmbeddingError(f"embedding service {self.shown_url} answered {len(answer)} vectors for {len(texts)} texts")
        # The server normalizes already; normalizing again costs nothing and guarantees the protocol.
        return unit_rows(vectors)

    def _call(self, method: str, path: str, **kwargs):
        try:
            return self.http.request(method, self.url + path, **kwargs)
        except HttpStatusError as exc:
            raise EmbeddingError(f"embedding service refused the request: {exc}") from None
        except SourceError as exc:
            raise EmbeddingError(f"embedding service unusable: {exc}") from None

    def close(self) -> None:
        self.http.close()
