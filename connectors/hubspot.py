"""HubSpot CRM objects (companies, contacts, deals, tickets…) through the CRM v3 objects and search APIs.

- Full listing: `GET /crm/v3/objects/{objectType}` with `limit`, `after` paging and the configured
  properties.
- Incremental: `POST /crm/v3/objects/{objectType}/search` on `hs_lastmodifieddate` after the
  stored cursor and up to the new one, by HubSpot's documented search contract: one sorting rule
  per request, at most 5 filter groups and 25 filters, `limit` <= 200, never an `after` offset
  (each query is a first page: the 10,000-result window is never reached), and searches held to
  `search_requests_per_second` besides the source's own limit (`search_pages`).
- Deletions: archived objects (`GET …?archived=true`) archived after the cursor.

The cursor is the client's clock taken before listing or searching; each search starts
`cursor_overlap_seconds` earlier, to cover clock skew and HubSpot's search-index lag (records
seen again are unchanged versions, which the flow skips without fetching).

A record's id is `<object_type>/<id>`, its version `updatedAt`. `fetch` uses the record kept from
the listing or search of this run (each is read once), else `GET /crm/v3/objects/{objectType}/{id}`
(a record on the retry queue, or one fetched in another process than the listing's).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from .base import Changes, Document, DocumentRef, Page
from .errors import DocumentEmpty, DocumentError, DocumentGone, SourceError
from .http import HttpClient, HttpStats, HttpStatusError, HttpUnavailableError
from .ratelimit import shared_bucket
from .secrets import resolve_secret
from .settings import HubSpotSourceSettings

LIST_PAGE_LIMIT = 100  # HubSpot's maximum `limit` for GET /crm/v3/objects/{objectType}
MODIFIED = "hs_lastmodifieddate"
OBJECT_ID = "hs_object_id"
# HubSpot's search documents one sorting rule per request and no order among ties.
BY_MODIFIED = [{"propertyName": MODIFIED, "direction": "ASCENDING"}]
BY_ID = [{"propertyName": OBJECT_ID, "direction": "ASCENDING"}]


def parse_time(value: str) -> datetime:
    """HubSpot times: ISO 8601 (`2024-05-01T12:00:00.123Z`) or epoch milliseconds."""
    if value.isdigit():
        return datetime.fromtimestamp(int(value) / 1000, tz=timezone.utc)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_ms(moment: datetime) -> str:
    return str(round(moment.timestamp() * 1000))


def record_problem(record: Any) -> str | None:
    """Why a record in an answer cannot be read (a malformed answer), or None."""
    if not isinstance(record, dict):
        return f"record is {type(record).__name__}, not an object"
    name = f"record {record.get('id')}" if record.get("id") else "record"
    missing = [key for key in ("id", "updatedAt") if not record.get(key)]
    if missing:
        return f"{name} lacks {' and '.join(missing)}"
    if not str(record["id"]).isdigit():
        return f"record id {record['id']!r} is not a number"
    if not isinstance(record.get("properties") or {}, dict):
        return f"{name}: its properties are not an object"
    for value in (record["updatedAt"], (record.get("properties") or {}).get(MODIFIED)):
        try:
            value is None or parse_time(str(value))
        except ValueError:
            return f"{name}: updatedAt {value!r} is not a time"
    return None


def _modified_filter(operator: str, moment: datetime) -> dict[str, str]:
    return {"propertyName": MODIFIED, "operator": operator, "value": epoch_ms(moment)}


@dataclass(frozen=True)
class SearchQuery:
    """One search request of the incremental walk: its filters, its one sort, and what its answer means."""

    filter_groups: list[dict[str, Any]]
    sorts: list[dict[str, str]]
    tie: datetime | None  # the modification time this query drains (by id), or None: a query by time

    def body(self, properties: list[str], limit: int) -> dict[str, Any]:
        return {"filterGroups": self.filter_groups, "sorts": self.sorts, "properties": properties, "limit": limit}


def after_time(since: datetime, until: datetime) -> SearchQuery:
    """The records modified in (`since`, `until`], by modification time."""
    return SearchQuery([{"filters": [_modified_filter("GT", since), _modified_filter("LTE", until)]}], BY_MODIFIED, None)


def tied_after(moment: datetime, object_id: int | None) -> SearchQuery:
    """The records modified at exactly `moment` with an id above `object_id` (all of them for None), by id."""
    filters = [_modified_filter("EQ", moment)]
    if object_id is not None:
        filters.append({"propertyName": OBJECT_ID, "operator": "GT", "value": str(object_id)})
    return SearchQuery([{"filters": filters}], BY_ID, moment)


@dataclass
class SearchWalk:
    """The keyset walk through the records modified in (`since`, `until`]: pure decisions, no I/O.

    A page sorted by modification time holds every record of the times before its last one (each
    query starts at its lower bound), but maybe not every record of its last time: ties come in
    no promised order, and more may share that time than a page holds. So the records of the last
    time are not taken from that page; they are read by queries of their own (`EQ` that time,
    sorted by id, keyset on the id), and only then does the walk go on after that time. Each record
    is yielded once, whatever the tie order and however many records share one millisecond.
    """

    since: datetime
    until: datetime
    limit: int
    query: SearchQuery | None = None

    def __post_init__(self) -> None:
        self.query = after_time(self.since, self.until)

    def take(self, results: list[dict[str, Any]], modified: Any) -> list[dict[str, Any]]:
        """The records of this answer to yield, in order; moves `query` on (None: the walk is done).
        `modified(record)` is a record's modification time. Raises ValueError for an answer out of order."""
        query = self.query
        assert query is not None
        full = len(results) >= self.limit
        if query.tie is not None:
            ids = [int(record["id"]) for record in results]
            if ids != sorted(set(ids)) or any(modified(record) != query.tie for record in results):
                raise ValueError(f"the records of {format_time(query.tie)} did not come in ascending id order")
            self.query = tied_after(query.tie, ids[-1]) if full else after_time(query.tie, self.until)
            return results
        times = [modified(record) for record in results]
        if times != sorted(times):
            raise ValueError("the records did not come in ascending hs_lastmodifieddate order")
        if not full:
            self.query = None
            return results
        last = times[-1]
        self.query = tied_after(last, None)
        return [record for record, moment in zip(results, times) if moment < last]


