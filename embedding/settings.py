"""Typed settings of chunking and embedding ([chunking] and [embedding] in the config file)."""

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


class EmbeddingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # A sentence-transformers model path or name; the default is the packaged all-MiniLM-L6-v2.
    model: str = PACKAGED_MODEL
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(default=64, ge=1, le=4096)
    # Chunks handed to one embedding task (several model batches).
    task_chunks: int = Field(default=256, ge=1)
