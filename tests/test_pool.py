"""The embedding pool: real pool logic over replica stand-ins at the encode seam, and over the real model."""

from __future__ import annotations

import threading
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.nvml_table import TableGpu, TableNvml
from vectormill.connectors.base import Document, Page
from vectormill.embedding.base import Embedder, EmbeddingError
from vectormill.embedding.capacity import model_footprint, plan_capacity, plan_for_settings
from vectormill.embedding.chunking import chunk_document
from vectormill.embedding.nvml import probe_devices
from vectormill.embedding.pool import BATCHES_IN_FLIGHT_PER_WORKER, MAX_BATCH_ATTEMPTS, EmbeddingPool
from vectormill.embedding.registry import build_embedder
from vectormill.embedding.sentence_transformer import SentenceTransformerEmbedder
from vectormill.embedding.settings import EmbeddingSettings
from vectormill.embedding.telemetry import CpuSampler, GpuSampler, Telemetry
from vectormill.embedding.tokenizer import ModelTokenizer

MODEL = "all-MiniLM-L6-v2"
DIM = 8
MIB = 1024 * 1024
CORPUS = Path(__file__).resolve().parent.parent / "flows" / "sample_corpus"


@pytest.fixture(scope="module")
def tokenizer() -> ModelTokenizer:
    return ModelTokenizer.for_model(MODEL)


def expected_vector(text: str) -> np.ndarray:
    vector = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


class StandIn:
    """A replica whose vectors are a function of the text; fails as the test says."""

    def __init__(self, log: "Log", device: str, oom_above_rows: int | None = None, die_on_call: int | None = None,
                 poison: str | None = None):
        self.dimension = DIM
        self.precision_report = None
        self.log, self.device = log, device
        self.oom_above_rows, self.die_on_call, self.poison = oom_above_rows, die_on_call, poison
        self.calls = 0

    def encode(self, texts, batch_size):
        self.calls += 1
        assert batch_size == len(texts)
        self.log.queued.append(self.log.pool._tasks.qsize() if self.log.pool else 0)
        if self.oom_above_rows is not None and len(texts) > self.oom_above_rows:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.calls == self.die_on_call:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if self.poison and any(self.poison in t for t in texts):
            raise RuntimeError("device-side assert triggered")
        with self.log.lock:
            self.log.embedded.update(texts)
        return np.stack([expected_vector(t) for t in texts])


class PreparingStandIn(StandIn):
    """A stand-in with the tokenize-ahead seam: prepare (the host half) then run (the device half)."""

    def prepare(self, texts):
        with self.log.lock:
            self.log.prepared.append(threading.current_thread().name)
        return list(texts)

    def run(self, prepared):
        return self.encode(prepared, batch_size=len(prepared))


class Log:
    def __init__(self):
        self.lock = threading.Lock()
        self.embedded: Counter[str] = Counter()
        self.loads: list[str] = []
        self.queued: list[int] = []
        self.prepared: list[str] = []  # the thread that tokenized each batch made ahead
        self.pool: EmbeddingPool | None = None


def texts_of_varied_length(count: int) -> list[str]:
    return [f"chunk {i} " + "word " * (5 + (i * 37) % 200) for i in range(count)]


def gpu_plan(workers_per_gpu: int = 2, gpus: int = 1, max_batch_tokens: int | None = None):
    devices = [probe_devices(TableNvml([TableGpu("A100", 40960)] * gpus), environ={}).devices[i] for i in range(gpus)]
    return plan_capacity(devices, 100 * MIB, 64 * 1024, 0.1, max_seq_length=256, cpu_cores=2,
                         replicas_per_gpu=workers_per_gpu, max_batch_tokens=max_batch_tokens)


def make_pool(plan, tokenizer, log: Log, replica=StandIn, **stand_in) -> EmbeddingPool:
    first_load = {}

    def factory(device):
        log.loads.append(device)
        # Only the first replica on a device carries the fault, so a replacement is healthy.
        faults = stand_in if not first_load.get(device) else {k: v for k, v in stand_in.items() if k != "die_on_call"}
        first_load[device] = True
        return replica(log, device, **faults)

    pool = EmbeddingPool(MODEL, plan, replica_factory=factory, tokenizer=tokenizer,
                         telemetry=Telemetry(CpuSampler(2), interval_s=0.05))
    log.pool = pool
    return pool


