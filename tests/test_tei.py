"""The external embedding service (text-embeddings-inference) against a real TEI-shaped server on 127.0.0.1."""

import numpy as np
import pytest

from vectormill.connectors.settings import HttpSourceSettings
from vectormill.embedding.base import Embedder, EmbeddingError
from vectormill.embedding.tei import TeiEmbedder

from .servers.tei_server import expected_vector, tei_server

MODEL = "BAAI/bge-small-en-v1.5"


def http(**overrides) -> HttpSourceSettings:
    values = {"name": "embedding-service", "requests_per_second": 500, "burst": 20, "max_backoff_seconds": 0.1,
              "max_attempts": 30}
    return HttpSourceSettings(**{**values, **overrides})


def texts(count: int) -> list[str]:
    return [f"chunk {n}: the quarterly backup restore test of system {n % 7}" for n in range(count)]


def test_vectors_come_back_normalized_in_input_order_in_batches_the_server_accepts():
    with tei_server(max_client_batch_size=8, dimension=48) as server:
        embedder = TeiEmbedder(server.url, http(), model=MODEL, concurrency=3)
        assert isinstance(embedder, Embedder)
        assert (embedder.model, embedder.dimension, embedder.batch_size, embedder.max_input_length) == (MODEL, 48, 8, 64)

        inputs = texts(61)
        vectors = embedder.embed(inputs)

        assert vectors.dtype == np.float32 and vectors.shape == (61, 48)
        np.testing.assert_allclose(vectors, np.stack([expected_vector(t, 48) for t in inputs]), atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
        assert max(server.app.batch_sizes) <= 8
        assert server.app.peak_concurrency == 2  # batches were in flight together (the server takes 2)
        bodies = [r.json() for r in server.requests if r.path == "/embed"]
        assert all(b["normalize"] is True and b["truncate"] is False for b in bodies)
        assert embedder.embed([]).shape == (0, 48)


def test_an_overloaded_server_answers_429_and_every_batch_is_retried_until_embedded():
    with tei_server(max_client_batch_size=4, max_concurrent_requests=1, seconds_per_batch=0.03) as server:
        embedder = TeiEmbedder(server.url, http(), concurrency=4)
        inputs = texts(40)
        vectors = embedder.embed(inputs)
        np.testing.assert_allclose(vectors, np.stack([expected_vector(t, 48) for t in inputs]), atol=1e-6)
        assert server.app.overloaded > 0  # the server did push back…
        assert embedder.http.stats.retry_reasons["HTTP 429"] == server.app.overloaded  # …and each 429 was retried


def test_the_rate_limit_keeps_requests_to_the_service_within_rate_plus_burst():
    with tei_server(max_client_batch_size=2, max_concurrent_requests=8, seconds_per_batch=0.0) as server:
        embedder = TeiEmbedder(server.url, http(name="tei-rate", requests_per_second=30, burst=2), concurrency=4)
        embedder.embed(texts(60))
        assert server.max_requests_in_window(1.0) <= 30 + 2


def test_a_configured_batch_size_lowers_the_servers_limit():
    with tei_server(max_client_batch_size=8) as server:
        embedder = TeiEmbedder(server.url, http(), batch_size=3)
        embedder.embed(texts(10))
        assert sorted(server.app.batch_sizes[1:]) == [1, 3, 3, 3]  # after the dimension probe


def test_a_different_served_model_is_refused_with_the_fix():
    with tei_server(model_id="intfloat/e5-small-v2") as server:
        with pytest.raises(EmbeddingError, match="serves model 'intfloat/e5-small-v2'.*set model to"):
            TeiEmbedder(server.url, http(), model=MODEL)


def test_a_text_over_the_input_limit_fails_with_the_servers_reason_instead_of_being_truncated():
    with tei_server(max_input_length=10) as server:
        embedder = TeiEmbedder(server.url, http())
        with pytest.raises(EmbeddingError, match="HTTP 413.*must have less than 10 tokens"):
            embedder.embed(["word " * 11])


def test_the_api_key_is_sent_and_never_shown(caplog):
    key = "tei-api-key-77aa"
    with tei_server(api_key=key) as server:
        assert TeiEmbedder(server.url, http(), token=key).embed(["x"]).shape == (1, 48)
        with pytest.raises(EmbeddingError, match="credentials rejected") as raised:
            TeiEmbedder(server.url, http(), token="wrong-key-00")
    assert key not in caplog.text and "wrong-key-00" not in str(raised.value)


def test_an_unreachable_service_is_an_embedding_error():
    with pytest.raises(EmbeddingError, match="embedding service unusable.*ConnectionRefusedError"):
        TeiEmbedder("http://127.0.0.1:9", http(max_attempts=2))


def test_the_config_selects_the_service_instead_of_a_local_model(monkeypatch):
    from vectormill.embedding.registry import build_embedder
    from vectormill.embedding.settings import EmbeddingSettings

    monkeypatch.setenv("TEI_KEY", "s3cret-key")
    with tei_server(max_client_batch_size=8, dimension=48) as server:
        settings = EmbeddingSettings.model_validate(
            {"model": MODEL, "service": {"url": server.url, "requests_per_second": 100, "token_env": "TEI_KEY"}})
        embedder = build_embedder(settings)
        assert isinstance(embedder, TeiEmbedder) and embedder.dimension == 48
        np.testing.assert_allclose(embedder.embed(["a chunk"]), [expected_vector("a chunk", 48)], atol=1e-6)
        assert server.requests[-1].headers.get("Authorization") == "Bearer s3cret-key"


def test_errors_name_the_service_without_its_credentials():
    with tei_server(model_id="intfloat/e5-small-v2") as server:
        with_credentials = server.url.replace("http://", "http://tei-user:tei-pass-5ecr3t@")
        with pytest.raises(EmbeddingError, match="serves model") as raised:
            TeiEmbedder(with_credentials, http(), model=MODEL)
    message = str(raised.value)
    assert f"embedding service {server.url} serves model" in message
    assert "tei-pass-5ecr3t" not in message and "tei-user" not in message
