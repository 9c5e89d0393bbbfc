"""Typed settings of each source type; the flows' config file holds a list of them under [[sources]]."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SourceSettingsBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # Fraction of a source's documents that may fail before the run counts as failed.
    max_failed_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    # Documents handed to one fetch/parse/chunk task.
    fetch_batch_size: int = Field(default=16, ge=1, le=10_000)


class FilesystemSourceSettings(SourceSettingsBase):
    type: Literal["filesystem"]
    root: Path
    include: tuple[str, ...] = ("**/*.pdf", "**/*.txt", "**/*.md")
    exclude: tuple[str, ...] = ()
    max_file_mb: float = Field(default=100.0, gt=0)
    # Password for encrypted PDFs, read from this environment variable (never from the file).
    pdf_password_env: str | None = None

    @field_validator("root")
    @classmethod
    def _root_is_a_readable_folder(cls, root: Path) -> Path:
        root = root.expanduser()
        if not root.is_dir():
            raise ValueError(f"folder {str(root)!r} does not exist or is not a folder")
        return root.resolve()


SourceSettings = Annotated[
    Union[FilesystemSourceSettings],
    Field(discriminator="type"),
]