def test_results_in_input_order_each_text_once(tokenizer):
    log = Log()
    texts = texts_of_varied_length(300)
    with make_pool(gpu_plan(workers_per_gpu=2, gpus=2, max_batch_tokens=3000), tokenizer, log) as pool:
        assert isinstance(pool, Embedder) and pool.dimension == DIM
        vectors = pool.embed(texts)
        assert vectors.dtype == np.float32 and vectors.shape == (300, DIM)
        np.testing.assert_array_equal(vectors, np.stack([expected_vector(t) for t in texts]))
        assert log.embedded == Counter(texts)
        assert sorted(log.loads) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
        # Back-pressure: never more than the window of batches waits in the queue.
        assert max(log.queued) <= BATCHES_IN_FLIGHT_PER_WORKER * 4
        assert sum(w["batches"] for w in pool.telemetry_summary()["workers"]) >= 300 * 20 // 3000
        assert pool.embed([]).shape == (0, DIM)


def test_batches_respect_the_token_budget_and_sort_by_length(tokenizer):
    sizes = []

    class Recording(StandIn):
        def encode(self, texts, batch_size):
            counts = tokenizer.count(texts)
            sizes.append((len(texts), max(counts), min(counts)))
            return super().encode(texts, batch_size)

    log = Log()
    plan = gpu_plan(workers_per_gpu=1, max_batch_tokens=2048)
    texts = texts_of_varied_length(120)
    pool = EmbeddingPool(MODEL, plan, replica_factory=lambda device: Recording(log, device), tokenizer=tokenizer,
                         telemetry=Telemetry(CpuSampler(2)))
    pool.embed(texts)
    [worker] = pool.telemetry_summary()["workers"]
    pool.close()
    assert all(rows * longest <= 2048 or rows == 1 for rows, longest, _ in sizes)
    # The summary says what the pool did: its model calls and the share of padding in what they ran.
    padded = sum(rows * longest for rows, longest, _ in sizes)
    assert (worker["batches"], worker["chunks"]) == (len(sizes), 120)
    assert worker["padded_share"] == round(1 - sum(tokenizer.count(texts)) / padded, 3)
    counts = sorted(tokenizer.count(texts), reverse=True)
    # Longest first, consecutive in length: a batch's shortest is never shorter than the next one's longest.
    assert [longest for _, longest, _ in sizes] == sorted((longest for _, longest, _ in sizes), reverse=True)
    assert sizes[0][1] == counts[0] and sum(rows for rows, _, _ in sizes) == 120


