"""Builds the `Source` for a source's settings."""

from __future__ import annotations

from .base import Source
from .filesystem import FilesystemSource
from .settings import FilesystemSourceSettings, SourceSettingsBase

SOURCE_TYPES: dict[type[SourceSettingsBase], type] = {
    FilesystemSourceSettings: FilesystemSource,
}


def build_source(settings: SourceSettingsBase) -> Source:
    return SOURCE_TYPES[type(settings)](settings)
