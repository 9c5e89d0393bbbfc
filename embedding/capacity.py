"""How many model replicas to run where, and how many tokens each may take per batch.

`plan_capacity` is pure arithmetic over free GPU memory (from `nvml.probe_devices`) and the
model's footprint, so it is tested with device tables and no GPU. The footprint is *derived*,
not measured: no calibration batch is run, so planning works before (and without) loading the
model on a device.

- Weights: the parameter count read from the model's safetensors headers (or the size of its
  .bin files ÷ 4, or, for a hub name not on disk, an estimate from config.json) × the precision's
  bytes per parameter (embedding/precision.py: 4 in fp32; 4 + 2 in bf16/fp16, whose autocast
  keeps fp32 weights and a half copy while a batch runs).
- Activations per token, from config.json: inference runs without autograd, so only one layer's
  intermediates are alive at a time. Per token that is the layer input, Q, K, V, the attention
  context and output (6 × hidden), the feed-forward intermediate before and after its activation
  (2 × intermediate) and the token's row of attention scores and their softmax in every head
  (2 × heads × max_seq_length), × the precision's bytes per value (4 in fp32, 2 in bf16/fp16),
  × ALLOCATOR_HEADROOM for the caching allocator's rounding and fragmentation.

The precision itself is chosen from what the hardware reports (`precision.choose_precision`)
before the plan is made, so `vectormill capacity` shows it without importing torch.

Chunks per embedding call (`task_chunks`, `plan_task_chunks`): every call to the pool pays a
fixed cost (counting tokens, the caller's round trip, on a Dask or task worker the task's own)
and leaves replicas idle once its last batches run. On a GPU a call therefore holds enough
full-length chunks to fill every replica's window of batches in flight at its planned budget:
on an 80 GB H100 with MiniLM, 2 replicas × 2 batches × 256 rows = 1,024, the call size that
took the pool from 0.69 to 0.94 of the best plain `encode` there (README). On CPU the batch
size barely matters and one call of CPU_TASK_CHUNKS already holds seconds of work.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .base import EmbeddingError
from .models import resolve_model
from .nvml import GpuReading, probe_devices
from .precision import Precision, PrecisionChoice, bytes_per_activation, bytes_per_parameter, choose_precision, cpu_flags
from .settings import EmbeddingSettings
from .tokenizer import ModelTokenizer

MIB = 1024 * 1024
ALLOCATOR_HEADROOM = 1.5
# Memory the CUDA context and cuBLAS workspaces take on each device, once per process.
CUDA_CONTEXT_BYTES = 512 * MIB
# A second replica on its own CUDA stream overlaps one batch's tokenization and copies with the
# other's kernels; more replicas on one GPU add memory, not speed.
REPLICAS_PER_GPU = 2
# Past this a bigger batch no longer speeds a GPU up; it only grows what one out-of-memory loses.
GPU_BATCH_TOKENS_CEILING = 65536
# On CPU the batch size barely changes throughput (benchmarks/pool_throughput.py) but sets the
# activations' high-water mark: batches of ~16 full-length chunks (MiniLM here, bf16: 97 chunks/s
# against 100 at 32, peak RSS 80 MiB lower; fp32: 38 against 33, 140 MiB lower).
CPU_BATCH_TOKENS = 4096
# Batches each worker has in flight (one running, one queued): what a call must fill on a GPU.
BATCHES_IN_FLIGHT_PER_WORKER = 2
# Chunks per embedding call on CPU (and the floor on GPU): the [embedding] task_chunks of old.
CPU_TASK_CHUNKS = 64
# A failed call is retried whole and the flow holds several calls' vectors: bound what one carries.
TASK_CHUNKS_CEILING = 8192


@dataclass(frozen=True)
class DevicePlan:
    index: int  # NVML index
    cuda_index: int  # torch ordinal
    name: str
    total_mib: int
    free_mib: int
    reserve_mib: int
    workers: int
    batch_tokens: int  # per batch of each worker on this device; 0 without workers
    planned_mib: float  # CUDA context + workers × (weights + batch_tokens × activation per token)
    note: str


@dataclass(frozen=True)
class CapacityPlan:
    device: Literal["cpu", "cuda"]
    workers: int
    batch_tokens: int  # the smallest per-worker budget (padded tokens: rows × longest chunk)
    threads: int | None  # torch threads of the CPU worker; None on GPU
    max_batch_rows: int | None  # [embedding] batch_size, a cap on chunks per batch
    devices: tuple[DevicePlan, ...]
    reason: str
    model_bytes: int
    activation_bytes_per_token: int
    reserve_fraction: float
    max_seq_length: int
    precision: Precision = "fp32"  # what the replicas run in, before the agreement guard's check
    precision_reason: str = ""
    planned_task_chunks: int = CPU_TASK_CHUNKS  # chunks per embedding call that this plan calls for
    task_chunks_setting: int | None = None  # [embedding] task_chunks when set: it wins

    @property
    def task_chunks(self) -> int:
        """Chunks handed to one embedding call: the setting when given, else the planned number."""
        return self.task_chunks_setting or self.planned_task_chunks

    def as_dict(self) -> dict[str, Any]:
        """The `vectormill capacity --json` document."""
        return {
            "device": self.device,
            "workers": self.workers,
            "batch_tokens": self.batch_tokens,
            "threads": self.threads,
            "max_batch_rows": self.max_batch_rows,
            "devices": [asdict(d) for d in self.devices],
            "reason": self.reason,
            "model_mib": round(self.model_bytes / MIB, 1),
            "activation_bytes_per_token": self.activation_bytes_per_token,
            "reserve_fraction": self.reserve_fraction,
            "max_seq_length": self.max_seq_length,
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "task_chunks": self.task_chunks,
            "planned_task_chunks": self.planned_task_chunks,
        }


def _replicas_that_fit(usable: int, model_bytes: int, token_bytes: int, replicas_cap: int) -> int:
    """Most replicas (≤ cap) that each still have room for one full-length chunk."""
    count = 0
    while count < replicas_cap and usable - (count + 1) * model_bytes >= (count + 1) * token_bytes:
        count += 1
    return count


def plan_task_chunks(devices: Sequence[DevicePlan], max_seq_length: int, max_batch_rows: int | None) -> int:
    """Chunks per embedding call (see the module docstring): every GPU worker's window of batches
    filled with full-length chunks at its device's budget, within [CPU_TASK_CHUNKS, the ceiling];
    CPU_TASK_CHUNKS when no GPU has workers (a CPU plan)."""
    window = 0
    for planned in devices:
        rows = planned.batch_tokens // max_seq_length
        window += planned.workers * BATCHES_IN_FLIGHT_PER_WORKER * min(rows, max_batch_rows or rows)
    return max(CPU_TASK_CHUNKS, min(TASK_CHUNKS_CEILING, window))


def plan_capacity(
    devices: Sequence[GpuReading],
    model_bytes: int,
    activation_bytes_per_token: int,
    reserve_fraction: float,
    *,
    max_seq_length: int,
    cpu_cores: int,
    max_workers: int | None = None,
    max_batch_tokens: int | None = None,
    max_batch_rows: int | None = None,
    replicas_per_gpu: int = REPLICAS_PER_GPU,
    context_bytes: int = CUDA_CONTEXT_BYTES,
    no_gpu_reason: str = "no GPU",
    precision: PrecisionChoice = PrecisionChoice("fp32", "fp32"),
    task_chunks: int | None = None,
) -> CapacityPlan:
    """Workers per GPU and their token budgets, or one CPU worker when no GPU has room.

    Per GPU: usable = free − reserve_fraction × total − CUDA context. With r replicas each
    batch may hold ⌊(usable − r × model_bytes) / (r × activation_bytes_per_token)⌋ tokens,
    capped by max_batch_tokens (default GPU_BATCH_TOKENS_CEILING). A replica is only placed
    where that budget holds one full-length chunk (max_seq_length tokens); a batch always may,
    so a cap below max_seq_length counts as max_seq_length. max_workers caps the total,
    spread over the GPUs with most usable memory first. `precision` is recorded in the plan; the
    byte counts given must already be those of that precision. `task_chunks` (the setting), when
    given, overrides the chunks per call planned by `plan_task_chunks`.
    """
    shared = dict(model_bytes=model_bytes, activation_bytes_per_token=activation_bytes_per_token,
                  reserve_fraction=reserve_fraction, max_seq_length=max_seq_length, max_batch_rows=max_batch_rows,
                  precision=precision.precision, precision_reason=precision.reason,
                  task_chunks_setting=task_chunks)
    full_chunk_bytes = max_seq_length * activation_bytes_per_token
    gpu_cap = max(max_batch_tokens or GPU_BATCH_TOKENS_CEILING, max_seq_length)

    usable = [reading.free_mib * MIB - math.ceil(reserve_fraction * reading.total_mib * MIB) - context_bytes
              for reading in devices]
    fits = [_replicas_that_fit(room, model_bytes, full_chunk_bytes, replicas_per_gpu) for room in usable]
    workers = [0] * len(devices)
    total_cap = sum(fits) if max_workers is None else min(max_workers, sum(fits))
    by_room = sorted(range(len(devices)), key=lambda i: usable[i], reverse=True)
    while sum(workers) < total_cap:
        for i in by_room:
            if workers[i] < fits[i] and sum(workers) < total_cap:
                workers[i] += 1

    plans = []
    for reading, room, fit, count in zip(devices, usable, fits, workers):
        reserve_mib = math.ceil(reserve_fraction * reading.total_mib)
        if count:
            budget = min(gpu_cap, (room - count * model_bytes) // (count * activation_bytes_per_token))
            planned = context_bytes + count * (model_bytes + budget * activation_bytes_per_token)
            note = f"{count} replica(s), {budget} tokens per batch each"
        else:
            budget, planned = 0, 0
            need = (context_bytes + model_bytes + full_chunk_bytes) / MIB
            note = (f"no room: {reading.free_mib} MiB free − {reserve_mib} MiB reserve is below the "
                    f"{need:.0f} MiB one replica needs" if fit == 0 else "left idle by max_workers")
        plans.append(DevicePlan(reading.index, reading.cuda_index, reading.name, reading.total_mib,
                                reading.free_mib, reserve_mib, count, int(budget), round(planned / MIB, 1), note))

    used = [p for p in plans if p.workers]
    if used:
        reason = (f"{sum(p.workers for p in used)} replica(s) on {len(used)} of {len(plans)} GPU(s), "
                  f"sized from NVML free memory")
        return CapacityPlan("cuda", sum(p.workers for p in used), min(p.batch_tokens for p in used), None,
                            devices=tuple(plans), reason=reason,
                            planned_task_chunks=plan_task_chunks(used, max_seq_length, max_batch_rows),
                            **shared)

    if plans:
        reason = "no GPU has room for a model replica (" + "; ".join(
            f"GPU {p.index} {p.name}: {p.note}" for p in plans) + ")"
    else:
        reason = no_gpu_reason
    cpu_budget = max(max_batch_tokens or CPU_BATCH_TOKENS, max_seq_length)
    return CapacityPlan("cpu", 1, cpu_budget, cpu_cores, devices=tuple(plans), reason=reason,
                        planned_task_chunks=CPU_TASK_CHUNKS, **shared)


# ---- the model's footprint ---------------------------------------------------------------------
@dataclass(frozen=True)
class ModelFootprint:
    parameters: int
    weight_source: str
    activation_values_per_token: int  # values alive per token in one layer (see the module docstring)
    activation_source: str
    max_seq_length: int

    def weight_bytes(self, precision: Precision = "fp32") -> int:
        return self.parameters * bytes_per_parameter(precision)

    def activation_bytes_per_token(self, precision: Precision = "fp32") -> int:
        return math.ceil(self.activation_values_per_token * bytes_per_activation(precision) * ALLOCATOR_HEADROOM)


def activation_values_per_token(hidden: int, intermediate: int, heads: int, max_seq_length: int) -> int:
    return 6 * hidden + 2 * intermediate + 2 * heads * max_seq_length


def _config_value(config: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        if isinstance(config.get(key), int):
            return config[key]
    return None


def _safetensors_parameters(path: Path) -> int:
    """Element count from the file's JSON header (8-byte little-endian length, then the header)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")


