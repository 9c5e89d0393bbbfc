"""The `audit` Prefect flow: `vectormill sources audit` on a schedule (deployment audit/weekly),
its result published as the UI artifact `sources-audit` (flows/artifacts.py). A divergence fails
the run, so it alerts like a failed ingest."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from .artifacts import publish_audit
from .audit import audit, audit_report
from .config import load_config


class AuditDiverged(RuntimeError):
    """The store does not mirror a source; the report says how."""


@flow(name="audit", log_prints=True)
def audit_sources(config_file: str | None = None, source: str | None = None, deep: bool = False) -> dict[str, Any]:
    report = audit_report(audit(load_config(config_file), source, deep))
    publish_audit(report)
    diverging = [entry["name"] for entry in report["sources"] if not entry["ok"]]
    if diverging:
        raise AuditDiverged(f"the store diverges from source(s) {', '.join(diverging)}: see the sources-audit "
                            "artifact, then `vectormill backfill --full --source NAME` repairs it")
    get_run_logger().info("every audited source matches the store")
    return report
