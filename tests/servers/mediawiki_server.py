"""A MediaWiki Action API (api.php) on 127.0.0.1 for tests: pages in memory, switchable faults.

It answers the calls vectormill makes, in the documented shapes of MediaWiki 1.39 with
`format=json&formatversion=2` (checked against a real 1.39 on this machine):

- `action=query` with `generator=allpages` (+ `prop=info|revisions`), `titles=` (≤ 50, with
  `normalized`, `missing`, `invalid`, `redirect`), `list=recentchanges` (kept for `rc_max_age`
  like `$wgRCMaxAge`, when given), `list=logevents` (kept for good), `list=allrevisions`,
  `meta=siteinfo` and `meta=tokens&type=login`, paged with the `continue` protocol;
- `action=parse` (`page=` or `oldid=`) rendering a small subset of wikitext to HTML, with the
  edit-section links, table of contents and limit-report comment the real parser adds;
- `action=login` (POST) with bot passwords and a session cookie, `assert=user`, and a
  private-wiki mode (`readapidenied` without login);
- errors as `{"error": {"code", "info"}}` with the `MediaWiki-API-Error` header, unknown
  parameters as `warnings` (recorded, so tests can assert the client sends none).

Changes between runs (`add_page`, `edit_page`, `delete_page`, `move_page`) write recent-changes
rows and log entries like the wiki does; `import_pages` writes neither, like importTextFiles.php.
The wiki's clock is simulated (`advance`) so tests control which changes share a second.

It runs on the shared `FaultServer` (HTTP 429/503 with Retry-After, connection resets
mid-response, slow replies, arrival times of every request) and adds the wiki's own fault:
maxlag errors (`maxlag_next`), a 200 answer with `Retry-After` that a client must retry, and
a page whose rendering fails (`fail_parse_of`: its `action=parse` requests answer 503).
"""

from __future__ import annotations

import html
import itertools
import re
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, quote

from .fault_server import FaultServer, Reply, Request

NAMESPACES = {0: "", 1: "Talk", 2: "User", 4: "Project", 10: "Template", 12: "Help", 14: "Category"}
NAMESPACE_BY_NAME = {name.lower(): number for number, name in NAMESPACES.items() if name}
MAX_LIMIT = 500  # what "max" means for a user without the apihighlimits right
MAX_TITLES = 50
COMMON_PARAMETERS = {"action", "format", "formatversion", "maxlag", "assert", "errorformat", "utf8",
                     "servedby", "curtimestamp", "uselang"}
QUERY_PARAMETERS = {"prop", "list", "meta", "titles", "pageids", "revids", "generator", "redirects",
                    "continue", "indexpageids"}
# Parameters of each query module, by the module's prefix.
MODULE_PARAMETERS = {
    "allpages": {"from", "continue", "to", "prefix", "namespace", "filterredir", "limit", "dir"},
    "info": {"prop"},
    "revisions": {"prop", "slots", "limit", "start", "end", "dir", "continue"},
    "recentchanges": {"start", "end", "dir", "namespace", "type", "prop", "limit", "continue", "show"},
    "logevents": {"type", "action", "start", "end", "dir", "prop", "limit", "continue", "namespace", "title"},
    "allrevisions": {"prop", "slots", "limit", "start", "end", "dir", "continue", "namespace", "user", "excludeuser",
                     "generatetitles"},
    "siteinfo": {"prop"},
}
PREFIXES = {"allpages": "ap", "info": "in", "revisions": "rv", "recentchanges": "rc", "logevents": "le", "siteinfo": "si",
            "allrevisions": "arv"}
PARSE_PARAMETERS = {"page", "pageid", "oldid", "prop", "redirects", "disablelimitreport", "disableeditsection",
                    "disabletoc", "disablestylededuplication", "wrapoutputclass", "section"}
LOGIN_PARAMETERS = {"lgname", "lgpassword", "lgtoken", "lgdomain"}


def mw_timestamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str) -> datetime:
    """ISO 8601 (2024-01-01T00:00:00Z) or MediaWiki's 14 digits, as the API accepts both."""
    value = value.strip()
    if re.fullmatch(r"\d{14}", value):
        return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


def split_title(title: str) -> tuple[int, str]:
    """(namespace, page name) of a title, normalized the way the wiki does (spaces, first letter)."""
    title = " ".join(title.replace("_", " ").split())
    namespace, name = 0, title
    if ":" in title:
        prefix, rest = title.split(":", 1)
        if prefix.strip().lower() in NAMESPACE_BY_NAME:
            namespace, name = NAMESPACE_BY_NAME[prefix.strip().lower()], rest.strip()
    return namespace, name[:1].upper() + name[1:]


