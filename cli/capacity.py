"""`vectormill capacity`: the embedding plan for this machine and the numbers it came from.

It runs no flow and loads no model (torch is imported only when NVML sees a GPU), so it is quick.
It needs no config file: without one it plans for the default model and settings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import ConfigOption, JsonOption, console, load, user_errors

MIB = 1024 * 1024


def _embedding_settings(config: Optional[Path]):
    """[embedding] of the config; of the defaults (and VECTORMILL_* overrides) when no file is named
    (--config, $VECTORMILL_CONFIG) and ./vectormill.toml does not exist."""
    from vectormill.flows.config import CONFIG_ENV, config_path, parse_config

    if config is not None or os.environ.get(CONFIG_ENV) or config_path(None).exists():
        return load(config).embedding
    with user_errors():
        return parse_config({}, Path.cwd()).embedding


def register(app: typer.Typer, store_app: typer.Typer) -> None:
    @app.command()
    def capacity(config: Optional[Path] = ConfigOption, as_json: bool = JsonOption) -> None:
        """How many model replicas run where, with what token budget per batch, and why."""
        from vectormill.flows.capacity import capacity_plan

        settings = _embedding_settings(config)
        with user_errors():
            footprint, plan = capacity_plan(settings)
        if as_json:
            print(json.dumps(plan.as_dict()))
            return

        inputs = Table(title=f"embedding capacity: model {settings.model}", show_header=False)
        inputs.add_row("precision", f"{plan.precision}  ({plan.precision_reason}; checked against fp32 at model load)")
        inputs.add_row("weights", f"{plan.model_bytes / MIB:.1f} MiB in {plan.precision}  ({footprint.weight_source})")
        inputs.add_row("activations", f"{plan.activation_bytes_per_token / 1024:.1f} KiB per token in {plan.precision}  "
                                      f"({footprint.activation_source})")
        inputs.add_row("reserve", f"{settings.memory_reserve_fraction:.0%} of each GPU's memory")
        caps = {"max_workers": settings.max_workers, "max_batch_tokens": settings.max_batch_tokens,
                "batch_size": settings.batch_size}
        inputs.add_row("caps", ", ".join(f"{k} = {v}" for k, v in caps.items() if v is not None) or "none")
        inputs.add_row("device setting", settings.device)
        console.print(inputs)

        if plan.devices:
            gpus = Table(title="GPUs (NVML)")
            for column in ("index", "name", "total MiB", "free MiB", "reserve MiB", "workers", "batch tokens",
                           "planned MiB", "note"):
                gpus.add_column(column, justify="left" if column in ("name", "note") else "right")
            for d in plan.devices:
                gpus.add_row(str(d.index), d.name, str(d.total_mib), str(d.free_mib), str(d.reserve_mib),
                             str(d.workers), str(d.batch_tokens), f"{d.planned_mib:.0f}", d.note)
            console.print(gpus)
        where = f"{plan.threads} torch threads" if plan.device == "cpu" else "GPU"
        chunks_from = "set in [embedding]" if plan.task_chunks_setting else f"planned for {plan.device}"
        console.print(f"plan: [bold]{plan.workers} worker(s) on {plan.device} in {plan.precision}[/bold] ({where}), "
                      f"{plan.batch_tokens} tokens per batch, {plan.task_chunks} chunks per embedding task "
                      f"({chunks_from}); {plan.reason}", highlight=False)
