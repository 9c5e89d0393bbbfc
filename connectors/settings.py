"""Typed settings of each source type; the flows' config file holds a list of them under [[sources]]."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator, model_validator


class SourceSettingsBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # Fraction of a source's documents that may fail before the run counts as failed.
    max_failed_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    # Documents handed to one fetch/parse/chunk task; unset: planned from the documents' sizes,
    # 16 to 256 a task (flows/task_sizes.py).
    fetch_batch_size: int | None = Field(default=None, ge=1, le=10_000)
    # Runs a document may fail before it counts as stuck: it stays on the retry queue, reported,
    # and is fetched again only when the source reports it changed, or by a --full run.
    max_document_attempts: int = Field(default=10, ge=1)
    # Fraction of the source's stored documents one run may delete (listing, delete logs, archivals,
    # documents gone or empty at the source); above it the run deletes nothing and the source fails
    # until `backfill --source NAME --allow-deletions` confirms them.
    max_delete_ratio: float = Field(default=0.5, ge=0.0, le=1.0)


# The extensions the filesystem source reads (connectors/formats/ parses those past PDF and text).
FILE_FORMATS = ("pdf", "txt", "md", "markdown", "docx", "pptx", "xlsx", "csv", "html", "htm", "eml", "msg")
# `root` as a URL: an S3 bucket (s3fs) or an SMB share (smbprotocol), read through fsspec.
ROOT_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
URL_SCHEMES = ("s3", "smb")


class FilesystemSourceSettings(SourceSettingsBase):
    type: Literal["filesystem"]
    # A local folder, or s3://bucket/prefix, or smb://server[:port]/share/folder.
    root: Path | str
    include: tuple[str, ...] = ("**/*",)
    exclude: tuple[str, ...] = ()
    # The extensions read (without the dot); default: every one in FILE_FORMATS.
    formats: tuple[str, ...] = FILE_FORMATS
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
    # Bounds of one Office file (.docx/.pptx/.xlsx are zips): its members unpacked together, their number.
    max_unpacked_mb: float = Field(default=256.0, gt=0)
    max_archive_members: int = Field(default=10_000, ge=1)
    max_cells: int = Field(default=1_000_000, ge=1)  # a workbook's or CSV file's cells; more fails the file
    # fsspec options of a URL root (s3fs: client_kwargs.endpoint_url, config_kwargs; SMB: username, port…).
    # Secrets belong in the environment (AWS_ACCESS_KEY_ID…) or in storage_secret_env/_block: a JSON
    # object of options ({"password": …} or {"key": …, "secret": …}) merged over these, never printed.
    storage_options: dict[str, Any] = Field(default_factory=dict, repr=False)
    storage_secret_env: str | None = None
    storage_secret_block: str | None = None

    @field_validator("root", mode="before")
    @classmethod
    def _absolute_root_or_url(cls, root: Any) -> Any:
        # Not checked for existence here: a share that is not mounted fails its source's run
        # (connectors/filesystem.py), while search, store and failures go on working.
        if isinstance(root, str) and (url := ROOT_URL.match(root)):
            if url["scheme"].lower() not in URL_SCHEMES:
                raise ValueError(f"root {root!r}: a URL root is one of {', '.join(s + '://' for s in URL_SCHEMES)}")
            return root
        return Path(root).expanduser().resolve()

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, formats: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(name.lower().lstrip(".") for name in formats))
        unknown = [name for name in names if name not in FILE_FORMATS]
        if unknown or not names:
            raise ValueError(f"formats: {unknown or 'none'} not among those read ({', '.join(FILE_FORMATS)})")
        return names

    @model_validator(mode="after")
    def _one_storage_secret(self) -> "FilesystemSourceSettings":
        if self.storage_secret_env and self.storage_secret_block:
            raise ValueError("set at most one of storage_secret_env and storage_secret_block")
        if (self.storage_options or self.storage_secret_env or self.storage_secret_block) and isinstance(
                self.root, Path):
            raise ValueError("storage_options and storage secrets are for a URL root (s3://…, smb://…)")
        return self


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


class MediaWikiSourceSettings(HttpSourceSettings):
    type: Literal["mediawiki"]
    api_url: str = Field(pattern=r"^https?://\S+$")  # the wiki's api.php
    namespaces: tuple[int, ...] = Field(default=(0,), min_length=1)
    # A bot password (Special:BotPasswords): the user name ("User@app") from this environment
    # variable, the password from `bot_password_env` or from the Prefect Secret block named here.
    bot_user_env: str | None = None
    bot_password_env: str | None = None
    bot_password_secret_block: str | None = None
    # Sent with every request: the wiki refuses work while its replicas lag more than this (seconds).
    maxlag: int = Field(default=5, ge=0)
    # Results per API request (gaplimit, rclimit, lelimit); 500 is the API's maximum for non-bots.
    api_limit: int = Field(default=500, ge=1, le=5000)

    @model_validator(mode="after")
    def _login_settings_complete(self) -> "MediaWikiSourceSettings":
        password_sources = [name for name in ("bot_password_env", "bot_password_secret_block") if getattr(self, name)]
        if len(password_sources) > 1:
            raise ValueError("set only one of bot_password_env and bot_password_secret_block")
        if bool(self.bot_user_env) != bool(password_sources):
            raise ValueError("a bot login needs both bot_user_env and bot_password_env (or bot_password_secret_block)")
        return self


def template_problem(template: str, properties: tuple[str, ...]) -> str | None:
    """Why `template` cannot turn every record into text, or None.

    HubSpot sends every property value as a string (numbers and dates too), and a record may lack
    any of them (blank then): each field must name a property and take a string's format spec.
    """
    try:
        fields = [(field, spec) for _, field, spec, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        return f"not a valid template ({exc}); write a literal brace as {{{{ or }}}}"
    for field, spec in fields:
        if field == "" or field.isdigit():
            return "a positional field ('{}' or '{0}') has no value; name a property, e.g. {" + properties[0] + "}"
        if field not in properties:
            return (f"{{{field}}} is not a property: fields name one of properties ({', '.join(properties)}), "
                    "without attributes or indexes")
        if "{" in spec:
            return f"{{{field}:{spec}}}: nested fields in a format spec are not supported"
        try:
            format("", spec)
        except ValueError:
            return (f"'{{{field}:{spec}}}' cannot format text: HubSpot sends property values as strings "
                    "(numbers too), so use a string format spec such as :>10 or :.200")
    return None


SEARCH_PAGE_LIMIT = 200  # HubSpot's maximum `limit` for its search API


class HubSpotSourceSettings(HttpSourceSettings):
    type: Literal["hubspot"]
    base_url: str = "https://api.hubapi.com"
    object_type: str = Field(pattern=r"^[A-Za-z0-9_-]+$")  # companies, contacts, deals, tickets, p_custom…
    properties: tuple[str, ...] = Field(min_length=1)
    # The private-app token: from this environment variable, or from this Prefect Secret block.
    token_env: str | None = None
    token_secret_block: str | None = None
    # Record → text, e.g. "{name}\n{domain}\n{description}"; default: one "property: value" line each.
    template: str | None = None
    title_property: str | None = None  # default: the first of `properties`
    # Records per request: HubSpot allows 100 for a listing, 200 for a search.
    page_size: int = Field(default=SEARCH_PAGE_LIMIT, ge=1, le=SEARCH_PAGE_LIMIT)
    # HubSpot's search endpoints have a rate limit of their own, below the general one: four requests per second
    # and token (developer changelog "CRM Search API Rate Limit Increase"; the CRM search guide, "Limitations").
    search_requests_per_second: float = Field(default=4.0, gt=0)
    cursor_overlap_seconds: float = Field(default=120.0, ge=0)

    @field_validator("template")
    @classmethod
    def _template_formats_the_properties(cls, template: str | None, info: ValidationInfo) -> str | None:
        problem = template_problem(template, info.data.get("properties", ())) if template is not None else None
        if problem:
            raise ValueError(problem)
        return template

    @model_validator(mode="after")
    def _one_token_source_and_known_title(self) -> "HubSpotSourceSettings":
        if bool(self.token_env) == bool(self.token_secret_block):
            raise ValueError("set exactly one of token_env (an environment variable name) and token_secret_block")
        if self.title_property is not None and self.title_property not in self.properties:
            raise ValueError(f"title_property {self.title_property!r} is not in properties")
        return self


# One entry per source type; `type` in [[sources]] picks it. connectors/registry.py maps each to its class.
SourceSettings = Annotated[
    Union[FilesystemSourceSettings, HubSpotSourceSettings, MediaWikiSourceSettings],
    Field(discriminator="type"),
]
