"""`vectormill store stats|verify|restore|drill|compact`: what the store holds, check every copy of it, bring one back,
prove a replica restores, merge its segments.

None runs a flow, so none imports Prefect.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, TypeVar

import typer
from rich.table import Table

from .common import (
    ConfigOption, JsonOption, UserError, console, debugging, errors, load, print_error, print_warning, user_errors,
)

T = TypeVar("T")


@contextmanager
def store_errors(settings: Any) -> Iterator[None]:
    """`user_errors`, and one line for anything else a store command meets: a database whose rows contradict each
    other (a flipped byte SQLite's structure still accepts) fails in ways no check foresaw. --debug shows the trace."""
    try:
        with user_errors():
            yield
    except (UserError, typer.Exit):
        raise
    except Exception as exc:  # noqa: BLE001 - one line, the cause kept for --debug
        if debugging():
            raise
        raise UserError([f"store {str(settings.path)!r}: {type(exc).__name__}: {exc}: its database or files may be "
                         "inconsistent; run `vectormill store verify` to name what is damaged, then `vectormill "
                         "store restore`"]) from exc


def on_store(settings: Any, writable: bool, action: Callable[[Any], T]) -> T:
    """`action` on the opened store; its warnings are printed, and an error the user can act on is one line."""
    from vectormill.stores.faiss_store import FaissStore

    with store_errors(settings):
        with FaissStore.open(settings, writable=writable) as store:
            result = action(store)
            notes = list(store.notes)
    for note in notes:
        print_warning(note)
    return result


def register(app: typer.Typer, store_app: typer.Typer) -> None:
    @store_app.command("stats")
    def store_stats(config: Optional[Path] = ConfigOption, as_json: bool = JsonOption) -> None:
        """Vectors, documents, generations and sources of the store."""
        stats = on_store(load(config).store, False, lambda store: store.stats())
        if as_json:
            print(json.dumps(stats))
            return
        table = Table(title=f"store {stats['path']}", show_header=False)
        for key in ("vectors", "documents", "generation", "model", "dimension", "index_factory", "segments", "dead",
                    "pending", "generation_bytes", "database_bytes"):
            table.add_row(key, str(stats[key]))
        console.print(table)
        if any(segment["index"] != "exact" for segment in stats["segment_indexes"]):
            indexes = Table(title=f"segment indexes (recall target {stats['recall_target']})")
            for column in ("segment", "index", "vectors", "dead", "recall@10", "effort"):
                indexes.add_column(column)
            for segment in stats["segment_indexes"]:
                indexes.add_row(str(segment["seq"]), segment["index"], str(segment["vectors"]), str(segment["dead"]),
                                str(segment["recall"]), segment["effort"] or "")
            console.print(indexes)
        sources = Table(title="sources")
        for column in ("source", "documents", "vectors", "cursor"):
            sources.add_column(column)
        for row in stats["sources"]:
            sources.add_row(row["source"], str(row["documents"]), str(row["vectors"]), str(row["cursor"] or ""))
        console.print(sources)

    @store_app.command("verify")
    def verify(
        repair: bool = typer.Option(False, "--repair", help="Copy again every file a replica lacks or holds damaged "
                                                            "(from the primary) and the primary's damaged files (from "
                                                            "a replica), then verify again."),
        config: Optional[Path] = ConfigOption,
        as_json: bool = JsonOption,
    ) -> None:
        """Hash every file of every generation on the primary and on each replica; exit 1 on any mismatch."""
        from vectormill.stores.restore import verify_and_repair, verify_store

        settings = load(config)
        with store_errors(settings.store):
            report = verify_and_repair(settings.store) if repair else verify_store(settings.store)
        if as_json:
            print(json.dumps(report))
        else:
            table = Table(title=f"store {settings.store.path}")
            for column in ("where", "generation", "lsn", "vectors", "documents", "ok"):
                table.add_column(column)
            for entry in report["generations"]:
                table.add_row(entry["where"], str(entry["generation"]), str(entry.get("lsn", "")),
                              str(entry.get("vectors", "")), str(entry.get("documents", "")),
                              "[green]ok[/green]" if entry["ok"] else "[red]DAMAGED[/red]")
            console.print(table)
            for item in report.get("repaired", []):
                console.print(f"repaired: {item['where']}: {item['file']}", highlight=False)
            for problem in report["problems"]:
                errors.print(f"[red]problem:[/red] {problem['where']}: {problem['file']}: {problem['detail']}",
                             highlight=False)
            if report["ok"]:
                console.print("every copy verified")
        if not report["ok"]:
            raise typer.Exit(1)

    @store_app.command("restore")
    def restore(
        source: Optional[str] = typer.Option(None, "--from", help="Copy to restore from: 'primary' or a replica name "
                                                                   "(default: the newest valid copy anywhere)."),
        generation: Optional[int] = typer.Option(None, "--generation", min=1,
                                                 help="Go back to exactly this generation (later writes are set "
                                                      "aside in quarantine/); default: repair damaged files, or "
                                                      "rebuild a damaged database from the newest valid generation."),
        config: Optional[Path] = ConfigOption,
        as_json: bool = JsonOption,
    ) -> None:
        """Repair the store, or bring back a generation from a replica or from the primary's older generations."""
        from vectormill.stores.faiss_store import FaissStore
        from vectormill.stores.restore import restore_store

        settings = load(config)
        with store_errors(settings.store):
            result = restore_store(settings.store, source, generation)
            with FaissStore.open(settings.store, writable=False) as store:  # proves the result opens
                result["store"] = {key: store.stats()[key] for key in ("vectors", "documents", "generation")}
                result["notes"] = list(store.notes)
        if as_json:
            print(json.dumps(result))
            return
        console.print(f"restored generation {result['restored_generation']} from {result['from']} as generation "
                      f"{result['as_generation']}: {result['store']['vectors']} vectors, "
                      f"{result['store']['documents']} documents; log {result['log']}")
        for item in result["quarantined"]:
            console.print(f"set aside in quarantine/: {item}")
        for note in result["notes"]:
            print_warning(note)

    @store_app.command("drill")
    def drill_command(
        source: Optional[str] = typer.Option(None, "--from", help="Replica to drill (default: the first configured)."),
        config: Optional[Path] = ConfigOption,
        as_json: bool = JsonOption,
    ) -> None:
        """Restore a replica's newest generation into a temporary folder (the primary untouched), verify it and
        search it with its own chunks; report the recovery point and time. Exit 1 on any problem."""
        from vectormill.stores.drill import DrillProblems, drill

        settings = load(config)
        try:
            with store_errors(settings.store):
                report = drill(settings.store, source)
        except UserError as exc:
            if as_json and isinstance(exc.__cause__, DrillProblems):  # the report names each problem
                print(json.dumps(exc.__cause__.report))
            raise
        if as_json:
            print(json.dumps(report))
            return
        table = Table(title=f"store drill: replica {report['replica']}", show_header=False)
        for key in ("generation", "documents", "vectors", "age_seconds", "restore_seconds", "queries", "agreement"):
            table.add_row(key, str(report[key]))
        console.print(table)
        console.print(f"generation {report['generation']} of replica {report['replica']} restores, verifies and "
                      "answers its own chunks first", highlight=False)

    @store_app.command("compact")
    def compact(config: Optional[Path] = ConfigOption, as_json: bool = JsonOption) -> None:
        """Merge every segment into as few as possible, dropping deleted and replaced vectors and retraining
        the index factory; migrates a store written by an older vectormill."""
        result, problem = on_store(load(config).store, True, lambda store: (store.compact(), store.replication_problem()))
        if as_json:
            print(json.dumps(result))
        else:
            console.print(f"compacted into generation {result['generation']}: {result['segments_before']} → "
                          f"{result['segments_after']} segment(s), {result['vectors']} vectors, "
                          f"{result['dead_dropped']} deleted or replaced vectors dropped, "
                          f"{result['bytes_written']} bytes written")
        if problem:
            print_error(problem)
            raise typer.Exit(1)
