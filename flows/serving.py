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
import signal
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any

from vectormill.embedding.loader import loader_for
from vectormill.embedding.settings import EmbeddingSettings

from .task_records import STALE_AFTER, SWEEP_EVERY, records_folder, sweep, with_records_storage

TASK_WORKER_SETTING = "VECTORMILL_EXECUTION__EMBEDDING_TASK_WORKER"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long the runs and the task worker get to wind down after a stop signal before the process exits anyway.
STOP_GRACE = timedelta(seconds=20)


def serve(deployments: list[Any], embedding: EmbeddingSettings, limit: int | None, warm_model: bool) -> None:
    """Serve the deployments until SIGTERM or SIGINT (Ctrl-C); with `warm_model`, the embedding tasks too."""
    if warm_model:
        os.environ[TASK_WORKER_SETTING] = "true"  # read by the config of every run started from here
        loader_for(embedding).start()
    _run_until_stopped(lambda: _serve(deployments, limit, warm_model))


def _run_until_stopped(serving: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `serving()` on an event loop in a thread of its own until it ends or SIGTERM/SIGINT arrives, then
    cancel it (Prefect's runner then pauses the schedules and stops its runs) and return.

    Why a thread: Prefect's runner and task worker each install their own SIGTERM handler when started on the
    main thread, and the task worker's waits on the very event loop the signal interrupted, so `serve` never
    exited on SIGTERM and a scheduler had to kill it. Off the main thread they leave the signals to us."""
    stopping = threading.Event()
    running: dict[str, Any] = {}
    failure: list[BaseException] = []

    async def main() -> None:
        running["loop"], running["task"] = asyncio.get_running_loop(), asyncio.current_task()
        await serving()

    def run() -> None:
        try:
            asyncio.run(main())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # handed to the main thread, which raises it
            failure.append(exc)
        finally:
            stopping.set()

    previous = {signum: signal.signal(signum, lambda *_: stopping.set()) for signum in STOP_SIGNALS}
    # A daemon: a loop that does not stop within STOP_GRACE cannot keep the process alive.
    thread = threading.Thread(target=run, name="vectormill-serve", daemon=True)
    thread.start()
    try:
        stopping.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if thread.is_alive() and "loop" in running:
        running["loop"].call_soon_threadsafe(running["task"].cancel)
        thread.join(STOP_GRACE.total_seconds())
    if failure:
        raise failure[0]


async def _serve(deployments: list[Any], limit: int | None, warm_model: bool) -> None:
    if not warm_model:
        from prefect import aserve

        await aserve(*deployments, limit=limit)
        return
    await _serve_with_task_worker(deployments, limit)


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
