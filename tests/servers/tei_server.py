"""A Hugging Face text-embeddings-inference server on 127.0.0.1, following TEI's HTTP API.

- `GET /info` → model_id, max_client_batch_size, max_input_length, max_concurrent_requests…
- `POST /embed {"inputs": str | [str], "normalize", "truncate"}` → `[[float, …], …]`;
  413 above `max_client_batch_size`, 413 for an input longer than `max_input_length` tokens
  (whitespace words here) when `truncate` is false, 429 `Overloaded` while more than
  `max_concurrent_requests` requests are being served, 401 without the API key when one is set;
- errors are `{"error": "...", "error_type": "Validation" | "Overloaded" | "Unhealthy"}`.

Vectors are deterministic: a unit vector drawn from a generator seeded by the text's hash.
"""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np

from .fault_server import FaultServer, Reply, Request

ERROR_TYPES = {401: "Unhealthy", 413: "Validation", 422: "Validation", 429: "Overloaded"}


def expected_vector(text: str, dimension: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    return vector / np.linalg.norm(vector)


class TeiApp:
    def __init__(self, model_id: str = "BAAI/bge-small-en-v1.5", dimension: int = 48, max_client_batch_size: int = 8,
                 max_input_length: int = 64, max_concurrent_requests: int = 2, seconds_per_batch: float = 0.02,
                 api_key: str | None = None):
        self.model_id = model_id
        self.dimension = dimension
        self.max_client_batch_size = max_client_batch_size
        self.max_input_length = max_input_length
        self.max_concurrent_requests = max_concurrent_requests
        self.seconds_per_batch = seconds_per_batch
        self.api_key = api_key
        self.batch_sizes: list[int] = []
        self.overloaded = 0  # 429s answered
        self.peak_concurrency = 0  # the most requests served at once (429s excluded)
        self._active = 0
        self._lock = threading.Lock()

    def error(self, status: int, message: str) -> Reply:
        return Reply(status, {"error": message, "error_type": ERROR_TYPES.get(status, "Backend")})

    def handle(self, request: Request) -> Reply:
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self.error(401, "Unauthorized")
        if request.method == "GET" and request.path == "/info":
            return Reply(200, {
                "model_id": self.model_id, "model_sha": None, "model_dtype": "float32",
                "model_type": {"embedding": {"pooling": "cls"}}, "max_concurrent_requests": self.max_concurrent_requests,
                "max_input_length": self.max_input_length, "max_batch_tokens": 16384, "max_batch_requests": None,
                "max_client_batch_size": self.max_client_batch_size, "auto_truncate": False,
                "tokenization_workers": 2, "version": "1.5.0",
            })
        if request.method == "POST" and request.path == "/embed":
            return self._embed(request)
        return self.error(404, f"no route {request.method} {request.path}")

    def _embed(self, request: Request) -> Reply:
        body = request.json()
        inputs = body["inputs"] if isinstance(body["inputs"], list) else [body["inputs"]]
        if len(inputs) > self.max_client_batch_size:
            return self.error(413, f"batch size {len(inputs)} > maximum allowed batch size {self.max_client_batch_size}")
        for text in inputs:
            tokens = len(text.split())
            if tokens > self.max_input_length and not body.get("truncate"):
                return self.error(413, f"Input validation error: `inputs` must have less than "
                                       f"{self.max_input_length} tokens. Given: {tokens}")
        with self._lock:
            if self._active >= self.max_concurrent_requests:
                self.overloaded += 1
                return self.error(429, "Model is overloaded")
            self._active += 1
            self.peak_concurrency = max(self.peak_concurrency, self._active)
            self.batch_sizes.append(len(inputs))
        try:
            time.sleep(self.seconds_per_batch)
            vectors = [expected_vector(text, self.dimension) for text in inputs]
            if not body.get("normalize", True):
                vectors = [vector * 3.0 for vector in vectors]
            return Reply(200, [vector.tolist() for vector in vectors])
        finally:
            with self._lock:
                self._active -= 1


def tei_server(**options) -> FaultServer:
    """A TEI server (not started; use it as a context manager). The app is `server.app`."""
    return FaultServer(TeiApp(**options))
