"""The MediaWiki source against a real HTTP server that speaks the Action API (tests/servers/mediawiki_server.py)."""

from __future__ import annotations

import itertools
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from vectormill.connectors.base import DocumentRef
from vectormill.connectors.errors import DocumentError, DocumentGone, SourceError
from vectormill.connectors.mediawiki import MediaWikiSource, html_to_text
from vectormill.connectors.settings import MediaWikiSourceSettings
from vectormill.flows.config import ConfigError, parse_config

from .servers.mediawiki_server import MediaWikiServer, request_params

MAIN_PAGES = 260
HELP_PAGES = 40
API_LIMIT = 25
_names = itertools.count()


def page_text(number: int) -> str:
    return (f"== Overview ==\nRunbook {number} restarts service {number} with '''care''' "
            f"(see [[Runbook {number + 1}|the next one]]).\n\nCall the on-call engineer if step {number} fails.")


def make_source(wiki: MediaWikiServer, **overrides) -> MediaWikiSource:
    """A source with a fresh name: rate-limit buckets are shared per name within the process."""
    values = dict(name=f"wiki-{next(_names)}", type="mediawiki", api_url=wiki.api_url, namespaces=(0, 12),
                  api_limit=API_LIMIT, requests_per_second=500, burst=50, max_backoff_seconds=2)
    values.update(overrides)
    return MediaWikiSource(MediaWikiSourceSettings(**values))


@pytest.fixture
def wiki():
    with MediaWikiServer() as server:
        server.import_pages({f"Runbook {n}": page_text(n) for n in range(MAIN_PAGES)})
        server.import_pages({f"Help:Topic {n}": f"Help text number {n}." for n in range(HELP_PAGES)})
        server.import_pages({"User:Someone": "A user page, outside the configured namespaces."})
        yield server


def test_full_listing_pages_through_continue_per_namespace(wiki):
    wiki.move_page("Runbook 7", "Runbook Seven")  # leaves a redirect at "Runbook 7", which is no document
    source = make_source(wiki)

    refs = list(source.list_documents())

    expected = wiki.titles(0) | wiki.titles(12)
    assert len(refs) == len(expected) == MAIN_PAGES + HELP_PAGES
    assert {ref.id for ref in refs} == expected
    assert "Runbook 7" not in expected and "Help:Topic 3" in expected
    assert all(ref.version == str(wiki.revision(ref.id)) for ref in refs)
    listing = wiki.params()
    assert [p["gapnamespace"] for p in listing].count("0") == math.ceil(MAIN_PAGES / API_LIMIT)
    assert [p["gapnamespace"] for p in listing].count("12") == math.ceil(HELP_PAGES / API_LIMIT)
    assert all(p["maxlag"] == "5" and p["format"] == "json" and p["formatversion"] == "2" for p in listing)
    assert wiki.warnings == []  # every parameter sent is one the API knows


def test_fetch_gives_the_rendered_text_and_the_page_metadata(wiki):
    wiki.add_page("Help:Glossary", "Intro line.\n\n== Terms ==\n'''SLO''' means [[Service level|service level]] "
                  "objective.\n== More ==\nx\n== Even more ==\ny\n== Last ==\nz")
    source = make_source(wiki)
    ref = next(r for r in source.list_documents() if r.id == "Help:Glossary")

    document = source.fetch(ref)

    assert (document.id, document.title, document.version) == ("Help:Glossary", "Help:Glossary", ref.version)
    assert document.text.startswith("Intro line.\n\nTerms\n\nSLO means service level objective.")
    for noise in ("Contents", "edit", "NewPP", "<", "'''", "[["):  # TOC, edit links, limit report, markup
        assert noise not in document.text
    assert document.location == f"{wiki.url}/index.php/Help:Glossary"
    assert document.modified == "2024-01-01T00:00:00Z"
    assert document.metadata["revision_id"] == ref.version and document.metadata["namespace"] == "12"
    # Text and metadata are of the same revision: the parse names the revision the query returned.
    assert wiki.params()[-1]["oldid"] == ref.version
    assert wiki.warnings == []


def test_html_to_text_keeps_table_rows_and_drops_styles_and_reference_marks():
    markup = ('<div class="mw-parser-output"><style>.x{color:red}</style><table><tbody><tr><th>Host</th>\n'
              '<th>Port\n</th></tr><tr><td>db1</td><td>5432</td></tr></tbody></table>'
              '<p>See note<sup class="reference"><a href="#n1">[1]</a></sup> &amp; more.</p><pre>a\n b</pre></div>')
    assert html_to_text(markup) == "Host\tPort\ndb1\t5432\n\nSee note & more.\n\na\nb"


