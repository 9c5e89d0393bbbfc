"""pynvml's functions answering from a table of GPUs: the lowest seam for what cannot exist here.

It returns pynvml's own ctypes structures and raises pynvml's own exceptions, so the code under
test runs exactly as against the real library.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import pynvml

MIB = 1024 * 1024


@dataclass
class TableGpu:
    name: str
    total_mib: int
    used_mib: int = 0
    gpu_percent: Sequence[int] | None = (0,)  # successive readings, cycled; None: not supported
    name_as_bytes: bool = False  # older pynvml releases return bytes
    compute_capability: tuple[int, int] = (9, 0)  # an H100


class TableNvml:
    def __init__(self, gpus: Sequence[TableGpu], init_error: int | None = None):
        self.gpus = list(gpus)
        self.init_error = init_error
        self.errors: dict[str, int] = {}  # function name → NVML error code it raises from now on
        self.inits = self.shutdowns = 0
        self.utilisation_read: dict[int, list[int]] = {}  # what each device reported, in order
        self._cycles = {i: itertools.cycle(g.gpu_percent) for i, g in enumerate(self.gpus) if g.gpu_percent}

    def _check(self, function: str) -> None:
        if function in self.errors:
            raise pynvml.NVMLError(self.errors[function])

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._check("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def nvmlDeviceGetName(self, handle: int) -> str | bytes:
        gpu = self.gpus[handle]
        return gpu.name.encode() if gpu.name_as_bytes else gpu.name

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        self._check("nvmlDeviceGetCudaComputeCapability")
        return self.gpus[handle].compute_capability

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> pynvml.c_nvmlMemory_t:
        self._check("nvmlDeviceGetMemoryInfo")
        gpu = self.gpus[handle]
        return pynvml.c_nvmlMemory_t(total=gpu.total_mib * MIB, free=(gpu.total_mib - gpu.used_mib) * MIB,
                                     used=gpu.used_mib * MIB)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> pynvml.c_nvmlUtilization_t:
        self._check("nvmlDeviceGetUtilizationRates")
        if handle not in self._cycles:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        value = next(self._cycles[handle])
        self.utilisation_read.setdefault(handle, []).append(value)
        return pynvml.c_nvmlUtilization_t(gpu=value, memory=value // 2)


def driver_present() -> bool:
    """Whether this machine has a real NVIDIA driver (NVML's library loads)."""
    import ctypes

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True
