"""What an ingest run shows in the Prefect UI: a progress bar, a table per source, a summary.

Artifact keys are stable, so the UI's Artifacts page shows each one's history across runs
(`<target>` is the deployment's name: a source's name, or `all`; see `run_target`):

- `ingest-progress-<target>`  progress (0–100) of the documents to process, updated while the run goes
- `ingest-source-<source>`    table: seen / new / changed / unchanged / deleted / failed / chunks / seconds
- `ingest-summary-<target>`   markdown: status and warnings, documents queued for retry, sources,
                              failed documents with reasons, stuck documents (queued past
                              max_document_attempts), embedding throughput, stage seconds, store, then
                              the optional sections below, then the summary as JSON (what
                              `backfill --deployment --json` prints)
- `sources-audit`             markdown: the last `sources audit` run by the audit flow (audit/weekly):
                              counts per source, the diverging document ids, the report as JSON
- `store-drill`               markdown: the last `store drill` run by the drill flow (drill/store-drill): the
                              replica, recovery point and time, queries answered, or the error; the report as JSON

Keys hold only lowercase letters, digits and dashes (`slug`). The summary renders these optional
keys of the summary dict when a flow adds them (one line each in the flow): `precision` (what
the model ran in, why, and the agreement guard's probe), `retries` (HTTP retries and rate-limit
waits per source), `telemetry` (GPU/CPU), `replicas`, `drift`.
Each may be a dict of rows (name → dict), a list of dicts, or a dict of values.

Rendering is pure (tested without a server); `publish` and `ArtifactProgress` talk to Prefect.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from typing import Any

from .progress import ProgressListener

SOURCE_COLUMNS = ("seen", "new", "changed", "unchanged", "deleted", "failed")
# Failed documents listed in the markdown (all of them are in the JSON below it).
MARKDOWN_FAILURES = 200
# Optional summary sections: key → (heading, label of the rows' names).
OPTIONAL_SECTIONS = {
    "precision": ("Embedding precision", "precision"),
    "retries": ("Retries and rate-limit waits", "source"),
    "telemetry": ("GPU/CPU telemetry", "device"),
    "replicas": ("Replicas", "replica"),
    "drift": ("Embedding drift against each source's baseline", "source"),
}
JSON_FENCE = re.compile(r"```json\n(.*?)\n```", re.DOTALL)
# Seconds between two updates of the progress artifact (each is a request to the server).
PROGRESS_EVERY_SECONDS = 1.0


def slug(name: str) -> str:
    """`name` as an artifact-key part; a name that had to change gets a short hash, so keys stay unique."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    if cleaned == name:
        return name
    return f"{cleaned or 'source'}-{hashlib.sha1(name.encode()).hexdigest()[:6]}"


def run_target(sources: list[str] | None) -> str:
    """What a run covers, as its deployments name it: `all`, or the source names joined by dashes."""
    return "-".join(slug(name) for name in sources) if sources else "all"


def progress_key(target: str) -> str:
    return f"ingest-progress-{target}"


def source_key(source: str) -> str:
    return f"ingest-source-{slug(source)}"


def summary_key(target: str) -> str:
    return f"ingest-summary-{target}"


