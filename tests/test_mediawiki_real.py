"""The MediaWiki source against a real MediaWiki 1.39 (Debian's package, SQLite, `php -S`)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import logging
import time

import pytest

from vectormill.connectors.mediawiki import MediaWikiSource
from vectormill.connectors.settings import MediaWikiSourceSettings

from .servers.real_mediawiki import RealMediaWiki, missing_reason

pytestmark = [pytest.mark.mediawiki, pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")]

PAGES = 64
API_LIMIT = 10  # forces the listing through several `continue` steps


@pytest.fixture(scope="module")
def real_wiki(tmp_path_factory):
    with RealMediaWiki(tmp_path_factory.mktemp("mediawiki")) as wiki:
        wiki.import_pages({f"Runbook {n}": f"== Steps ==\nRunbook {n}: restart '''service {n}''' and check "
                                            f"[[Runbook {n + 1}|the next runbook]].\n" for n in range(PAGES)})
        yield wiki


def test_full_then_incremental_sync_against_a_real_wiki(real_wiki, caplog):
    caplog.set_level(logging.WARNING, logger="vectormill.mediawiki")
    source = MediaWikiSource(MediaWikiSourceSettings(
        name="real-wiki", type="mediawiki", api_url=real_wiki.api_url, api_limit=API_LIMIT,
        requests_per_second=100, burst=20))

    cursor = source.current_cursor()
    refs = list(source.list_documents())

    expected = {f"Runbook {n}" for n in range(PAGES)} | {"Main Page"}
    assert {ref.id for ref in refs} == expected and len(refs) == len(expected)
    assert all(ref.version == str(real_wiki.revision(ref.id)) for ref in refs[:5])
    with ThreadPoolExecutor(max_workers=4) as pool:
        documents = {d.id: d for d in pool.map(source.fetch, refs)}
    assert documents["Runbook 7"].text == "Steps\n\nRunbook 7: restart service 7 and check the next runbook."
    assert documents["Runbook 7"].location == f"{real_wiki.url}/index.php/Runbook_7"
    # importTextFiles.php wrote no recent changes: nothing to report since the cursor.
    nothing = source.changes_since(cursor)
    assert (list(nothing.upserts), list(nothing.deletions)) == ([], [])

    real_wiki.edit("Runbook 3", "Runbook 3 now says: drain the queue first.")
    real_wiki.delete("Runbook 4")
    real_wiki.move("Runbook 5", "Runbook Five")

    changes = source.changes_since(cursor)

    upserts = {ref.id: ref.version for ref in changes.upserts}
    assert upserts == {"Runbook 3": str(real_wiki.revision("Runbook 3")),
                       "Runbook Five": str(real_wiki.revision("Runbook Five"))}
    assert set(changes.deletions) == {"Runbook 4", "Runbook 5"}
    assert changes.cursor >= cursor
    edited = source.fetch(next(ref for ref in changes.upserts if ref.id == "Runbook 3"))
    assert edited.text == "Runbook 3 now says: drain the queue first."
    assert {ref.id for ref in source.list_documents()} == expected - {"Runbook 4", "Runbook 5"} | {"Runbook Five"}
    assert "the wiki warns" not in caplog.text  # MediaWiki 1.39 knows every parameter and value sent


def test_a_window_older_than_the_real_wikis_recent_changes_is_listed_fully(real_wiki, caplog):
    source = MediaWikiSource(MediaWikiSourceSettings(
        name="real-wiki-stale", type="mediawiki", api_url=real_wiki.api_url, api_limit=API_LIMIT,
        requests_per_second=100, burst=20))
    cursor = source.current_cursor()
    time.sleep(1.1)  # wiki timestamps have one-second resolution
    real_wiki.edit("Runbook 1", "Runbook 1 now says: page the on-call engineer.")
    time.sleep(1.1)
    real_wiki.edit("Runbook 2", "Runbook 2 now says: check the dashboards.")
    real_wiki.purge_recent_changes_before_the_newest()  # Runbook 1's edit is gone from recent changes
    caplog.set_level(logging.INFO, logger="vectormill.mediawiki")

    changes = source.changes_since(cursor)

    upserts = {ref.id for ref in changes.upserts}
    assert upserts == {ref.id for ref in source.list_documents()} and {"Runbook 1", "Runbook 2"} <= upserts
    assert sum("older than the oldest recent change the wiki holds" in r.getMessage() for r in caplog.records) == 1
    assert "the wiki warns" not in caplog.text
