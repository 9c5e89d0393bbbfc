"""The one typed configuration object: a TOML file plus VECTORMILL_* environment overrides.

File: `--config FILE`, else $VECTORMILL_CONFIG, else ./vectormill.toml. Environment:
`VECTORMILL_<SECTION>__<KEY>` (e.g. VECTORMILL_STORE__PATH, VECTORMILL_EMBEDDING__DEVICE) and
`VECTORMILL_SOURCES__<NAME>__<KEY>` for the source called NAME. Values are read as JSON where
they parse (numbers, booleans, lists), else as strings. Relative paths are relative to the
config file's folder, so a scheduled run finds the same files as a run by hand.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vectormill.connectors.settings import SourceSettings
from vectormill.embedding.settings import ChunkingSettings, DriftSettings, EmbeddingSettings
from vectormill.stores.settings import SearchSettings, StoreSettings

from .settings import DeploymentSettings, SearchServiceSettings
from .execution import ExecutionSettings

ENV_PREFIX = "VECTORMILL_"
CONFIG_ENV = "VECTORMILL_CONFIG"
DEFAULT_FILE = "vectormill.toml"
RELATIVE_PATH_KEYS = {"store": ("path",), "sources": ("root",)}


class ConfigError(ValueError):
    """Raised with every problem found, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


class VectormillConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    store: StoreSettings = StoreSettings()
    sources: tuple[SourceSettings, ...] = Field(default=())
    chunking: ChunkingSettings = ChunkingSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    deployments: DeploymentSettings = DeploymentSettings()
    execution: ExecutionSettings = ExecutionSettings()
    drift: DriftSettings = DriftSettings()
    search_service: SearchServiceSettings = SearchServiceSettings()
    search: SearchSettings = SearchSettings()

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: tuple[Any, ...]) -> tuple[Any, ...]:
        names = [source.name for source in sources]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"source names must be unique; repeated: {', '.join(duplicates)}")
        return sources

    def source(self, name: str) -> Any:
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources) or "none"
        raise ConfigError([f"no source named {name!r} in the config (configured: {known})"])


def config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str] = os.environ) -> Path:
    return Path(explicit or environ.get(CONFIG_ENV) or DEFAULT_FILE)


def _env_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def apply_environment(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    sources = {str(s.get("name", "")).upper(): s for s in data.get("sources", []) if isinstance(s, dict)}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV or "__" not in key:
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        if path[0] == "sources":
            if len(path) != 3 or path[1].upper() not in sources:
                raise ConfigError([f"{key}: no source named {path[1] if len(path) > 1 else '?'!r} to override"])
            sources[path[1].upper()][path[2]] = _env_value(raw)
            continue
        section = data.setdefault(path[0], {})
        for part in path[1:-1]:
            section = section.setdefault(part, {})
        section[path[-1]] = _env_value(raw)
    return data


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> None:
    def resolve(entry: dict[str, Any], key: str) -> None:
        # A URL (a source's root on s3:// or smb://) is not a path.
        value = entry.get(key)
        if isinstance(value, str) and "://" not in value and not Path(value).expanduser().is_absolute():
            entry[key] = str(base / entry[key])

    if isinstance(data.get("store"), dict):
        resolve(data["store"], "path")
    for source in data.get("sources", []):
        if isinstance(source, dict):
            resolve(source, "root")


def _format_error(error: dict[str, Any], data: dict[str, Any]) -> str:
    location = list(error["loc"])
    entry: Any = {}
    # Name sources by their name, not their index, and drop pydantic's union tag from the path.
    if location[:1] == ["sources"] and len(location) > 1 and isinstance(location[1], int):
        entries = data.get("sources", [])
        entry = entries[location[1]] if location[1] < len(entries) else {}
        name = entry.get("name", location[1]) if isinstance(entry, dict) else location[1]
        location = [f"sources[{name}]"] + [part for part in location[2:] if part != entry.get("type")]
    where = ".".join(str(part) for part in location) or "config"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "union_tag_invalid":
        message = f"unknown source type {entry.get('type')!r} (known: {error['ctx']['expected_tags']})"
    elif error["type"] == "extra_forbidden":
        message = "unknown key (check its spelling)"
    return f"{where}: {message}"


def parse_config(data: dict[str, Any], base: Path, environ: Mapping[str, str] = os.environ) -> VectormillConfig:
    data = apply_environment(data, environ)
    _resolve_relative_paths(data, base)
    try:
        return VectormillConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_format_error(error, data) for error in exc.errors()]) from None


def load_config(explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] = os.environ) -> VectormillConfig:
    path = config_path(explicit, environ)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"config file {str(path)!r} not found: create one with `vectormill init`"]) from None
    except OSError as exc:
        raise ConfigError([f"config file {str(path)!r} cannot be read: {exc.strerror}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"config file {str(path)!r} is not valid TOML: {exc}"]) from None
    return parse_config(data, path.resolve().parent, environ)
