"""A HubSpot CRM v3 objects + search API on 127.0.0.1, following HubSpot's documented shapes.

- `GET /crm/v3/objects/{type}?limit&after&properties&archived` → `{"results": [...], "paging": {"next": {"after", "link"}}}`
  (limit ≤ 100; `after` is opaque);
- `GET /crm/v3/objects/{type}/{id}?properties` → one object, 404 `OBJECT_NOT_FOUND`;
- `POST /crm/v3/objects/{type}/search` with `filterGroups` (OR of groups whose filters are ANDed;
  at most 5 groups, 10 filters a group, 25 in all: HubSpot's limits since August 2024), `sorts`
  (at most one sorting rule: HubSpot documents that only one can be applied to a search),
  `properties`, `limit` (≤ 200), `after` → `{"total", "results", "paging"}`; paging past
  `search_window` (10,000 at HubSpot) is a 400 and no `paging.next` leads there; archived objects
  are not searchable. Records that tie on the sort come in no promised order, as at HubSpot:
  here shuffled anew for each request, never in ascending id order;
- every request needs `Authorization: Bearer <token>`, else 401 `INVALID_AUTHENTICATION`;
- errors are `{"status": "error", "message", "correlationId", "category"}`.

Objects carry `id`, `properties` (the requested ones plus `createdate`, `hs_lastmodifieddate`,
`hs_object_id`), `createdAt`, `updatedAt`, `archived` and, once archived, `archivedAt`.
"""

from __future__ import annotations

import base64
import itertools
import random
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from .fault_server import FaultServer, Reply, Request

DEFAULT_PROPERTIES = ("createdate", "hs_lastmodifieddate", "hs_object_id")
CATEGORIES = {400: "VALIDATION_ERROR", 401: "INVALID_AUTHENTICATION", 403: "MISSING_SCOPES",
              404: "OBJECT_NOT_FOUND", 429: "RATE_LIMITS"}
MAX_FILTER_GROUPS, MAX_FILTERS_PER_GROUP, MAX_FILTERS = 5, 10, 25  # HubSpot's documented search limits (2024)
MAX_SORTS, MAX_SEARCH_LIMIT = 1, 200
OPERATORS = {"GT": lambda a, b: a > b, "GTE": lambda a, b: a >= b, "LT": lambda a, b: a < b,
             "LTE": lambda a, b: a <= b, "EQ": lambda a, b: a == b}


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_ms(value: str) -> int:
    if str(value).isdigit():
        return int(value)
    return int(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp() * 1000)