def test_a_page_gone_since_listing_is_gone_and_a_bad_title_a_document_error(wiki):
    source = make_source(wiki)
    refs = {ref.id: ref for ref in source.list_documents()}
    wiki.delete_page("Runbook 1")
    wiki.move_page("Runbook 2", "Runbook Two")

    with pytest.raises(DocumentGone, match="no longer exists"):
        source.fetch(refs["Runbook 1"])
    with pytest.raises(DocumentGone, match="redirect"):
        source.fetch(refs["Runbook 2"])
    with pytest.raises(DocumentError, match="not a valid page title") as bad:
        source.fetch(DocumentRef("Bad[title", "1"))
    assert not isinstance(bad.value, DocumentGone)  # a title the wiki rejects is no proof the page is gone


def test_changes_since_returns_exactly_the_edits_creations_deletions_and_moves(wiki):
    source = make_source(wiki)
    cursor = source.current_cursor()
    assert cursor == "2024-01-01T00:00:00Z"
    assert len(list(source.list_documents())) == MAIN_PAGES + HELP_PAGES

    # Changes in the cursor's own second are seen (timestamps have one-second resolution).
    wiki.edit_page("Runbook 3", "Runbook 3, rewritten.")
    wiki.advance(5)
    wiki.edit_page("Help:Topic 4", "Help 4, rewritten.")
    wiki.add_page("Runbook New", "A new runbook.")
    wiki.delete_page("Runbook 5")
    wiki.move_page("Runbook 6", "Runbook Six")  # redirect left at the old title
    wiki.move_page("Runbook 8", "Help:Runbook 8", leave_redirect=False)  # into another configured namespace
    wiki.move_page("Runbook 9", "User:Runbook 9", leave_redirect=False)  # out of the configured namespaces
    wiki.move_page("User:Someone", "Runbook From User", leave_redirect=False)  # into them
    wiki.edit_page("Runbook 10", "Edited twice, once.")
    wiki.edit_page("Runbook 10", "Edited twice, twice.")
    wiki.add_page("User:Elsewhere", "Not in a configured namespace.")
    wiki.add_page("Runbook Gone", "Created and deleted between two runs.")
    wiki.delete_page("Runbook Gone")
    wiki.import_pages({"Runbook Imported": "importTextFiles.php writes no recent changes."})
    wiki.advance(2)

    changes = source.changes_since(cursor)

    upserts = {ref.id: ref.version for ref in changes.upserts}
    changed = ["Runbook 3", "Help:Topic 4", "Runbook New", "Runbook Six", "Help:Runbook 8",
               "Runbook From User", "Runbook 10"]
    assert upserts == {title: str(wiki.revision(title)) for title in changed}
    assert set(changes.deletions) == {"Runbook 5", "Runbook 6", "Runbook 8", "Runbook 9", "Runbook Gone"}
    assert changes.cursor == "2024-01-01T00:00:05Z"  # the newest change seen, not the wiki's clock now
    assert wiki.warnings == []

    # From that cursor: the changes of its own second again (at the same versions: the flow skips
    # them without fetching), plus what changed since.
    wiki.edit_page("Runbook 11", "Later edit.")
    again = source.changes_since(changes.cursor)
    later = {ref.id: ref.version for ref in again.upserts}
    assert later.pop("Runbook 11") == str(wiki.revision("Runbook 11"))
    assert later.items() <= upserts.items()
    assert again.cursor == "2024-01-01T00:00:07Z"


def test_changes_are_paged_with_continue(wiki):
    source = make_source(wiki, api_limit=3)
    cursor = source.current_cursor()
    for n in range(20):
        wiki.edit_page(f"Runbook {n}", f"edit {n}")
    for n in range(20, 27):
        wiki.delete_page(f"Runbook {n}")
    for n in range(27, 31):
        wiki.move_page(f"Runbook {n}", f"Moved {n}", leave_redirect=False)

    changes = source.changes_since(cursor)

    assert {ref.id for ref in changes.upserts} == {f"Runbook {n}" for n in range(20)} | {f"Moved {n}" for n in range(27, 31)}
    assert set(changes.deletions) == {f"Runbook {n}" for n in range(20, 31)}
    assert len([p for p in wiki.params() if p.get("list") == "recentchanges" and "rcstart" in p]) == math.ceil(31 / 3)
    assert len([p for p in wiki.params() if p.get("letype") == "delete"]) == math.ceil(7 / 3)


