"""HubSpot CRM objects (companies, contacts, deals, tickets…) through the CRM v3 objects and search APIs.

- Full listing: `GET /crm/v3/objects/{objectType}` with `limit`, `after` paging and the configured
  properties.
- Incremental: `POST /crm/v3/objects/{objectType}/search` on `hs_lastmodifieddate` after the
  stored cursor and up to the new one, sorted by (`hs_lastmodifieddate`, `hs_object_id`) and
  paged by keyset: each query asks for the records after the last (time, id) seen, never for an
  offset, so an edit while paging skips nothing and the 10,000-result window is never reached.
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
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from .base import Changes, Document, DocumentRef, Page
from .errors import DocumentEmpty, DocumentError, DocumentGone, SourceError
from .http import HttpClient, HttpStats, HttpStatusError, HttpUnavailableError
from .secrets import resolve_secret
from .settings import HubSpotSourceSettings

LIST_PAGE_LIMIT = 100  # HubSpot's maximum `limit` for GET /crm/v3/objects/{objectType}
MODIFIED = "hs_lastmodifieddate"
OBJECT_ID = "hs_object_id"


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


KEYSET_SORTS = [{"propertyName": MODIFIED, "direction": "ASCENDING"},
                {"propertyName": OBJECT_ID, "direction": "ASCENDING"}]


def keyset_filter_groups(since: datetime, until: datetime,
                         last: tuple[datetime, int] | None) -> list[dict[str, Any]]:
    """Search filters for the records after `last` (modification time, id) — or, first, after
    `since` — up to `until`; filter groups are ORed, the filters within one ANDed."""
    def modified(operator: str, moment: datetime) -> dict[str, str]:
        return {"propertyName": MODIFIED, "operator": operator, "value": epoch_ms(moment)}

    if last is None:
        return [{"filters": [modified("GT", since), modified("LTE", until)]}]
    moment, object_id = last
    return [{"filters": [modified("EQ", moment), {"propertyName": OBJECT_ID, "operator": "GT", "value": str(object_id)}]},
            {"filters": [modified("GT", moment), modified("LTE", until)]}]


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
        """Records modified in (`since`, `until`], in (modification time, id) order.

        Each query continues from the last record seen (keyset), never by an `after` offset: a
        record edited while this pages moves to the end of the results without shifting another
        past a page boundary, and no query pages into the search API's 10,000-result window.
        """
        last: tuple[datetime, int] | None = None
        while True:
            page = self._listing("POST", f"{self.objects_url}/search", json={
                "filterGroups": keyset_filter_groups(since, until, last), "sorts": KEYSET_SORTS,
                "properties": list(self.settings.properties), "limit": self.settings.page_size})
            results = page.get("results") or []
            for record in results:
                self._check_listed(record)
                key = (self._modified(record), int(record["id"]))
                if last is not None and key <= last:
                    raise SourceError(
                        f"source {self.name!r}: the search answered records not in (hs_lastmodifieddate, "
                        f"hs_object_id) order (record {record['id']} after {last[1]}); continuing from the last "
                        "one seen could skip records, so this run stops")
                last = key
                yield record
            if not results or not (page.get("paging") or {}).get("next"):
                return

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
