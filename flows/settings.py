"""The [deployments] table: schedules, the work pool and the concurrency of scheduled runs.

Plain settings (pydantic, no Prefect): the config holds them, and commands that must not import
Prefect load the config. What the limits are for is told in `deploy.py`.
"""

from __future__ import annotations

import os
import re
from datetime import datetime

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def _valid_cron(expression: str | None) -> str | None:
    if expression is None:
        return None
    from cronsim import CronSim, CronSimError  # Prefect's own cron parser

    try:
        CronSim(expression, datetime(2000, 1, 1))
    except CronSimError as exc:
        raise ValueError(f"{expression!r} is not a valid cron expression ({exc})") from None
    return expression


class DeploymentSettings(BaseModel):
    """The [deployments] table: schedules, the work pool and concurrency of scheduled runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Work pool (type "process") named in deployments/prefect.yaml; `vectormill serve` needs none.
    work_pool: str = "vectormill"
    # Cron per source name, for its deployment ingest/<source>; a source without one is run on demand.
    schedules: dict[str, str] = Field(default_factory=dict)
    # Cron of ingest/all.
    all_schedule: str | None = None
    # Cron of audit/weekly (`sources audit` of every source, published as a UI artifact); "": on demand.
    audit_schedule: str | None = "0 4 * * 0"
    # Cron of drill/store-drill (`store drill` of the first replica, published as a UI artifact); "": on demand.
    drill_schedule: str | None = "0 5 * * 0"
    timezone: str = "UTC"
    # Runs of one deployment at once; more wait for a slot (collision strategy ENQUEUE).
    runs_per_deployment: int = Field(default=1, ge=1)
    # Global concurrency limits (see the module docstring).
    store_limit: str = Field(default="vectormill-store", pattern=r"^[a-z0-9][a-z0-9-]*$")
    embedding_limit: str = Field(default="vectormill-embedding", pattern=r"^[a-z0-9][a-z0-9-]*$")
    embedding_slots: int = Field(default=1, ge=1)

    @field_validator("schedules")
    @classmethod
    def _crons(cls, schedules: dict[str, str]) -> dict[str, str]:
        for name, expression in schedules.items():
            try:
                _valid_cron(expression)
            except ValueError as exc:
                raise ValueError(f"schedules.{name}: {exc}") from None
        return schedules

    @field_validator("all_schedule", "audit_schedule", "drill_schedule")
    @classmethod
    def _all_cron(cls, expression: str | None) -> str | None:
        return _valid_cron(expression or None)


class SearchKeySettings(BaseModel):
    """A [search_service.keys.NAME] table: a key of its own for one app, which reads only what its filter passes
    (ANDed with every request's filter). NAME is shown in the metrics; the secret never is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Where the secret is: an environment variable, or a Prefect Secret block (exactly one of them).
    secret_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    secret_block: str | None = None
    # The key's scope, in the filter's JSON terms: {source = ["wiki"], document_prefix = "public/"}, …
    filter: dict[str, Any]

    @field_validator("filter")
    @classmethod
    def _scope(cls, scope: dict[str, Any]) -> dict[str, Any]:
        from vectormill.stores.filters import parse_filter

        if parse_filter(scope) is None:
            raise ValueError("a named key's filter limits what it reads (e.g. {source = \"wiki\"}); an unscoped key "
                             "is VECTORMILL_SEARCH_API_KEY's")
        return scope

    @model_validator(mode="after")
    def _one_secret(self) -> "SearchKeySettings":
        if (self.secret_env is None) == (self.secret_block is None):
            raise ValueError("give exactly one of secret_env (an environment variable) and secret_block (a Prefect "
                             "Secret block)")
        return self


class SearchServiceSettings(BaseModel):
    """The [search_service] table: `vectormill serve-search`'s keys, limits, timeouts and load shedding (README)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Prefect Secret block holding the all-sources API key, read when VECTORMILL_SEARCH_API_KEY is not set.
    api_key_block: str | None = None
    # Scoped keys by name (letters, digits, "_", "-", "."): [search_service.keys.NAME].
    keys: dict[str, SearchKeySettings] = Field(default_factory=dict)
    # GET /metrics without a key (for a scraper inside the network); else it needs the all-sources key.
    metrics_public: bool = False
    max_k: int = Field(default=100, ge=1, le=10_000)
    max_query_chars: int = Field(default=4_000, ge=1)
    max_body_bytes: int = Field(default=65_536, ge=1_024)
    # A request's body must arrive within this (else 408); its headers within header_timeout_seconds of the
    # connection or of the previous answer (else the connection is closed): a stalled client holds a socket for
    # that long, never an admission slot.
    body_timeout_seconds: float = Field(default=10, gt=0)
    header_timeout_seconds: float = Field(default=10, gt=0)
    max_header_bytes: int = Field(default=16_384, ge=1_024)
    keep_alive_seconds: int = Field(default=5, ge=1)
    # Open connections at most; a request on a connection beyond it is answered 503 by uvicorn.
    max_connections: int = Field(default=1_000, ge=16)
    # Searches run at once, and searches waiting for one of them; a search beyond both gets 429 at once.
    # Unset: see searches_at_once and searches_waiting.
    concurrency: int | None = Field(default=None, ge=1)
    queue: int | None = Field(default=None, ge=0)
    retry_after_seconds: int = Field(default=1, ge=1)

    @field_validator("keys")
    @classmethod
    def _key_names(cls, keys: dict[str, SearchKeySettings]) -> dict[str, SearchKeySettings]:
        for name in keys:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
                raise ValueError(f"key name {name[:70]!r}: letters, digits, '_', '-' and '.', at most 64")
        return keys

    @property
    def searches_at_once(self) -> int:
        """`concurrency`, by default one search per usable core but one: a search runs on one core, and the event
        loop (HTTP, JSON, answering 429s) needs a core of its own, else it slows every search under overload."""
        return self.concurrency or max(1, usable_cores() - 1)

    @property
    def searches_waiting(self) -> int:
        """`queue`, by default half of searches_at_once: an admitted search then waits about half a search's time at
        most, so under any overload the answered ones stay within ~1.5x of an unloaded search (2x: the goal)."""
        return self.queue if self.queue is not None else self.searches_at_once // 2


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset), else the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
