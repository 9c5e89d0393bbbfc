"""The `drill` Prefect flow: `vectormill store drill` on a schedule (deployment drill/store-drill), its result
published as the UI artifact `store-drill` (flows/artifacts.py). A drill that fails fails the run, so it alerts
like a failed ingest: the backups do not restore."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from vectormill.stores.drill import drill
from vectormill.stores.errors import StoreError

from .artifacts import publish_drill
from .config import load_config


class DrillFailed(RuntimeError):
    """The replica's newest generation did not restore, verify or answer its own chunks; the message says how."""


@flow(name="drill", log_prints=True)
def store_drill(config_file: str | None = None, replica: str | None = None) -> dict[str, Any]:
    settings = load_config(config_file)
    try:
        report = drill(settings.store, replica)
    except StoreError as exc:
        publish_drill({"ok": False, "replica": replica, "error": str(exc)})
        raise DrillFailed(str(exc)) from None
    publish_drill(report)
    get_run_logger().info("generation %s of replica %s restores in %.1f s and answers its own chunks; it is %.0f s old",
                          report["generation"], report["replica"], report["restore_seconds"], report["age_seconds"])
    return report
