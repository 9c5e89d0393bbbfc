"""Typed settings of the store ([store] in the config file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .fusion import Fusion

# The default factory: segments of at least `train_vectors` vectors get an HNSW graph, each at the efSearch the
# recall guard measures on its own vectors (stores/recall.py); smaller segments stay exact. HNSW rather than IVF:
# no training (a merge is one pass over its vectors), effort tunable at search time without a rebuild, and its
# flat storage lets a narrow filter be searched exactly (stores/search.py, Graph).
AUTO, AUTO_FACTORY = "auto", "HNSW32"


def concrete_factory(factory: str) -> str:
    """The FAISS factory string a configured one stands for ("auto": AUTO_FACTORY)."""
    return AUTO_FACTORY if factory == AUTO else factory


class ReplicaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    url: str  # a local path, file://, s3://… : anything fsspec opens
    storage_options: dict[str, Any] = Field(default_factory=dict, repr=False)  # may hold credentials


class StoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Path("store")
    checkpoint_every_vectors: int = Field(default=50_000, ge=1)
    checkpoint_every_seconds: float | None = Field(default=600.0, gt=0)
    keep_generations: int = Field(default=3, ge=1)
    # "auto" (HNSW32 graphs with a measured efSearch), "Flat" (every segment exact) or any faiss.index_factory
    # string. Each segment is built with it once it holds at least `train_vectors` vectors (IVF and PQ train on
    # that many of its own); smaller segments stay exact (flat). A store keeps the factory it was created with.
    index_factory: str = "auto"
    train_vectors: int = Field(default=100_000, ge=1)
    # The recall guard (stores/recall.py): each approximate segment gets the least search effort (efSearch,
    # nprobe) at which its recall@10 on its own vectors reaches this, or stays exact. 0: not measured.
    recall_target: float = Field(default=0.95, ge=0, le=1)
    # Applied to each segment built with the factory, e.g. "nprobe=32" (IVF) or "efSearch=128" (HNSW), over the
    # effort the recall guard chose.
    search_parameters: str = ""
    # Compaction at each checkpoint: `merge_factor` neighbouring segments of one size tier are merged
    # into one; a segment whose deleted or replaced share reaches `max_dead_ratio` is rewritten; no
    # merge makes a segment larger than `max_segment_vectors` (a merge builds it in memory).
    merge_factor: int = Field(default=10, ge=2)
    max_dead_ratio: float = Field(default=0.25, gt=0, le=1)
    max_segment_vectors: int = Field(default=2_000_000, ge=1)
    # Replicas that must confirm a checkpoint for the run to succeed. With no replicas configured
    # replication is off; with some, fewer than this is a config error (see below).
    min_replicas_confirmed: int = Field(default=1, ge=0)
    replica_attempts: int = Field(default=4, ge=1)  # per file, with exponential backoff
    replica_backoff_seconds: float = Field(default=0.5, gt=0)
    replicas: tuple[ReplicaSettings, ...] = ()

    @model_validator(mode="after")
    def _replicas_can_confirm(self) -> "StoreSettings":
        names = [replica.name for replica in self.replicas]
        if len(set(names)) != len(names):
            raise ValueError(f"replica names must be unique, got {names}")
        if self.replicas and len(self.replicas) < self.min_replicas_confirmed:
            raise ValueError(
                f"min_replicas_confirmed = {self.min_replicas_confirmed} but only {len(self.replicas)} "
                "replica(s) are configured: add replicas or lower min_replicas_confirmed")
        return self

    @property
    def replicas_required(self) -> int:
        """How many replicas must confirm each checkpoint (0 when none are configured)."""
        return min(self.min_replicas_confirmed, len(self.replicas))


class SearchSettings(BaseModel):
    """The [search] table: how a text query is searched when the caller names no mode (README: search modes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # hybrid: keyword (BM25) and vector rankings fused; measured by benchmarks/search_quality.py (README).
    mode: Literal["vector", "keyword", "hybrid"] = "hybrid"
    vector_weight: float = Field(default=1.0, ge=0)
    # Above the vector's: a chunk first by keyword, found by none of the vectors' best, comes before the vectors'
    # first (measured: identifier MRR 0.69 at 1:1, paraphrases unchanged).
    keyword_weight: float = Field(default=1.5, ge=0)
    rrf_k: int = Field(default=60, ge=1)
    fusion_depth: int = Field(default=50, ge=1)  # hits each ranking gives the fusion (at least k)

    @property
    def fusion(self) -> Fusion:
        return Fusion(self.vector_weight, self.keyword_weight, self.rrf_k, self.fusion_depth)
