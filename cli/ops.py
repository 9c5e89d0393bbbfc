"""Commands that operate vectormill on a Prefect server: serve, trigger, runs, setup-limits, prefect-yaml.

They all talk to the server at PREFECT_API_URL (Prefect is imported inside each command, so
`vectormill --help` and the commands that run no flow stay light).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import (ConfigOption, JsonOption, UserError, config_file_path, console, errors, load, prefect_defaults,
                     user_errors)

RECENT_RUNS = 20
# What `serve` and the flow runs it starts (its subprocesses) log, to the terminal and the UI's Logs tab,
# unless the user set it: progress (task runs) and per-source lines are INFO.
SERVE_LOGGING_LEVEL = "INFO"


def register(app: typer.Typer, store_app: typer.Typer) -> None:
    @app.command()
    def serve(config: Optional[Path] = ConfigOption,
              limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Flow runs at once in this process."),
              warm_model: bool = typer.Option(True, "--warm-model/--no-warm-model",
                                              help="Keep the model loaded here between runs (a Prefect task worker "
                                                   "embeds for them); --no-warm-model: each run loads its own.")) -> None:
        """Serve the deployments (ingest/<source>, ingest/all, audit/weekly, drill/store-drill) from this process: no work pool needed."""
        from vectormill.flows.deploy import runner_deployments, setup_limits
        from vectormill.flows.remote import require_server
        from vectormill.flows.serving import serve as serve_here

        settings = load(config)
        # Before prefect_defaults(), which quiets Prefect to warnings for one-off commands.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", SERVE_LOGGING_LEVEL)
        prefect_defaults()
        with user_errors():
            require_server()
            for spec in setup_limits(settings):
                errors.print(f"global concurrency limit {spec.name}: {spec.limit} slots"
                             + (f", {spec.slot_decay_per_second:g}/s" if spec.slot_decay_per_second else ""),
                             highlight=False)
            deployments = runner_deployments(settings, config_file_path(config))
        # A model to keep: not with an embedding service, and Dask workers keep theirs.
        warm = warm_model and settings.embedding.service is None and settings.execution.task_runner == "local"
        if warm:
            errors.print("loading the model to keep it for every run (a Prefect task worker embeds for them)",
                         highlight=False)
        serve_here(deployments, settings.embedding, limit, warm)

    @app.command()
    def trigger(source: str = typer.Argument(..., help="A configured source's name, or `all`."),
                full: bool = typer.Option(False, "--full", help="List everything again and reconcile deletions."),
                config: Optional[Path] = ConfigOption,
                as_json: bool = JsonOption) -> None:
        """Start a run of deployment ingest/SOURCE on the server and return at once (the run goes on)."""
        from vectormill.flows import remote
        from vectormill.flows.deploy import ALL

        if source != ALL:
            settings = load(config)
            known = [s.name for s in settings.sources]
            if source not in known:
                raise UserError([f"no source named {source!r} in the config (configured: "
                                 f"{', '.join(known) or 'none'}; or `all`)"], code=2)
        prefect_defaults()
        with user_errors():
            flow_run = remote.start_run(source, {"full": True} if full else {})
        result = {"flow_run_id": str(flow_run.id), "url": remote.run_url(flow_run.id)}
        if as_json:
            print(json.dumps(result))
        else:
            console.print(f"started flow run {flow_run.name} ({flow_run.id}) of {remote.deployment_name(source)}")
            if result["url"]:
                console.print(result["url"])

    @app.command()
    def runs(limit: int = typer.Option(RECENT_RUNS, "--limit", "-n", min=1, help="How many runs."),
             as_json: bool = JsonOption) -> None:
        """Recent runs of the ingest flow, newest first, with their states."""
        from vectormill.flows.remote import recent_runs

        prefect_defaults()
        with user_errors():
            rows = recent_runs(limit)
        if as_json:
            print(json.dumps(rows))
            return
        table = Table(title="ingest runs")
        for column in ("id", "deployment", "state", "start", "end"):
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(row["id"], row["deployment"] or "", row["state"], row["start"] or "", row["end"] or "")
        console.print(table)

    @app.command("setup-limits")
    def setup_limits_command(config: Optional[Path] = ConfigOption, as_json: bool = JsonOption) -> None:
        """Create (or update) the Prefect global concurrency limits for the store, embedding and HTTP sources."""
        from vectormill.flows.deploy import setup_limits
        from vectormill.flows.remote import require_server

        settings = load(config)
        prefect_defaults()
        with user_errors():
            require_server()
            specs = setup_limits(settings)
        if as_json:
            print(json.dumps([vars(spec) for spec in specs]))
            return
        table = Table(title="global concurrency limits")
        for column in ("name", "slots", "decay/s", "for"):
            table.add_column(column)
        for spec in specs:
            table.add_row(spec.name, str(spec.limit), f"{spec.slot_decay_per_second:g}" if spec.slot_decay_per_second
                          else "", spec.purpose)
        console.print(table)

    @app.command("prefect-yaml")
    def prefect_yaml_command(config: Optional[Path] = ConfigOption,
                             output: Path = typer.Option(Path("prefect.yaml"), "--output", "-o",
                                                         help="Where to write it (`-` for stdout).")) -> None:
        """Write a prefect.yaml with the ingest deployments of this config, for `prefect deploy --all`."""
        import yaml

        from vectormill.flows.deploy import prefect_yaml

        settings = load(config)
        with user_errors():
            document = prefect_yaml(settings, config_file_path(config))
        text = yaml.safe_dump(document, sort_keys=False)
        if str(output) == "-":
            print(text, end="")
            return
        output.write_text(text)
        pool = settings.deployments.work_pool
        console.print(f"wrote {output}: `prefect work-pool create {pool} --type process`, "
                      f"`prefect deploy --all --prefect-file {output}`, then `prefect worker start --pool {pool}`")