STALE = "older than the oldest recent change the wiki holds"


def test_a_cursor_older_than_the_wikis_recent_changes_lists_fully_and_says_so_once(caplog):
    with MediaWikiServer(rc_max_age=timedelta(days=90)) as wiki:
        wiki.import_pages({f"Runbook {n}": page_text(n) for n in range(30)})
        source = make_source(wiki)
        cursor = source.current_cursor()
        assert len(list(source.list_documents())) == 30
        wiki.advance(3600)
        edited_early = wiki.edit_page("Runbook 3", "Edited a day after the last run.")
        wiki.add_page("Runbook Early", "Created then.")
        wiki.delete_page("Runbook 4")
        wiki.move_page("Runbook 5", "Runbook Five", leave_redirect=False)
        wiki.advance(100 * 86400)  # a schedule paused for a quarter: those rows are purged by the next edit
        edited_late = wiki.edit_page("Runbook 6", "Edited recently.")
        wiki.advance(1)
        assert wiki.state.recentchanges[0]["title"] == "Runbook 6"

        with caplog.at_level(logging.INFO, logger="vectormill.mediawiki"):
            changes = source.changes_since(cursor)
            upserts = {ref.id: ref.version for ref in changes.upserts}

        # Every page, at its current revision (the flow fetches only those whose revision changed).
        assert upserts == {title: str(wiki.revision(title)) for title in wiki.titles(0)}
        assert upserts["Runbook 3"] == str(edited_early) and upserts["Runbook 6"] == str(edited_late)
        assert "Runbook Early" in upserts and "Runbook Five" in upserts
        assert set(changes.deletions) == {"Runbook 4", "Runbook 5"}  # from the delete and move logs, kept for good
        assert changes.cursor == "2024-04-10T01:00:01Z"  # the wiki's time before listing
        warnings = [r.getMessage() for r in caplog.records if STALE in r.getMessage()]
        assert len(warnings) == 1 and cursor in warnings[0] and "listing every page" in warnings[0]

        # From the new cursor the recent changes cover the window again: no full listing.
        wiki.reset_requests()
        wiki.edit_page("Runbook 7", "Edited after the catch-up.")
        assert [ref.id for ref in source.changes_since(changes.cursor).upserts] == ["Runbook 7"]
        assert not any(p.get("generator") == "allpages" for p in wiki.params())


def test_a_window_reaching_past_the_recent_changes_is_listed_fully(wiki, caplog):
    wiki.state.rc_max_age = timedelta(days=90)
    source = make_source(wiki)
    since = source.current_cursor()
    wiki.advance(86400)
    wiki.edit_page("Help:Topic 2", "Edited inside the window, purged since.")
    wiki.advance(120 * 86400)
    wiki.edit_page("Runbook 9", "Recent.")
    with caplog.at_level(logging.INFO, logger="vectormill.mediawiki"):
        upserts = {ref.id for ref in source.changes_since(since).upserts}
    assert {"Help:Topic 2", "Runbook 9"} <= upserts and len(upserts) == MAIN_PAGES + HELP_PAGES
    assert sum(STALE in r.getMessage() for r in caplog.records) == 1


def test_recent_changes_that_begin_after_the_cursor_with_nothing_in_between_need_no_full_listing(wiki):
    """A freshly imported wiki: its first recent change is newer than the cursor, yet nothing was lost."""
    source = make_source(wiki)
    cursor = source.current_cursor()
    wiki.advance(1)
    assert [ref.id for ref in source.changes_since(cursor).upserts] == []  # no recent changes at all
    wiki.advance(7200)
    wiki.edit_page("Runbook 1", "The wiki's first recorded change.")
    wiki.reset_requests()

    changes = source.changes_since(cursor)

    assert [ref.id for ref in changes.upserts] == ["Runbook 1"]
    assert not any(p.get("generator") == "allpages" for p in wiki.params())