class HubSpotApp:
    def __init__(self, token: str, search_window: int = 10_000):
        self.token = token
        self.search_window = search_window
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._next_id = 1000
        self._searches = 0  # seeds each search's order of ties: never the same twice

    # ---- data ----------------------------------------------------------------------------
    def _now_ms(self, at_ms: int | None) -> int:
        """The wall clock in ms (as HubSpot stamps changes; records changed in one ms tie), or a pinned time."""
        if at_ms is not None:
            return at_ms
        return int(time.time() * 1000)

    def add(self, object_type: str, at_ms: int | None = None, **properties: str) -> str:
        with self._lock:
            self._next_id += 1
            object_id = str(self._next_id)
            moment = iso(self._now_ms(at_ms))
            self.objects.setdefault(object_type, {})[object_id] = {
                "id": object_id,
                "properties": {**properties, "createdate": moment, "hs_lastmodifieddate": moment,
                               "hs_object_id": object_id},
                "createdAt": moment,
                "updatedAt": moment,
                "archived": False,
            }
            return object_id

    def update(self, object_type: str, object_id: str, **properties: str) -> None:
        with self._lock:
            record = self.objects[object_type][object_id]
            moment = iso(self._now_ms(None))
            record["properties"].update(properties, hs_lastmodifieddate=moment)
            record["updatedAt"] = moment

    def archive(self, object_type: str, object_id: str) -> None:
        with self._lock:
            record = self.objects[object_type][object_id]
            record["archived"] = True
            record["archivedAt"] = iso(self._now_ms(None))

    def purge(self, object_type: str, object_id: str) -> None:
        """Delete for good (a GDPR delete, or 90 days after archiving): gone from listings, searches and archive."""
        with self._lock:
            del self.objects[object_type][object_id]

    # ---- API -----------------------------------------------------------------------------
    def error(self, status: int, message: str) -> Reply:
        return Reply(status, {"status": "error", "message": message, "correlationId": str(uuid.uuid4()),
                              "category": CATEGORIES.get(status, "INTERNAL_ERROR")})

    def handle(self, request: Request) -> Reply:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self.error(401, "Authentication credentials not found. This API supports OAuth 2.0 "
                                   "authentication and you can find more details at "
                                   "https://developers.hubspot.com/docs/methods/auth/oauth-overview")
        parts = request.path.strip("/").split("/")
        if parts[:3] != ["crm", "v3", "objects"] or len(parts) < 4:
            return self.error(404, f"No route for {request.method} {request.path}")
        object_type = parts[3]
        with self._lock:
            if request.method == "GET" and len(parts) == 4:
                return self._list(request, object_type)
            if request.method == "GET" and len(parts) == 5:
                return self._get(request, object_type, parts[4])
            if request.method == "POST" and len(parts) == 5 and parts[4] == "search":
                return self._search(request, object_type)
        return self.error(405, f"{request.method} not allowed on {request.path}")

    def _view(self, record: dict[str, Any], properties: list[str]) -> dict[str, Any]:
        view = {key: value for key, value in record.items() if key != "properties"}
        stored = record["properties"]  # a test may store a malformed record: it is served as it is
        view["properties"] = {name: stored.get(name) for name in (*properties, *DEFAULT_PROPERTIES)} \
            if isinstance(stored, dict) else stored
        return view

    @staticmethod
    def _requested(value: str | None) -> list[str]:
        return [name for name in (value or "").split(",") if name]

    def _list(self, request: Request, object_type: str) -> Reply:
        limit = int(request.param("limit", "10"))
        if not 1 <= limit <= 100:
            return self.error(400, f"limit must be between 1 and 100, got {limit}")
        archived = request.param("archived", "false") == "true"
        records = [r for _, r in sorted(self.objects.get(object_type, {}).items(), key=lambda item: int(item[0]))
                   if r["archived"] == archived]
        after = request.param("after")
        start = int(base64.urlsafe_b64decode(after).decode()) if after else 0
        page = records[start:start + limit]
        body: dict[str, Any] = {"results": [self._view(r, self._requested(request.param("properties"))) for r in page]}
        if start + limit < len(records):
            token = base64.urlsafe_b64encode(str(start + limit).encode()).decode()
            body["paging"] = {"next": {"after": token, "link": f"{request.path}?after={token}"}}
        return Reply(200, body)

    def _get(self, request: Request, object_type: str, object_id: str) -> Reply:
        record = self.objects.get(object_type, {}).get(object_id)
        if record is None or record["archived"]:
            return self.error(404, f"Object not found.  objectId are usually numeric. {object_id}")
        return Reply(200, self._view(record, self._requested(request.param("properties"))))

    def _search(self, request: Request, object_type: str) -> Reply:
        query = request.json()
        limit = int(query.get("limit", 10))
        after = int(query.get("after") or 0)
        groups = query.get("filterGroups") or []
        sorts = query.get("sorts") or []
        if not 1 <= limit <= MAX_SEARCH_LIMIT:
            return self.error(400, f"limit must be between 1 and {MAX_SEARCH_LIMIT}, got {limit}")
        if len(sorts) > MAX_SORTS:
            return self.error(400, f"There was a problem with the request. sorts: size must be between 0 and "
                                   f"{MAX_SORTS}: only one sorting rule can be applied to a search")
        if after >= self.search_window:
            return self.error(400, f"after must be less than {self.search_window}: the search API pages through "
                                   f"at most {self.search_window} results")
        if len(groups) > MAX_FILTER_GROUPS or any(len(g["filters"]) > MAX_FILTERS_PER_GROUP for g in groups) \
                or sum(len(g["filters"]) for g in groups) > MAX_FILTERS:
            return self.error(400, f"at most {MAX_FILTER_GROUPS} filterGroups of {MAX_FILTERS_PER_GROUP} filters "
                                   f"each, {MAX_FILTERS} filters in all")

        def matches(record: dict[str, Any]) -> bool:  # filterGroups are ORed, the filters of a group ANDed
            return not groups or any(
                all(OPERATORS[f["operator"]](to_ms(record["properties"][f["propertyName"]]), to_ms(f["value"]))
                    for f in group["filters"]) for group in groups)

        records = [r for r in self.objects.get(object_type, {}).values() if not r["archived"] and matches(r)]
        self._searches += 1
        records = self._sorted(records, sorts, random.Random(self._searches))
        page = records[after:min(after + limit, self.search_window)]
        body: dict[str, Any] = {"total": len(records),
                                "results": [self._view(r, query.get("properties") or []) for r in page]}
        if after + limit < min(len(records), self.search_window):
            body["paging"] = {"next": {"after": str(after + limit), "link": f"{request.path}?after={after + limit}"}}
        return Reply(200, body)

    @staticmethod
    def _sorted(records: list[dict[str, Any]], sorts: list[dict[str, str]],
                shuffler: random.Random) -> list[dict[str, Any]]:
        """By the sort, its ties in an order of `shuffler`'s, never ascending id; by id without a sort."""
        records = sorted(records, key=lambda r: int(r["id"]))
        if not sorts:
            return records
        (sort,) = sorts
        key = (lambda r: to_ms(r["properties"][sort["propertyName"]]))
        ordered: list[dict[str, Any]] = []
        for _, tied in itertools.groupby(sorted(records, key=key, reverse=sort.get("direction") == "DESCENDING"),
                                         key=key):
            tied = list(tied)
            shuffled = shuffler.sample(tied, len(tied))
            ordered += shuffled[::-1] if len(tied) > 1 and shuffled == tied else shuffled
        return ordered


def hubspot_server(token: str, search_window: int = 10_000) -> FaultServer:
    """A HubSpot API server (not started; use it as a context manager). The app is `server.app`."""
    return FaultServer(HubSpotApp(token, search_window))