# ---- rendering (pure) ------------------------------------------------------------------------
def source_row(source: dict[str, Any]) -> dict[str, Any]:
    """One source's counts as a table row (the `ingest-source-<source>` artifact)."""
    return {
        "source": source["name"],
        "status": source["status"],
        **{column: source["documents"][column] for column in SOURCE_COLUMNS},
        "chunks": source["chunks_embedded"],
        "chunks_reused": source["chunks_reused"],
        "seconds": round(sum(source["seconds"].values()), 3),
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    text = " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _table(rows: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    return lines


def _render_optional(value: Any, label: str) -> list[str]:
    if isinstance(value, list):
        return _table([item if isinstance(item, dict) else {"value": item} for item in value])
    if not isinstance(value, dict):
        return [_cell(value)]
    nested = {key: item for key, item in value.items() if isinstance(item, dict)}
    scalars = {key: item for key, item in value.items() if not isinstance(item, (dict, list))}
    lines = _table([{label: key, **item} for key, item in nested.items()]) if nested else []
    if scalars:
        lines += [""] if lines else []
        lines += _table([{"metric": key, "value": item} for key, item in scalars.items()])
    for key, item in value.items():
        if isinstance(item, list):
            lines += ["", f"**{_cell(key)}**", ""] + _render_optional(item, label)
    return lines


def summary_markdown(summary: dict[str, Any], target: str, failure: str | None = None) -> str:
    """The `ingest-summary-<target>` artifact: what a person needs to understand the run."""
    documents = summary["documents"]
    warnings = summary.get("warnings", [])
    status = "FAILED" if failure else ("completed with warnings" if warnings else "completed")
    lines = [f"# vectormill ingest: {target}", "", f"**Status: {status}**", ""]
    if failure:
        lines += [f"> **Error:** {_cell(failure)}", ""]
    lines += [f"> **Warning:** {_cell(warning)}" for warning in warnings]
    lines += [""] if warnings else []
    lines += [f"Documents: {documents['seen']} seen, {documents['new']} new, {documents['changed']} changed, "
              f"{documents['unchanged']} unchanged, {documents['deleted']} deleted, {documents['failed']} failed; "
              f"{summary['chunks_embedded']} chunks embedded.", ""]
    stuck = summary.get("stuck", [])
    if "retry_queue" in summary:
        lines += [f"Documents queued for retry: {sum(summary['retry_queue'].values())}"
                  + (f", of which {len(stuck)} stuck after max_document_attempts" if stuck else "")
                  + " (`vectormill failures` lists them).", ""]
    lines += ["## Sources", ""]
    lines += _table([source_row(source) for source in summary["sources"]])
    for source in summary["sources"]:
        if source["error"]:
            lines += ["", f"Source **{_cell(source['name'])}** failed: {_cell(source['error'])}"]

    failures = summary["failures"]
    lines += ["", f"## Failed documents ({len(failures)})", ""]
    if failures:
        lines += _table(failures[:MARKDOWN_FAILURES])
        if len(failures) > MARKDOWN_FAILURES:
            lines += ["", f"… and {len(failures) - MARKDOWN_FAILURES} more, listed in the JSON summary below."]
    else:
        lines += ["None."]
    if stuck:
        lines += ["", f"## Stuck documents ({len(stuck)})", "",
                  "Failed in max_document_attempts runs: still queued, fetched again when they change at the source "
                  "or by a --full run.", ""]
        lines += _table(stuck[:MARKDOWN_FAILURES])

    seconds = summary["seconds"]
    embed_seconds = seconds.get("embed", 0.0)
    throughput = summary["chunks_embedded"] / embed_seconds if embed_seconds else 0.0
    lines += ["", "## Embedding", ""]
    lines += _table([{"chunks embedded": summary["chunks_embedded"], "chunks reused": summary.get("chunks_reused", 0),
                      "embed seconds": embed_seconds, "chunks/s": round(throughput, 1)}])
    lines += ["", "## Seconds per stage", ""] + _table([seconds])
    store = summary.get("store")
    if store:
        lines += ["", "## Store", ""] + _table([store])
    for key, (heading, label) in OPTIONAL_SECTIONS.items():
        if summary.get(key):
            lines += ["", f"## {heading}", ""] + _render_optional(summary[key], label)
    lines += ["", "## Summary (JSON)", "", "```json", json.dumps(summary, indent=1), "```", ""]
    return "\n".join(lines)


def summary_from_markdown(markdown: str) -> dict[str, Any]:
    """The summary dict back from an `ingest-summary-*` artifact (for runs on a server)."""
    found = JSON_FENCE.findall(markdown)
    if not found:
        raise ValueError("the artifact holds no JSON summary (was it written by this version of vectormill?)")
    return json.loads(found[-1])


def progress_description(done: int, total: int, chunks: int, sources: dict[str, str]) -> str:
    states = ", ".join(f"{name}: {state}" for name, state in sources.items())
    return f"{done} of {total} documents to process, {chunks} chunks written ({states})"


# ---- publishing (Prefect) ----------------------------------------------------------------------
def publish(summary: dict[str, Any], target: str, failure: str | None = None) -> None:
    """Create the run's table and summary artifacts (before the flow's final state is set)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    for source in summary["sources"]:
        create_table_artifact([source_row(source)], key=source_key(source["name"]),
                              description=f"ingest of source {source['name']}: documents and chunks")
    status = "failed" if failure else "completed"
    create_markdown_artifact(summary_markdown(summary, target, failure), key=summary_key(target),
                             description=f"ingest {target}: {status}")


class ArtifactProgress:
    """A ProgressListener that keeps the `ingest-progress-<target>` artifact current, then tells `inner`."""

    def __init__(self, inner: ProgressListener, target: str, clock=time.monotonic):
        from prefect.artifacts import create_progress_artifact

        self.inner, self.clock = inner, clock
        self.lock = threading.Lock()  # sources run side by side, each telling from its own thread
        self.total = self.done = self.chunks = 0
        self.sources: dict[str, str] = {}
        self.updated = clock()
        self.artifact_id = create_progress_artifact(0.0, key=progress_key(target),
                                                    description="listing documents")

    def _update(self, force: bool = False) -> None:
        from prefect.artifacts import update_progress_artifact

        now = self.clock()
        if not force and now - self.updated < PROGRESS_EVERY_SECONDS:
            return
        self.updated = now
        percent = 100.0 * self.done / self.total if self.total else 0.0
        if force and all(state != "running" for state in self.sources.values()):
            percent = 100.0
        update_progress_artifact(self.artifact_id, percent,
                                 description=progress_description(self.done, self.total, self.chunks, self.sources))

    def source_started(self, source: str) -> None:
        with self.lock:
            self.sources[source] = "running"
        self.inner.source_started(source)

    def documents_found(self, source: str, to_process: int) -> None:
        with self.lock:
            self.total += to_process
        self.inner.documents_found(source, to_process)

    def documents_done(self, source: str, count: int, chunks: int) -> None:
        with self.lock:
            self.done += count
            self.chunks += chunks
            self._update()
        self.inner.documents_done(source, count, chunks)

    def source_finished(self, source: str, status: str) -> None:
        with self.lock:
            self.sources[source] = status
            self._update(force=True)
        self.inner.source_finished(source, status)


# ---- the weekly audit (flows/audit_flow.py) -------------------------------------------------------
AUDIT_KEY = "sources-audit"


def audit_markdown(report: dict[str, Any]) -> str:
    """The audit's report (`sources audit --json`) for people: a table, then the diverging ids."""
    lines = [f"# Sources audit: {'ok' if report['ok'] else 'DIVERGES'}", ""]
    lines += _table([{key: entry[key] for key in ("name", "listed", "stored", "missing_count", "extra_count",
                                                   "stale_count", "queued", "stuck", "ok")}
                     for entry in report["sources"]])
    for entry in report["sources"]:
        for kind in ("missing", "extra", "stale"):
            if entry[kind]:
                lines += ["", f"## {entry['name']}: {kind} ({entry[f'{kind}_count']})", "",
                          *(f"- {_cell(document)}" for document in entry[kind])]
    lines += ["", "```json", json.dumps(report), "```"]
    return "\n".join(lines)


def publish_audit(report: dict[str, Any]) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(audit_markdown(report), key=AUDIT_KEY,
                             description=f"sources audit: {'ok' if report['ok'] else 'diverges'}")


# ---- the weekly drill (flows/drill_flow.py) -------------------------------------------------------
DRILL_KEY = "store-drill"
DRILL_ROWS = ("replica", "generation", "documents", "vectors", "age_seconds", "restore_seconds", "queries", "agreement")


def drill_markdown(report: dict[str, Any]) -> str:
    """The drill's report (`store drill --json`, or {"ok": false, "replica", "error"}) for people."""
    lines = [f"# Store drill: {'ok' if report['ok'] else 'FAILED'}", ""]
    if report.get("error"):
        lines += [_cell(report["error"]), ""]
    lines += _table([{"what": key, "value": report[key]} for key in DRILL_ROWS if key in report])
    lines += ["", "```json", json.dumps(report), "```"]
    return "\n".join(lines)


def publish_drill(report: dict[str, Any]) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(drill_markdown(report), key=DRILL_KEY,
                             description=f"store drill: {'ok' if report['ok'] else 'failed'}")