def test_faults_are_survived_with_every_page_fetched_within_the_rate_limit(wiki):
    rate, burst = 60.0, 5
    source = make_source(wiki, requests_per_second=rate, burst=burst, read_timeout=0.5, max_backoff_seconds=1.0,
                         max_attempts=8, circuit_breaker_failures=3)
    wiki.fail_next(3, 429, retry_after="1")  # a 429 storm as the listing starts
    refs = list(source.list_documents())[:100]

    wiki.fail_next(3, 503)  # a burst of 503s without Retry-After
    wiki.reset_next(2)  # connections reset half-way through the body

    def fetch(ref):
        if ref.id == refs[60].id:  # half-way: a slow reply, lag and another 429
            wiki.slow_next(1, 1.0)
            wiki.maxlag_next(2, lag=10, retry_after="1")
            wiki.fail_next(2, 429, retry_after="1")
        return source.fetch(ref)

    threads = 4
    with ThreadPoolExecutor(max_workers=threads) as pool:
        documents = list(pool.map(fetch, refs))

    assert [d.id for d in documents] == [r.id for r in refs]
    assert all(d.version == r.version and f"Runbook {d.id.split()[-1]}" in d.text for d, r in zip(documents, refs))
    reasons = source._client.stats.retry_reasons
    assert reasons["HTTP 429"] == 5 and reasons["HTTP 503"] == 3 and reasons["asked to wait"] == 2
    assert reasons["connection"] >= 2 and reasons["timeout"] >= 1  # more only if this machine is very busy
    assert wiki.pending_faults == 0
    # The limiter grants at most rate + burst tokens a second; on a busy machine each thread may be held
    # between its token and its request reaching the server, so that many more may arrive bunched.
    assert wiki.max_requests_in_window(1.0) <= rate + burst + threads


def test_maxlag_is_sent_and_retried_after_the_delay_the_wiki_asks(wiki):
    source = make_source(wiki, maxlag=3)
    wiki.maxlag_next(2, lag=10, retry_after="1")

    assert source.current_cursor() == "2024-01-01T00:00:00Z"

    first, second, third = wiki.requests
    assert all(p["maxlag"] == "3" for p in wiki.params())
    assert second.arrived - first.arrived >= 0.95 and third.arrived - second.arrived >= 0.95
    assert source._client.stats.retry_reasons["asked to wait"] == 2


def test_maxlag_that_outlasts_the_retries_fails_the_listing(wiki):
    source = make_source(wiki, max_attempts=2)
    wiki.maxlag_next(5, lag=10, retry_after="1")
    with pytest.raises(SourceError, match="asked to wait"):
        list(source.list_documents())
    assert len(wiki.requests) == 2


def test_api_errors_fail_the_listing_with_the_code(wiki):
    source = make_source(wiki, namespaces=(0, 999))
    with pytest.raises(SourceError, match=r"API error badvalue for allpages: .*gapnamespace"):
        list(source.list_documents())


BOT_USER, BOT_PASSWORD = "Indexer@vectormill", "s3cret-bot-password-4f9a"


@pytest.fixture
def private_wiki(monkeypatch):
    monkeypatch.setenv("WIKI_BOT_USER", BOT_USER)
    monkeypatch.setenv("WIKI_BOT_PASSWORD", BOT_PASSWORD)
    with MediaWikiServer(bot_passwords={BOT_USER: BOT_PASSWORD}, private=True) as server:
        server.import_pages({f"Secret {n}": f"Private runbook {n}." for n in range(30)})
        yield server


def login_source(wiki, **overrides):
    return make_source(wiki, namespaces=(0,), bot_user_env="WIKI_BOT_USER", bot_password_env="WIKI_BOT_PASSWORD",
                       **overrides)


def test_bot_login_reads_a_private_wiki_and_renews_an_expired_session(private_wiki, caplog):
    caplog.set_level(logging.DEBUG)
    source = login_source(private_wiki)

    refs = list(source.list_documents())
    private_wiki.expire_sessions()
    document = source.fetch(refs[0])

    assert len(refs) == 30 and document.text == "Private runbook 0."
    assert source.check() == "TestWiki (MediaWiki 1.39.17), logged in as Indexer@vectormill"
    logins = [r for r in private_wiki.requests if request_params(r).get("action") == "login"]
    assert len(logins) == 2 and all(r.method == "POST" for r in logins)  # the first, and one after the expiry
    assert BOT_PASSWORD not in caplog.text
    assert not any(BOT_PASSWORD in r.path for r in private_wiki.requests)  # only ever in a POST body
    assert all(p.get("assert") == "user" for p in private_wiki.params() if p["action"] != "login" and "type" not in p)