def test_out_of_memory_splits_lowers_the_budget_and_loses_nothing(tokenizer, caplog):
    log = Log()
    texts = texts_of_varied_length(200)
    plan = gpu_plan(workers_per_gpu=2)
    start_budget = plan.devices[0].batch_tokens
    with make_pool(plan, tokenizer, log, oom_above_rows=7) as pool:
        vectors = pool.embed(texts)
        workers = pool.telemetry_summary()["workers"]
    np.testing.assert_array_equal(vectors, np.stack([expected_vector(t) for t in texts]))
    assert log.embedded == Counter(texts)  # every chunk exactly once
    lowered = [w for w in workers if w["oom_splits"]]
    assert lowered and all(w["batch_tokens"] < start_budget for w in lowered)
    # Each out-of-memory sets the budget to half the failed batch's padded size, which was within the budget.
    assert all(w["batch_tokens"] <= start_budget // 2 for w in lowered)
    assert "budget lowered" in caplog.text


def test_a_single_chunk_that_does_not_fit_is_named(tokenizer):
    log = Log()
    with make_pool(gpu_plan(workers_per_gpu=1), tokenizer, log, oom_above_rows=0) as pool:
        with pytest.raises(EmbeddingError, match="text [0-9]+ .* does not fit in the free memory of cuda:0"):
            pool.embed(["one", "two"])


def test_a_dead_worker_is_replaced_and_its_batch_requeued(tokenizer):
    log = Log()
    texts = texts_of_varied_length(150)
    with make_pool(gpu_plan(workers_per_gpu=1, max_batch_tokens=2000), tokenizer, log, die_on_call=2) as pool:
        vectors = pool.embed(texts)
        assert pool.replaced == 1
        assert pool.telemetry_summary()["workers_replaced"] == 1
    np.testing.assert_array_equal(vectors, np.stack([expected_vector(t) for t in texts]))
    assert set(log.embedded) == set(texts)  # none lost (the dead worker's output was dropped, not kept)
    assert log.loads == ["cuda:0", "cuda:0"]


def test_on_gpu_each_workers_next_batch_is_tokenized_ahead_in_order_and_once(tokenizer):
    log = Log()
    texts = texts_of_varied_length(300)
    with make_pool(gpu_plan(workers_per_gpu=2, gpus=2, max_batch_tokens=3000), tokenizer, log,
                   replica=PreparingStandIn) as pool:
        assert pool.tokenize_ahead  # the default on a GPU plan
        vectors = pool.embed(texts)
        workers = pool.telemetry_summary()["workers"]
    np.testing.assert_array_equal(vectors, np.stack([expected_vector(t) for t in texts]))
    assert log.embedded == Counter(texts)
    ahead = sum(w["tokenized_ahead"] for w in workers)
    # How many go ahead depends on how busy the other workers are; each is tokenized once, off the model's thread.
    assert ahead == len(log.prepared) <= sum(w["batches"] for w in workers)
    assert all(name.startswith("tokenize-cuda:") for name in log.prepared)


def test_a_worker_that_dies_holding_a_batch_tokenized_ahead_gives_it_back(tokenizer):
    log = Log()
    texts = texts_of_varied_length(150)
    with make_pool(gpu_plan(workers_per_gpu=1, max_batch_tokens=2000), tokenizer, log, replica=PreparingStandIn,
                   die_on_call=2) as pool:
        vectors = pool.embed(texts)
        assert pool.replaced == 1
    np.testing.assert_array_equal(vectors, np.stack([expected_vector(t) for t in texts]))
    assert set(log.embedded) == set(texts) and log.prepared  # none lost, though the dead worker held the next batch


def test_a_batch_that_kills_every_worker_fails_the_call_and_the_pool_goes_on(tokenizer):
    log = Log()
    with make_pool(gpu_plan(workers_per_gpu=2), tokenizer, log, poison="POISON") as pool:
        with pytest.raises(EmbeddingError, match=f"failed on {MAX_BATCH_ATTEMPTS} embedding workers"):
            pool.embed(["fine text", "POISON text"])
        assert pool.replaced == MAX_BATCH_ATTEMPTS
        healthy = texts_of_varied_length(20)
        np.testing.assert_array_equal(pool.embed(healthy), np.stack([expected_vector(t) for t in healthy]))


def test_a_text_over_the_model_limit_is_refused_before_any_batch(tokenizer):
    log = Log()
    with make_pool(gpu_plan(workers_per_gpu=1), tokenizer, log) as pool:
        with pytest.raises(EmbeddingError, match="text 1 has [0-9]+ tokens, over model .* limit of 256"):
            pool.embed(["short", "word " * 400])
    assert not log.embedded


def test_gpu_telemetry_reports_the_devices_in_use(tokenizer):
    nvml = TableNvml([TableGpu("A100", 40960, used_mib=3000, gpu_percent=(20, 60, 100))])
    plan = plan_capacity(probe_devices(nvml, environ={}).devices, 100 * MIB, 64 * 1024, 0.1,
                         max_seq_length=256, cpu_cores=2)
    probed = len(nvml.utilisation_read[0])  # the probe's own reading is not telemetry
    log = Log()
    pool = EmbeddingPool(MODEL, plan, replica_factory=lambda device: StandIn(log, device), tokenizer=tokenizer,
                         telemetry=Telemetry(GpuSampler([0], nvml), interval_s=0.01))
    pool.embed(texts_of_varied_length(50))
    summary = pool.telemetry_summary()
    pool.close()
    read = nvml.utilisation_read[0][probed:]
    assert summary["device"] == "cuda" and summary["samples"] == len(read) >= 1
    (entry,) = summary["gpus"]
    assert (entry["index"], entry["name"]) == (0, "A100")
    assert entry["gpu_percent"] == {"min": min(read), "mean": round(sum(read) / len(read), 1), "max": max(read)}
    assert entry["memory_used_mib"] == {"min": 3000, "mean": 3000, "max": 3000}


# ---- the real model -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(tokenizer) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(MODEL, device="cpu", tokenizer=tokenizer)


@pytest.fixture(scope="module")
def real_chunks(tokenizer) -> list[str]:
    chunks = []
    for path in sorted(CORPUS.iterdir()):
        document = Document("corpus", path.name, "1", path.stem, (Page(None, path.read_text()),), str(path))
        chunks += [c.text for c in chunk_document(document, tokenizer.tokens, 40, 8)]
    return chunks


@pytest.mark.parametrize("max_batch_tokens", [None, 300])
def test_cpu_pool_matches_one_plain_encode_call(model, tokenizer, real_chunks, max_batch_tokens):
    settings = EmbeddingSettings(device="cpu", max_batch_tokens=max_batch_tokens)
    plan = plan_for_settings(settings, model_footprint(MODEL, tokenizer))
    assert (plan.device, plan.workers) == ("cpu", 1)
    with EmbeddingPool(MODEL, plan, replica_factory=lambda device: model, tokenizer=tokenizer) as pool:
        vectors = pool.embed(real_chunks)
        summary = pool.telemetry_summary()
    plain = model._model.encode(real_chunks, normalize_embeddings=True, convert_to_numpy=True)
    assert len(real_chunks) > 20 and len(set(tokenizer.count(real_chunks))) > 5  # varied lengths, so order matters
    assert vectors.dtype == np.float32 and vectors.shape == plain.shape
    np.testing.assert_allclose(vectors, plain, atol=1e-5)
    assert summary["device"] == "cpu" and summary["samples"] >= 1 and summary["cpu_percent"]["max"] > 0
    # A batch holds at most 300 / (its longest chunk) chunks, so the tight budget takes several batches.
    counts = tokenizer.count(real_chunks)
    assert summary["workers"][0]["batches"] >= (len(counts) * min(counts) // max_batch_tokens if max_batch_tokens else 1)


def test_tokenizing_ahead_with_the_real_model_gives_the_vectors_of_the_sequential_path(model, tokenizer, real_chunks):
    """Forced on here on CPU, where it is off by default (the model and the tokenizer would share the cores)."""
    plan = plan_for_settings(EmbeddingSettings(device="cpu", max_batch_tokens=300), model_footprint(MODEL, tokenizer))
    results = {}
    for ahead in (None, True):
        with EmbeddingPool(MODEL, plan, replica_factory=lambda device: model, tokenizer=tokenizer,
                           tokenize_ahead=ahead) as pool:
            assert pool.tokenize_ahead is bool(ahead)
            results[bool(ahead)] = pool.embed(real_chunks)
            [worker] = pool.telemetry_summary()["workers"]
        assert (worker["tokenized_ahead"] > 0) is bool(ahead) and worker["batches"] > 3
    np.testing.assert_allclose(results[True], results[False], atol=1e-6)
    plain = model._model.encode(real_chunks, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(results[True], plain, atol=1e-5)


def test_registry_builds_the_pool_and_refuses_cuda_without_a_gpu(monkeypatch, model):
    import vectormill.embedding.pool as pool_module

    # The registry's own replica loader is what the flow gets; reuse the loaded model to save 10 s.
    monkeypatch.setattr(pool_module, "sentence_transformer_replicas", lambda *args: lambda device: model)
    embedder = build_embedder(EmbeddingSettings(device="auto"))
    assert isinstance(embedder, EmbeddingPool) and embedder.plan.device == "cpu" and embedder.dimension == 384
    embedder.close()
    with pytest.raises(EmbeddingError, match='device = "cuda" but no GPU can be used'):
        build_embedder(EmbeddingSettings(device="cuda"))
