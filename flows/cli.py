"""The `vectormill` command line. Commands that run no flow (search, stats, init) never import Prefect."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from .cli_common import ConfigOption, JsonOption, UserError, console, errors, fail as _fail, load, prefect_defaults, print_error, print_warning

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Batch embedding ingestion: sources → chunks → vectors → FAISS.")
store_app = typer.Typer(no_args_is_help=True, help="Inspect the vector store.")
app.add_typer(store_app, name="store")

# ---- init ------------------------------------------------------------------------------------
EXAMPLE_CONFIG = '''\
# vectormill configuration. Relative paths are relative to this file's folder.
# Any key can be overridden from the environment: VECTORMILL_STORE__PATH=/data/store,
# VECTORMILL_EMBEDDING__DEVICE=cpu, VECTORMILL_SOURCES__DOCS__ROOT=/mnt/share.

[store]
path = "store"                      # the FAISS store (created on first run)
# checkpoint_every_vectors = 50000  # checkpoint after this many vectors…
# checkpoint_every_seconds = 600    # …or this many seconds, and always at the end of a run
# keep_generations = 3              # checkpoints kept (older ones are deleted)
# index_factory = "Flat"            # any faiss.index_factory string, e.g. "IVF4096,PQ64" or "HNSW32"
# train_vectors = 100000            # IVF/PQ factories train once the store holds this many vectors
# search_parameters = ""            # e.g. "nprobe=32" (IVF) or "efSearch=128" (HNSW)
# min_replicas_confirmed = 1        # replicas that must confirm each checkpoint (none configured: off)
#
# [[store.replicas]]                # copies of every checkpoint, verified by checksum
# name = "backup"
# url = "s3://bucket/vectormill"    # or a local path; anything fsspec opens
# storage_options = { client_kwargs = { endpoint_url = "http://127.0.0.1:9000" } }

[chunking]
# tokens = 256                      # tokens per chunk (default: the model's limit)
overlap = 32                        # tokens shared by neighbouring chunks

[embedding]
# model = "all-MiniLM-L6-v2"        # packaged default; any sentence-transformers path or name
device = "auto"                     # auto | cpu | cuda (GPUs sized from the free memory NVML reports)
# batch_size = 64                   # cap on chunks per model batch (default: from the token budget)
# max_workers = 2                   # cap on model replicas
# max_batch_tokens = 16384          # cap on padded tokens per model batch
# memory_reserve_fraction = 0.1     # share of each GPU's memory left free
#
# [embedding.service]               # embed through a text-embeddings-inference server instead
# url = "http://tei.internal:8080"  # [embedding] model must name the model it serves
# requests_per_second = 20
# token_env = "TEI_API_KEY"

[[sources]]
name = "docs"
type = "filesystem"
root = "pdfs"                       # folder of PDFs, .txt and .md files
# include = ["**/*.pdf", "**/*.txt", "**/*.md"]
# exclude = ["drafts/**"]
# max_file_mb = 100
# max_failed_ratio = 0.5            # the run fails when more of this source's documents fail

# [[sources]]
# name = "wiki"
# type = "mediawiki"
# api_url = "https://wiki.example.org/w/api.php"
# namespaces = [0]
# requests_per_second = 5
# burst = 10
#
# [[sources]]
# name = "crm"
# type = "hubspot"
# object_type = "companies"
# properties = ["name", "domain", "description"]
# token_env = "HUBSPOT_TOKEN"       # or token_secret_block = "hubspot-token"

# [deployments]                     # schedules of `vectormill serve` / deployments/prefect.yaml
# all_schedule = "0 3 * * *"
# [deployments.schedules]
# docs = "0 * * * *"

# [execution]
# task_runner = "local"             # or "dask" (dask_address = "tcp://host:8786")

# [drift]
# min_centroid_cosine = 0.7         # warn when a run's vectors move away from the last run's
'''


@app.command()
def init(path: Path = typer.Argument(Path("vectormill.toml"), help="Where to write the example config."),
         force: bool = typer.Option(False, help="Overwrite an existing file.")) -> None:
    """Write a commented example config."""
    if path.exists() and not force:
        raise UserError([f"{path} exists; pass --force to overwrite it"])
    path.write_text(EXAMPLE_CONFIG)
    console.print(f"wrote {path}: edit the [[sources]] entry, then run `vectormill backfill`")


# ---- backfill --------------------------------------------------------------------------------
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
    def __init__(self, kind: type[BaseException]):
        super().__init__()
        self.kind = kind

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], self.kind))


def run_ingest(config_file: Optional[Path], sources: list[str] | None, full: bool, show_progress: bool,
               window: dict[str, Any] | None = None):
    """Validate, then run the flow in-process (ephemeral Prefect, no server); returns (summary, failure)."""
    config = load(config_file)
    for name in sources or []:
        try:
            config.source(name)
        except Exception as exc:  # noqa: BLE001
            _fail(exc)
    if not config.sources:
        raise UserError(["the config has no [[sources]]: add one (see `vectormill init`)"], code=2)
    prefect_defaults()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vectormill.flows.ingest import IngestFailed, ingest
    from vectormill.flows.progress import progress_listener

    resolved = str(Path(config_file or os.environ.get("VECTORMILL_CONFIG") or "vectormill.toml").resolve())
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=errors, disable=not show_progress)
    # A run that fails on its own terms ends with a summary and one line, not Prefect's traceback.
    expected_failure = _DropTracebacksOf(IngestFailed)
    logging.getLogger("prefect.flow_runs").addFilter(expected_failure)
    with progress:
        token = progress_listener.set(RichProgress(progress))
        try:
            state = ingest(config_file=resolved, sources=sources or None, full=full, **(window or {}),
                           return_state=True)
        finally:
            progress_listener.reset(token)
            logging.getLogger("prefect.flow_runs").removeFilter(expected_failure)
    if state.is_completed():
        return state.result(), None
    error = state.result(raise_on_failure=False)
    if isinstance(error, IngestFailed):
        return error.summary, str(error)
    if isinstance(error, BaseException):
        _fail(error)
    raise UserError([f"ingest ended in state {state.name}: {state.message}"])


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
            failures.add_row(failure["source"], failure["document"], failure["reason"])
        console.print(failures)
    seconds = ", ".join(f"{stage} {value:.1f}s" for stage, value in summary["seconds"].items())
    console.print(f"store: {summary['store']['vectors']} vectors, {summary['store']['documents']} documents, "
                  f"generation {summary['store']['generation']}  ·  {seconds}")


@app.command()
def backfill(
    source: Optional[list[str]] = typer.Option(None, "--source", "-s", help="Only this source (repeatable)."),
    full: bool = typer.Option(False, "--full", help="List everything again (ignore cursors) and reconcile deletions."),
    since: Optional[datetime] = typer.Option(None, "--since", help="Backfill the documents modified at or after "
                                             "this date/time (UTC unless it says otherwise), even if unchanged."),
    until: Optional[datetime] = typer.Option(None, "--until", help="…and at or before this one."),
    deployment: bool = typer.Option(False, "--deployment", help="Run it as a flow run of deployment ingest/<source> "
                                    "(or ingest/all) on the Prefect server at PREFECT_API_URL, and wait for it."),
    config: Optional[Path] = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Run the ingest flow here, now (Prefect's ephemeral mode: no server needed), or on a deployment."""
    if since and until and since > until:
        raise UserError([f"--since {since} is after --until {until}"], code=2)
    window = {key: value for key, value in (("since", since), ("until", until)) if value is not None}
    if deployment:
        from .cli_ops import backfill_on_deployment

        summary, failure = backfill_on_deployment(config, source, full, {k: v.isoformat() for k, v in window.items()})
    else:
        summary, failure = run_ingest(config, source, full, show_progress=not as_json, window=window)
    if as_json:
        print(json.dumps(summary))
    else:
        print_summary(summary)
    if failure:
        print_error(failure)
        raise typer.Exit(1)


