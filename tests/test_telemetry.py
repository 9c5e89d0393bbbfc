"""Telemetry: real process CPU readings, and NVML readings from a device table."""

from __future__ import annotations

import logging
import time

import pynvml

from tests.nvml_table import TableGpu, TableNvml
from vectormill.embedding.telemetry import CpuSampler, GpuSampler, Telemetry


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_cpu_use_is_sampled_only_while_embedding():
    idle, working = Telemetry(CpuSampler(2), interval_s=0.05), Telemetry(CpuSampler(2), interval_s=0.05)
    with idle.embedding():
        time.sleep(0.4)
    with working.embedding():
        busy(0.4)
    quiet, loaded = idle.summary(), working.summary()
    assert quiet["device"] == "cpu" and quiet["cores"] == 2 and quiet["samples"] >= 2
    assert loaded["cpu_percent"]["mean"] > quiet["cpu_percent"]["mean"]
    assert 0 <= loaded["cpu_percent"]["min"] <= loaded["cpu_percent"]["mean"] <= loaded["cpu_percent"]["max"]

    samples = loaded["samples"]
    time.sleep(0.3)  # between embedding calls: nothing is recorded
    assert working.summary(reset=True)["samples"] == samples
    assert working.summary() == {"device": "cpu", "samples": 0, "interval_s": 0.05, "cores": 2, "cpu_percent": {}}
    idle.close()
    working.close()


def test_gpu_summary_is_min_mean_max_of_what_nvml_reported():
    nvml = TableNvml([TableGpu("H100", 81559, used_mib=5000, gpu_percent=(10, 40, 95, 70)),
                      TableGpu("H100", 81559, used_mib=7000, gpu_percent=None),
                      TableGpu("idle A10", 23028)])
    telemetry = Telemetry(GpuSampler([0, 1], nvml), interval_s=0.02)
    with telemetry.embedding():
        time.sleep(0.2)
    summary = telemetry.summary()
    telemetry.close()
    read = nvml.utilisation_read[0]
    assert summary["device"] == "cuda" and summary["samples"] == len(read) >= 2
    first, second = summary["gpus"]  # device 2 is not the pool's: not sampled
    assert first["index"] == 0 and first["name"] == "H100"
    assert first["gpu_percent"] == {"min": min(read), "mean": round(sum(read) / len(read), 1), "max": max(read)}
    assert first["memory_used_mib"] == {"min": 5000, "mean": 5000, "max": 5000}
    assert second["index"] == 1 and "gpu_percent" not in second  # NVML: not supported
    assert 2 not in nvml.utilisation_read
    assert (nvml.inits, nvml.shutdowns) == (1, 1)


def test_nvml_failing_mid_run_stops_sampling_not_embedding(caplog):
    nvml = TableNvml([TableGpu("A100", 40960, gpu_percent=(50,))])
    telemetry = Telemetry(GpuSampler([0], nvml), interval_s=0.02)
    with caplog.at_level(logging.WARNING, logger="vectormill.embedding.telemetry"):
        with telemetry.embedding():
            time.sleep(0.1)
            nvml.errors["nvmlDeviceGetMemoryInfo"] = pynvml.NVML_ERROR_GPU_IS_LOST
            time.sleep(0.1)
    summary = telemetry.summary()
    telemetry.close()
    assert summary["samples"] >= 1 and summary["gpus"][0]["gpu_percent"]["max"] == 50
    assert "telemetry stopped: NVML failed while sampling" in caplog.text


def test_nvml_absent_turns_gpu_telemetry_off():
    telemetry = Telemetry(GpuSampler([0], TableNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)), 0.01)
    with telemetry.embedding():
        time.sleep(0.05)
    assert telemetry.summary() == {"device": "cuda", "samples": 0, "interval_s": 0.01, "gpus": []}
    telemetry.close()