def test_a_wrong_bot_password_fails_the_source_at_once_without_revealing_it(private_wiki, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-bot-password-77c1"
    monkeypatch.setenv("WIKI_BOT_PASSWORD", wrong)
    source = login_source(private_wiki)

    with pytest.raises(SourceError) as failure:
        list(source.list_documents())

    message = str(failure.value)
    assert "login as 'Indexer@vectormill' failed (Failed: Incorrect username or password" in message
    assert "WIKI_BOT_PASSWORD" in message and wrong not in message and wrong not in caplog.text
    assert [p.get("action") for p in private_wiki.params()] == ["query", "login"]  # token, login: no retries


@pytest.mark.slow  # needs the Prefect test server for the block
def test_the_bot_password_can_come_from_a_prefect_secret_block(private_wiki, prefect_harness):
    from prefect.blocks.system import Secret

    Secret(value=BOT_PASSWORD).save("wiki-bot-password", overwrite=True)
    source = make_source(private_wiki, namespaces=(0,), bot_user_env="WIKI_BOT_USER",
                         bot_password_secret_block="wiki-bot-password")
    assert len(list(source.list_documents())) == 30


def test_a_private_wiki_without_login_says_what_to_configure(private_wiki):
    with pytest.raises(SourceError, match="readapidenied.*set bot_user_env and bot_password_env"):
        list(make_source(private_wiki).list_documents())


def test_an_unset_password_variable_is_named(private_wiki, monkeypatch):
    monkeypatch.delenv("WIKI_BOT_PASSWORD")
    with pytest.raises(SourceError, match="WIKI_BOT_PASSWORD is not set"):
        login_source(private_wiki)


@pytest.mark.parametrize("extra, problem", [
    ({"bot_password_env": "P"}, "needs both bot_user_env"),
    ({"bot_user_env": "U"}, "needs both bot_user_env"),
    ({"bot_user_env": "U", "bot_password_env": "P", "bot_password_secret_block": "b"}, "only one of"),
    ({"api_url": "ftp://wiki/api.php"}, "api_url"),
    ({"namespaces": []}, "namespaces"),
])
def test_config_problems_are_reported_by_key(extra, problem):
    entry = {"name": "wiki", "type": "mediawiki", "api_url": "http://127.0.0.1:8080/api.php", **extra}
    with pytest.raises(ConfigError, match=problem):
        parse_config({"sources": [entry]}, Path("."))


def test_the_documented_config_contract_parses():
    config = parse_config({"sources": [{
        "name": "wiki", "type": "mediawiki", "api_url": "http://127.0.0.1:8080/api.php", "namespaces": [0, 12],
        "requests_per_second": 5, "burst": 10, "bot_user_env": "WIKI_USER", "bot_password_env": "WIKI_PASSWORD",
        "maxlag": 5}]}, Path("."))
    settings = config.source("wiki")
    assert isinstance(settings, MediaWikiSourceSettings) and settings.namespaces == (0, 12)
    assert MediaWikiSourceSettings(name="w", type="mediawiki", api_url="http://x/api.php").namespaces == (0,)
    with pytest.raises(ValidationError):
        MediaWikiSourceSettings(name="w", type="mediawiki", api_url="http://x/api.php", unknown_key=1)


# ---- end to end: the ingest flow, the packaged model and a FAISS store ----------------------------
def write_wiki_config(folder: Path, api_url: str) -> Path:
    config = folder / "vectormill.toml"
    config.write_text(
        '[store]\npath = "store"\n\n[chunking]\ntokens = 64\noverlap = 8\n\n[embedding]\ntask_chunks = 16\n\n'
        f'[[sources]]\nname = "wiki"\ntype = "mediawiki"\napi_url = "{api_url}"\nnamespaces = [0, 12]\n'
        'requests_per_second = 50\nburst = 10\nfetch_batch_size = 2\n'
    )
    return config


@pytest.mark.slow
def test_ingest_flow_syncs_a_wiki_fully_then_incrementally(tmp_path, prefect_harness):
    from vectormill.flows.config import load_config
    from vectormill.flows.ingest import ingest
    from vectormill.flows.pipeline import embedder_for
    from vectormill.stores.faiss_store import FaissStore
    from vectormill.stores.filters import parse_filter

    from .corpus import TOPICS, topic_pages

    titles = {topic: ("Help:Glossary" if topic == "taxes" else f"Runbook {topic.title()}") for topic in TOPICS}

    def store_state(config_file):
        config = load_config(config_file)
        with FaissStore.open(config.store, writable=False) as store:
            return store.document_versions("wiki"), store.cursor("wiki")

    def best_hit(config_file, text, where=None):
        config = load_config(config_file)
        with FaissStore.open(config.store, writable=False) as store:
            return store.search(embedder_for(config.embedding).embed([text])[0], 1, where)[0]

    with MediaWikiServer() as wiki:
        wiki.import_pages({titles[topic]: "\n\n".join(topic_pages(topic, sentence)) for topic, sentence in TOPICS.items()})
        config = write_wiki_config(tmp_path, wiki.api_url)

        first = ingest(config_file=str(config))

        assert first["documents"]["new"] == len(TOPICS) and first["documents"]["failed"] == 0
        versions, cursor = store_state(config)
        assert versions == {title: str(wiki.revision(title)) for title in titles.values()}
        assert cursor == "2024-01-01T00:00:00Z"  # the wiki's time before the full listing
        for topic, sentence in TOPICS.items():
            assert best_hit(config, sentence).document == titles[topic]
        # the page's metadata from the wiki is stored: a search filtered by namespace finds the Help: page only
        assert best_hit(config, TOPICS["chess"], parse_filter({"metadata": {"namespace": "12"}})).document == \
            "Help:Glossary"

        wiki.advance(1)
        wiki.edit_page(titles["chess"], "\n\n".join(topic_pages("chess", "Grandmasters prefer the Najdorf variation.")))
        wiki.delete_page(titles["sailing"])
        wiki.reset_requests()

        second = ingest(config_file=str(config))

        assert second["documents"] == {"seen": 1, "new": 0, "changed": 1, "unchanged": 0, "deleted": 1, "failed": 0}
        assert 0 < second["chunks_embedded"] <= first["chunks_embedded"] // len(TOPICS) + 1
        assert [p["oldid"] for p in wiki.params() if p.get("action") == "parse"] == [str(wiki.revision(titles["chess"]))]
        versions, cursor = store_state(config)
        assert titles["sailing"] not in versions and versions[titles["chess"]] == str(wiki.revision(titles["chess"]))
        assert cursor == "2024-01-01T00:00:01Z"
        hit = best_hit(config, "Grandmasters prefer the Najdorf variation.")
        assert (hit.document, hit.title, hit.location) == ("Runbook Chess", "Runbook Chess", f"{wiki.url}/index.php/Runbook_Chess")


def test_the_test_wiki_clamps_limits_with_a_warning_and_refuses_a_forged_continue(wiki):
    """As the Action API documents: `rclimit`/`aplimit` above 500 (a user's maximum) or below 1 are clamped and
    warned about, and a `continue` value that is not the one an answer gave is `badcontinue`."""
    import requests

    base = {"action": "query", "format": "json", "formatversion": "2"}
    for n in range(3):
        wiki.edit_page(f"Runbook {n}", f"Edited text {n}.")
    over = requests.get(wiki.api_url, params={**base, "generator": "allpages", "gaplimit": 600}, timeout=10).json()
    assert len(over["query"]["pages"]) == min(MAIN_PAGES, 500)
    assert 'parameter "gaplimit" must be between 1 and 500' in over["warnings"]["main"]["warnings"]
    under = requests.get(wiki.api_url, params={**base, "list": "recentchanges", "rclimit": 0}, timeout=10).json()
    assert len(under["query"]["recentchanges"]) == 1 and "rclimit" in under["warnings"]["main"]["warnings"]
    paged = requests.get(wiki.api_url, params={**base, "list": "recentchanges", "rclimit": 2, "continue": ""},
                         timeout=10).json()
    assert paged["continue"]["continue"] == "-||" and "rccontinue" in paged["continue"]
    forged = requests.get(wiki.api_url, params={**base, "list": "recentchanges", "rclimit": 2, "continue": "2",
                                                "rccontinue": paged["continue"]["rccontinue"]}, timeout=10).json()
    assert forged["error"]["code"] == "badcontinue"
    assert requests.get(wiki.api_url, params={**base, "list": "recentchanges", "rclimit": 2, **paged["continue"]},
                        timeout=10).json()["query"]["recentchanges"]