def full_title(namespace: int, name: str) -> str:
    return f"{NAMESPACES[namespace]}:{name}" if namespace else name


def normalize(title: str) -> str:
    return full_title(*split_title(title))


class ApiError(Exception):
    def __init__(self, code: str, info: str):
        super().__init__(info)
        self.code, self.info = code, info


@dataclass
class Revision:
    revid: int
    timestamp: str
    text: str


@dataclass
class WikiPage:
    pageid: int
    namespace: int
    title: str
    revisions: list[Revision]

    @property
    def latest(self) -> Revision:
        return self.revisions[-1]

    @property
    def redirect_target(self) -> str | None:
        match = re.match(r"\s*#REDIRECT\s*\[\[([^\]|]+)", self.latest.text, re.IGNORECASE)
        return normalize(match.group(1)) if match else None

    @property
    def sort_key(self) -> tuple[int, str]:
        return self.namespace, split_title(self.title)[1].replace(" ", "_")


@dataclass
class Maxlag:
    """The next `count` requests that send `maxlag` below `lag` get the wiki's maxlag error."""

    count: int
    lag: int
    retry_after: str | None  # None: the wiki's own value, max(maxlag, 5)


class WikiState:
    """Pages, revisions, recent changes and log entries of one wiki, behind one lock."""

    def __init__(self, start: datetime, rc_max_age: timedelta | None = None):
        self.lock = threading.RLock()
        self.now = start
        self.rc_max_age = rc_max_age  # $wgRCMaxAge: older recent changes are purged as new ones are written
        self.pages: dict[str, WikiPage] = {}
        self.revisions: dict[int, tuple[WikiPage, Revision]] = {}
        self.recentchanges: list[dict[str, Any]] = []
        self.logevents: list[dict[str, Any]] = []
        self._next_pageid = 1
        self._next_revid = 1
        self._rcids = itertools.count(1)

    def _stamp(self) -> str:
        return mw_timestamp(self.now)

    def _new_revision(self, page: WikiPage, text: str) -> Revision:
        revision = Revision(self._next_revid, self._stamp(), text)
        self._next_revid += 1
        page.revisions.append(revision)
        self.revisions[revision.revid] = (page, revision)
        return revision

    def create(self, title: str, text: str, *, record: bool) -> WikiPage:
        title = normalize(title)
        if title in self.pages:
            raise ValueError(f"page {title!r} exists")
        page = WikiPage(self._next_pageid, split_title(title)[0], title, [])
        self._next_pageid += 1
        self.pages[title] = page
        revision = self._new_revision(page, text)
        if record:
            self._rc("new", page, revision.revid, 0)
            self._log("create", "create", page.namespace, title, page.pageid, {})
        return page

    def edit(self, title: str, text: str) -> Revision:
        page = self.pages[normalize(title)]
        previous = page.latest.revid
        revision = self._new_revision(page, text)
        self._rc("edit", page, revision.revid, previous)
        return revision

    def delete(self, title: str) -> None:
        page = self.pages.pop(normalize(title))
        for revision in page.revisions:
            del self.revisions[revision.revid]
        entry = self._log("delete", "delete", page.namespace, page.title, 0, {})
        self._rc_log(page, entry)

    def move(self, old: str, new: str, leave_redirect: bool) -> None:
        page = self.pages.pop(normalize(old))
        new = normalize(new)
        if new in self.pages:
            raise ValueError(f"page {new!r} exists")
        old_title = page.title
        page.title, page.namespace = new, split_title(new)[0]
        self.pages[new] = page
        self._new_revision(page, page.latest.text)  # the null revision a move adds
        params = {"target_ns": page.namespace, "target_title": new, "suppressredirect": not leave_redirect}
        entry = self._log("move", "move", split_title(old_title)[0], old_title, page.pageid, params)
        self._rc_log(WikiPage(page.pageid, split_title(old_title)[0], old_title, page.revisions), entry)
        if leave_redirect:
            self.create(old_title, f"#REDIRECT [[{new}]]", record=False)

    def _purge_expired_changes(self) -> None:
        """What MediaWiki does after an edit (RecentChange::purgeExpiredChanges); the logging table stays."""
        if self.rc_max_age is not None:
            oldest = mw_timestamp(self.now - self.rc_max_age)
            self.recentchanges = [change for change in self.recentchanges if change["timestamp"] >= oldest]

    def _rc(self, kind: str, page: WikiPage, revid: int, old_revid: int) -> None:
        self._purge_expired_changes()
        self.recentchanges.append({
            "type": kind, "ns": page.namespace, "title": page.title, "pageid": page.pageid, "revid": revid,
            "old_revid": old_revid, "rcid": next(self._rcids), "timestamp": self._stamp(),
        })

    def _rc_log(self, page: WikiPage, entry: dict[str, Any]) -> None:
        self._purge_expired_changes()
        self.recentchanges.append({
            "type": "log", "ns": page.namespace, "title": page.title, "pageid": entry["pageid"], "revid": 0,
            "old_revid": 0, "rcid": next(self._rcids), "timestamp": entry["timestamp"],
            "logid": entry["logid"], "logtype": entry["type"], "logaction": entry["action"],
            "logparams": entry["params"],
        })

    def _log(self, kind: str, action: str, namespace: int, title: str, pageid: int, params: dict) -> dict[str, Any]:
        entry = {"logid": len(self.logevents) + 1, "ns": namespace, "title": title, "pageid": pageid,
                 "logpage": pageid, "params": params, "type": kind, "action": action, "timestamp": self._stamp()}
        self.logevents.append(entry)
        return entry