def _model_config(folder: Path | None, location: str) -> dict[str, Any]:
    if folder is not None:
        for candidate in [folder / "config.json", *sorted(folder.glob("*/config.json"))]:
            if candidate.is_file():
                return json.loads(candidate.read_text())
        raise EmbeddingError(f"model {location!r} has no config.json: its memory needs cannot be derived; "
                             "set [embedding] device = \"cpu\"")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(location).to_dict()


def model_footprint(model: str, tokenizer: ModelTokenizer | None = None) -> ModelFootprint:
    location = resolve_model(model)
    folder = Path(location) if Path(location).is_dir() else None
    config = _model_config(folder, location)
    hidden = _config_value(config, "hidden_size", "d_model", "dim")
    heads = _config_value(config, "num_attention_heads", "num_heads", "n_heads")
    layers = _config_value(config, "num_hidden_layers", "num_layers", "n_layers")
    if hidden is None or heads is None or layers is None:
        raise EmbeddingError(f"config.json of model {model!r} names no hidden size, heads or layers: its memory "
                             "needs cannot be derived; set [embedding] device = \"cpu\"")
    intermediate = _config_value(config, "intermediate_size", "d_ff", "ffn_dim", "hidden_dim") or 4 * hidden
    max_seq_length = (tokenizer or ModelTokenizer.for_model(model)).max_tokens

    tensors = sorted(folder.rglob("*.safetensors")) if folder else []
    pickles = sorted(folder.rglob("*.bin")) if folder else []
    if tensors:
        parameters = sum(_safetensors_parameters(path) for path in tensors)
        weight_source = f"{parameters:,} parameters (safetensors)"
    elif pickles:
        parameters = sum(p.stat().st_size for p in pickles) // 4
        weight_source = f"~{parameters:,} parameters (size of the .bin weight files ÷ 4 bytes)"
    else:
        vocab = _config_value(config, "vocab_size") or 0
        positions = _config_value(config, "max_position_embeddings") or 0
        parameters = (vocab + positions) * hidden + layers * (4 * hidden * hidden + 2 * hidden * intermediate)
        weight_source = f"~{parameters:,} parameters estimated from config"

    return ModelFootprint(
        parameters, weight_source,
        activation_values_per_token(hidden, intermediate, heads, max_seq_length),
        f"config: hidden {hidden}, intermediate {intermediate}, {heads} heads, max_seq_length {max_seq_length}",
        max_seq_length,
    )


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def plan_for_settings(
    settings: EmbeddingSettings,
    footprint: ModelFootprint | None = None,
    probe: Callable[[], Any] = probe_devices,
    torch_has_cuda: Callable[[], bool] = _torch_has_cuda,
    read_cpu_flags: Callable[[], frozenset[str]] = cpu_flags,
) -> CapacityPlan:
    """Probe, footprint, precision and plan for the [embedding] settings; device = "cuda" without a
    usable GPU is an error, and so is a half precision the planned GPUs lack."""
    footprint = footprint or model_footprint(settings.model)
    if settings.device == "cpu":
        devices, why = (), '[embedding] device = "cpu"'
    else:
        found = probe()
        devices, why = found.devices, found.reason
        if devices and not torch_has_cuda():
            import torch

            devices, why = (), f"NVML sees {len(found.devices)} GPU(s) but torch {torch.__version__} has no CUDA support"

    def plan_in(choice: PrecisionChoice) -> CapacityPlan:
        return plan_capacity(
            devices, footprint.weight_bytes(choice.precision), footprint.activation_bytes_per_token(choice.precision),
            settings.memory_reserve_fraction, max_seq_length=footprint.max_seq_length, cpu_cores=cpu_cores(),
            max_workers=settings.max_workers, max_batch_tokens=settings.max_batch_tokens,
            max_batch_rows=settings.batch_size, no_gpu_reason=why, precision=choice, task_chunks=settings.task_chunks)

    plan = None
    if devices:
        plan = plan_in(choose_precision(settings.precision, "cuda",
                                        gpu_capabilities=[d.compute_capability for d in devices]))
        used = [reading.compute_capability for reading, planned in zip(devices, plan.devices) if planned.workers]
        if plan.device == "cuda":
            # Decided over every GPU first; GPUs left without a replica do not hold the others back.
            choice = choose_precision(settings.precision, "cuda", gpu_capabilities=used)
            if choice.precision != plan.precision:
                plan = plan_in(choice)
    if plan is None or plan.device == "cpu":
        plan = plan_in(choose_precision(settings.precision, "cpu", read_cpu_flags()))
    if settings.device == "cuda" and plan.device != "cuda":
        raise EmbeddingError(f'[embedding] device = "cuda" but no GPU can be used: {plan.reason}; '
                             'set device = "auto" (falls back to CPU) or "cpu"')
    return plan
