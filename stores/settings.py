"""Typed settings of the store ([store] in the config file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ReplicaSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    url: str  # a local path, file://, s3://… : anything fsspec opens
    storage_options: dict[str, Any] = Field(default_factory=dict)


class StoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Path("store")
    checkpoint_every_vectors: int = Field(default=50_000, ge=1)
    checkpoint_every_seconds: float | None = Field(default=600.0, gt=0)
    keep_generations: int = Field(default=3, ge=1)
    index_factory: str = "Flat"
    min_replicas_confirmed: int = Field(default=1, ge=0)
    replicas: tuple[ReplicaSettings, ...] = ()
