"""The class that reads each source type (settings.py holds their settings and the [[sources]] union)."""

from __future__ import annotations

from .base import Source
from .filesystem import FilesystemSource
from .hubspot import HubSpotSource
from .mediawiki import MediaWikiSource
from .settings import FilesystemSourceSettings, HubSpotSourceSettings, MediaWikiSourceSettings, SourceSettingsBase

SOURCE_TYPES: dict[type[SourceSettingsBase], type] = {
    FilesystemSourceSettings: FilesystemSource,
    HubSpotSourceSettings: HubSpotSource,
    MediaWikiSourceSettings: MediaWikiSource,
}


def build_source(settings: SourceSettingsBase) -> Source:
    return SOURCE_TYPES[type(settings)](settings)
