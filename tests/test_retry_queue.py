"""The retry queue: a document that fails in a run is fetched again by later runs until it lands.

Decisions (flows/plan.py) with real sources and a real store; then whole runs against the
fault-injecting servers, one per source type: a MediaWiki page whose rendering fails while it is
edited, a HubSpot record fetched again by its ref, a PDF unreadable during one run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from vectormill.connectors.base import DocumentRef
from vectormill.connectors.filesystem import FilesystemSource
from vectormill.connectors.mediawiki import MediaWikiSource
from vectormill.connectors.settings import MediaWikiSourceSettings
from vectormill.connectors.settings import FilesystemSourceSettings
from vectormill.flows.artifacts import summary_markdown
from vectormill.flows.config import load_config
from vectormill.flows.plan import plan_source
from vectormill.flows.retry_queue import QueueEntry, list_failures
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.records import ChunkRecord, CursorUpdate, DocumentFailed, DocumentUpsert
from vectormill.stores.settings import StoreSettings

from .cli_process import harness_env, run_many
from .corpus import TOPICS, topic_pages, write_config, write_corpus
from .servers.hubspot_server import hubspot_server
from .servers.mediawiki_server import MediaWikiServer
from vectormill.flows.sample import write_pdf

FAILED_AT = "2024-01-01T00:00:00+00:00"
CONTRACT = {"source", "document", "reason", "attempts", "first_failed", "last_failed"}


def counts() -> dict[str, int]:
    return {"seen": 0, "unchanged": 0}


def store_at(folder: Path) -> FaissStore:
    return FaissStore.open(StoreSettings(path=folder / "store"), model="m", dimension=2)


def upsert(source: str, document: str, version: str) -> DocumentUpsert:
    chunk = ChunkRecord(hashlib.sha256(document.encode()).hexdigest()[:32], 0, "text", "hash", None, None, 1)
    return DocumentUpsert(source, document, version, document, document, None, (chunk,),
                          np.ones((1, 2), dtype=np.float32) / np.sqrt(2))


def fail(source: str, ref: DocumentRef, times: int) -> list[DocumentFailed]:
    return [DocumentFailed(source, ref.id, ref.to_json(), "it broke", FAILED_AT)] * times


# ---- what a run fetches (pure decisions; real source, real store) -----------------------------
def test_a_listing_fetches_queued_documents_skips_stuck_unchanged_ones_and_drops_the_unlisted(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    for name in ("same.md", "queued.md", "stuck.md", "stuck-changed.md"):
        (root / name).write_text(f"# {name}\n")
    source = FilesystemSource(FilesystemSourceSettings(name="docs", type="filesystem", root=root))
    listed = {ref.id: ref for ref in source.list_documents()}
    with store_at(tmp_path) as store:
        store.write([upsert("docs", "same.md", listed["same.md"].version),
                     upsert("docs", "queued.md", listed["queued.md"].version),  # failed again since it landed
                     *fail("docs", listed["queued.md"], 1),
                     *fail("docs", listed["stuck.md"], 3),
                     *fail("docs", DocumentRef("stuck-changed.md", "the version that failed"), 3),
                     *fail("docs", DocumentRef("removed.md", "1-1"), 1)])

        seen = counts()
        plan = plan_source(source, store, seen, full=False, max_attempts=3)
        assert [(ref.id, is_new) for ref, is_new in plan.refs] == [("queued.md", False), ("stuck-changed.md", True)]
        assert plan.deletions == ["removed.md"]  # off the queue: the listing no longer has it
        assert seen == {"seen": 4, "unchanged": 1}

        everything = plan_source(source, store, counts(), full=True, max_attempts=3)
        assert sorted(ref.id for ref, _ in everything.refs) == ["queued.md", "stuck-changed.md", "stuck.md"]
        assert everything.deletions == ["removed.md"]


def test_an_incremental_run_fetches_its_queue_first_whatever_the_cursor_says(tmp_path):
    with MediaWikiServer() as wiki:
        wiki.import_pages({f"Runbook {n}": f"Runbook {n} text." for n in range(5)})
        wiki.import_pages({"Old page": "Soon deleted."})
        source = MediaWikiSource(MediaWikiSourceSettings(name="wiki-plan", type="mediawiki", api_url=wiki.api_url,
                                                         requests_per_second=500, burst=50))
        listed = {ref.id: ref for ref in source.list_documents()}
        with store_at(tmp_path) as store:
            store.write([upsert("wiki-plan", title, ref.version) for title, ref in listed.items()])
            store.write([*fail("wiki-plan", listed["Runbook 1"], 1), *fail("wiki-plan", listed["Runbook 2"], 3),
                         *fail("wiki-plan", listed["Runbook 4"], 3), *fail("wiki-plan", listed["Old page"], 1),
                         CursorUpdate("wiki-plan", source.current_cursor())])
            wiki.advance(1)
            wiki.edit_page("Runbook 3", "Edited.")
            wiki.edit_page("Runbook 2", "Edited while stuck.")
            wiki.delete_page("Old page")

            seen = counts()
            plan = plan_source(source, store, seen, full=False, max_attempts=3)
            refs = [(ref.id, is_new) for ref, is_new in plan.refs]

        # The queue first (the cursor is past its failures), then the changes; the stuck Runbook 4
        # waits for a change, the stuck Runbook 2 changed; the deleted page is deleted, not fetched.
        assert refs[0] == ("Runbook 1", False)
        assert sorted(refs[1:]) == [("Runbook 2", False), ("Runbook 3", False)]
        assert plan.deletions == ["Old page"] and plan.incremental and plan.cursor == "2024-01-01T00:00:01Z"
        assert seen == {"seen": 3, "unchanged": 0}


def test_the_summary_artifact_shows_the_queue_and_the_stuck_documents():
    stuck = QueueEntry("docs", "scan.pdf", "not a readable PDF", 10, FAILED_AT, FAILED_AT, True).as_json()
    assert set(stuck) == CONTRACT
    summary = {"documents": dict.fromkeys(("seen", "new", "changed", "unchanged", "deleted", "failed"), 0),
               "chunks_embedded": 0, "failures": [], "seconds": {}, "sources": [],
               "retry_queue": {"docs": 3, "wiki": 0}, "stuck": [stuck]}
    markdown = summary_markdown(summary, "all")
    assert "queued for retry: 3, of which 1 stuck" in markdown
    section = markdown.split("## Stuck documents (1)")[1].split("\n## ")[0]
    assert "| docs | scan.pdf | not a readable PDF | 10 |" in section


# ---- whole runs, one per source type -----------------------------------------------------------
def queue_of(config_file, source: str) -> list:
    with FaissStore.open(load_config(config_file).store, writable=False) as store:
        return store.retry_queue(source)


def versions_of(config_file, source: str) -> tuple[dict[str, str], str | None]:
    with FaissStore.open(load_config(config_file).store, writable=False) as store:
        return store.document_versions(source), store.cursor(source)


def best_hit(config_file, text: str):
    from vectormill.flows.pipeline import embedder_for

    config = load_config(config_file)
    with FaissStore.open(config.store, writable=False) as store:
        return store.search(embedder_for(config.embedding).embed([text])[0], 1)[0]


@pytest.mark.slow
def test_a_wiki_page_edited_while_its_rendering_fails_lands_on_the_next_run_without_another_edit(
        tmp_path, prefect_harness):
    from vectormill.flows.ingest import ingest

    name = "wiki-queue"
    with MediaWikiServer() as wiki:
        wiki.import_pages({f"Runbook {n}": "\n\n".join(topic_pages(f"service {n}", f"Service {n} restarts nightly."))
                           for n in range(4)})
        config = tmp_path / "vectormill.toml"
        config.write_text('[store]\npath = "store"\n\n[chunking]\ntokens = 64\noverlap = 8\n\n'
                          f'[[sources]]\nname = "{name}"\ntype = "mediawiki"\napi_url = "{wiki.api_url}"\n'
                          'requests_per_second = 200\nburst = 20\nmax_attempts = 2\nmax_backoff_seconds = 0.1\n')
        ingest(config_file=str(config))
        old_revision = str(wiki.revision("Runbook 3"))

        wiki.advance(1)
        wiki.edit_page("Runbook 3", "Runbook 3 now follows the failover plan of rack 33.")
        wiki.advance(1)  # later edits: the cursor the run stores is past the second of Runbook 3's edit
        for n in (1, 2):
            wiki.edit_page(f"Runbook {n}", f"Runbook {n} now follows the failover plan of rack {n * 11}.")
        wiki.fail_parse_of("Runbook 3")  # 503 for every rendering of the page, during this run

        edited = ingest(config_file=str(config))

        assert edited["documents"]["changed"] == 2 and edited["documents"]["failed"] == 1
        assert [(f["document"], "HTTP 503" in f["reason"]) for f in edited["failures"]] == [("Runbook 3", True)]
        assert edited["retry_queue"] == {name: 1}
        versions, cursor = versions_of(config, name)
        assert cursor == "2024-01-01T00:00:02Z"  # past the edit: the next run's changes do not name the page
        assert versions["Runbook 3"] == old_revision
        [queued] = queue_of(config, name)
        assert (queued.document, queued.attempts) == ("Runbook 3", 1) and "HTTP 503" in queued.reason
        assert DocumentRef.from_json(queued.ref).version == str(wiki.revision("Runbook 3"))

        wiki.clear_faults()
        wiki.reset_requests()
        retried = ingest(config_file=str(config))  # nothing edited since

        # The changes since the cursor are the two edits seen already (unchanged); the page comes from the queue.
        assert {p["rcstart"] for p in wiki.params() if p.get("list") == "recentchanges" and "rcstart" in p} == {cursor}
        assert retried["documents"] == {"seen": 3, "new": 0, "changed": 1, "unchanged": 2, "deleted": 0, "failed": 0}
        assert [p["oldid"] for p in wiki.params() if p.get("action") == "parse"] == [str(wiki.revision("Runbook 3"))]
        assert versions_of(config, name)[0]["Runbook 3"] == str(wiki.revision("Runbook 3"))
        hit = best_hit(config, "Runbook 3 now follows the failover plan of rack 33.")
        assert hit.document == "Runbook 3" and "rack 33" in hit.text
        assert queue_of(config, name) == [] and retried["retry_queue"] == {name: 0}


@pytest.mark.slow
def test_a_crm_record_is_fetched_again_by_its_ref_until_it_lands_and_dropped_once_purged(
        tmp_path, monkeypatch, prefect_harness):
    from vectormill.flows.ingest import ingest

    token = "pat-na1-0b8d6c3e-2f11-4c5a-9d7e-queue0000001"
    monkeypatch.setenv("HUBSPOT_QUEUE_TOKEN", token)
    with hubspot_server(token) as server:
        for n in range(3):
            server.app.add("companies", name=f"Company {n}", description=f"Makes widget model {n}.")
        quiet = server.app.add("companies", domain="quiet.example")  # no name or description yet
        purged = server.app.add("companies", domain="purged.example")
        config = tmp_path / "vectormill.toml"

        def configure(properties: list[str]) -> None:
            config.write_text(
                '[store]\npath = "store"\n\n[chunking]\ntokens = 64\noverlap = 8\n\n'
                f'[[sources]]\nname = "crm-queue"\ntype = "hubspot"\ntoken_env = "HUBSPOT_QUEUE_TOKEN"\n'
                f'base_url = "{server.url}"\nobject_type = "companies"\nproperties = {json.dumps(properties)}\n'
                'cursor_overlap_seconds = 0\nrequests_per_second = 200\nburst = 20\nmax_attempts = 2\n'
                'max_backoff_seconds = 0.1\n')

        configure(["name", "description"])
        first = ingest(config_file=str(config))
        # Records without text in the configured properties are empty at the source: not stored, not queued.
        assert first["failures"] == [] and first["retry_queue"] == {"crm-queue": 0}
        assert sorted((r["document"], r["reason"]) for r in first["removed"]) == [
            (f"companies/{quiet}", "empty at source"), (f"companies/{purged}", "empty at source")]
        # As an earlier run that failed them would have left them: on the queue with their refs.
        with FaissStore.open(load_config(config).store) as store:
            store.write([DocumentFailed("crm-queue", f"companies/{record}", DocumentRef(
                f"companies/{record}", server.app.objects["companies"][record]["updatedAt"]).to_json(),
                "failed in an earlier run", FAILED_AT) for record in (quiet, purged)])

        # The fix is in the config (the records are not edited): the next runs must fetch them again.
        configure(["name", "domain", "description"])
        server.app.purge("companies", purged)
        server.fail_matching(lambda request: request.path.endswith(f"/companies/{quiet}"), 503)
        sent = len(server.requests)

        second = ingest(config_file=str(config))

        run = server.requests[sent:]
        assert sum(r.method == "GET" and r.path.endswith(f"/companies/{quiet}") for r in run) == 2  # both attempts
        # The purged record was never stored: off the queue, but not counted as a deletion.
        assert second["documents"]["deleted"] == 0 and second["documents"]["failed"] == 1
        assert [r["document"] for r in second["removed"]] == [f"companies/{purged}"]
        assert "HTTP 503" in second["failures"][0]["reason"]
        [queued] = queue_of(config, "crm-queue")
        assert (queued.document, queued.attempts) == (f"companies/{quiet}", 2)

        server.clear_faults()
        third = ingest(config_file=str(config))

        assert (third["documents"]["new"], third["documents"]["failed"]) == (1, 0)
        versions, _ = versions_of(config, "crm-queue")
        assert versions[f"companies/{quiet}"] == server.app.objects["companies"][quiet]["updatedAt"]
        assert f"companies/{purged}" not in versions
        assert best_hit(config, "domain: quiet.example").document == f"companies/{quiet}"
        assert queue_of(config, "crm-queue") == [] and third["retry_queue"] == {"crm-queue": 0}


def without_file_access_override() -> list[str]:
    """A prefix that runs a command unable to read files its permissions forbid, as a user is.

    Root reads any file (CAP_DAC_OVERRIDE), so for root the command runs with those capabilities
    dropped from its bounding set; anyone else needs no prefix.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without util-linux's setpriv: cannot make a file unreadable")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