# ---- search and stats ------------------------------------------------------------------------
def open_store_readonly(config):
    from vectormill.stores.faiss_store import FaissStore

    try:
        return FaissStore.open(config.store, writable=False)
    except Exception as exc:  # noqa: BLE001
        _fail(exc)


@app.command()
def search(
    text: str = typer.Argument(..., help="What to look for."),
    k: int = typer.Option(5, "-k", min=1, help="How many hits."),
    config: Optional[Path] = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Nearest chunks to TEXT, best first."""
    from vectormill.embedding.registry import build_embedder

    settings = load(config)
    with open_store_readonly(settings) as store:
        for note in store.notes:
            print_warning(note)
        if store.model != settings.embedding.model:
            raise UserError([f"store holds vectors of model {store.model!r}; the config names "
                             f"{settings.embedding.model!r}: set [embedding] model to match"])
        embedder = build_embedder(settings.embedding)
        hits = store.search(embedder.embed([text])[0], k)
    results = [{"document": h.document, "source": h.source, "page": h.page, "score": round(h.score, 4),
                "text": h.text, "title": h.title, "location": h.location, "chunk_id": h.chunk_id} for h in hits]
    if as_json:
        print(json.dumps(results))
        return
    table = Table(title=f"search: {text}")
    for column in ("score", "source", "document", "page", "text"):
        table.add_column(column, overflow="fold")
    for hit in results:
        snippet = " ".join(hit["text"].split())
        table.add_row(f"{hit['score']:.3f}", hit["source"], hit["document"], str(hit["page"] or ""),
                      snippet[:200] + ("…" if len(snippet) > 200 else ""))
    console.print(table)


@store_app.command("stats")
def store_stats(config: Optional[Path] = ConfigOption, as_json: bool = JsonOption) -> None:
    """Vectors, documents, generations and sources of the store."""
    settings = load(config)
    with open_store_readonly(settings) as store:
        stats = store.stats()
        notes = list(store.notes)
    for note in notes:
        print_warning(note)
    if as_json:
        print(json.dumps(stats))
        return
    table = Table(title=f"store {stats['path']}", show_header=False)
    for key in ("vectors", "documents", "generation", "model", "dimension", "index_factory", "wal_bytes"):
        table.add_row(key, str(stats[key]))
    console.print(table)
    sources = Table(title="sources")
    for column in ("source", "documents", "vectors", "cursor"):
        sources.add_column(column)
    for row in stats["sources"]:
        sources.add_row(row["source"], str(row["documents"]), str(row["vectors"]), str(row["cursor"] or ""))
    console.print(sources)


# ---- demo ------------------------------------------------------------------------------------
@app.command()
def demo(
    folder: Path = typer.Option(Path("vectormill-demo"), "--dir", help="Where to put the sample corpus and store."),
    query: str = typer.Option("How often are backups tested?", "--query", help="What to search for afterwards."),
) -> None:
    """Ingest a bundled sample corpus (PDFs and Markdown) into a local store, then search it."""
    from vectormill.flows.sample import write_sample_corpus

    config_file = write_sample_corpus(folder)
    console.print(f"sample corpus and config in {folder}/ ; ingesting…")
    summary, failure = run_ingest(config_file, None, False, show_progress=True)
    print_summary(summary)
    if failure:
        print_error(failure)
        raise typer.Exit(1)
    console.print(f"\n$ vectormill search {query!r} -k 3 --config {config_file}")
    search(query, k=3, config=config_file, as_json=False)


# ---- commands of the other areas -------------------------------------------------------------
from . import cli_capacity, cli_drift, cli_ops, cli_sources, cli_store  # noqa: E402 - registered after the core commands, in help order

for module in (cli_sources, cli_store, cli_capacity, cli_ops, cli_drift):
    module.register(app, store_app)


def main() -> None:
    try:
        # Outside standalone mode click returns, not raises, the code of a `typer.Exit`.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as exc:
        for line in exc.lines:
            print_error(line)
        sys.exit(exc.code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        errors.print("aborted")
        sys.exit(130)
    except Exception as exc:
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
