"""The `drill` Prefect flow: `vectormill store drill` on a schedule (deployment drill/store-drill), its result
published as the UI artifact `store-drill` (flows/artifacts.py). A drill that fails fails the run, so it alerts
like a failed ingest: the backups do not restore.

It scrubs the replicas first (hashes every file of every generation they hold: stores/restore.py `scrub_replicas`),
so damage a replica took after a checkpoint confirmed it is found within one drill interval; the report's "scrub"
says what was read and found, and damage there fails the run too (the next checkpoint sends those files again)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from vectormill.stores.drill import DrillProblems, drill
from vectormill.stores.errors import StoreError
from vectormill.stores.restore import scrub_replicas

from .artifacts import publish_drill
from .config import load_config


class DrillFailed(RuntimeError):
    """The replica's newest generation did not restore, verify or answer its own chunks; the message says how."""


@flow(name="drill", log_prints=True)
def store_drill(config_file: str | None = None, replica: str | None = None) -> dict[str, Any]:
    settings = load_config(config_file)
    scrub = scrub_replicas(settings.store)
    try:
        report = drill(settings.store, replica)
    except StoreError as exc:
        failed = exc.report if isinstance(exc, DrillProblems) else {"ok": False, "replica": replica}
        publish_drill({**failed, "error": str(exc), "scrub": scrub})
        raise DrillFailed(str(exc)) from None
    report = {**report, "scrub": scrub}
    if not scrub["ok"]:
        damage = "; ".join(f"{p['where']}: {p['file']}: {p['detail']}" for p in scrub["problems"])
        report = {**report, "ok": False, "error": f"scrub: {damage}"}
    publish_drill(report)
    if not scrub["ok"]:
        raise DrillFailed(report["error"])
    get_run_logger().info("generation %s of replica %s restores in %.1f s and answers its own chunks; it is %.0f s old",
                          report["generation"], report["replica"], report["restore_seconds"], report["age_seconds"])
    return report
