"""Deployments of the `ingest` flow and the Prefect global concurrency limits they share.

One deployment per configured source (`ingest/<source>`) plus `ingest/all`, each with its cron
schedule from the config's [deployments] table, and two checks: `audit/weekly`, the `audit` flow
(flows/audit_flow.py, `sources audit` of every source) on `audit_schedule`, and `drill/store-drill`, the
`drill` flow (flows/drill_flow.py, `store drill` of the first replica) on `drill_schedule`. The same specs
feed `vectormill serve` (`flow.to_deployment` + `prefect.serve`, no work pool) and `deployments/prefect.yaml`
(`prefect deploy`, a process work pool), so both ways deploy the same thing.

Global concurrency limits (created by `vectormill setup-limits` and on `vectormill serve`):
- `[deployments] store_limit` (1 slot): held by a run for its whole store work. Runs of
  different deployments (ingest/docs and ingest/all) write the same store, whose file lock
  would refuse the second writer; with the slot the second one waits instead.
- `[deployments] embedding_limit` (`embedding_slots` slots): held around each embedding call,
  so overlapping runs never put more batches on the GPUs than there are slots.
- one rate limit per HTTP source that sets `prefect_rate_limit` (slots = its burst, decaying at
  its requests_per_second), shared by every run and process that reads that source.
They are used only when a Prefect server is present (PREFECT_API_URL set); an ephemeral
backfill runs alone and skips them with a note in its log.

The [deployments] settings live in `settings.py`, and what a run shares with deployments at run
time (the server's URL, holding a limit's slot) in `server.py`, so the flow never imports this
module. It imports Prefect only inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .server import server_url
from .settings import DeploymentSettings

if TYPE_CHECKING:
    from .config import VectormillConfig

FLOW_NAME = "ingest"
ALL = "all"  # the deployment that ingests every source; no source may take this name
ENTRYPOINT = "vectormill.flows.ingest:ingest"


class DeploymentConfigError(ValueError):
    pass


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment of the `ingest` flow, independent of how it is deployed."""

    name: str  # the deployment's name: a source's name, or "all"
    sources: tuple[str, ...] | None  # None: every configured source
    cron: str | None

    @property
    def full_name(self) -> str:
        return f"{FLOW_NAME}/{self.name}"

    def parameters(self, config_file: str) -> dict[str, Any]:
        return {"config_file": config_file, "sources": list(self.sources) if self.sources else None, "full": False}

    @property
    def description(self) -> str:
        what = f"source {self.name!r}" if self.sources else "every configured source"
        return f"vectormill: bring the store up to date with {what}."


def deployment_specs(config: VectormillConfig) -> list[DeploymentSpec]:
    """ingest/<source> for each configured source, then ingest/all."""
    settings: DeploymentSettings = config.deployments
    names = [source.name for source in config.sources]
    problems = []
    if ALL in names:
        problems.append(f"source name {ALL!r} is taken by the deployment of every source "
                        f"({FLOW_NAME}/{ALL}): rename the source")
    unknown = sorted(set(settings.schedules) - set(names))
    if unknown:
        problems.append(f"deployments.schedules names no configured source: {', '.join(unknown)} "
                        f"(configured: {', '.join(names) or 'none'})")
    if problems:
        raise DeploymentConfigError("; ".join(problems))
    specs = [DeploymentSpec(name, (name,), settings.schedules.get(name)) for name in names]
    specs.append(DeploymentSpec(ALL, None, settings.all_schedule))
    return specs


@dataclass(frozen=True)
class CheckSpec:
    """A scheduled check beside ingestion (audit/weekly, drill/store-drill): one run at a time, its result in an
    artifact."""

    name: str
    entrypoint: str  # module:flow function, imported from the installed package
    description: str
    tags: tuple[str, ...]
    parameters: tuple[tuple[str, Any], ...]  # besides config_file
    cron: str | None

    def flow(self) -> Any:
        from importlib import import_module

        module, function = self.entrypoint.split(":")
        return getattr(import_module(module), function)


def check_specs(config: VectormillConfig) -> list[CheckSpec]:
    settings: DeploymentSettings = config.deployments
    return [
        CheckSpec("weekly", "vectormill.flows.audit_flow:audit_sources",
                  "vectormill: list every source fully and compare it with the store (sources audit).",
                  ("vectormill", "audit"), (("deep", False),), settings.audit_schedule),
        CheckSpec("store-drill", "vectormill.flows.drill_flow:store_drill",
                  "vectormill: restore the newest generation of a replica aside, verify and search it (store drill).",
                  ("vectormill", "drill"), (("replica", None),),
                  # With no replica a drill can only fail: scheduled, it would alert every week for nothing.
                  settings.drill_schedule if config.store.replicas else None),
    ]


def deployment_tags(spec: DeploymentSpec) -> list[str]:
    return ["vectormill", f"source:{spec.name}"]


