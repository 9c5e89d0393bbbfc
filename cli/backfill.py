"""`vectormill backfill` and `vectormill demo`: run the ingest flow here (or on a deployment) and show its summary."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .common import (ConfigOption, JsonOption, UserError, config_file_path, console, debugging, errors, fail, load,
                     prefect_defaults, print_error, user_errors)


class RichProgress:
    """Progress bars per source, fed by the flow through `progress_listener`."""

    def __init__(self, progress):
        self.progress = progress
        self.bars: dict[str, Any] = {}

    def source_started(self, source: str) -> None:
        self.bars[source] = self.progress.add_task(f"{source}: listing", total=0)

    def documents_found(self, source: str, to_process: int) -> None:
        bar = self.bars[source]
        total = self.progress.tasks[bar].total or 0
        self.progress.update(bar, total=total + to_process, description=f"{source}: documents")

    def documents_done(self, source: str, count: int, chunks: int) -> None:
        self.progress.advance(self.bars[source], count)

    def source_finished(self, source: str, status: str) -> None:
        bar = self.bars[source]
        total = self.progress.tasks[bar].total or 0
        self.progress.update(bar, total=max(total, 1), completed=max(total, 1), description=f"{source}: {status}")


class _DropTracebacksOf(logging.Filter):
    """Drops Prefect's log records of `kind` and of errors the user can act on: the command ends with their
    one line instead (under --debug they stay, with their traceback)."""

    def __init__(self, kind: type[BaseException]):
        super().__init__()
        self.kind = kind

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or debugging():
            return True
        from vectormill.flows.errors import user_error

        error = record.exc_info[1]
        return not (isinstance(error, self.kind) or user_error(error) is not None)


def run_ingest(config_file: Optional[Path], sources: list[str] | None, full: bool, show_progress: bool,
               window: dict[str, Any] | None = None, allow_deletions: bool = False):
    """Validate, then run the flow in-process; returns (summary, failure).

    Fixed costs overlap (flows/warmup.py): without a configured Prefect server a temporary one
    starts first, the model starts loading in the background when the run will embed, and only
    then does this process import the flow; the summary's "seconds" get what each took.
    """
    started = time.perf_counter()
    config = load(config_file)
    selected = []
    for name in sources or []:
        with user_errors():
            selected.append(config.source(name))
    if not config.sources:
        raise UserError(["the config has no [[sources]]: add one (see `vectormill init`)"], code=2)
    prefect_defaults()
    from vectormill.flows.warmup import start_model_if_needed, start_server

    importing = time.perf_counter()
    warmup = start_server()
    import_prefect = time.perf_counter() - importing
    if not window:
        start_model_if_needed(config, selected or list(config.sources), full)
    importing = time.perf_counter()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vectormill.flows.ingest import IngestFailed, ingest
    from vectormill.flows.progress import progress_listener

    import_prefect += time.perf_counter() - importing
    with user_errors():
        warmup.server_ready()

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=errors, disable=not show_progress)
    # A run that fails on its own terms ends with a summary and one line, not Prefect's traceback.
    expected_failure = _DropTracebacksOf(IngestFailed)
    logging.getLogger("prefect.flow_runs").addFilter(expected_failure)
    with progress, warmup.prefect_api():
        token = progress_listener.set(RichProgress(progress))
        try:
            state = ingest(config_file=config_file_path(config_file), sources=sources or None, full=full,
                           allow_deletions=allow_deletions, **(window or {}), return_state=True)
        finally:
            progress_listener.reset(token)
            logging.getLogger("prefect.flow_runs").removeFilter(expected_failure)
    fixed = {"prefect_start": round(warmup.prefect_start, 3), "import_prefect": round(import_prefect, 3),
             "elapsed": round(time.perf_counter() - started, 3)}
    if warmup.server is not None:
        errors.print(f"note: starting a temporary Prefect server took {warmup.prefect_start:.1f} s, "
                     f"{warmup.server_wait:.1f} s of which this run waited for; for repeated backfills keep one "
                     "running (`prefect server start`) and set PREFECT_API_URL=http://127.0.0.1:4200/api",
                     highlight=False)
    if state.is_completed():
        return _with_seconds(state.result(), fixed), None
    error = state.result(raise_on_failure=False)
    if isinstance(error, IngestFailed):
        return _with_seconds(error.summary, fixed), str(error)
    if isinstance(error, BaseException):
        fail(error)
    raise UserError([f"ingest ended in state {state.name}: {state.message}"])


def _with_seconds(summary: dict[str, Any], fixed: dict[str, float]) -> dict[str, Any]:
    """The flow's summary with this process's fixed costs beside its own stage seconds."""
    summary["seconds"].update(fixed)
    return summary


def run_on_deployment(config_file: Optional[Path], sources: list[str] | None, full: bool,
                      window: dict[str, Any] | None = None, allow_deletions: bool = False,
                      timeout: float | None = None):
    """Run ingest/<source> (or ingest/all) on the server, wait at most `timeout` seconds (None: the
    deployment's expected duration), and read its summary artifact.

    Returns (summary, failure) like `run_ingest`: failure is None when the run completed.
    """
    from vectormill.flows import remote

    config = load(config_file)
    prefect_defaults()
    with user_errors():
        target, parameters = remote.deployment_target(config, sources)
        parameters.update(full=full, **(window or {}))
        if allow_deletions:
            parameters["allow_deletions"] = True
        started = remote.start_run(target, parameters)
        name = remote.deployment_name(target)
        seconds = timeout if timeout is not None else remote.wait_seconds(target)
        errors.print(f"waiting up to {seconds:g} s for flow run {started.id} of {name} "
                     f"{remote.run_url(started.id) or ''}", highlight=False)
        return remote.summary_of(remote.wait_for(started.id, name, seconds), target, parameters)


def print_summary(summary: dict[str, Any]) -> None:
    table = Table(title="ingest summary")
    for column in ("source", "status", "seen", "new", "changed", "unchanged", "deleted", "failed", "chunks embedded"):
        table.add_column(column, justify="left" if column in ("source", "status") else "right")
    for source in summary["sources"]:
        d = source["documents"]
        table.add_row(source["name"], source["status"], *(str(d[k]) for k in
                      ("seen", "new", "changed", "unchanged", "deleted", "failed")), str(source["chunks_embedded"]))
    console.print(table)
    if summary["failures"]:
        failures = Table(title="failed documents")
        for column in ("source", "document", "reason"):
            failures.add_column(column)
        for failure in summary["failures"]:
            failures.add_row(escape(failure["source"]), escape(failure["document"]), escape(failure["reason"]))
        console.print(failures)
    stuck = summary.get("stuck", [])
    if stuck:
        table = Table(title="stuck documents (failed in max_document_attempts runs; still queued)")
        for column in ("source", "document", "attempts", "reason"):
            table.add_column(column)
        for entry in stuck:
            table.add_row(escape(entry["source"]), escape(entry["document"]), str(entry["attempts"]),
                          escape(entry["reason"]))
        console.print(table)
    for entry in summary.get("removed", []):
        console.print(f"removed {escape(entry['source'])}/{escape(entry['document'])}: {escape(entry['reason'])}",
                      highlight=False)
    queued = sum(summary.get("retry_queue", {}).values())
    if queued:
        console.print(f"queued for retry: {queued}, {len(stuck)} stuck "
                      "(`vectormill failures` lists them)", highlight=False)
    seconds = ", ".join(f"{stage} {value:.1f}s" for stage, value in summary["seconds"].items() if value)
    console.print(f"store: {summary['store']['vectors']} vectors, {summary['store']['documents']} documents, "
                  f"generation {summary['store']['generation']}  ·  {seconds}")
    precision = summary.get("precision") or {}
    if precision.get("used"):
        probe = precision.get("probe_min_cosine")
        checked = (f"; probe cosine to fp32 {probe:.5f} ≥ {precision['min_cosine']:g} in {precision['probe_seconds']:.1f}s"
                   if probe is not None and not precision.get("fallback") else "")
        console.print(f"precision: {precision['used']} ({precision['reason']}{checked})", highlight=False)
    if precision.get("fallback"):
        console.print(f"precision: {precision['fallback']}", highlight=False)


def register(app: typer.Typer, store_app: typer.Typer) -> None:
    @app.command()
    def backfill(
        source: Optional[list[str]] = typer.Option(None, "--source", "-s", help="Only this source (repeatable)."),
        full: bool = typer.Option(False, "--full", help="List everything again (ignore cursors) and reconcile deletions."),
        since: Optional[datetime] = typer.Option(None, "--since", help="Backfill the documents modified at or after "
                                                 "this date/time, even if unchanged; a time without a zone "
                                                 "(2026-03-31, 2026-03-31T12:00) is UTC, one with a zone "
                                                 "(2026-01-01T00:00:00+02:00) is converted to UTC."),
        until: Optional[datetime] = typer.Option(None, "--until", help="…and at or before this one."),
        allow_deletions: bool = typer.Option(False, "--allow-deletions", help="Let this run delete more than a "
                                             "source's max_delete_ratio of its stored documents (or all of them, "
                                             "when its listing is empty)."),
        deployment: bool = typer.Option(False, "--deployment", help="Run it as a flow run of deployment "
                                        "ingest/<source> (or ingest/all) on the Prefect server at PREFECT_API_URL, "
                                        "and wait for it."),
        timeout: Optional[float] = typer.Option(None, "--timeout", min=0, help="With --deployment: stop waiting "
                                                "after this many seconds, saying why (exit 1; the run is left as it "
                                                "is). Default: 3 times the longest of the deployment's last 10 "
                                                "completed runs (at least 600 s), or 3600 s without any."),
        config: Optional[Path] = ConfigOption,
        as_json: bool = JsonOption,
    ) -> None:
        """Run the ingest flow here, now, or on a deployment. Without PREFECT_API_URL a temporary Prefect
        server starts for the run; with it, the run is recorded on that server."""
        from vectormill.flows.plan import Window

        span = Window.between(since, until)
        if span.since and span.until and span.since > span.until:
            raise UserError([f"--since {span.since.isoformat()} is after --until {span.until.isoformat()}"], code=2)
        window = {key: value for key, value in (("since", span.since), ("until", span.until)) if value is not None}
        if timeout is not None and not deployment:
            raise UserError(["--timeout applies to --deployment runs only"], code=2)
        if deployment:
            summary, failure = run_on_deployment(config, source, full, {k: v.isoformat() for k, v in window.items()},
                                                 allow_deletions, timeout)
        else:
            summary, failure = run_ingest(config, source, full, show_progress=not as_json, window=window,
                                          allow_deletions=allow_deletions)
        if as_json:
            print(json.dumps(summary))
        else:
            print_summary(summary)
        if failure:
            print_error(failure)
            raise typer.Exit(1)

    @app.command()
    def demo(
        folder: Path = typer.Option(Path("vectormill-demo"), "--dir", help="Where to put the sample corpus and store."),
        query: str = typer.Option("How often are backups tested?", "--query", help="What to search for afterwards."),
    ) -> None:
        """Ingest a bundled sample corpus (PDFs, Word, PowerPoint, Markdown) into a local store, then search it."""
        from vectormill.flows.sample import write_sample_corpus

        from .search import show_search

        config_file = write_sample_corpus(folder)
        console.print(f"sample corpus and config in {folder}/ ; ingesting…")
        summary, failure = run_ingest(config_file, None, False, show_progress=True)
        print_summary(summary)
        if failure:
            print_error(failure)
            raise typer.Exit(1)
        console.print(f"\n$ vectormill search {query!r} -k 3 --config {config_file}")
        show_search(query, k=3, config_file=config_file, as_json=False)
