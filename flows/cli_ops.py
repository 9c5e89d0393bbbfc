"""Commands that operate vectormill on a Prefect server: serve, trigger, runs, setup-limits, prefect-yaml.

They all talk to the server at PREFECT_API_URL (Prefect is imported inside each command, so
`vectormill --help` and the commands that run no flow stay light). `backfill_on_deployment` is
what `vectormill backfill --deployment` runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from .cli_common import ConfigOption, JsonOption, UserError, console, errors, load, prefect_defaults

RECENT_RUNS = 20


def _config_file(config_file: Optional[Path]) -> str:
    """The config's absolute path: deployments run elsewhere (another folder, a worker) and must find it."""
    return str(Path(config_file or os.environ.get("VECTORMILL_CONFIG") or "vectormill.toml").resolve())


def _require_server() -> str:
    from .deploy import server_url

    url = server_url()
    if url is None:
        raise UserError(["no Prefect server: set PREFECT_API_URL (e.g. `prefect server start`, then "
                         "export PREFECT_API_URL=http://127.0.0.1:4200/api)"])
    return url


def _deployment_problem(exc: Exception) -> UserError:
    return UserError([str(exc)], code=2)


def _run_url(flow_run_id: Any) -> str | None:
    from .deploy import ui_url

    ui = ui_url()
    return f"{ui}/runs/flow-run/{flow_run_id}" if ui else None


def _deployment_name(source: str) -> str:
    from .deploy import FLOW_NAME

    return f"{FLOW_NAME}/{source}"


def _setup_limits(config) -> list[Any]:
    from .deploy import DeploymentConfigError, setup_limits

    try:
        return setup_limits(config)
    except DeploymentConfigError as exc:
        raise _deployment_problem(exc) from None


def _start_run(name: str, parameters: dict[str, Any]):
    """Create a flow run of deployment ingest/NAME and return at once (the server schedules it)."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        return run_deployment(_deployment_name(name), parameters=parameters, timeout=0, as_subflow=False)
    except ObjectNotFound:
        raise UserError([f"no deployment {_deployment_name(name)} on the server: start `vectormill serve` "
                         f"or deploy deployments/prefect.yaml (see `vectormill prefect-yaml`)"]) from None


def _wait(flow_run_id, poll_seconds: float = 2.0):
    import time

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state and flow_run.state.is_final():
                return flow_run
            time.sleep(poll_seconds)


def backfill_on_deployment(config_file: Optional[Path], sources: list[str] | None, full: bool,
                           window: dict[str, Any] | None = None):
    """Run ingest/<source> (or ingest/all) on the server, wait, and read its summary artifact.

    Returns (summary, failure) like `run_ingest`: failure is None when the run completed.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from .artifacts import run_target, summary_from_markdown, summary_key
    from .config import ConfigError
    from .deploy import ALL

    config = load(config_file)
    try:
        for name in sources or []:
            config.source(name)
    except ConfigError as exc:
        raise UserError(exc.problems, code=2) from None
    prefect_defaults()
    _require_server()
    name = sources[0] if sources and len(sources) == 1 else ALL
    parameters: dict[str, Any] = {"full": full, **(window or {})}
    if sources and len(sources) > 1:
        parameters["sources"] = sources
    started = _start_run(name, parameters)
    errors.print(f"waiting for flow run {started.id} of {_deployment_name(name)} {_run_url(started.id) or ''}",
                 highlight=False)
    flow_run = _wait(started.id)
    state = flow_run.state
    key = summary_key(run_target(parameters.get("sources") or ([name] if name != ALL else None)))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]), key=ArtifactFilterKey(any_=[key])))
    outcome = f"flow run {flow_run.id} ended {state.name}: {state.message}"
    if not artifacts:
        raise UserError([f"{outcome} (it published no {key} artifact; see its logs in the Prefect UI)"])
    return summary_from_markdown(artifacts[0].data), None if state.is_completed() else outcome


def register(app: typer.Typer, store_app: typer.Typer) -> None:
    @app.command()
    def serve(config: Optional[Path] = ConfigOption,
              limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Flow runs at once in this process.")) -> None:
        """Serve the ingest deployments (ingest/<source>, ingest/all) from this process: no work pool needed."""
        from .deploy import DeploymentConfigError, runner_deployments

        settings = load(config)
        prefect_defaults()
        _require_server()
        for spec in _setup_limits(settings):
            errors.print(f"global concurrency limit {spec.name}: {spec.limit} slots"
                         + (f", {spec.slot_decay_per_second:g}/s" if spec.slot_decay_per_second else ""), highlight=False)
        try:
            deployments = runner_deployments(settings, _config_file(config))
        except DeploymentConfigError as exc:
            raise _deployment_problem(exc) from None
        from prefect import serve as prefect_serve

        prefect_serve(*deployments, limit=limit)

    @app.command()
    def trigger(source: str = typer.Argument(..., help="A configured source's name, or `all`."),
                full: bool = typer.Option(False, "--full", help="List everything again and reconcile deletions."),
                config: Optional[Path] = ConfigOption,
                as_json: bool = JsonOption) -> None:
        """Start a run of deployment ingest/SOURCE on the server and return at once (the run goes on)."""
        from .deploy import ALL

        if source != ALL:
            settings = load(config)
            known = [s.name for s in settings.sources]
            if source not in known:
                raise UserError([f"no source named {source!r} in the config (configured: "
                                 f"{', '.join(known) or 'none'}; or `all`)"], code=2)
        prefect_defaults()
        _require_server()
        flow_run = _start_run(source, {"full": True} if full else {})
        result = {"flow_run_id": str(flow_run.id), "url": _run_url(flow_run.id)}
        if as_json:
            print(json.dumps(result))
        else:
            console.print(f"started flow run {flow_run.name} ({flow_run.id}) of {_deployment_name(source)}")
            if result["url"]:
                console.print(result["url"])

    @app.command()
    def runs(limit: int = typer.Option(RECENT_RUNS, "--limit", "-n", min=1, help="How many runs."),
             as_json: bool = JsonOption) -> None:
        """Recent runs of the ingest flow, newest first, with their states."""
        prefect_defaults()
        _require_server()
        rows = _recent_runs(limit)
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
        settings = load(config)
        prefect_defaults()
        _require_server()
        specs = _setup_limits(settings)
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

        from .deploy import DeploymentConfigError, prefect_yaml

        settings = load(config)
        try:
            document = prefect_yaml(settings, _config_file(config))
        except DeploymentConfigError as exc:
            raise _deployment_problem(exc) from None
        text = yaml.safe_dump(document, sort_keys=False)
        if str(output) == "-":
            print(text, end="")
            return
        output.write_text(text)
        pool = settings.deployments.work_pool
        console.print(f"wrote {output}: `prefect work-pool create {pool} --type process`, "
                      f"`prefect deploy --all --prefect-file {output}`, then `prefect worker start --pool {pool}`")


def _recent_runs(limit: int) -> list[dict[str, Any]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    from .deploy import FLOW_NAME

    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
                                          sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit)
        ids = list({run.deployment_id for run in flow_runs if run.deployment_id})
        deployments = {d.id: d.name for d in client.read_deployments(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=ids)))} if ids else {}

    def when(value) -> str | None:
        return value.isoformat() if value else None

    return [{
        "id": str(run.id),
        "name": run.name,
        "deployment": f"{FLOW_NAME}/{deployments[run.deployment_id]}" if run.deployment_id in deployments else None,
        "state": run.state.name if run.state else None,
        "start": when(run.start_time),
        "end": when(run.end_time),
        "url": _run_url(run.id),
    } for run in flow_runs]
