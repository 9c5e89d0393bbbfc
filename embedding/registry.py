"""Builds the `Embedder` that the embedding settings ask for."""

from __future__ import annotations

from .base import Embedder
from .settings import EmbeddingSettings


def build_embedder(settings: EmbeddingSettings) -> Embedder:
    """The external service when one is configured; else a pool of model replicas sized by the
    capacity plan (one CPU worker without a usable GPU)."""
    if settings.service is not None:
        return _service_embedder(settings)
    from .capacity import plan_for_settings
    from .pool import EmbeddingPool

    return EmbeddingPool(settings.model, plan_for_settings(settings), requested_precision=settings.precision,
                         min_cosine=settings.precision_min_cosine)


def _service_embedder(settings: EmbeddingSettings) -> Embedder:
    from vectormill.connectors.secrets import resolve_secret
    from vectormill.connectors.settings import HttpSourceSettings

    from .tei import TeiEmbedder

    service = settings.service
    # The service's own rate limit and retry bounds, through the connectors' HTTP layer.
    http = HttpSourceSettings(name="embedding-service", requests_per_second=service.requests_per_second,
                              burst=service.burst, read_timeout=service.read_timeout, max_attempts=service.max_attempts)
    token = resolve_secret(env=service.token_env, block=None, what="embedding service API key") if service.token_env else None
    return TeiEmbedder(service.url, http, model=settings.model, batch_size=service.batch_size,
                       concurrency=service.concurrency, token=token)
