"""The source types vectormill knows: their settings (the [[sources]] `type`) and the class that reads them."""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from .base import Source
from .filesystem import FilesystemSource
from .hubspot import HubSpotSource, HubSpotSourceSettings
from .mediawiki import MediaWikiSource, MediaWikiSourceSettings
from .settings import FilesystemSourceSettings, SourceSettingsBase

# One line per source type; `type` in [[sources]] picks the entry.
SourceSettings = Annotated[
    Union[FilesystemSourceSettings, HubSpotSourceSettings, MediaWikiSourceSettings],
    Field(discriminator="type"),
]

SOURCE_TYPES: dict[type[SourceSettingsBase], type] = {
    FilesystemSourceSettings: FilesystemSource,
    HubSpotSourceSettings: HubSpotSource,
    MediaWikiSourceSettings: MediaWikiSource,
}


def build_source(settings: SourceSettingsBase) -> Source:
    return SOURCE_TYPES[type(settings)](settings)
