"""Typed settings of each source type; the flows' config file holds a list of them under [[sources]]."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator


class SourceSettingsBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # Fraction of a source's documents that may fail before the run counts as failed.
    max_failed_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    # Documents handed to one fetch/parse/chunk task.
    fetch_batch_size: int = Field(default=16, ge=1, le=10_000)
    # Runs a document may fail before it counts as stuck: it stays on the retry queue, reported,
    # and is fetched again only when the source reports it changed, or by a --full run.
    max_document_attempts: int = Field(default=10, ge=1)


class FilesystemSourceSettings(SourceSettingsBase):
    type: Literal["filesystem"]
    root: Path
    include: tuple[str, ...] = ("**/*.pdf", "**/*.txt", "**/*.md")
    exclude: tuple[str, ...] = ()
    max_file_mb: float = Field(default=100.0, gt=0)
    # Password for encrypted PDFs, read from this environment variable (never from the file).
    pdf_password_env: str | None = None
    # Pages without a text layer (scans): "auto" reads them with Tesseract when it is installed,
    # "always" reads every page with it, "never" leaves them out.
    ocr: Literal["auto", "always", "never"] = "auto"
    ocr_languages: tuple[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]+$")], ...] = Field(
        default=("eng",), min_length=1)  # Tesseract's names: eng, deu, chi_sim (Debian: tesseract-ocr-<name>)
    ocr_max_pages: int = Field(default=200, ge=1)  # pages to OCR in one document; more fails the document
    ocr_page_timeout_seconds: float = Field(default=60.0, gt=0)  # one page's OCR; longer fails the document

    @field_validator("root")
    @classmethod
    def _root_is_a_readable_folder(cls, root: Path) -> Path:
        root = root.expanduser()
        if not root.is_dir():
            raise ValueError(f"folder {str(root)!r} does not exist or is not a folder")
        return root.resolve()


class HttpSourceSettings(SourceSettingsBase):
    """What every HTTP source shares: its rate limit, timeouts, retry bounds and circuit breaker."""

    requests_per_second: float = Field(default=5.0, gt=0)
    burst: int = Field(default=10, ge=1)
    # Bind to a Prefect global concurrency limit of this name (a rate limit shared by all runs,
    # when a Prefect server is present) in addition to the in-process limiter.
    prefect_rate_limit: str | None = None
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=6, ge=1)
    max_retry_seconds: float = Field(default=300.0, gt=0)  # give up on a request after this long
    max_backoff_seconds: float = Field(default=60.0, gt=0)  # cap of one wait
    circuit_breaker_failures: int = Field(default=5, ge=1)  # consecutive failed requests that stop the source
    verify_tls: bool = True
