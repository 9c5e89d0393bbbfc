"""Search filters: which chunks a search may return, checked before top-k (plain data and validation).

The same JSON object everywhere (`search --filter`, `open_store(...).search(filter=...)`, the HTTP service):
    {"source": "wiki" | ["wiki", "docs"], "document_prefix": "reports/", "modified_after": "2026-01-01",
     "modified_before": "2026-06-30T12:00:00Z", "metadata": {"title": "Annual report", "namespace": "0"}}
Every key is optional; all given keys must hold. An unknown key or a bad value is a FilterError; so is a metadata
key that no stored document has (the store checks that: see Catalog.filtered_ids), and a filter past the bounds
below (each source and metadata pair is a condition of the store's SQL, which has a limit of its own).

A scope (a search service key's filter) narrows a request's filter: `narrow(scope, request)` is the filter both
hold for, so a search under a scope can never return what the scope leaves out, whatever the request asks.
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
MAX_VALUES = 64  # sources in `source`, and keys in `metadata`
MAX_TEXT = 1_024  # characters of any value or metadata key


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
        raise FilterError(f"filter {key!r} must be a non-empty string, got {_shown(value)}")
    if len(value) > MAX_TEXT:
        raise FilterError(f"filter {key[:40]!r} holds {len(value)} characters, over the limit of {MAX_TEXT}")
    return value


def _shown(value: Any) -> str:
    """A value for an error message, cut short: a refused filter may be huge."""
    return _cut(repr(value))


def _cut(text: str) -> str:
    return text if len(text) <= 80 else f"{text[:80]}…"


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
        raise FilterError(f"a filter is a JSON object with keys {', '.join(FILTER_KEYS)}; got {_shown(raw)}")
    unknown = sorted(set(raw) - set(FILTER_KEYS))
    if unknown:
        raise FilterError(f"unknown filter key(s) {_cut(', '.join(map(repr, unknown)))}: use {', '.join(FILTER_KEYS)}")
    if not raw:
        return None
    sources = raw.get("source", ())
    sources = (sources,) if isinstance(sources, str) else sources
    if not isinstance(sources, (list, tuple)) or (("source" in raw) and not sources):
        raise FilterError(f"filter 'source' must be a source name or a non-empty list of them, got "
                          f"{_shown(raw['source'])}")
    metadata = raw.get("metadata", {})
    if not isinstance(metadata, Mapping):
        raise FilterError(f"filter 'metadata' must be an object of {{key: value}}, got {_shown(metadata)}")
    for key, values in (("source", sources), ("metadata", metadata)):
        if len(values) > MAX_VALUES:
            raise FilterError(f"filter {key!r} holds {len(values)} entries, over the limit of {MAX_VALUES}")
    for key in metadata:
        _text("metadata key", key)
    return SearchFilter(
        sources=tuple(_text("source", source) for source in sources),
        document_prefix=_text("document_prefix", raw["document_prefix"]) if "document_prefix" in raw else None,
        modified_after=_moment("modified_after", raw["modified_after"]) if "modified_after" in raw else None,
        modified_before=_moment("modified_before", raw["modified_before"]) if "modified_before" in raw else None,
        metadata={key: _text(f"metadata.{key}", value) for key, value in metadata.items()})


class _Disjoint(Exception):
    """Two filters no document passes at once."""


def narrow(scope: SearchFilter | None, request: SearchFilter | None) -> SearchFilter | None:
    """The filter of the documents that pass both `scope` and `request` (None: no filter at all). A request that
    asks only for what the scope leaves out gets `NOTHING`, the filter no document passes: no hits, no error."""
    if scope is None or request is None:
        return scope or request
    try:
        return SearchFilter(
            sources=_both_sources(scope.sources, request.sources),
            document_prefix=_both_prefixes(scope.document_prefix, request.document_prefix),
            modified_after=_bound(max, scope.modified_after, request.modified_after),
            modified_before=_bound(min, scope.modified_before, request.modified_before),
            metadata=_both_metadata(scope.metadata, request.metadata))
    except _Disjoint:
        return NOTHING


def _both_sources(first: tuple[str, ...], second: tuple[str, ...]) -> tuple[str, ...]:
    if not first or not second:
        return first or second
    common = tuple(source for source in first if source in second)
    if not common:
        raise _Disjoint
    return common


def _both_prefixes(first: str | None, second: str | None) -> str | None:
    if first is None or second is None:
        return first if second is None else second
    longer, shorter = (first, second) if len(first) >= len(second) else (second, first)
    if not longer.startswith(shorter):
        raise _Disjoint
    return longer


def _bound(pick, first: float | None, second: float | None) -> float | None:
    return second if first is None else first if second is None else pick(first, second)


def _both_metadata(first: dict[str, str], second: dict[str, str]) -> dict[str, str]:
    if any(first[key] != second[key] for key in first.keys() & second.keys()):
        raise _Disjoint
    return first | second


# No source is named "" (the config's source names start with a letter or digit): the filter nothing passes.
NOTHING = SearchFilter(sources=("",))
