"""Which floating-point precision the model runs in, and the guard that checks it agrees with fp32.

The decision (`choose_precision`) is a pure table over what the hardware reports: CPU feature
flags (from /proc/cpuinfo) and the CUDA compute capability of each planned GPU (from NVML), so
it is decided — and `vectormill capacity` shows it — before torch is imported.

| requested | CPU                                   | CUDA (all planned GPUs)                    |
|-----------|---------------------------------------|--------------------------------------------|
| auto      | bf16 with amx_bf16 or avx512_bf16,    | bf16 at compute capability ≥ 8.0,          |
|           | else fp32                             | fp16 at ≥ 6.0, else fp32                   |
| fp32      | fp32                                  | fp32                                       |
| bf16      | bf16 (noted when emulated: slower)    | bf16 at ≥ 8.0, else an error               |
| fp16      | fp16 (noted when emulated: slower)    | fp16 at ≥ 6.0, else an error               |

One precision per plan: mixed GPUs take what all of them support, so a run's vectors are of one kind.

Half precision runs under `torch.autocast`: the weights stay fp32 (so falling back is exact and
the same code runs on CPU and GPU), matrix products run in bf16/fp16, and normalisations and
softmax stay in fp32. While a batch runs, autocast holds a half copy of the weights beside them.

The agreement guard (`agreement`) compares vectors of a packaged probe set (`probe_texts.json`:
prose in several languages, code, a table, a URL list, short queries; the long ones cut to the
model's token limit) embedded in fp32 and in the chosen precision; below `min_cosine` the
embedder falls back to fp32 and says why.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .base import EmbeddingError, unit_rows
from .tokenizer import ModelTokenizer

Precision = Literal["fp32", "bf16", "fp16"]
Requested = Literal["auto", "fp32", "bf16", "fp16"]

# CPU flags (Linux names) of native bf16 / fp16 arithmetic.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPU_FP16_FLAGS = ("amx_fp16", "avx512_fp16")
# CUDA compute capabilities: bf16 tensor cores from Ampere (8.0); fp16 arithmetic at full rate from Pascal (6.0).
CUDA_BF16_CAPABILITY = (8, 0)
CUDA_FP16_CAPABILITY = (6, 0)


class PrecisionError(EmbeddingError):
    pass


@dataclass(frozen=True)
class PrecisionChoice:
    precision: Precision
    reason: str


def _has(flags: frozenset[str], wanted: Sequence[str]) -> str | None:
    return next((flag for flag in wanted if flag in flags), None)


def choose_precision(requested: Requested, device: Literal["cpu", "cuda"], cpu_flags: frozenset[str] = frozenset(),
                     gpu_capabilities: Sequence[tuple[int, int] | None] = ()) -> PrecisionChoice:
    """The precision a plan on `device` runs in (the table in the module docstring).

    `gpu_capabilities`: the compute capability of each planned GPU (None where NVML did not say).
    """
    if requested == "fp32":
        return PrecisionChoice("fp32", '[embedding] precision = "fp32"')
    if device == "cpu":
        if requested == "auto":
            flag = _has(cpu_flags, CPU_BF16_FLAGS)
            return (PrecisionChoice("bf16", f"the CPU reports {flag}") if flag else
                    PrecisionChoice("fp32", f"the CPU reports neither {' nor '.join(CPU_BF16_FLAGS)}"))
        flags = CPU_BF16_FLAGS if requested == "bf16" else CPU_FP16_FLAGS
        flag = _has(cpu_flags, flags)
        return PrecisionChoice(requested, f'[embedding] precision = "{requested}"' + (
            f"; the CPU reports {flag}" if flag else
            f"; the CPU reports neither {' nor '.join(flags)}: emulated, likely slower than fp32"))

    if not gpu_capabilities or any(capability is None for capability in gpu_capabilities):
        lowest = None
    else:
        lowest = min(gpu_capabilities)  # type: ignore[type-var]
    shown = "unknown" if lowest is None else f"{lowest[0]}.{lowest[1]}"
    bf16 = lowest is not None and lowest >= CUDA_BF16_CAPABILITY
    fp16 = lowest is not None and lowest >= CUDA_FP16_CAPABILITY
    if requested == "auto":
        if bf16:
            return PrecisionChoice("bf16", f"GPU compute capability {shown} ≥ 8.0 has bf16")
        if fp16:
            return PrecisionChoice("fp16", f"GPU compute capability {shown} is below 8.0 (no bf16) but has fp16")
        return PrecisionChoice("fp32", f"GPU compute capability {shown}: no fast half precision")
    if (requested == "bf16" and not bf16) or (requested == "fp16" and not fp16):
        need = "8.0" if requested == "bf16" else "6.0"
        other = ' or "fp16"' if requested == "bf16" and fp16 else ""
        raise PrecisionError(f'[embedding] precision = "{requested}" needs GPUs of compute capability ≥ {need}, but '
                             f'the plan uses one of {shown}: set precision = "auto"{other} or "fp32"')
    return PrecisionChoice(requested, f'[embedding] precision = "{requested}"; GPU compute capability {shown}')


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where the file does not exist (other systems decide fp32)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


# ---- memory per parameter and per activation value (the capacity plan) --------------------------
def bytes_per_parameter(precision: Precision) -> int:
    """fp32 weights; under autocast also their half copy while a batch runs."""
    return 4 if precision == "fp32" else 4 + 2


def bytes_per_activation(precision: Precision) -> int:
    return 4 if precision == "fp32" else 2


# ---- the agreement guard ------------------------------------------------------------------------
@dataclass(frozen=True)
class Agreement:
    min_cosine: float
    mean_cosine: float
    texts: int


def agreement(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Cosine of each candidate vector to its reference (rows in the same order)."""
    if reference.shape != candidate.shape or not len(reference):
        raise ValueError(f"cannot compare vectors of shapes {reference.shape} and {candidate.shape}")
    cosines = (unit_rows(reference).astype(np.float64) * unit_rows(candidate).astype(np.float64)).sum(axis=1)
    return Agreement(float(cosines.min()), float(cosines.mean()), len(cosines))


