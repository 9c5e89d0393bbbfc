"""Search filters: which chunks a search may return, checked before top-k (plain data and validation).

The same JSON object everywhere (`search --filter`, `open_store(...).search(filter=...)`, the HTTP service):
    {"source": "wiki" | ["wiki", "docs"], "document_prefix": "reports/", "modified_after": "2026-01-01",
     "modified_before": "2026-06-30T12:00:00Z", "metadata": {"title": "Annual report", "namespace": "0"}}
Every key is optional; all given keys must hold. An unknown key or a bad value is a FilterError; so is a metadata
key that no stored document has (the store checks that: see Catalog.filtered_ids).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

FILTER_KEYS = ("source", "document_prefix", "modified_after", "modified_before", "metadata")
# The document fields the store keeps besides its id, source and modified time: "metadata" matches these, and
# any other key in the metadata the source gave the document (a wiki page's namespace, a CRM record's hubspot_id).
DOCUMENT_FIELDS = ("title", "location", "version")


class FilterError(ValueError):
    """A filter the store cannot apply: an unknown key or a value of the wrong kind."""


@dataclass(frozen=True)
class SearchFilter:
    sources: tuple[str, ...] = ()  # empty: any source
    document_prefix: str | None = None
    modified_after: float | None = None  # epoch seconds, exclusive
    modified_before: float | None = None  # epoch seconds, exclusive
    metadata: dict[str, str] = field(default_factory=dict)


def epoch(value: str | None) -> float | None:
    """Epoch seconds of an ISO 8601 date or time (a time without a zone is UTC); None when absent or unreadable."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise FilterError(f"filter {key!r} must be a non-empty string, got {value!r}")
    return value


def _moment(key: str, value: Any) -> float:
    seconds = epoch(_text(key, value))
    if seconds is None:
        raise FilterError(f"filter {key!r} must be an ISO 8601 date or time (e.g. 2026-01-01), got {value!r}")
    return seconds


def parse_filter(raw: Mapping[str, Any] | None) -> SearchFilter | None:
    """The filter a JSON object describes; None for no filter (None or {})."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise FilterError(f"a filter is a JSON object with keys {', '.join(FILTER_KEYS)}; got {raw!r}")
    unknown = sorted(set(raw) - set(FILTER_KEYS))
    if unknown:
        raise FilterError(f"unknown filter key(s) {', '.join(map(repr, unknown))}: use {', '.join(FILTER_KEYS)}")
    if not raw:
        return None
    sources = raw.get("source", ())
    sources = (sources,) if isinstance(sources, str) else sources
    if not isinstance(sources, (list, tuple)) or (("source" in raw) and not sources):
        raise FilterError(f"filter 'source' must be a source name or a non-empty list of them, got {raw['source']!r}")
    metadata = raw.get("metadata", {})
    if not isinstance(metadata, Mapping):
        raise FilterError(f"filter 'metadata' must be an object of {{key: value}}, got {metadata!r}")
    for key in metadata:
        _text("metadata key", key)
    return SearchFilter(
        sources=tuple(_text("source", source) for source in sources),
        document_prefix=_text("document_prefix", raw["document_prefix"]) if "document_prefix" in raw else None,
        modified_after=_moment("modified_after", raw["modified_after"]) if "modified_after" in raw else None,
        modified_before=_moment("modified_before", raw["modified_before"]) if "modified_before" in raw else None,
        metadata={key: _text(f"metadata.{key}", value) for key, value in metadata.items()})