def render(text: str, *, edit_sections: bool, limit_report: bool) -> str:
    """A subset of the parser: headings (+ edit links, + a TOC from 4 headings), bold, italics, links."""
    def inline(line: str) -> str:
        line = html.escape(line, quote=False)
        line = re.sub(r"'''(.+?)'''", r"<b>\1</b>", line)
        line = re.sub(r"''(.+?)''", r"<i>\1</i>", line)
        line = re.sub(r"\[\[([^\]|]+)\|([^\]]+)\]\]",
                      lambda m: f'<a href="/index.php/{quote(m[1].replace(" ", "_"))}" title="{m[1]}">{m[2]}</a>', line)
        return re.sub(r"\[\[([^\]]+)\]\]",
                      lambda m: f'<a href="/index.php/{quote(m[1].replace(" ", "_"))}" title="{m[1]}">{m[1]}</a>', line)

    blocks, paragraph, headings = [], [], []

    def end_paragraph() -> None:
        if paragraph:
            blocks.append("<p>" + "\n".join(paragraph) + "\n</p>")
            paragraph.clear()

    for line in text.splitlines():
        heading = re.fullmatch(r"(={2,6})\s*(.+?)\s*\1\s*", line)
        if heading:
            end_paragraph()
            level, name = len(heading[1]), heading[2]
            headings.append(name)
            edit = ('<span class="mw-editsection"><span class="mw-editsection-bracket">[</span>'
                    f'<a href="/index.php?title=X&amp;action=edit&amp;section={len(headings)}">edit</a>'
                    '<span class="mw-editsection-bracket">]</span></span>') if edit_sections else ""
            blocks.append(f'<h{level}><span class="mw-headline" id="{quote(name)}">{inline(name)}</span>{edit}</h{level}>')
        elif line.strip():
            paragraph.append(inline(line))
        else:
            end_paragraph()
    end_paragraph()
    if len(headings) >= 4:
        toc = "".join(f'<li class="toclevel-1"><a href="#{quote(h)}"><span class="tocnumber">{n}</span> '
                      f'<span class="toctext">{html.escape(h)}</span></a></li>' for n, h in enumerate(headings, 1))
        blocks.insert(0, '<div id="toc" class="toc" role="navigation"><div class="toctitle"><h2 id="mw-toc-heading">'
                      f'Contents</h2></div><ul>{toc}</ul></div>')
    report = ("\n<!-- \nNewPP limit report\nCPU time usage: 0.001 seconds\n-->\n" if limit_report else "")
    return '<div class="mw-parser-output">' + "\n".join(blocks) + report + "</div>"


def _limit(value: str | None, name: str, warnings: list[str], default: int = 10) -> int:
    """A module's `limit`: an integer or "max"; out of [1, MAX_LIMIT] it is clamped with a warning, as MediaWiki does."""
    if value is None:
        return default
    if value == "max":
        return MAX_LIMIT
    try:
        number = int(value)
    except ValueError:
        raise ApiError("badinteger", f'Invalid value "{value}" for integer parameter "{name}".') from None
    if not 1 <= number <= MAX_LIMIT:
        warnings.append(f'The value "{value}" for parameter "{name}" must be between 1 and {MAX_LIMIT}.')
    return max(1, min(number, MAX_LIMIT))