@pytest.mark.slow
def test_a_pdf_unreadable_during_one_run_lands_on_the_next_and_leaves_the_queue(tmp_path, prefect_harness):
    from vectormill.flows.ingest import ingest

    write_corpus(tmp_path / "pdfs", {topic: TOPICS[topic] for topic in ("chess", "baking")})
    locked = tmp_path / "pdfs" / "volcanoes.pdf"
    write_pdf(topic_pages("volcanoes", TOPICS["volcanoes"]), locked, title="Volcanoes")
    config = write_config(tmp_path)
    before = locked.stat()
    locked.chmod(0)
    env = harness_env()

    # One process for both command lines: a process start and its imports cost seconds.
    result, listing = run_many([["backfill", "--json"], ["failures", "--json"]], cwd=tmp_path, env=env, timeout=600,
                               prefix=without_file_access_override())

    assert result["code"] == 0, result["stderr"][-3000:]  # 1 of 3 failed: within max_failed_ratio
    summary = json.loads(result["stdout"].strip().splitlines()[-1])
    assert set(summary) >= {"documents", "chunks_embedded", "failures", "seconds", "sources", "store", "retries"}
    assert [(f["document"], "Permission denied" in f["reason"]) for f in summary["failures"]] == [("volcanoes.pdf", True)]
    assert summary["retry_queue"] == {"docs": 1} and summary["stuck"] == []

    assert listing["code"] == 0, listing["stderr"]
    [entry] = json.loads(listing["stdout"])
    assert set(entry) == CONTRACT
    assert (entry["source"], entry["document"], entry["attempts"]) == ("docs", "volcanoes.pdf", 1)
    # First: when its attempt began (counted before the fetch); last: when it failed.
    assert entry["first_failed"] <= entry["last_failed"] and "Permission denied" in entry["reason"]

    locked.chmod(0o644)  # fixed; its size and modification time are those the failed run listed
    assert (locked.stat().st_size, locked.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    fixed = ingest(config_file=str(config))

    assert fixed["documents"]["new"] == 1 and fixed["documents"]["failed"] == 0
    assert best_hit(config, TOPICS["volcanoes"]).document == "volcanoes.pdf"
    assert list_failures(load_config(config)) == [] and fixed["retry_queue"] == {"docs": 0}


@pytest.mark.slow
def test_after_max_document_attempts_a_document_stays_queued_reported_as_stuck(tmp_path, prefect_harness):
    from vectormill.flows.ingest import ingest

    root = tmp_path / "pdfs"
    root.mkdir()
    (root / "good.txt").write_text("Backups of the billing database are restored every Friday.\n")
    (root / "broken.txt").write_bytes(b"\xff\xfe not UTF-8 text\n")
    config = write_config(tmp_path, extra="max_document_attempts = 2\n")

    def attempts() -> list[tuple[str, int]]:
        return [(entry.document, entry.attempts) for entry in list_failures(load_config(config))]

    first = ingest(config_file=str(config))
    assert first["documents"]["failed"] == 1 and first["stuck"] == [] and attempts() == [("broken.txt", 1)]

    second = ingest(config_file=str(config))
    assert second["documents"]["failed"] == 1 and attempts() == [("broken.txt", 2)]
    [stuck] = second["stuck"]
    assert set(stuck) == CONTRACT and (stuck["document"], stuck["attempts"]) == ("broken.txt", 2)
    assert second["sources"][0]["stuck"] == [stuck]
    assert list_failures(load_config(config))[0].stuck

    third = ingest(config_file=str(config))  # unchanged and stuck: not fetched, still queued and reported
    assert third["documents"]["failed"] == 0 and third["documents"]["seen"] == 2
    assert third["retry_queue"] == {"docs": 1} and [s["document"] for s in third["stuck"]] == ["broken.txt"]
    assert attempts() == [("broken.txt", 2)]

    forced = ingest(config_file=str(config), full=True)  # --full tries stuck documents again
    assert forced["documents"]["failed"] == 1 and attempts() == [("broken.txt", 3)]

    (root / "broken.txt").write_text("The office network has a guest VLAN for visitors.\n")
    landed = ingest(config_file=str(config))
    assert landed["documents"]["new"] == 1 and landed["stuck"] == [] and attempts() == []
