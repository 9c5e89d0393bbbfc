"""A MediaWiki wiki through its Action API (`api.php`, `format=json&formatversion=2`).

- Full listing: `generator=allpages` per configured namespace (redirects left out) with
  `prop=info`, paged with the API's `continue` protocol. A page's id is its title as the wiki
  shows it (`Help:Glossary`), its version the id of its latest revision (`lastrevid` of
  `prop=info`, so `prop=revisions` would add nothing to a listing but bytes).
- Text: `action=parse` of that revision, HTML reduced to plain text (see `fetch`).
- Incremental: `list=recentchanges` (edits, creations, log rows) plus `list=logevents` for
  deletions and moves, from the stored cursor up to the wiki's current time. Every title they
  name is then looked up once: a page that exists in a configured namespace is an upsert, a
  missing page or a redirect (the old title of a moved page) is a deletion. Deciding from the
  page's current state, not from the kind of event, keeps delete-then-restore, move-then-edit
  and the like right. importTextFiles.php writes no recent-changes rows: pages imported that
  way are picked up by a full listing (`vectormill backfill --full`).
- Every request sends `maxlag`; a maxlag error is retried after its `Retry-After`.
- Optional login with a bot password (Special:BotPasswords, user name `User@app`): user name
  from `bot_user_env`, password from `bot_password_env` or the Prefect Secret block
  `bot_password_secret_block`; after login every request asserts it (`assert=user`), so an
  expired session is noticed and renewed instead of silently reading as an anonymous user.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from typing import Any, Literal

from .base import Changes, Document, DocumentRef, Page
from .errors import DocumentEmpty, DocumentError, DocumentGone, SourceError
from .http import HttpClient, HttpStats, HttpStatusError, HttpUnavailableError
from .secrets import resolve_secret
from .settings import MediaWikiSourceSettings

logger = logging.getLogger("vectormill.mediawiki")

MAX_TITLES_PER_QUERY = 50  # the API's limit of `titles` per request for a non-bot account
STALE = "older than the oldest recent change the wiki holds"
DEFAULT_MAXLAG_WAIT = 5.0  # what MediaWiki sends as Retry-After for maxlag when the header is lost


def _shifted(timestamp: str, seconds: int) -> str:
    """A wiki timestamp (`2024-01-01T00:00:00Z`, one-second resolution) moved by `seconds`."""
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00")) + timedelta(seconds=seconds)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def maxlag_delay(response) -> float | None:
    """Seconds to wait when the wiki answered a (HTTP 200) maxlag error, else None.

    MediaWiki marks API errors with the `MediaWiki-API-Error` header; the body is parsed only
    when the header is missing (stripped by a proxy) and the body mentions maxlag at all.
    """
    code = response.headers.get("MediaWiki-API-Error")
    if code is None and b'"maxlag"' in response.content:
        try:
            code = (response.json().get("error") or {}).get("code")
        except (ValueError, AttributeError):
            return None
    if code != "maxlag":
        return None
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return DEFAULT_MAXLAG_WAIT


class _TextExtractor(HTMLParser):
    """Visible text of parser output: paragraphs and headings apart, list items and table rows
    one per line, table cells separated by tabs;
    the table of contents, edit-section links, reference markers, styles and scripts are left out."""

    BLOCKS = {"p", "div", "table", "ul", "ol", "dl", "pre", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6",
              "figure", "figcaption", "caption", "hr"}  # a paragraph of their own
    LINES = {"br", "li", "dd", "dt", "tr"}  # a line of their own
    CELLS = {"td", "th"}
    SKIPPED_TAGS = {"style", "script", "noscript"}
    SKIPPED_CLASSES = {"toc", "mw-editsection", "reference", "mw-empty-elt"}
    VOID = {"br", "hr", "img", "input", "meta", "link", "wbr", "area", "base", "col", "embed", "source", "track"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping: list[str] = []  # open tags inside a skipped element (its own tag first)
        self._preformatted = 0  # depth of <pre>, where line breaks of the source are kept

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skipping:
            if tag not in self.VOID:
                self._skipping.append(tag)
            return
        classes = set((dict(attrs).get("class") or "").split())
        if (tag in self.SKIPPED_TAGS or classes & self.SKIPPED_CLASSES or dict(attrs).get("id") == "toc") \
                and tag not in self.VOID:
            self._skipping.append(tag)
            return
        if tag == "pre":
            self._preformatted += 1
        if tag in self.BLOCKS or tag in self.LINES:
            self.parts.append("\n")
        elif tag in self.CELLS:
            self.parts.append("\t")

    def handle_endtag(self, tag: str) -> None:
        if self._skipping:
            # Pop to the matching open tag; HTML from the parser is well formed, this tolerates strays.
            if tag in self._skipping:
                while self._skipping.pop() != tag:
                    pass
            return
        if tag == "pre":
            self._preformatted = max(0, self._preformatted - 1)
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            # Outside <pre>, a line break in HTML source is just white space.
            self.parts.append(data if self._preformatted else data.replace("\n", " "))

    def text(self) -> str:
        lines = ("\t".join(cell for cell in (" ".join(c.split()) for c in line.split("\t")) if cell)
                 for line in "".join(self.parts).splitlines())
        out: list[str] = []
        for line in lines:
            if line or (out and out[-1]):  # at most one blank line in a row
                out.append(line)
        return "\n".join(out).strip()


def html_to_text(markup: str) -> str:
    extractor = _TextExtractor()
    extractor.feed(markup)
    extractor.close()
    return extractor.text()


class MediaWikiSource:
    """One wiki. Thread-safe: fetch tasks of a run share its HTTP session, login and rate limit."""

    def __init__(self, settings: MediaWikiSourceSettings):
        self.settings = settings
        self.name = settings.name
        self._user = os.environ.get(settings.bot_user_env or "", "") or None
        self._password = None
        if settings.bot_user_env:
            if not self._user:
                raise SourceError(f"MediaWiki source {self.name!r}: environment variable {settings.bot_user_env} "
                                  "(the bot user name, 'User@app') is not set or empty; export it before the run")
            self._password = resolve_secret(env=settings.bot_password_env, block=settings.bot_password_secret_block,
                                            what=f"bot password of MediaWiki source {self.name!r}")
        self._client = HttpClient(self.name, settings, secret_values=(self._password,) if self._password else ())
        self._login_lock = threading.Lock()
        self._logins = 0  # successful logins so far; a session that expired is renewed once, by one thread
        self._warned: set[str] = set()  # API warnings logged already (once each, not once per request)

    # ---- listing ------------------------------------------------------------------------------
    @property
    def http_stats(self) -> HttpStats:
        return self._client.stats

    def list_documents(self) -> Iterator[DocumentRef]:
        self._client.reset_circuit()  # the source outlives a run in a long-lived process
        for namespace in self.settings.namespaces:
            params = {"action": "query", "generator": "allpages", "gapnamespace": namespace,
                      "gaplimit": self.settings.api_limit, "gapfilterredir": "nonredirects", "prop": "info"}
            for body in self._continued(params):
                for page in body.get("query", {}).get("pages", []):
                    if "lastrevid" in page:
                        yield DocumentRef(page["title"], str(page["lastrevid"]), page.get("touched"))

    def current_cursor(self) -> str:
        """The wiki's current time (`meta=siteinfo`), not the newest recent change: recent changes
        may be empty (imports write none), and the wiki's own clock has no skew against its timestamps."""
        return self._wiki_time()

    def changes_since(self, cursor: str) -> Changes:
        """Pages edited, created, deleted or moved from `cursor` (inclusive: timestamps have
        one-second resolution, and a page seen twice is an unchanged version the flow skips).

        Both lists end at the wiki's time taken first, so the newest timestamp seen, returned as
        the next cursor, never passes a change that one list saw and the other did not.
        """
        self._client.reset_circuit()
        until = self._wiki_time()
        newest = cursor
        touched: dict[str, None] = {}  # titles, in order seen
        held_from = self._recent_changes_lost(cursor, until)
        if held_from is not False:
            logger.warning("source %s: the cursor %s is %s (MediaWiki keeps them for $wgRCMaxAge, 90 days by "
                           "default), and pages changed in between: listing every page and comparing revision ids",
                           self.name, cursor, f"{STALE} ({held_from or 'none left'})")
        else:
            recent = {"action": "query", "list": "recentchanges", "rcstart": cursor, "rcend": until,
                      "rcdir": "newer", "rcnamespace": self._namespaces, "rctype": "edit|new|log",
                      "rcprop": "title|timestamp|loginfo", "rclimit": self.settings.api_limit}
            for body in self._continued(recent):
                for change in body.get("query", {}).get("recentchanges", []):
                    newest = max(newest, change.get("timestamp", newest))
                    touched.update(dict.fromkeys(self._titles_of(change, change.get("logparams"))))
        for log_type in ("delete", "move"):
            events = {"action": "query", "list": "logevents", "letype": log_type, "lestart": cursor, "leend": until,
                      "ledir": "newer", "leprop": "title|type|timestamp|details", "lelimit": self.settings.api_limit}
            for body in self._continued(events):
                for event in body.get("query", {}).get("logevents", []):
                    newest = max(newest, event.get("timestamp", newest))
                    touched.update(dict.fromkeys(self._titles_of(event, event.get("params"))))
        upserts, deletions = self._current_state(touched)
        if held_from is not False:
            # Every page as of `until` or later: the flow fetches those whose revision differs from the
            # stored one. Deletions and moves still come from the logs, which the wiki keeps for good.
            return Changes(upserts=self.list_documents(), deletions=deletions, cursor=until)
        return Changes(upserts=upserts, deletions=deletions, cursor=newest)

    @property
    def _namespaces(self) -> str:
        return "|".join(str(n) for n in self.settings.namespaces)

    def _recent_changes_lost(self, cursor: str, until: str) -> str | None | Literal[False]:
        """False when the recent changes hold every edit since `cursor`; else the time of the oldest
        recent change the wiki still holds (None: it holds none).

        MediaWiki purges recent changes older than $wgRCMaxAge but keeps revisions and logs for good:
        when the oldest recent change held is newer than the cursor, a revision between the two is an
        edit whose row is gone (or an import, which writes none), and the window cannot be trusted.
        """
        oldest = {"action": "query", "list": "recentchanges", "rcdir": "newer", "rclimit": 1, "rcprop": "timestamp"}
        changes = self._call(oldest, SourceError).get("query", {}).get("recentchanges") or [{}]
        held_from = changes[0].get("timestamp")
        if held_from is not None and held_from <= cursor:
            return False
        start, end = _shifted(cursor, 1), _shifted(held_from, -1) if held_from else until
        if start > end:
            return False
        revisions = {"action": "query", "list": "allrevisions", "arvstart": start, "arvend": end, "arvdir": "newer",
                     "arvnamespace": self._namespaces, "arvprop": "timestamp", "arvlimit": 1}
        for body in self._continued(revisions):
            if body.get("query", {}).get("allrevisions"):
                return held_from
        return False

    @staticmethod
    def _titles_of(entry: dict[str, Any], params: dict[str, Any] | None) -> list[str]:
        """The page an event names, and for a move its new title (hidden entries name none)."""
        titles = [entry["title"]] if entry.get("title") else []
        if isinstance(params, dict) and params.get("target_title"):
            titles.append(params["target_title"])
        return titles

    def _current_state(self, titles: Iterable[str]) -> tuple[list[DocumentRef], list[str]]:
        """Pages of the configured namespaces: upserts where they exist, deletions where they are
        missing or a redirect (the old title of a moved page)."""
        titles = list(titles)
        upserts: list[DocumentRef] = []
        deletions: list[str] = []
        for start in range(0, len(titles), MAX_TITLES_PER_QUERY):
            batch = {"action": "query", "prop": "info", "titles": "|".join(titles[start:start + MAX_TITLES_PER_QUERY])}
            for body in self._continued(batch):
                for page in body.get("query", {}).get("pages", []):
                    if page.get("invalid") or page.get("ns") not in self.settings.namespaces:
                        continue
                    if page.get("missing") or page.get("redirect"):
                        deletions.append(page["title"])
                    elif "lastrevid" in page:
                        upserts.append(DocumentRef(page["title"], str(page["lastrevid"]), page.get("touched")))
        return upserts, deletions

    # ---- one page -------------------------------------------------------------------------------
    def fetch(self, ref: DocumentRef) -> Document:
        """The page's latest revision as plain text, with its URL, revision id and timestamp.

        The text comes from `action=parse` (the wiki's own parser: templates expanded, tables,
        lists and links rendered as readers see them) reduced from HTML to text here. The other
        ways were worse: `prop=extracts` needs the TextExtracts extension, which core wikis lack,
        and stripping raw wikitext leaves template calls and table syntax (or drops their text).
        Metadata and text come from the same revision: `prop=info|revisions` names it, then
        `action=parse&oldid=` renders exactly it (two requests per page).
        """
        body = self._call({"action": "query", "titles": ref.id, "prop": "info|revisions", "inprop": "url",
                           "rvprop": "ids|timestamp"}, DocumentError)
        pages = body.get("query", {}).get("pages") or [{}]
        page = pages[0]
        if page.get("invalid"):
            raise DocumentError(f"not a valid page title: {page.get('invalidreason', 'rejected by the wiki')}")
        if page.get("missing") or not page.get("revisions"):
            raise DocumentGone("page no longer exists on the wiki (deleted or moved since it was listed)")
        if page.get("redirect"):
            raise DocumentGone("page is now a redirect (moved since it was listed); its new title is read on its own")
        revision = page["revisions"][0]
        parsed = self._call({"action": "parse", "oldid": revision["revid"], "prop": "text",
                             "disablelimitreport": 1, "disableeditsection": 1}, DocumentError)
        text = html_to_text(parsed.get("parse", {}).get("text", ""))
        if not text:
            raise DocumentEmpty(f"revision {revision['revid']} has no text")
        url = page.get("canonicalurl") or page.get("fullurl") or self.settings.api_url
        return Document(
            source=self.name,
            id=ref.id,
            version=str(revision["revid"]),
            title=page["title"],
            pages=(Page(None, text),),
            location=url,
            modified=revision.get("timestamp"),
            metadata={"revision_id": str(revision["revid"]), "page_id": str(page.get("pageid", "")),
                      "namespace": str(page.get("ns", "")), "url": url},
        )

    def check(self) -> str:
        """One request that needs the wiki and (if configured) the login: a line for `sources check`."""
        general = self._call({"action": "query", "meta": "siteinfo", "siprop": "general"}, SourceError)
        general = general.get("query", {}).get("general", {})
        who = f", logged in as {self._user}" if self._user else ""
        return f"{general.get('sitename', '?')} ({general.get('generator', 'MediaWiki')}){who}"

    def close(self) -> None:
        self._client.close()

    # ---- the API --------------------------------------------------------------------------------
    def _wiki_time(self) -> str:
        body = self._call({"action": "query", "meta": "siteinfo", "siprop": "general"}, SourceError)
        try:
            return body["query"]["general"]["time"]
        except (KeyError, TypeError):
            raise SourceError(f"MediaWiki source {self.name!r}: siteinfo has no time; is {self.settings.api_url} "
                              "a MediaWiki api.php?") from None

    def _continued(self, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every answer of a query, following `continue` until the API has no more."""
        params = {"continue": "", **params}
        while True:
            body = self._call(params, SourceError)
            yield body
            if "continue" not in body:
                return
            params.update(body["continue"])

    def _call(self, params: dict[str, Any], error: type[Exception], relogin: bool = True) -> dict[str, Any]:
        """One API request; an API error raises `error` (SourceError for listings, DocumentError for a page)."""
        session = self._ensure_login()
        full = {"format": "json", "formatversion": "2", "maxlag": self.settings.maxlag, **params}
        if self._user:
            full["assert"] = "user"
        body = self._request("GET", full, error)
        problem = body.get("error")
        if isinstance(problem, dict):
            if problem.get("code") == "assertuserfailed" and self._user and relogin:
                self._ensure_login(expired=session)
                return self._call(params, error, relogin=False)
            raise error(self._api_error_message(problem, params))
        warnings = json.dumps(body["warnings"], sort_keys=True) if body.get("warnings") else None
        if warnings and warnings not in self._warned:
            self._warned.add(warnings)
            logger.warning("source %s: the wiki warns about %s requests: %s", self.name, params.get("action"),
                           self._client.redact(warnings))
        return body

    def _request(self, method: str, params: dict[str, Any], error: type[Exception]) -> dict[str, Any]:
        try:
            if method == "POST":
                response = self._client.post(self.settings.api_url, data=params, retry_after_body=maxlag_delay)
            else:
                response = self._client.get(self.settings.api_url, params=params, retry_after_body=maxlag_delay)
        except (HttpStatusError, HttpUnavailableError) as exc:
            # Retries exhausted on one page fail that page; the circuit breaker stops a dead wiki.
            raise error(str(exc)) from None
        try:
            body = response.json()
        except ValueError:
            raise error(f"MediaWiki source {self.name!r}: the answer of {self.settings.api_url} is not JSON "
                        f"(content type {response.headers.get('Content-Type', '?')}); check api_url points at "
                        "the wiki's api.php") from None
        if not isinstance(body, dict):
            raise error(f"MediaWiki source {self.name!r}: unexpected answer from {self.settings.api_url}")
        return body

    def _api_error_message(self, problem: dict[str, Any], params: dict[str, Any]) -> str:
        code, info = problem.get("code", "?"), self._client.redact(str(problem.get("info", "")))
        hint = ""
        if code == "readapidenied":
            hint = "; the wiki needs a login to read: set bot_user_env and bot_password_env"
        elif code == "maxlag":
            hint = f"; the wiki stayed lagged past every retry (maxlag = {self.settings.maxlag})"
        what = "page " + repr(params["titles"]) if "titles" in params and params.get("action") == "query" \
            else str(params.get("list") or params.get("generator") or params.get("meta") or params.get("action"))
        return f"MediaWiki source {self.name!r}: API error {code} for {what}: {info}{hint}"

    # ---- login ----------------------------------------------------------------------------------
    def _ensure_login(self, expired: int | None = None) -> int:
        """Log in unless logged in already (or, given the number of an `expired` login, unless
        another thread renewed it since); returns the current login's number."""
        if not self._user:
            return 0
        with self._login_lock:
            if self._logins == 0 or self._logins == expired:
                if expired:
                    logger.info("source %s: the wiki session expired, logging in again", self.name)
                self._login()
                self._logins += 1
            return self._logins

    def _login(self) -> None:
        """Bot-password login: a login token (meta=tokens), then action=login as a POST."""
        base = {"format": "json", "formatversion": "2", "maxlag": self.settings.maxlag}
        tokens = self._request("GET", {**base, "action": "query", "meta": "tokens", "type": "login"}, SourceError)
        token = tokens.get("query", {}).get("tokens", {}).get("logintoken")
        if not token:
            raise SourceError(f"MediaWiki source {self.name!r}: no login token from {self.settings.api_url} "
                              f"({self._client.redact(json.dumps(tokens.get('error', tokens))[:200])})")
        answer = self._request("POST", {**base, "action": "login", "lgname": self._user, "lgpassword": self._password,
                                        "lgtoken": token}, SourceError)
        login = answer.get("login") or {}
        if login.get("result") != "Success":
            reason = login.get("reason") or (answer.get("error") or {}).get("info") or ""
            raise SourceError(
                f"MediaWiki source {self.name!r}: login as {self._user!r} failed ({login.get('result', 'error')}"
                f"{': ' + self._client.redact(str(reason)) if reason else ''}); check the bot password in "
                f"{self.settings.bot_password_env or 'Secret block ' + repr(self.settings.bot_password_secret_block)} "
                "and the user name ('User@app' from Special:BotPasswords)"
            )
        logger.info("source %s: logged in as %s", self.name, self._user)
