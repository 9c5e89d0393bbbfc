"""Typed settings of chunking, embedding and drift ([chunking], [embedding], [drift] in the config file)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PACKAGED_MODEL = "all-MiniLM-L6-v2"


class ChunkingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Tokens per chunk, special tokens excluded; None = as many as the model takes.
    tokens: int | None = Field(default=None, ge=8)
    overlap: int = Field(default=32, ge=0)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "ChunkingSettings":
        if self.tokens is not None and self.overlap >= self.tokens:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than tokens ({self.tokens})")
        return self


class ServiceSettings(BaseModel):
    """A running text-embeddings-inference server that embeds instead of a local model ([embedding.service])."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str  # e.g. http://tei.internal:8080
    requests_per_second: float = Field(default=20.0, gt=0)  # never saturate a shared model server
    burst: int = Field(default=8, ge=1)
    concurrency: int = Field(default=4, ge=1)  # batches in flight
    batch_size: int | None = Field(default=None, ge=1)  # caps the server's max_client_batch_size
    read_timeout: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    token_env: str | None = None  # environment variable holding the server's --api-key


class EmbeddingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # A sentence-transformers model path or name; the default is the packaged all-MiniLM-L6-v2.
    model: str = PACKAGED_MODEL
    # auto: the GPUs NVML reports, else CPU; cuda: GPUs or an error; cpu: one CPU worker.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16/fp16 where the hardware has it (embedding/precision.py), else fp32. Local model and
    # pool workers only; a text-embeddings-inference service keeps its own.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # The agreement guard: probe vectors in the chosen precision must reach this cosine to fp32, else fp32.
    precision_min_cosine: float = Field(default=0.999, gt=0.0, le=1.0)
    # Caps on what the capacity planner chooses (embedding/capacity.py); None = planned.
    batch_size: int | None = Field(default=None, ge=1, le=4096)  # chunks per model batch
    max_workers: int | None = Field(default=None, ge=1)  # model replicas in all
    max_batch_tokens: int | None = Field(default=None, ge=1)  # padded tokens per model batch
    memory_reserve_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)  # of each GPU's memory, left free
    # Chunks handed to one embedding task (several model batches); None = planned from the device
    # where the model runs (embedding/capacity.py: 64 on CPU, enough to fill the workers on a GPU).
    task_chunks: int | None = Field(default=None, ge=1)
    # Set: embed through this text-embeddings-inference server; `model` must be what it serves.
    service: ServiceSettings | None = None


class DriftSettings(BaseModel):
    """The [drift] table: baselines per source and when a run counts as drifted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    sample_vectors: int = Field(default=512, ge=16, le=4096)  # vectors kept per run for pairwise similarity
    similarity_sample: int = Field(default=256, ge=16, le=4096)  # similarities stored for later KS tests
    # Runs (or baselines) with fewer embedded vectors are recorded but not compared: too few to judge.
    min_vectors: int = Field(default=32, ge=2)
    # Calibrated on tests/test_drift.py's corpora of ~64 chunks each: English notes against other
    # English notes gave centroid cosine 0.86 and KS 0.08; English against German 0.09 and 0.65.
    # Small samples lower the cosine of two centroids of the same distribution (to about
    # s / (s + (1 - s) / n) for a mean pairwise similarity s over n vectors: 0.89 for s = 0.2, n = 32), so
    # the bound leaves room below that; 0.3 is 2.5 times the KS statistic that two random samples
    # of 256 similarities from one distribution exceed 5 % of the time.
    min_centroid_cosine: float = Field(default=0.7, ge=-1.0, le=1.0)
    max_ks_statistic: float = Field(default=0.3, gt=0.0, le=1.0)
