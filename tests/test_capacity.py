"""Capacity plans from device tables, checked against the arithmetic of embedding/capacity.py's docstring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from tests.nvml_table import driver_present
from vectormill.embedding.base import EmbeddingError
from vectormill.embedding.capacity import (
    ALLOCATOR_HEADROOM,
    CPU_BATCH_TOKENS,
    CPU_TASK_CHUNKS,
    CUDA_CONTEXT_BYTES,
    GPU_BATCH_TOKENS_CEILING,
    REPLICAS_PER_GPU,
    TASK_CHUNKS_CEILING,
    model_footprint,
    plan_capacity,
)
from vectormill.embedding.models import resolve_model
from vectormill.embedding.nvml import GpuReading
from vectormill.embedding.tokenizer import ModelTokenizer

MIB = 1024 * 1024
GIB = 1024 * MIB
SEQ = 256
SMALL_MODEL, SMALL_TOKEN = 100 * MIB, 64 * 1024  # a MiniLM-sized model
LARGE_MODEL, LARGE_TOKEN = 1300 * MIB, 200 * 1024  # an e5-large-sized model


def gpu(index: int, total_mib: int, used_mib: int = 0, name: str = "GPU") -> GpuReading:
    return GpuReading(index, index, name, total_mib, total_mib - used_mib, used_mib, 0, 0)


def usable(reading: GpuReading, reserve: float) -> int:
    return reading.free_mib * MIB - math.ceil(reserve * reading.total_mib * MIB) - CUDA_CONTEXT_BYTES


def budget(reading: GpuReading, reserve: float, replicas: int, model: int, per_token: int,
           cap: int = GPU_BATCH_TOKENS_CEILING) -> int:
    return min(cap, (usable(reading, reserve) - replicas * model) // (replicas * per_token))


def plan(devices, model=SMALL_MODEL, per_token=SMALL_TOKEN, reserve=0.1, **caps):
    return plan_capacity(devices, model, per_token, reserve, max_seq_length=SEQ, cpu_cores=8, **caps)


def test_one_80gb_gpu_runs_two_replicas_at_the_token_ceiling():
    h100 = gpu(0, 81920, used_mib=500, name="H100")
    result = plan([h100])
    assert (result.device, result.workers) == ("cuda", REPLICAS_PER_GPU)
    assert budget(h100, 0.1, 2, SMALL_MODEL, SMALL_TOKEN) == GPU_BATCH_TOKENS_CEILING  # memory is not the limit
    assert result.batch_tokens == result.devices[0].batch_tokens == GPU_BATCH_TOKENS_CEILING
    # Lift the ceiling: then free memory sets the budget.
    unbounded = plan([h100], max_batch_tokens=10**9)
    assert unbounded.batch_tokens == (usable(h100, 0.1) - 2 * SMALL_MODEL) // (2 * SMALL_TOKEN)


def test_two_24gb_gpus_with_a_large_model_are_memory_bound():
    a, b = gpu(0, 24576, used_mib=576), gpu(1, 24576, used_mib=4576)
    result = plan([a, b], LARGE_MODEL, LARGE_TOKEN)
    expected = [budget(r, 0.1, 2, LARGE_MODEL, LARGE_TOKEN) for r in (a, b)]
    assert all(SEQ <= e < GPU_BATCH_TOKENS_CEILING for e in expected)
    assert [(d.workers, d.batch_tokens) for d in result.devices] == [(2, expected[0]), (2, expected[1])]
    assert (result.workers, result.batch_tokens) == (4, min(expected))

    # max_workers = 3: the roomier GPU (0) gets the second replica; GPU 1's single one gets all its room.
    capped = plan([a, b], LARGE_MODEL, LARGE_TOKEN, max_workers=3)
    assert [d.workers for d in capped.devices] == [2, 1]
    assert capped.devices[1].batch_tokens == budget(b, 0.1, 1, LARGE_MODEL, LARGE_TOKEN)


def test_16gb_gpu_with_14gb_used():
    card = gpu(0, 16384, used_mib=14336)
    # 2048 MiB free − 1639 MiB reserve − 512 MiB CUDA context < 0: nothing fits, CPU it is.
    assert usable(card, 0.1) < 0
    result = plan([card])
    assert (result.device, result.workers, result.threads) == ("cpu", 1, 8)
    assert result.devices[0].workers == 0 and "no room" in result.reason and "2048 MiB free" in result.reason

    # With a 1/64 reserve (256 MiB), 1280 MiB remain: two small replicas, each with half the rest
    # for activations.
    thin = plan([card], reserve=1 / 64)
    assert usable(card, 1 / 64) == (2048 - 256 - 512) * MIB
    assert (thin.device, thin.workers) == ("cuda", 2)
    assert thin.batch_tokens == (1280 * MIB - 2 * SMALL_MODEL) // (2 * SMALL_TOKEN) == 8640


def test_four_mixed_gpus_with_a_worker_cap():
    cards = [gpu(0, 81920, used_mib=10240), gpu(1, 24576, used_mib=1576),
             gpu(2, 16384, used_mib=15360), gpu(3, 40960, used_mib=1960)]
    result = plan(cards, LARGE_MODEL, LARGE_TOKEN, max_workers=4)
    # Round-robin by usable memory (0, 3, 1; GPU 2 has no room): 0, 3, 1, then 0 again.
    assert [d.workers for d in result.devices] == [2, 1, 0, 1]
    expected = {0: budget(cards[0], 0.1, 2, LARGE_MODEL, LARGE_TOKEN),
                1: budget(cards[1], 0.1, 1, LARGE_MODEL, LARGE_TOKEN),
                3: budget(cards[3], 0.1, 1, LARGE_MODEL, LARGE_TOKEN)}
    assert {d.index: d.batch_tokens for d in result.devices if d.workers} == expected
    assert result.batch_tokens == min(expected.values())
    assert "no room" in result.devices[2].note
    for d, card in zip(result.devices, cards):
        if d.workers:
            planned = CUDA_CONTEXT_BYTES + d.workers * (LARGE_MODEL + d.batch_tokens * LARGE_TOKEN)
            assert planned <= card.free_mib * MIB - math.ceil(0.1 * card.total_mib * MIB)
            assert d.planned_mib == round(planned / MIB, 1)
        else:
            assert (d.batch_tokens, d.planned_mib) == (0, 0)


def test_no_devices_gives_one_cpu_worker_with_all_cores():
    result = plan([], no_gpu_reason="no NVIDIA driver")
    assert (result.device, result.workers, result.threads, result.batch_tokens) == ("cpu", 1, 8, CPU_BATCH_TOKENS)
    assert result.reason == "no NVIDIA driver" and result.devices == ()
    # A token cap below one full-length chunk still lets one chunk through.
    assert plan([], max_batch_tokens=100).batch_tokens == SEQ
    assert plan([], max_batch_tokens=2000, max_batch_rows=16).max_batch_rows == 16


def test_json_document_has_the_contract_keys():
    document = plan([gpu(0, 24576, name="L4")]).as_dict()
    assert {"device", "workers", "batch_tokens", "devices", "reason"} <= document.keys()
    assert {"index", "name", "total_mib", "free_mib", "workers", "batch_tokens"} <= document["devices"][0].keys()
    json.dumps(document)


@settings(max_examples=300, deadline=None)
@given(
    cards=st.lists(st.tuples(st.integers(1024, 200 * 1024), st.floats(0, 1)), max_size=6),
    model=st.integers(10 * MIB, 20 * GIB),
    per_token=st.integers(1024, 4 * MIB),
    reserve=st.floats(0, 0.5),
    max_workers=st.none() | st.integers(1, 8),
    max_batch_tokens=st.none() | st.integers(1, 10**6),
)
def test_planned_memory_never_exceeds_free_minus_reserve(cards, model, per_token, reserve, max_workers,
                                                         max_batch_tokens):
    devices = [gpu(i, total, int(total * used)) for i, (total, used) in enumerate(cards)]
    result = plan(devices, model, per_token, reserve, max_workers=max_workers, max_batch_tokens=max_batch_tokens)
    for d, card in zip(result.devices, devices):
        assert d.workers <= REPLICAS_PER_GPU
        if d.workers:
            assert d.batch_tokens >= SEQ  # one full-length chunk always fits
            planned = CUDA_CONTEXT_BYTES + d.workers * (model + d.batch_tokens * per_token)
            assert planned <= card.free_mib * MIB - math.ceil(reserve * card.total_mib * MIB)
    gpu_workers = sum(d.workers for d in result.devices)
    assert gpu_workers <= (max_workers or gpu_workers)
    assert result.workers == (gpu_workers if result.device == "cuda" else 1)
    # Chunks per call: each GPU worker's window of full-length batches, within bounds; the CPU's without one.
    window = sum(d.workers * 2 * (d.batch_tokens // SEQ) for d in result.devices)
    assert result.task_chunks == (max(CPU_TASK_CHUNKS, min(TASK_CHUNKS_CEILING, window)) if result.device == "cuda"
                                  else CPU_TASK_CHUNKS)


def test_footprint_of_the_packaged_model_comes_from_its_files():
    folder = Path(resolve_model("all-MiniLM-L6-v2"))
    footprint = model_footprint("all-MiniLM-L6-v2")
    parameters = 0
    for path in folder.rglob("*.safetensors"):
        with safe_open(str(path), framework="np") as tensors:
            parameters += sum(math.prod(tensors.get_slice(name).get_shape()) for name in tensors.keys())
    assert footprint.parameters == parameters
    assert footprint.weight_bytes("fp32") == parameters * 4
    # bf16/fp16 run under autocast: fp32 weights plus their half copy while a batch runs.
    assert footprint.weight_bytes("bf16") == footprint.weight_bytes("fp16") == parameters * 6
    config = json.loads((folder / "config.json").read_text())
    values = (6 * config["hidden_size"] + 2 * config["intermediate_size"]
              + 2 * config["num_attention_heads"] * footprint.max_seq_length)
    assert footprint.activation_bytes_per_token("fp32") == math.ceil(values * 4 * ALLOCATOR_HEADROOM)
    assert footprint.activation_bytes_per_token("bf16") == math.ceil(values * 2 * ALLOCATOR_HEADROOM)
    assert footprint.max_seq_length == ModelTokenizer.for_model("all-MiniLM-L6-v2").max_tokens == 256


def test_footprint_without_safetensors_uses_bin_size_or_a_config_estimate(tmp_path):
    tokenizer = ModelTokenizer.for_model("all-MiniLM-L6-v2")
    config = {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "vocab_size": 1000,
              "max_position_embeddings": 128}
    (tmp_path / "config.json").write_text(json.dumps(config))
    estimated = model_footprint(str(tmp_path), tokenizer)
    # intermediate defaults to 4 × hidden
    assert estimated.weight_bytes() == 4 * ((1000 + 128) * 64 + 2 * (4 * 64 * 64 + 2 * 64 * 256))
    assert "estimated" in estimated.weight_source
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 12348)  # fp32 weights: 4 bytes each
    assert model_footprint(str(tmp_path), tokenizer).weight_bytes() == 12348

    (tmp_path / "config.json").unlink()
    with pytest.raises(EmbeddingError, match="no config.json"):
        model_footprint(str(tmp_path), tokenizer)


# ---- `vectormill capacity` ------------------------------------------------------------------------
CAPACITY_APP = """
import json, sys, typer
from vectormill.cli.capacity import register
from vectormill.cli.common import UserError
app = typer.Typer()
register(app, typer.Typer())
app.callback()(lambda: None)
try:
    app(sys.argv[1:], standalone_mode=False)