class MediaWikiApi:
    """The wiki's API logic: a request's parameters in, (status, headers, JSON body) out."""

    def __init__(self, state: WikiState, server_url: str, bot_passwords: dict[str, str], private: bool):
        self.state = state
        self.server_url = server_url
        self.bot_passwords = bot_passwords
        self.private = private
        self.sessions: dict[str, dict[str, Any]] = {}
        self.warnings: list[str] = []
        self._warnings: list[str] = []

    def handle(self, method: str, params: dict[str, str], session_id: str | None) -> tuple[dict[str, Any], str | None]:
        """The JSON answer, and a new session id to set as a cookie (or None)."""
        with self.state.lock:
            return self._handle(method, params, session_id)

    def _handle(self, method: str, params: dict[str, str], session_id: str | None) -> tuple[dict[str, Any], str | None]:
        new_session = None
        if session_id not in self.sessions:
            session_id = new_session = secrets.token_hex(16)
            self.sessions[session_id] = {"user": None, "login_token": None}
        session = self.sessions[session_id]
        warnings: list[str] = []
        self._warnings = warnings  # this request's (requests are handled one at a time, under the state's lock)
        try:
            if params.get("continue", "") and "||" not in params["continue"]:
                # The `continue` value is the one the last answer gave, passed back as it is.
                raise ApiError("badcontinue", "Invalid continue param. You should pass the original value returned "
                                              "by the previous query.")
            if params.get("format") != "json" or params.get("formatversion") != "2":
                raise ApiError("badvalue", "this test wiki speaks format=json&formatversion=2 only")
            if params.get("assert") == "user" and session["user"] is None:
                raise ApiError("assertuserfailed", "You are no longer logged in, so the action could not be completed.")
            action = params.get("action")
            if action == "query":
                body = self._query(params, session, warnings)
            elif action == "parse":
                self._check_read(params, session)
                body = self._parse(params, warnings)
            elif action == "login":
                if method != "POST":
                    raise ApiError("mustbeposted", 'The "login" module requires a POST request.')
                body = self._login(params, session, warnings)
            else:
                raise ApiError("badvalue", f'Unrecognized value for parameter "action": {action}.')
        except ApiError as exc:
            body = {"error": {"code": exc.code, "info": exc.info,
                              "docref": f"See {self.server_url}/api.php for API usage."}}
        if warnings:
            self.warnings.extend(warnings)
            body["warnings"] = {"main": {"warnings": "\n".join(warnings)}}
        return body, new_session

    # ---- helpers ----------------------------------------------------------------------------
    def _unknown(self, params: dict[str, str], known: Iterable[str], warnings: list[str]) -> None:
        unknown = sorted(set(params) - set(known))
        if unknown:
            warnings.append(f"Unrecognized parameters: {', '.join(unknown)}.")

    def _check_read(self, params: dict[str, str], session: dict[str, Any]) -> None:
        if self.private and session["user"] is None:
            raise ApiError("readapidenied", "You need read permission to use this module.")

    # ---- action=query -----------------------------------------------------------------------
    def _query(self, params: dict[str, str], session: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
        props = [p for p in params.get("prop", "").split("|") if p]
        lists = [p for p in params.get("list", "").split("|") if p]
        metas = [p for p in params.get("meta", "").split("|") if p]
        generator = params.get("generator")
        known = set(COMMON_PARAMETERS) | QUERY_PARAMETERS
        for module in props + lists + metas + ([generator] if generator else []):
            prefix = ("g" + PREFIXES.get(module, "")) if module == generator else PREFIXES.get(module, "")
            known |= {prefix + name for name in MODULE_PARAMETERS.get(module, ())}
        if "tokens" in metas:
            known.add("type")
        for value, allowed, name in ((props, {"info", "revisions"}, "prop"),
                                     (lists, {"recentchanges", "logevents", "allrevisions"}, "list"),
                                     (metas, {"siteinfo", "tokens"}, "meta")):
            for unknown_value in set(value) - allowed:
                warnings.append(f'Unrecognized value for parameter "{name}": {unknown_value}.')
        self._unknown(params, known, warnings)
        if metas != ["tokens"]:
            self._check_read(params, session)

        body: dict[str, Any] = {"batchcomplete": True, "query": {}}
        query = body["query"]
        if "tokens" in metas:
            session["login_token"] = secrets.token_hex(20) + "+\\"
            query["tokens"] = {"logintoken": session["login_token"]}
        if "siteinfo" in metas:
            query["general"] = {
                "mainpage": "Main Page", "sitename": "TestWiki", "generator": "MediaWiki 1.39.17",
                "server": self.server_url, "articlepath": "/index.php/$1", "scriptpath": "",
                "time": mw_timestamp(self.state.now), "timezone": "UTC", "wikiid": "wiki",
            }
        pages: list[WikiPage | dict[str, Any]] | None = None
        if generator == "allpages":
            pages, cont = self._allpages(params, "gap")
            if cont:
                body["continue"] = {"gapcontinue": cont, "continue": "gapcontinue||"}
        elif generator:
            raise ApiError("badvalue", f'Unrecognized value for parameter "generator": {generator}.')
        elif "titles" in params:
            pages = self._titles(params["titles"], query)
        if pages is not None:
            query["pages"] = [self._page_json(p, props, params) for p in pages]
        for name in lists:
            if name == "recentchanges":
                query["recentchanges"], cont = self._recentchanges(params)
            elif name == "allrevisions":
                query["allrevisions"], cont = self._allrevisions(params)
            else:
                query["logevents"], cont = self._logevents(params)
            if cont:
                body.setdefault("continue", {"continue": "-||"}).update(cont)
        if not query:
            del body["query"]
        return body

    def _allpages(self, params: dict[str, str], prefix: str) -> tuple[list[WikiPage], str | None]:
        namespace = params.get(prefix + "namespace", "0")
        if not namespace.isdigit() or int(namespace) not in NAMESPACES:
            raise ApiError("badvalue", f'Unrecognized value for parameter "{prefix}namespace": {namespace}.')
        namespace = int(namespace)
        limit = _limit(params.get(prefix + "limit"), prefix + "limit", self._warnings)
        start = params.get(prefix + "continue") or params.get(prefix + "from") or ""
        start = start.replace(" ", "_")
        redirects = params.get(prefix + "filterredir", "all")
        selected = sorted((p for p in self.state.pages.values() if p.namespace == namespace
                           and p.sort_key[1] >= start
                           and (redirects == "all" or (p.redirect_target is not None) == (redirects == "redirects"))),
                          key=lambda p: p.sort_key)
        more = selected[limit:]
        return selected[:limit], (more[0].sort_key[1] if more else None)

    def _titles(self, titles: str, query: dict[str, Any]) -> list[WikiPage | dict[str, Any]]:
        requested = [t for t in titles.split("|")]
        if len(requested) > MAX_TITLES:
            raise ApiError("toomanyvalues", f'Too many values supplied for parameter "titles". The limit is {MAX_TITLES}.')
        out: list[WikiPage | dict[str, Any]] = []
        normalized = []
        for title in requested:
            if not title.strip() or re.search(r"[\[\]{}<>|#]", title):
                out.append({"title": title, "invalidreason": "The requested page title contains invalid characters.",
                            "invalid": True})
                continue
            canonical = normalize(title)
            if canonical != title:
                normalized.append({"fromencoded": False, "from": title, "to": canonical})
            page = self.state.pages.get(canonical)
            out.append(page or {"ns": split_title(canonical)[0], "title": canonical, "missing": True})
        if normalized:
            query["normalized"] = normalized
        return out

    def _page_json(self, page: WikiPage | dict[str, Any], props: list[str], params: dict[str, str]) -> dict[str, Any]:
        if isinstance(page, dict):
            return dict(page)
        out: dict[str, Any] = {"pageid": page.pageid, "ns": page.namespace, "title": page.title}
        if "info" in props:
            out.update({"contentmodel": "wikitext", "pagelanguage": "en", "touched": page.latest.timestamp,
                        "lastrevid": page.latest.revid, "length": len(page.latest.text.encode())})
            if page.redirect_target is not None:
                out["redirect"] = True
            if "url" in params.get("inprop", "").split("|"):
                url = f"{self.server_url}/index.php/{quote(page.title.replace(' ', '_'), safe=':/')}"
                out.update({"fullurl": url, "editurl": f"{url}?action=edit", "canonicalurl": url})
        if "revisions" in props:
            rvprop = params.get("rvprop", "ids|timestamp|flags|comment|user").split("|")
            revision = page.latest
            entry: dict[str, Any] = {}
            if "ids" in rvprop:
                parent = page.revisions[-2].revid if len(page.revisions) > 1 else 0
                entry.update({"revid": revision.revid, "parentid": parent})
            if "timestamp" in rvprop:
                entry["timestamp"] = revision.timestamp
            if "content" in rvprop:
                entry["slots"] = {"main": {"contentmodel": "wikitext", "contentformat": "text/x-wiki",
                                           "content": revision.text}}
            out["revisions"] = [entry]
        return out

    def _time_range(self, params: dict[str, str], prefix: str) -> tuple[datetime | None, datetime | None, bool]:
        try:
            start = parse_timestamp(params[prefix + "start"]) if params.get(prefix + "start") else None
            end = parse_timestamp(params[prefix + "end"]) if params.get(prefix + "end") else None
        except ValueError:
            raise ApiError("badtimestamp", f'Invalid value for timestamp parameter "{prefix}start" or "{prefix}end".') from None
        return start, end, params.get(prefix + "dir", "older") == "newer"

    def _window(self, entries: list[dict[str, Any]], params: dict[str, str], prefix: str, id_key: str,
                keep) -> tuple[list[dict[str, Any]], dict[str, str] | None]:
        """Entries between start and end in `dir` order, from `continue`, at most `limit` of them."""
        start, end, newer = self._time_range(params, prefix)
        limit = _limit(params.get(prefix + "limit"), prefix + "limit", self._warnings)
        order = sorted(entries, key=lambda e: (e["timestamp"], e[id_key]), reverse=not newer)
        resume = None
        if params.get(prefix + "continue"):
            stamp, _, number = params[prefix + "continue"].partition("|")
            try:
                resume = (mw_timestamp(parse_timestamp(stamp)), int(number))
            except ValueError:
                raise ApiError("badcontinue", "Invalid continue param. You should pass the original value returned by the previous query.") from None
        selected = []
        for entry in order:
            moment = parse_timestamp(entry["timestamp"])
            if start and (moment < start if newer else moment > start):
                continue
            if end and (moment > end if newer else moment < end):
                continue
            key = (entry["timestamp"], entry[id_key])
            if resume and (key < resume if newer else key > resume):
                continue
            if keep(entry):
                selected.append(entry)
        more = selected[limit:]
        cont = None
        if more:
            stamp = parse_timestamp(more[0]["timestamp"]).strftime("%Y%m%d%H%M%S")
            cont = {prefix + "continue": f"{stamp}|{more[0][id_key]}"}
        return selected[:limit], cont

    def _recentchanges(self, params: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, str] | None]:
        namespaces = {int(n) for n in params["rcnamespace"].split("|")} if params.get("rcnamespace") else None
        types = set(params.get("rctype", "edit|new|log|categorize").split("|"))
        props = set(params.get("rcprop", "title|timestamp|ids").split("|"))
        entries, cont = self._window(self.state.recentchanges, params, "rc", "rcid",
                                     lambda e: e["type"] in types and (namespaces is None or e["ns"] in namespaces))
        out = []
        for entry in entries:
            shown = {"type": entry["type"]}
            if "title" in props:
                shown.update(ns=entry["ns"], title=entry["title"])
            if "ids" in props:
                shown.update({k: entry[k] for k in ("pageid", "revid", "old_revid", "rcid")})
            if "timestamp" in props:
                shown["timestamp"] = entry["timestamp"]
            if "loginfo" in props and entry["type"] == "log":
                shown.update({k: entry[k] for k in ("logid", "logtype", "logaction", "logparams")})
            out.append(shown)
        return out, cont

    def _allrevisions(self, params: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, str] | None]:
        """Revisions of existing pages (a deleted page's are archived, out of this list), grouped by page."""
        namespaces = {int(n) for n in params["arvnamespace"].split("|")} if params.get("arvnamespace") else None
        props = set(params.get("arvprop", "ids|timestamp|flags|comment|user").split("|"))
        revisions = [{"revid": revision.revid, "timestamp": revision.timestamp, "page": page}
                     for page, revision in self.state.revisions.values()]
        entries, cont = self._window(revisions, params, "arv", "revid",
                                     lambda e: namespaces is None or e["page"].namespace in namespaces)
        out: list[dict[str, Any]] = []
        for entry in entries:
            page = entry["page"]
            if not out or out[-1]["pageid"] != page.pageid:
                out.append({"pageid": page.pageid, "revisions": [], "ns": page.namespace, "title": page.title})
            shown: dict[str, Any] = {}
            if "ids" in props:
                shown.update(revid=entry["revid"], parentid=0)
            if "timestamp" in props:
                shown["timestamp"] = entry["timestamp"]
            out[-1]["revisions"].append(shown)
        return out, cont

    def _logevents(self, params: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, str] | None]:
        kind = params.get("letype")
        if kind is not None and kind not in {"create", "delete", "move", "protect", "upload", "block", "newusers"}:
            raise ApiError("badvalue", f'Unrecognized value for parameter "letype": {kind}.')
        namespace = int(params["lenamespace"]) if params.get("lenamespace") else None
        entries, cont = self._window(self.state.logevents, params, "le", "logid",
                                     lambda e: (kind is None or e["type"] == kind)
                                     and (namespace is None or e["ns"] == namespace))
        props = set(params.get("leprop", "ids|title|type|user|timestamp|comment|details").split("|"))
        out = []
        for entry in entries:
            shown: dict[str, Any] = {}
            if "ids" in props:
                shown.update(logid=entry["logid"], pageid=entry["pageid"], logpage=entry["logpage"])
            if "title" in props:
                shown.update(ns=entry["ns"], title=entry["title"])
            if "details" in props:
                shown["params"] = entry["params"]
            if "type" in props:
                shown.update(type=entry["type"], action=entry["action"])
            if "timestamp" in props:
                shown["timestamp"] = entry["timestamp"]
            out.append(shown)
        return out, cont

    # ---- action=parse -----------------------------------------------------------------------
    def _parse(self, params: dict[str, str], warnings: list[str]) -> dict[str, Any]:
        self._unknown(params, COMMON_PARAMETERS | PARSE_PARAMETERS, warnings)
        if params.get("oldid"):
            try:
                page, revision = self.state.revisions[int(params["oldid"])]
            except (KeyError, ValueError):
                raise ApiError("nosuchrevid", f"There is no revision with ID {params['oldid']}.") from None
        elif params.get("page"):
            page = self.state.pages.get(normalize(params["page"]))
            if page is None:
                raise ApiError("missingtitle", "The page you specified doesn't exist.")
            revision = page.latest
        else:
            raise ApiError("invalidparammix", 'One of the parameters "page", "oldid" or "text" is required.')
        props = params.get("prop", "text|langlinks|categories|links|templates|images|externallinks|sections|revid|displaytitle|iwlinks|properties|parsewarnings").split("|")
        out: dict[str, Any] = {"title": page.title, "pageid": page.pageid}
        if "revid" in props:
            out["revid"] = revision.revid
        if "text" in props:
            out["text"] = render(revision.text, edit_sections=params.get("disableeditsection") is None,
                                 limit_report=params.get("disablelimitreport") is None)
        if "displaytitle" in props:
            out["displaytitle"] = f'<span class="mw-page-title-main">{html.escape(page.title)}</span>'
        return {"parse": out}

    # ---- action=login -----------------------------------------------------------------------
    def _login(self, params: dict[str, str], session: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
        self._unknown(params, COMMON_PARAMETERS | LOGIN_PARAMETERS, warnings)
        token = params.get("lgtoken")
        if not token or token != session["login_token"]:
            return {"login": {"result": "WrongToken"}}
        session["login_token"] = None
        name, password = params.get("lgname", ""), params.get("lgpassword", "")
        if self.bot_passwords.get(name) != password:
            return {"login": {"result": "Failed",
                              "reason": "Incorrect username or password entered. Please try again."}}
        session["user"] = name.split("@")[0]
        return {"login": {"result": "Success", "lguserid": 1, "lgusername": session["user"]}}


def request_params(request: Request) -> dict[str, str]:
    """A request's parameters: its query string plus, for a POST, its form body."""
    params = {name: values[-1] for name, values in request.query.items()}
    if request.method == "POST" and request.body:
        params.update(parse_qsl(request.body.decode(), keep_blank_values=True))
    return params


class MediaWikiApp:
    """The FaultServer application: api.php over HTTP, plus the wiki's own maxlag errors."""

    def __init__(self, api: MediaWikiApi):
        self.api = api
        self.maxlag: list[Maxlag] = []
        self._lock = threading.Lock()

    def handle(self, request: Request) -> Reply:
        if request.path != "/api.php":
            return Reply(404, b"Not Found", {"Content-Type": "text/plain"})
        params = request_params(request)
        # One injected fault per request: a reply already made slow or cut off does not also spend a maxlag
        # error, which its client would never read (it timed out), so tests can count what clients saw.
        lagged = self._lagged(params) if request.fault is None else None
        if lagged:
            body = {"error": {"code": "maxlag", "info": f"Waiting for a database server: {lagged.lag} seconds lagged.",
                              "host": "db1", "lag": lagged.lag, "type": "db"}}
            return Reply(200, body, {"Content-Type": "application/json; charset=utf-8",
                                     "Retry-After": lagged.retry_after or str(max(int(float(params["maxlag"])), 5)),
                                     "X-Database-Lag": str(lagged.lag), "MediaWiki-API-Error": "maxlag"})
        cookie = re.search(r"wiki_session=([0-9a-f]+)", request.headers.get("Cookie", ""))
        body, new_session = self.api.handle(request.method, params, cookie.group(1) if cookie else None)
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if new_session:
            headers["Set-Cookie"] = f"wiki_session={new_session}; path=/; HttpOnly"
        if "error" in body:
            headers["MediaWiki-API-Error"] = body["error"]["code"]
        return Reply(200, body, headers)

    def error(self, status: int, message: str) -> Reply:
        """What a proxy in front of a wiki answers for 429/503: a short HTML page."""
        return Reply(status, f"<html><body><h1>{status}</h1>{html.escape(message)}</body></html>".encode(),
                     {"Content-Type": "text/html; charset=utf-8"})

    def _lagged(self, params: dict[str, str]) -> Maxlag | None:
        if not params.get("maxlag"):
            return None  # the wiki checks lag only for requests that send maxlag
        with self._lock:
            for fault in self.maxlag:
                if fault.count > 0 and fault.lag > float(params["maxlag"]):
                    fault.count -= 1
                    return fault
        return None


class MediaWikiServer(FaultServer):
    """A wiki's api.php on http://127.0.0.1:PORT, with the FaultServer's faults and the wiki's maxlag."""

    def __init__(self, *, bot_passwords: dict[str, str] | None = None, private: bool = False,
                 start: datetime = datetime(2024, 1, 1, tzinfo=timezone.utc), rc_max_age: timedelta | None = None):
        self.state = WikiState(start, rc_max_age)
        super().__init__(MediaWikiApp(MediaWikiApi(self.state, "", bot_passwords or {}, private)))
        self.app.api.server_url = self.url
        self.api_url = f"{self.url}/api.php"

    # ---- changing the wiki ------------------------------------------------------------------
    def import_pages(self, pages: dict[str, str]) -> None:
        """Create pages without recent-changes rows or log entries, like importTextFiles.php."""
        with self.state.lock:
            for title, text in pages.items():
                self.state.create(title, text, record=False)

    def add_page(self, title: str, text: str) -> None:
        with self.state.lock:
            self.state.create(title, text, record=True)

    def edit_page(self, title: str, text: str) -> int:
        with self.state.lock:
            return self.state.edit(title, text).revid

    def delete_page(self, title: str) -> None:
        with self.state.lock:
            self.state.delete(title)

    def move_page(self, old: str, new: str, leave_redirect: bool = True) -> None:
        with self.state.lock:
            self.state.move(old, new, leave_redirect)

    def advance(self, seconds: float = 1.0) -> None:
        """Move the wiki's clock on; changes made in the same simulated second share a timestamp."""
        with self.state.lock:
            self.state.now += timedelta(seconds=seconds)

    def revision(self, title: str) -> int:
        with self.state.lock:
            return self.state.pages[normalize(title)].latest.revid

    def titles(self, namespace: int | None = None) -> set[str]:
        """Titles of the pages (redirects left out), in one namespace or all."""
        with self.state.lock:
            return {p.title for p in self.state.pages.values()
                    if (namespace is None or p.namespace == namespace) and p.redirect_target is None}

    def expire_sessions(self) -> None:
        with self.state.lock:
            self.app.api.sessions.clear()

    # ---- faults and measurements --------------------------------------------------------------
    def maxlag_next(self, count: int, lag: int = 10, retry_after: str | None = "1") -> None:
        """The next `count` requests sending a maxlag below `lag`, and hit by no other injected fault,
        get the maxlag error."""
        with self.app._lock:
            self.app.maxlag.append(Maxlag(count, lag, retry_after))

    def fail_parse_of(self, title: str, status: int = 503) -> None:
        """Answer `status` to every `action=parse` of the page `title` (by title or by any of its revisions),
        as a wiki behind a proxy does while rendering that page times out, until `clear_faults`."""
        title = normalize(title)

        def parses_the_page(request: Request) -> bool:
            params = request_params(request)
            if params.get("action") != "parse":
                return False
            with self.state.lock:
                page = self.state.pages.get(title)
                revisions = {str(revision.revid) for revision in page.revisions} if page else set()
            return normalize(params.get("page", "")) == title or params.get("oldid") in revisions

        self.fail_matching(parses_the_page, status)

    def reset_requests(self) -> None:
        """Forget the requests so far (to count those of the next run alone)."""
        with self._lock:
            self.requests.clear()

    @property
    def warnings(self) -> list[str]:
        return self.app.api.warnings

    def params(self) -> list[dict[str, str]]:
        """Parameters of every request so far, in arrival order."""
        with self._lock:
            return [request_params(r) for r in self.requests]