def runner_deployments(config: VectormillConfig, config_file: str) -> list[Any]:
    """The deployments as `RunnerDeployment`s for `prefect.serve` (no work pool needed)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType

    from .ingest import ingest

    settings: DeploymentSettings = config.deployments
    deployments = []
    for spec in deployment_specs(config):
        deployments.append(ingest.to_deployment(
            name=spec.name,
            schedules=[CronSchedule(cron=spec.cron, timezone=settings.timezone)] if spec.cron else None,
            parameters=spec.parameters(config_file),
            concurrency_limit=ConcurrencyLimitConfig(limit=settings.runs_per_deployment,
                                                     collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
            description=spec.description,
            tags=deployment_tags(spec),
            # Runs import the flow from the installed package (not a file path): its module is then the
            # same everywhere, which the task worker of `vectormill serve` needs to read their context.
            entrypoint_type=EntrypointType.MODULE_PATH,
        ))
    for check in check_specs(config):
        deployments.append(check.flow().to_deployment(
            name=check.name,
            schedules=[CronSchedule(cron=check.cron, timezone=settings.timezone)] if check.cron else None,
            parameters={"config_file": config_file, **dict(check.parameters)},
            concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
            description=check.description, tags=list(check.tags), entrypoint_type=EntrypointType.MODULE_PATH))
    return deployments


def prefect_yaml(config: VectormillConfig, config_file: str) -> dict[str, Any]:
    """The same deployments as a prefect.yaml document for `prefect deploy --all`."""
    settings: DeploymentSettings = config.deployments
    deployments = []
    for spec in deployment_specs(config):
        deployments.append({
            "name": spec.name,
            "description": spec.description,
            "entrypoint": ENTRYPOINT,
            "tags": deployment_tags(spec),
            "parameters": spec.parameters(config_file),
            "schedules": [{"cron": spec.cron, "timezone": settings.timezone}] if spec.cron else [],
            "concurrency_limit": {"limit": settings.runs_per_deployment, "collision_strategy": "ENQUEUE"},
            "work_pool": {"name": settings.work_pool, "work_queue_name": None, "job_variables": {}},
        })
    for check in check_specs(config):
        deployments.append({
            "name": check.name,
            "description": check.description,
            "entrypoint": check.entrypoint,
            "tags": list(check.tags),
            "parameters": {"config_file": config_file, **dict(check.parameters)},
            "schedules": [{"cron": check.cron, "timezone": settings.timezone}] if check.cron else [],
            "concurrency_limit": {"limit": 1, "collision_strategy": "ENQUEUE"},
            "work_pool": {"name": settings.work_pool, "work_queue_name": None, "job_variables": {}},
        })
    return {
        "name": "vectormill",
        "prefect-version": _prefect_version(),
        # The flow is imported from the installed package: nothing to clone or copy.
        "build": None,
        "push": None,
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": str(Path(config_file).parent)}}],
        "deployments": deployments,
    }


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


# ---- global concurrency limits -----------------------------------------------------------------
@dataclass(frozen=True)
class LimitSpec:
    name: str
    limit: int
    slot_decay_per_second: float | None  # set: a rate limit (slots refill at this rate)
    purpose: str


def limit_specs(config: VectormillConfig) -> list[LimitSpec]:
    """The global concurrency limits the config asks for (pure: tested without a server)."""
    from vectormill.connectors.settings import HttpSourceSettings

    settings: DeploymentSettings = config.deployments
    limits = [
        LimitSpec(settings.store_limit, 1, None, f"one writer at a time on the store {config.store.path}"),
        LimitSpec(settings.embedding_limit, settings.embedding_slots, None, "embedding calls in flight (GPU/CPU slots)"),
    ]
    rates: dict[str, HttpSourceSettings] = {}
    for source in config.sources:
        if isinstance(source, HttpSourceSettings) and source.prefect_rate_limit:
            other = rates.setdefault(source.prefect_rate_limit, source)
            if (other.requests_per_second, other.burst) != (source.requests_per_second, source.burst):
                raise DeploymentConfigError(
                    f"sources {other.name!r} and {source.name!r} share prefect_rate_limit "
                    f"{source.prefect_rate_limit!r} with different requests_per_second/burst: make them equal")
    for name, source in rates.items():
        limits.append(LimitSpec(name, source.burst, source.requests_per_second,
                                f"requests to source {source.name!r} ({source.requests_per_second:g}/s, burst {source.burst})"))
    return limits


def setup_limits(config: VectormillConfig) -> list[LimitSpec]:
    """Create or update the global concurrency limits on the server; returns what was set."""
    from prefect.client.orchestration import get_client

    if server_url() is None:
        raise DeploymentConfigError("no Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) "
                                    "to create global concurrency limits; ephemeral runs do not use them")
    specs = limit_specs(config)
    with get_client(sync_client=True) as client:
        for spec in specs:
            client.upsert_global_concurrency_limit_by_name(spec.name, spec.limit, spec.slot_decay_per_second)
    return specs
