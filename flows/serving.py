"""`vectormill serve`: the ingest deployments served from this process, with the model kept loaded.

Prefect's runner starts every flow run in a fresh subprocess, so each scheduled run would import
torch and load the model again: seconds before its first chunk is embedded, however small the
change. Beside the runner this process therefore runs a Prefect task worker
(`prefect.task_worker`) serving the embedding tasks, and loads the model once, at start. The
runs it starts inherit its environment, which sets `[execution] embedding_task_worker = true`:
they list, fetch and parse as usual and send their embedding to the task worker with
`Task.delay` (flows/execution.py, `TaskWorkerExecution`).

Prefect hands background tasks their parameters and results (the texts and vectors of every
embedded chunk, about 3 kB each) through result storage, and keeps them. These tasks keep theirs
in a folder of vectormill's own, `vectormill-background-tasks` in PREFECT_LOCAL_STORAGE_PATH
(flows/task_records.py): a run deletes a task's records once it has taken its vectors, and this
process deletes those older than a day (left by runs killed midway), at start and every hour.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from vectormill.embedding.loader import loader_for
from vectormill.embedding.settings import EmbeddingSettings

from .task_records import STALE_AFTER, SWEEP_EVERY, records_folder, sweep, with_records_storage

TASK_WORKER_SETTING = "VECTORMILL_EXECUTION__EMBEDDING_TASK_WORKER"


def serve(deployments: list[Any], embedding: EmbeddingSettings, limit: int | None, warm_model: bool) -> None:
    """Serve the deployments until interrupted; with `warm_model`, the embedding tasks too."""
    if not warm_model:
        from prefect import serve as serve_deployments

        serve_deployments(*deployments, limit=limit)
        return
    os.environ[TASK_WORKER_SETTING] = "true"  # read by the config of every run started from here
    loader_for(embedding).start()
    asyncio.run(_serve_with_task_worker(deployments, limit))


async def _serve_with_task_worker(deployments: list[Any], limit: int | None) -> None:
    from prefect import aserve
    from prefect.task_worker import aserve as serve_tasks

    from .pipeline import embed_chunks, embedding_dimension, embedding_task_chunks
    from .precision import embedding_precision

    records = records_folder()
    tasks = [with_records_storage(task, records)
             for task in (embed_chunks, embedding_dimension, embedding_task_chunks, embedding_precision)]
    await asyncio.gather(aserve(*deployments, limit=limit), serve_tasks(*tasks), _sweep_stale_records(records))


async def _sweep_stale_records(records: Path) -> None:
    """Delete the background tasks' records left by runs killed midway, now and every SWEEP_EVERY."""
    from prefect.logging import get_logger

    logger = get_logger("vectormill.serve")
    while True:
        try:
            swept = await asyncio.to_thread(sweep, records, time.time())
        except OSError as exc:  # housekeeping: serving goes on, and the next sweep tries again
            logger.warning("could not sweep the records of background tasks in %s: %s", records, exc)
        else:
            if swept:
                logger.info("deleted %d records of background tasks older than %s in %s (left by runs stopped "
                            "midway)", swept, STALE_AFTER, records)
        await asyncio.sleep(SWEEP_EVERY.total_seconds())
