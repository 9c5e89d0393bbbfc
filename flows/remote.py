"""Runs on a Prefect server: start a deployment's run, wait for it, read its summary, list recent runs.

What `vectormill trigger`, `runs` and `backfill --deployment` do, apart from printing. Every
function talks to the server at PREFECT_API_URL; Prefect is imported inside them.
"""

from __future__ import annotations

import time
from typing import Any

from .config import VectormillConfig
from .deploy import ALL, FLOW_NAME
from .errors import ServerError
from .server import server_url, ui_url


def require_server() -> str:
    url = server_url()
    if url is None:
        raise ServerError("no Prefect server: set PREFECT_API_URL (e.g. `prefect server start`, then "
                          "export PREFECT_API_URL=http://127.0.0.1:4200/api)")
    return url


def deployment_name(target: str) -> str:
    return f"{FLOW_NAME}/{target}"


def run_url(flow_run_id: Any) -> str | None:
    ui = ui_url()
    return f"{ui}/runs/flow-run/{flow_run_id}" if ui else None


def start_run(target: str, parameters: dict[str, Any]):
    """Create a flow run of deployment ingest/TARGET and return at once (the server schedules it)."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    require_server()
    try:
        return run_deployment(deployment_name(target), parameters=parameters, timeout=0, as_subflow=False)
    except ObjectNotFound:
        raise ServerError(f"no deployment {deployment_name(target)} on the server: start `vectormill serve` "
                          f"or deploy deployments/prefect.yaml (see `vectormill prefect-yaml`)") from None


DEFAULT_WAIT_SECONDS = 3600  # a deployment with no completed run yet
# A deployment's expected duration: this many times the longest of its last RECENT_RUNS completed runs,
# and at least MIN_WAIT_SECONDS (a worker or `vectormill serve` may take a while to pick the run up).
EXPECTED_MARGIN = 3
RECENT_RUNS = 10
MIN_WAIT_SECONDS = 600


class WaitTimedOut(ServerError):
    """The flow run did not end within the time `backfill --deployment` waits; it is left as it is."""


def expected_seconds(run_seconds: list[float]) -> float:
    """How long to wait for a run of a deployment whose last completed runs took `run_seconds`."""
    if not run_seconds:
        return DEFAULT_WAIT_SECONDS
    return max(MIN_WAIT_SECONDS, EXPECTED_MARGIN * max(run_seconds))


def wait_seconds(target: str) -> float:
    """The default wait for a run of ingest/TARGET: from its recent completed runs (`expected_seconds`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployment_name(target))
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]),
                                          state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))),
            sort=FlowRunSort.START_TIME_DESC, limit=RECENT_RUNS)
    return expected_seconds([run.total_run_time.total_seconds() for run in runs])


def stopped_waiting(flow_run, name: str, seconds: float) -> str:
    """Why `backfill --deployment` stopped waiting for a flow run that is not over: never started, or still running."""
    url = run_url(flow_run.id)
    where = f" ({url})" if url else ""
    if flow_run.start_time is None:
        return (f"no worker or `vectormill serve` picked up flow run {flow_run.id} of {name} within {seconds:g} s: "
                f"is anything serving {name}? The run stays {flow_run.state.name if flow_run.state else 'scheduled'}"
                f"{where}; `prefect flow-run cancel {flow_run.id}` cancels it")
    return (f"flow run {flow_run.id} of {name} is still running after {seconds:g} s (--timeout); it goes on: "
            f"follow it with `vectormill runs`{where}")


def wait_for(flow_run_id, name: str, timeout: float, poll_seconds: float = 2.0):
    """The flow run once its state is final; WaitTimedOut (saying why) after `timeout` seconds."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state and flow_run.state.is_final():
                return flow_run
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitTimedOut(stopped_waiting(flow_run, name, timeout))
            time.sleep(min(poll_seconds, left))


def deployment_target(config: VectormillConfig, sources: list[str] | None) -> tuple[str, dict[str, Any]]:
    """(the deployment that runs these sources, the parameters it needs): ingest/<source> for one, else all."""
    for name in sources or []:
        config.source(name)  # a ConfigError names the unknown source
    target = sources[0] if sources and len(sources) == 1 else ALL
    return target, {"sources": sources} if sources and len(sources) > 1 else {}


def summary_of(flow_run, target: str, parameters: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(the run's summary, read from its summary artifact; why it failed, or None when it completed)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from .artifacts import run_target, summary_from_markdown, summary_key

    state = flow_run.state
    key = summary_key(run_target(parameters.get("sources") or ([target] if target != ALL else None)))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]), key=ArtifactFilterKey(any_=[key])))
    outcome = f"flow run {flow_run.id} ended {state.name}: {state.message}"
    if not artifacts:
        raise ServerError(f"{outcome} (it published no {key} artifact; see its logs in the Prefect UI)")
    return summary_from_markdown(artifacts[0].data), None if state.is_completed() else outcome


def recent_runs(limit: int) -> list[dict[str, Any]]:
    """The newest runs of the ingest flow: id, name, deployment, state, start, end, url."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    require_server()
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
        "deployment": deployment_name(deployments[run.deployment_id]) if run.deployment_id in deployments else None,
        "state": run.state.name if run.state else None,
        "start": when(run.start_time),
        "end": when(run.end_time),
        "url": run_url(run.id),
    } for run in flow_runs]