def probe_texts(tokenizer: ModelTokenizer) -> list[str]:
    """The packaged probe set; texts longer than the model takes are cut at the last whole word within its limit."""
    raw = json.loads(resources.files(__package__).joinpath("probe_texts.json").read_text(encoding="utf-8"))
    texts = []
    for text in raw:
        tokens = list(tokenizer.tokens(text))  # a probe text: a few hundred tokens
        cut = tokenizer.max_content_tokens
        if len(tokens) > cut:
            # Back to the start of the word the limit falls in: a cut word could take more tokens.
            while cut > 0 and tokens[cut].word is not None and tokens[cut].word == tokens[cut - 1].word:
                cut -= 1
            text = text[:tokens[cut].start].rstrip()
        texts.append(text)
    return texts


@dataclass(frozen=True)
class PrecisionReport:
    """What a model replica runs in, and why (the run summary's "precision")."""

    requested: str
    chosen: str  # what the decision table picked
    used: str  # what runs: `chosen`, or fp32 after the guard refused it
    reason: str
    min_cosine: float  # the guard's threshold
    probe_min_cosine: float | None = None  # None: no probe (fp32 needs none)
    probe_texts: int = 0
    probe_seconds: float = 0.0
    fallback: str | None = None  # why the guard fell back to fp32

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def guard_verdict(choice: PrecisionChoice, requested: str, result: Agreement, min_cosine: float,
                  seconds: float) -> PrecisionReport:
    """Keep the chosen precision when its probe vectors agree with fp32 to `min_cosine`, else fp32."""
    fallback = None
    if result.min_cosine < min_cosine:
        fallback = (f"{choice.precision} vectors of the probe set agree with fp32 only to cosine "
                    f"{result.min_cosine:.6f}, below precision_min_cosine = {min_cosine:g}: embedding in fp32")
    return PrecisionReport(requested, choice.precision, "fp32" if fallback else choice.precision, choice.reason,
                           min_cosine, round(result.min_cosine, 7), result.texts, round(seconds, 3), fallback)