except UserError as exc:
    print("error: " + " ".join(exc.lines), file=sys.stderr)
    sys.exit(exc.code)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "torch"))), file=sys.stderr)
"""


def run_capacity(tmp_path, config: str, *args):
    import subprocess
    import sys

    (tmp_path / "vectormill.toml").write_text(config)
    return subprocess.run([sys.executable, "-c", CAPACITY_APP, "capacity", "--config", str(tmp_path / "vectormill.toml"),
                           *args], capture_output=True, text=True, timeout=120)


def test_capacity_json_on_this_machine(tmp_path):
    result = run_capacity(tmp_path, "[embedding]\nmax_batch_tokens = 4096\nmemory_reserve_fraction = 0.2\n", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert {"device", "workers", "batch_tokens", "devices", "reason"} <= document.keys()
    if document["device"] == "cpu":
        assert (document["workers"], document["batch_tokens"]) == (1, 4096) and document["reason"]
    assert document["reserve_fraction"] == 0.2
    assert document["precision"] in ("fp32", "bf16") and document["precision_reason"]
    if document["device"] == "cpu":
        assert document["task_chunks"] == document["planned_task_chunks"] == CPU_TASK_CHUNKS
    assert json.loads(result.stderr.strip().splitlines()[-1]) == [] or document["devices"]  # no prefect, no torch


def test_capacity_table_and_the_cuda_error(tmp_path):
    table = run_capacity(tmp_path, "[embedding]\ndevice = \"cpu\"\n")
    precision = json.loads(run_capacity(tmp_path, "[embedding]\ndevice = \"cpu\"\n", "--json").stdout)["precision"]
    weights = f"{model_footprint('all-MiniLM-L6-v2').weight_bytes(precision) / MIB:.1f} MiB in {precision}"
    assert table.returncode == 0 and weights in table.stdout and f"1 worker(s) on cpu in {precision}" in table.stdout
    assert f"{CPU_TASK_CHUNKS} chunks per embedding task (planned for cpu)" in " ".join(table.stdout.split())
    if not driver_present():
        refused = run_capacity(tmp_path, "[embedding]\ndevice = \"cuda\"\n")
        assert refused.returncode == 1
        assert 'error: [embedding] device = "cuda" but no GPU can be used: no NVIDIA driver' in refused.stderr
        assert "Traceback" not in refused.stderr




# ---- precision in the plan ----------------------------------------------------------------------
def table_settings(**values):
    from vectormill.embedding.settings import EmbeddingSettings

    return EmbeddingSettings(**values)


def plan_with(nvml_gpus, flags=frozenset(), **settings_values):
    """plan_for_settings with NVML answering from a table (the GPUs) and given CPU flags."""
    from tests.nvml_table import TableNvml
    from vectormill.embedding.capacity import plan_for_settings
    from vectormill.embedding.nvml import probe_devices

    nvml = TableNvml(nvml_gpus)
    return plan_for_settings(table_settings(**settings_values), probe=lambda: probe_devices(nvml, environ={}),
                             torch_has_cuda=lambda: True, read_cpu_flags=lambda: frozenset(flags))


def test_half_precision_halves_activations_and_the_plan_fits_more_tokens():
    from tests.nvml_table import TableGpu

    footprint = model_footprint("all-MiniLM-L6-v2")
    card = [TableGpu("L4", 24576, used_mib=20000, compute_capability=(8, 9))]
    fp32 = plan_with(card, precision="fp32", max_batch_tokens=10**9)
    bf16 = plan_with(card, precision="auto", max_batch_tokens=10**9)
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert (fp32.model_bytes, bf16.model_bytes) == (footprint.weight_bytes("fp32"), footprint.weight_bytes("bf16"))
    assert bf16.activation_bytes_per_token * 2 == pytest.approx(fp32.activation_bytes_per_token, abs=2)
    # Memory-bound here: each plan's budget is the docstring's arithmetic on its own bytes, and
    # half the bytes per token buys nearly twice the tokens (the weights' half copy costs a little).
    reading = gpu(0, 24576, used_mib=20000)
    for result in (fp32, bf16):
        assert result.batch_tokens == budget(reading, 0.1, result.workers, result.model_bytes,
                                             result.activation_bytes_per_token, cap=10**9)
    assert 1.8 < bf16.batch_tokens / fp32.batch_tokens < 2.0
    assert bf16.as_dict()["precision"] == "bf16"


def test_precision_follows_the_gpus_the_plan_uses_and_the_cpu_flags():
    from tests.nvml_table import TableGpu
    from vectormill.embedding.precision import PrecisionError

    assert plan_with([TableGpu("T4", 15360, compute_capability=(7, 5))]).precision == "fp16"
    assert plan_with([TableGpu("K80", 12288, compute_capability=(3, 7))]).precision == "fp32"
    with pytest.raises(PrecisionError, match='precision = "bf16" needs GPUs of compute capability ≥ 8.0.*7.5'):
        plan_with([TableGpu("T4", 15360, compute_capability=(7, 5))], precision="bf16")
    # An old GPU without room for a replica does not hold the new one back.
    mixed = plan_with([TableGpu("A100", 40960, compute_capability=(8, 0)),
                       TableGpu("T4", 15360, used_mib=15300, compute_capability=(7, 5))])
    assert (mixed.device, mixed.precision, [d.workers > 0 for d in mixed.devices]) == ("cuda", "bf16", [True, False])
    # No GPU: the CPU's flags decide; device = "cpu" never looks at the GPUs.
    assert plan_with([], flags={"avx512_bf16"}).precision == "bf16"
    assert plan_with([], flags={"avx2"}).precision == "fp32"
    assert plan_with([TableGpu("A100", 40960)], flags={"avx2"}, device="cpu").precision == "fp32"


# ---- chunks per embedding task ------------------------------------------------------------------
def test_an_80gb_h100_plans_task_chunks_that_fill_both_replicas_windows():
    """The README's H100 run needed task_chunks = 1024 by hand (64 gave 0.69 of plain encode)."""
    from tests.nvml_table import TableGpu

    h100 = plan_with([TableGpu("H100", 81920, used_mib=500)])
    assert (h100.device, h100.workers, h100.batch_tokens) == ("cuda", 2, GPU_BATCH_TOKENS_CEILING)
    assert h100.task_chunks == h100.planned_task_chunks >= 1024
    # Each worker's window of batches in flight, filled with full-length chunks.
    assert h100.task_chunks == 2 * 2 * (h100.batch_tokens // h100.max_seq_length)
    assert h100.as_dict()["task_chunks"] == h100.task_chunks
    # Eight of them: more replicas to fill, up to the ceiling that bounds what one failed task retries.
    eight = plan_with([TableGpu("H100", 81920)] * 8)
    assert eight.task_chunks == TASK_CHUNKS_CEILING


def test_on_cpu_task_chunks_stays_the_former_default():
    from tests.nvml_table import TableGpu

    for cpu in (plan_with([]), plan_with([TableGpu("H100", 81920)], device="cpu"),
                plan_with([TableGpu("full", 8192, used_mib=8100)])):  # a GPU without room for a replica
        assert (cpu.device, cpu.task_chunks, cpu.as_dict()["task_chunks"]) == ("cpu", CPU_TASK_CHUNKS, 64)


def test_a_small_card_plans_fewer_chunks_bounded_by_its_memory():
    from tests.nvml_table import TableGpu

    small = plan_with([TableGpu("RTX 4060", 8192, used_mib=6000, compute_capability=(8, 9))])
    assert small.device == "cuda" and small.batch_tokens < GPU_BATCH_TOKENS_CEILING  # memory sets the budget
    rows = small.batch_tokens // small.max_seq_length
    assert small.task_chunks == max(CPU_TASK_CHUNKS, small.workers * 2 * rows) < 1024
    # A cap on rows per batch caps the chunks per task with it; never below the CPU's.
    assert plan_with([TableGpu("H100", 81920)], batch_size=64).task_chunks == 2 * 2 * 64
    assert plan_with([TableGpu("H100", 81920)], batch_size=1).task_chunks == CPU_TASK_CHUNKS


def test_a_task_chunks_setting_wins_over_the_plan():
    from tests.nvml_table import TableGpu

    for gpus in ([], [TableGpu("H100", 81920)]):
        chosen = plan_with(gpus, task_chunks=300)
        assert chosen.task_chunks == chosen.as_dict()["task_chunks"] == 300
        assert chosen.planned_task_chunks == plan_with(gpus).task_chunks  # what the device alone calls for
