"""The NVML probe: real pynvml on this driverless machine, and device tables at pynvml's seam."""

from __future__ import annotations

import logging

import pynvml
import pytest

from tests.nvml_table import TableGpu, TableNvml, driver_present
from vectormill.embedding.base import EmbeddingError
from vectormill.embedding.capacity import model_footprint, plan_for_settings
from vectormill.embedding.nvml import probe_devices
from vectormill.embedding.settings import EmbeddingSettings




@pytest.mark.skipif(driver_present(), reason="an NVIDIA driver is installed on this machine")
def test_real_pynvml_without_driver_gives_cpu_plan_and_a_log_line(caplog):
    caplog.set_level(logging.INFO, logger="vectormill.embedding.nvml")
    probe = probe_devices()
    assert probe.devices == ()
    assert "no NVIDIA driver" in probe.reason
    assert any("no NVIDIA driver" in r.getMessage() and "CPU" in r.getMessage() for r in caplog.records)

    plan = plan_for_settings(EmbeddingSettings())
    assert (plan.device, plan.workers, plan.reason) == ("cpu", 1, probe.reason)
    with pytest.raises(EmbeddingError, match='device = "cuda" but no GPU can be used: no NVIDIA driver'):
        plan_for_settings(EmbeddingSettings(device="cuda"))


def test_table_devices_are_read_in_mib_with_utilisation():
    nvml = TableNvml([TableGpu("NVIDIA H100 80GB HBM3", 81559, used_mib=1200, gpu_percent=(37,)),
                      TableGpu("NVIDIA A10", 23028, used_mib=0, gpu_percent=None, name_as_bytes=True)])
    probe = probe_devices(nvml, environ={})
    first, second = probe.devices
    assert (first.index, first.cuda_index, first.name) == (0, 0, "NVIDIA H100 80GB HBM3")
    assert (first.total_mib, first.free_mib, first.used_mib) == (81559, 81559 - 1200, 1200)
    assert (first.gpu_percent, first.memory_percent) == (37, 37 // 2)
    assert (second.name, second.free_mib, second.gpu_percent) == ("NVIDIA A10", 23028, None)
    assert "2 NVIDIA GPU(s)" in probe.reason
    assert (nvml.inits, nvml.shutdowns) == (1, 1)


@pytest.mark.parametrize(("code", "reason"), [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "no NVIDIA driver"),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "driver is installed but not loaded"),
    (pynvml.NVML_ERROR_NO_PERMISSION, "NVML failed: Insufficient Permissions"),
])
def test_init_errors_give_no_devices_and_the_reason(code, reason, caplog):
    caplog.set_level(logging.INFO, logger="vectormill.embedding.nvml")
    probe = probe_devices(TableNvml([TableGpu("A100", 40960)], init_error=code), environ={})
    assert probe.devices == () and reason in probe.reason
    assert any(reason in r.getMessage() for r in caplog.records)


def test_an_error_after_init_still_shuts_nvml_down():
    nvml = TableNvml([TableGpu("A100", 40960)])
    nvml.errors["nvmlDeviceGetMemoryInfo"] = pynvml.NVML_ERROR_GPU_IS_LOST
    probe = probe_devices(nvml, environ={})
    assert probe.devices == () and "NVML failed" in probe.reason
    assert (nvml.inits, nvml.shutdowns) == (1, 1)


def test_compute_capability_is_read_for_the_precision_and_missing_means_unknown():
    nvml = TableNvml([TableGpu("NVIDIA A100", 40960, compute_capability=(8, 0)),
                      TableGpu("Tesla T4", 15360, compute_capability=(7, 5))])
    assert [d.compute_capability for d in probe_devices(nvml, environ={}).devices] == [(8, 0), (7, 5)]
    nvml.errors["nvmlDeviceGetCudaComputeCapability"] = pynvml.NVML_ERROR_NOT_SUPPORTED
    assert [d.compute_capability for d in probe_devices(nvml, environ={}).devices] == [None, None]


def test_no_devices():
    probe = probe_devices(TableNvml([]), environ={})
    assert probe.devices == () and probe.reason == "NVML reports no NVIDIA GPU"


def test_cuda_visible_devices_picks_and_renumbers():
    nvml = TableNvml([TableGpu(f"GPU{i}", 16384) for i in range(3)])
    picked = probe_devices(nvml, environ={"CUDA_VISIBLE_DEVICES": "2,0"}).devices
    assert [(d.index, d.cuda_index, d.name) for d in picked] == [(2, 0, "GPU2"), (0, 1, "GPU0")]
    hidden = probe_devices(nvml, environ={"CUDA_VISIBLE_DEVICES": ""})
    assert hidden.devices == () and "CUDA_VISIBLE_DEVICES" in hidden.reason
    # UUID forms are not mapped: every device is listed as NVML numbers it.
    assert len(probe_devices(nvml, environ={"CUDA_VISIBLE_DEVICES": "GPU-8f3c"}).devices) == 3


def test_auto_with_gpus_but_a_cpu_torch_plans_cpu_and_says_why():
    footprint = model_footprint("all-MiniLM-L6-v2")
    table = TableNvml([TableGpu("L4", 23034)])
    plan = plan_for_settings(EmbeddingSettings(), footprint, probe=lambda: probe_devices(table, environ={}),
                             torch_has_cuda=lambda: False)
    assert plan.device == "cpu" and "NVML sees 1 GPU(s) but torch" in plan.reason
    gpu = plan_for_settings(EmbeddingSettings(), footprint, probe=lambda: probe_devices(table, environ={}),
                            torch_has_cuda=lambda: True)
    assert gpu.device == "cuda" and gpu.devices[0].name == "L4"


def test_device_cpu_does_not_probe():
    def probe():
        raise AssertionError("device = cpu must not touch NVML")

    plan = plan_for_settings(EmbeddingSettings(device="cpu"), model_footprint("all-MiniLM-L6-v2"), probe=probe)
    assert plan.device == "cpu" and plan.reason == '[embedding] device = "cpu"'
