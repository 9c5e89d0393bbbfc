"""What `vectormill backfill` starts before its flow run, so that a run's fixed costs overlap.

In the order the CLI calls them:
1. `start_server`: with no Prefect server configured (PREFECT_API_URL, or a profile), a temporary
   one (flows/temporary_server.py) starts at once and comes up on another core while the rest
   goes on.
2. `start_model_if_needed`: when the run will embed, importing torch and sentence-transformers
   and loading the model start in the background (embedding/loader.py). The run will embed when
   the store does not exist yet, or when a source whose listing costs no requests (files) lists
   a new or changed document: the same listing and comparison the flow makes, done against the
   store opened for reading, stopping at the first such document. Sources behind HTTP, and
   backfill windows, are left to the flow, which starts the load when it finds a document to
   fetch (`Execution.warm_up`), so the load still overlaps fetching and parsing. An unchanged
   run never loads the model.
3. `Warmup.server_ready`: the flow needs the server; this waits for what is left of its start.

Nothing here imports Prefect's flow machinery; `start_server` imports its settings only.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vectormill.connectors.errors import SourceError
from vectormill.connectors.settings import HttpSourceSettings
from vectormill.embedding.loader import loader_for
from vectormill.stores.faiss_store import FaissStore, StoreError

from .config import VectormillConfig
from .plan import plan_source
from .temporary_server import TemporaryServer, using, wait_until_ready

logger = logging.getLogger(__name__)


@dataclass
class Warmup:
    server: TemporaryServer | None  # None: a configured Prefect server is used
    startup_timeout: float
    prefect_start: float = 0.0  # seconds the temporary server took to come up
    server_wait: float = 0.0  # of which the CLI had nothing else to do

    def server_ready(self) -> None:
        """Wait until the temporary server answers (raises TemporaryServerError when it cannot start)."""
        if self.server is None or self.server.ready_after is not None:
            return
        waiting = time.perf_counter()
        self.server = wait_until_ready(self.server, self.startup_timeout)
        self.server_wait = time.perf_counter() - waiting
        self.prefect_start = self.server.ready_after or 0.0

    @contextlib.contextmanager
    def prefect_api(self) -> Iterator[None]:
        """Prefect talks to the temporary server (if one was started) while the block runs."""
        if self.server is None:
            yield
            return
        with using(self.server):
            yield


def start_server() -> Warmup:
    """Start a temporary Prefect server unless one is configured. Call it from the main thread."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    timeout = float(settings.server.ephemeral.startup_timeout_seconds)
    if settings.api.url:
        return Warmup(None, timeout)
    return Warmup(TemporaryServer.start(), timeout)


def will_embed(config: VectormillConfig, sources: list[Any], full: bool) -> bool:
    """Whether the run will embed in this process, as far as can be known without a request (see above)."""
    if config.execution.task_runner != "local" or config.execution.embedding_task_worker:
        return False  # Dask workers, or the task worker of `vectormill serve`, load the model
    if not FaissStore.exists(config.store.path):
        return True
    from vectormill.connectors.registry import build_source

    try:
        with FaissStore.open(config.store, writable=False) as store:
            for settings in sources:
                if isinstance(settings, HttpSourceSettings):
                    continue
                counts = dict.fromkeys(("seen", "unchanged"), 0)
                plan = plan_source(build_source(settings), store, counts, full,
                                   max_attempts=settings.max_document_attempts)
                if next(plan.refs, None) is not None:
                    return True
    except (StoreError, SourceError, OSError) as exc:
        # Only a head start is lost: the flow meets the same problem and reports it in its summary.
        logger.info("not loading the model ahead of the run: %s", exc)
    return False


def start_model_if_needed(config: VectormillConfig, sources: list[Any], full: bool) -> bool:
    """Start loading the model in the background when the run will embed; returns whether it started."""
    if not will_embed(config, sources, full):
        return False
    loader_for(config.embedding).start()
    return True