class _BlankForMissing(dict):
    def __missing__(self, key: str) -> str:
        return ""


class HubSpotSource:
    def __init__(self, settings: HubSpotSourceSettings):
        self.settings = settings
        self.name = settings.name
        token = resolve_secret(env=settings.token_env, block=settings.token_secret_block,
                               what=f"HubSpot token of source {settings.name!r}")
        self.http = HttpClient(settings.name, settings, headers={"Authorization": f"Bearer {token}"},
                               secret_values=(token,))
        # HubSpot limits its search endpoints below its other APIs: searches take a slot of both limits.
        self._search_limit = shared_bucket(f"{settings.name}/search", settings.search_requests_per_second, 1)
        self.objects_url = f"{settings.base_url.rstrip('/')}/crm/v3/objects/{settings.object_type}"
        self._listed: dict[str, dict[str, Any]] = {}  # records of this run's listing/search, until fetched

    # ---- listing -------------------------------------------------------------------------
    def current_cursor(self) -> str:
        return format_time(datetime.now(timezone.utc))

    @property
    def http_stats(self) -> HttpStats:
        return self.http.stats

    def list_documents(self) -> Iterator[DocumentRef]:
        self._start_run()
        for record in self._pages(archived=False):
            yield self._remember(record)

    def changes_since(self, cursor: str) -> Changes:
        new_cursor = self.current_cursor()
        since = self._parse_cursor(cursor) - timedelta(seconds=self.settings.cursor_overlap_seconds)
        self._start_run()
        deletions = [self._document_id(record) for record in self._pages(archived=True)
                     if parse_time(record.get("archivedAt") or record["updatedAt"]) > since]
        return Changes(upserts=(self._remember(r) for r in self._search_modified(since, parse_time(new_cursor))),
                       deletions=deletions, cursor=new_cursor)

    def _start_run(self) -> None:
        self._listed.clear()
        self.http.reset_circuit()

    def finish_run(self) -> None:
        """Forget this run's listed records: those not fetched (unchanged documents) would stay until the next run."""
        self._listed.clear()

    def _pages(self, archived: bool) -> Iterator[dict[str, Any]]:
        params: dict[str, Any] = {"limit": min(self.settings.page_size, LIST_PAGE_LIMIT),
                                  "properties": ",".join(self.settings.properties), "archived": str(archived).lower()}
        while True:
            page = self._listing("GET", self.objects_url, params=params)
            yield from page.get("results", [])
            after = ((page.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return
            params["after"] = after

    def _search_modified(self, since: datetime, until: datetime) -> Iterator[dict[str, Any]]:
        """Records modified in (`since`, `until`], each once (`SearchWalk`). A record edited while this
        pages gets a time after `until`: the next run, which starts at `until`, reads it."""
        walk = SearchWalk(since, until, self.settings.page_size)
        while walk.query is not None:
            page = self._listing("POST", f"{self.objects_url}/search", limit=self._search_limit,
                                 json=walk.query.body(list(self.settings.properties), self.settings.page_size))
            results = page.get("results") or []
            for record in results:
                self._check_listed(record)
            try:
                taken = walk.take(results, self._modified)
            except ValueError as exc:
                raise SourceError(f"source {self.name!r}: the search answered out of order ({exc}); continuing "
                                  "could skip records, so this run stops") from None
            yield from taken

    def _modified(self, record: dict[str, Any]) -> datetime:
        value = (record.get("properties") or {}).get(MODIFIED) or record.get("updatedAt")
        return parse_time(value)

    def _parse_cursor(self, cursor: str) -> datetime:
        try:
            return parse_time(cursor)
        except ValueError:
            raise SourceError(f"source {self.name!r}: stored cursor {cursor!r} is not a time; "
                              "run `vectormill backfill --full` for this source") from None

    def _listing(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """One page of a listing or search; a refused request stops the source (it cannot list)."""
        try:
            response = self.http.request(method, url, **kwargs)
        except HttpStatusError as exc:
            raise SourceError(f"{exc}; check object_type and properties of source {self.name!r}") from None
        return self._json(response, "listing")

    def _json(self, response, what: str) -> dict[str, Any]:
        try:
            return response.json()
        except ValueError:
            raise SourceError(f"source {self.name!r}: the {what} answer is not JSON "
                              f"(is base_url {self.settings.base_url!r} HubSpot's API?)") from None

    def _document_id(self, record: dict[str, Any]) -> str:
        return f"{self.settings.object_type}/{record['id']}"

    def _check_listed(self, record: Any) -> None:
        problem = record_problem(record)
        if problem:  # left out, the record would look deleted to a full listing
            raise SourceError(f"source {self.name!r}: the listing holds a malformed record: {problem}")

    def _remember(self, record: Any) -> DocumentRef:
        self._check_listed(record)
        document_id = self._document_id(record)
        self._listed[document_id] = record
        return DocumentRef(document_id, record["updatedAt"], record["updatedAt"])

    # ---- fetch ---------------------------------------------------------------------------
    def fetch(self, ref: DocumentRef) -> Document:
        record = self._listed.pop(ref.id, None) or self._get(ref.id)
        problem = record_problem(record)
        if problem:
            raise DocumentError(problem)
        properties = {key: str(value) for key, value in (record.get("properties") or {}).items() if value is not None}
        if self.settings.template is not None:
            text = self.settings.template.format_map(_BlankForMissing(properties))
        else:
            text = "\n".join(f"{key}: {properties[key]}" for key in self.settings.properties if properties.get(key))
        if not text.strip():
            raise DocumentEmpty(f"record has no text in its properties {', '.join(self.settings.properties)}")
        title_property = self.settings.title_property or self.settings.properties[0]
        return Document(
            source=self.name,
            id=ref.id,
            version=record["updatedAt"],
            title=str(properties.get(title_property) or ref.id),
            pages=(Page(None, text),),
            location=f"{self.objects_url}/{record['id']}",
            modified=record["updatedAt"],
            metadata={"object_type": self.settings.object_type, "hubspot_id": str(record["id"])},
        )

    def _get(self, document_id: str) -> dict[str, Any]:
        object_id = document_id.removeprefix(f"{self.settings.object_type}/")
        try:
            response = self.http.get(f"{self.objects_url}/{object_id}",
                                     params={"properties": ",".join(self.settings.properties)})
        except HttpStatusError as exc:
            if exc.status == 404:
                raise DocumentGone("record not found (deleted or archived since it was listed)") from None
            raise DocumentError(str(exc)) from None
        except HttpUnavailableError as exc:  # this record fails; the circuit breaker stops a dead source
            raise DocumentError(str(exc)) from None
        return self._json(response, "record")

    def close(self) -> None:
        self.http.close()
