"""Prefect's records of the background tasks of `vectormill serve`: where they live, and deleting them.

Prefect hands a background task (`Task.delay`) its parameters and its result through result storage:
the flow run writes `parameters/<id>` (the chunk texts, with the run's context) before the task
worker runs the task, and the task worker writes the result (the vectors, or the exception) under the
storage key that the task run's final state names. Prefect deletes neither, and has no API to: about
3 kB per embedded chunk would stay for ever.

So these tasks get a result storage of vectormill's own: the folder `vectormill-background-tasks` in
Prefect's local result storage (PREFECT_LOCAL_STORAGE_PATH, by default ~/.prefect/storage), where
Prefect writes both their parameters and their results. The task worker and the flow runs find it from
that one setting (the runs inherit the environment of `serve`), and so does every `serve` on the
machine: they share the task queue, so a run's task may run on the task worker of any of them. Only
these records are written there, so deleting in it never touches another flow's results.
- A flow run deletes a task's records once it has taken the task's result, vectors or error
  (`delete_records`): no process reads them after that.
- A run killed midway leaves the records of the few tasks it had in flight; `serve` deletes the
  records older than STALE_AFTER when it starts and every SWEEP_EVERY (`sweep`). By age, not by
  emptying a folder of its own at start: the folder is shared by the serves of the machine, and a
  live task's records are seconds to minutes old.

Prefect is imported inside functions: flows/execution.py, which the config loads, imports this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

FOLDER = "vectormill-background-tasks"
PARAMETERS = "parameters"  # where Prefect writes a background task's parameters (task_worker.store_parameters)
STALE_AFTER = timedelta(hours=24)
SWEEP_EVERY = timedelta(hours=1)


def records_folder() -> Path:
    """The folder of the background tasks' records, from this process's Prefect settings."""
    from prefect.settings import get_current_settings

    # Resolved as Prefect resolves a LocalFileSystem's base path, which prefixes the storage keys.
    return Path(get_current_settings().results.local_storage_path).expanduser().resolve() / FOLDER


def with_records_storage(task: Any, folder: Path) -> Any:
    """The task with `folder` as its result storage: Prefect writes its parameters and results there."""
    return task.with_options(result_storage=folder)


def record_paths(states: Iterable[Any], folder: Path) -> set[Path]:
    """The files of a task run's records in `folder`, from its states: the parameters that its Scheduled
    state names and the results (vectors or exception) that its states' data name."""
    paths: set[Path] = set()
    for state in states:
        if state.state_details.task_parameters_id is not None:
            paths.add(folder / PARAMETERS / str(state.state_details.task_parameters_id))
        storage_key = getattr(state.data, "storage_key", None)  # a ResultRecordMetadata
        if storage_key is not None and folder in Path(storage_key).parents:
            paths.add(Path(storage_key))
    return paths


def delete_records(future: Any, folder: Path) -> None:
    """Delete the records of the finished task run of `future` (a PrefectDistributedFuture)."""
    from prefect.client.orchestration import get_client

    # The server holds the Scheduled state, written when the run was created; the final state, which
    # it records from events a little later, is the future's own.
    with get_client(sync_client=True) as client:
        states = client.read_task_run_states(future.task_run_id)
    for path in record_paths([*states, future.state], folder):
        path.unlink(missing_ok=True)


def sweep(folder: Path, now: float) -> int:
    """Delete the records last written more than STALE_AFTER before `now` (a POSIX time); how many."""
    swept = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and now - path.stat().st_mtime > STALE_AFTER.total_seconds():
                path.unlink()
                swept += 1
        except FileNotFoundError:  # deleted meanwhile by the run that took its result
            continue
    return swept
