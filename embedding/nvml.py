"""The one place that talks to NVML (nvidia-ml-py): which NVIDIA GPUs exist and how full they are.

Every other module gets plain `GpuReading`s from here. An absent driver, no devices or any NVML
error gives an empty device list with a reason, never an exception: the caller plans for CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import pynvml

logger = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuReading:
    index: int  # NVML's index (what nvidia-smi shows)
    cuda_index: int  # torch's ordinal for it (differs when CUDA_VISIBLE_DEVICES picks devices)
    name: str
    total_mib: int
    free_mib: int
    used_mib: int
    gpu_percent: int | None  # None where the device does not report it (some MIG / vGPU setups)
    memory_percent: int | None
    compute_capability: tuple[int, int] | None = None  # CUDA (major, minor); None where NVML does not say


@dataclass(frozen=True)
class Probe:
    devices: tuple[GpuReading, ...]
    reason: str  # what was found, or why nothing was


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _visible_indices(count: int, environ: dict[str, str]) -> list[int] | None:
    """NVML indices that CUDA_VISIBLE_DEVICES exposes to torch, in torch's order; None = all.

    Only the numeric form is mapped; for UUID or MIG forms every device is listed as NVML sees it.
    """
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    if not visible.strip():
        return []  # set but empty: CUDA sees no device
    picked: list[int] = []
    for part in (p.strip() for p in visible.split(",")):
        if not part.lstrip("-").isdigit():
            return None
        index = int(part)
        if index < 0 or index >= count:
            break  # CUDA stops at the first invalid entry
        picked.append(index)
    return picked


class NvmlSession:
    """NVML initialised once for a series of readings (the probe reads once, telemetry many times)."""

    def __init__(self, nvml: Any = pynvml, environ: dict[str, str] | None = None):
        self._nvml = nvml
        self._environ = dict(os.environ if environ is None else environ)
        # (nvml index, cuda index, handle, name, compute capability)
        self._handles: list[tuple[int, int, Any, str, tuple[int, int] | None]] = []

    def __enter__(self) -> "NvmlSession":
        nvml = self._nvml
        nvml.nvmlInit()
        try:
            count = nvml.nvmlDeviceGetCount()
            indices = _visible_indices(count, self._environ)
            for cuda_index, index in enumerate(range(count) if indices is None else indices):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                self._handles.append((index, cuda_index, handle, _text(nvml.nvmlDeviceGetName(handle)),
                                      self._capability(handle)))
        except BaseException:
            self._shutdown()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._shutdown()

    def _capability(self, handle: Any) -> tuple[int, int] | None:
        """What the precision decision needs (bf16 from 8.0); None where NVML cannot say: then fp32."""
        try:
            major, minor = self._nvml.nvmlDeviceGetCudaComputeCapability(handle)
        except pynvml.NVMLError as exc:
            logger.info("NVML did not report the compute capability: %s", exc)
            return None
        return int(major), int(minor)

    def _shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except pynvml.NVMLError as exc:  # nothing to act on: the readings are taken
            logger.debug("nvmlShutdown failed: %s", exc)

    def read(self, indices: list[int] | None = None) -> list[GpuReading]:
        """Current memory and utilisation of the devices (all, or those NVML indices)."""
        nvml = self._nvml
        readings = []
        for index, cuda_index, handle, name, capability in self._handles:
            if indices is not None and index not in indices:
                continue
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                gpu_percent, memory_percent = int(rates.gpu), int(rates.memory)
            except pynvml.NVMLError_NotSupported:
                gpu_percent = memory_percent = None
            readings.append(GpuReading(index, cuda_index, name, int(memory.total) // MIB, int(memory.free) // MIB,
                                       int(memory.used) // MIB, gpu_percent, memory_percent, capability))
        return readings


def probe_devices(nvml: Any = pynvml, environ: dict[str, str] | None = None) -> Probe:
    """Every NVIDIA GPU that torch would see, with its free memory; an empty list and the reason otherwise."""
    environ = dict(os.environ if environ is None else environ)
    try:
        with NvmlSession(nvml, environ) as session:
            devices = tuple(session.read())
    except pynvml.NVMLError_LibraryNotFound:
        reason = "no NVIDIA driver: the NVML library (libnvidia-ml.so) was not found"
    except pynvml.NVMLError_DriverNotLoaded:
        reason = "the NVIDIA driver is installed but not loaded"
    except pynvml.NVMLError as exc:
        reason = f"NVML failed: {exc}"
    else:
        if devices:
            names = ", ".join(f"{d.index}: {d.name}" for d in devices)
            return Probe(devices, f"{len(devices)} NVIDIA GPU(s) via NVML ({names})")
        reason = "NVML reports no NVIDIA GPU" + (
            " visible through CUDA_VISIBLE_DEVICES" if "CUDA_VISIBLE_DEVICES" in environ else "")
    logger.info("GPU probe: %s; embedding plans for CPU", reason)
    return Probe((), reason)
