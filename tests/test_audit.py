"""`vectormill sources audit`: each kind of divergence found on a store damaged on purpose.

The comparison alone (pure), then real runs: a document's rows deleted by hand, a file removed while
no run ran, a file rewritten with its size and mtime restored (found only by --deep), a queued and a
stuck document, a page deleted on the wiki while no run ran; and the weekly audit flow.
"""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest

from vectormill.connectors.base import DocumentRef
from vectormill.flows.artifacts import audit_markdown
from vectormill.flows.audit import audit, compare
from vectormill.flows.config import load_config
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.records import DocumentFailed

from .cli_process import harness_env, run, run_many
from .corpus import write_config
from .servers.mediawiki_server import MediaWikiServer
from .test_faithful_mirror import write_notes, write_wiki_config

CONTRACT = {"name", "listed", "stored", "missing", "missing_count", "extra", "extra_count", "stale", "stale_count",
            "queued", "stuck", "ok"}


def test_compare_sorts_documents_into_missing_extra_stale_queued_and_stuck():
    listed = {"same": "1", "new": "1", "edited": "2", "queued": "2", "stuck": "1", "rewritten": "1"}
    stored = {"same": "1", "edited": "1", "gone": "1", "queued": "1", "stuck": "1", "rewritten": "1"}
    result = compare("docs", listed, stored, queued=["queued", "stuck"], stuck=["stuck"])
    assert (result.missing, result.extra, result.stale, result.queued, result.stuck) == (
        ["new"], ["gone"], ["edited"], 2, 1)
    assert not result.ok and result.listed == 6 and result.stored == 6
    assert result.repairs == ("`vectormill backfill --full --source docs` repairs its missing, extra, stale and stuck "
                              "documents",)
    deep = compare("docs", listed, stored, [], [], content_differs=lambda document: document == "rewritten",
                   modified={"rewritten": "2026-03-04T05:06:07.123456+00:00"})
    assert deep.stale == ["edited", "queued", "rewritten"]  # nothing queued here: "queued" is stale too
    # --full does not fetch a document listed at its stored version: the one rewritten behind it needs a window.
    assert deep.repairs[1] == ("`vectormill backfill --source docs --since 2026-03-04T05:06:07` redoes the 1 "
                               "document(s) whose content changed behind an unchanged version")
    only_rewritten = compare("docs", {"a": "1"}, {"a": "1"}, [], [], content_differs=lambda document: True)
    assert len(only_rewritten.repairs) == 1 and "`touch` them" in only_rewritten.repairs[0]
    clean = compare("docs", {"a": "1"}, {"a": "1"}, [], [])
    assert clean.ok and set(clean.as_json()) == CONTRACT
    many = compare("docs", {f"d{n:04d}": "1" for n in range(150)}, {}, [], []).as_json()
    assert (len(many["missing"]), many["missing_count"]) == (100, 150)


def test_the_audit_artifact_lists_counts_and_diverging_ids():
    entry = compare("docs", {"a": "1", "b|c": "1"}, {"a": "1", "old": "1"}, [], []).as_json()
    markdown = audit_markdown({"ok": False, "sources": [entry]})
    assert markdown.startswith("# Sources audit: DIVERGES")
    assert "## docs: missing (1)" in markdown and "- b\\|c" in markdown and "## docs: extra (1)" in markdown
    assert json.loads(markdown.split("```json\n")[1].split("\n```")[0])["sources"] == [entry]


@pytest.mark.slow
def test_the_audit_finds_each_kind_of_damage(tmp_path, prefect_harness):
    from vectormill.flows.audit_flow import AuditDiverged, audit_sources
    from vectormill.flows.ingest import ingest

    root = tmp_path / "pdfs"
    write_notes(root)
    config = write_config(tmp_path, extra="max_document_attempts = 2\n")
    ingest(config_file=str(config))
    env = harness_env()

    clean = run("sources", "audit", "--json", cwd=tmp_path, env=env)
    assert clean.returncode == 0, clean.stderr
    report = json.loads(clean.stdout)
    assert report["ok"] and [set(entry) for entry in report["sources"]] == [CONTRACT]
    assert (report["sources"][0]["listed"], report["sources"][0]["stored"]) == (6, 6)

    # Damage: rows deleted by hand, a file removed while no run ran, one rewritten behind its size and
    # mtime, one queued and one stuck.
    with FaissStore.open(load_config(config).store) as store:
        with store.db:
            store.db.execute("DELETE FROM chunks WHERE source = 'docs' AND document = 'note0.md'")
            store.db.execute("DELETE FROM documents WHERE source = 'docs' AND document = 'note0.md'")
        failed = [DocumentFailed("docs", name, DocumentRef(name, "0-0").to_json(), "it broke", "2024-01-01T00:00:00Z")
                  for name in ("note4.md", "note5.md", "note5.md")]  # note5.md: 2 attempts, stuck
        store.write(failed)
    (root / "note1.md").unlink()
    rewritten = root / "note2.md"
    before = rewritten.stat()
    text = rewritten.read_text()
    rewritten.write_text(text.replace("warehouse", "storeroom"))  # same length
    os.utime(rewritten, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (rewritten.stat().st_size, rewritten.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    # One process for the three audits of the damaged store: a process start and its imports cost seconds.
    shallow, deep, table = run_many([["sources", "audit", "--json"],
                                     ["sources", "audit", "--deep", "--source", "docs", "--json"],
                                     ["sources", "audit"]], cwd=tmp_path, env=env)
    assert shallow["code"] == 1
    [entry] = json.loads(shallow["stdout"])["sources"]
    assert (entry["missing"], entry["extra"], entry["stale"]) == (["note0.md"], ["note1.md"], [])
    assert (entry["missing_count"], entry["extra_count"], entry["queued"], entry["stuck"]) == (1, 1, 2, 1)
    assert (entry["listed"], entry["stored"], entry["ok"]) == (5, 5, False)

    assert deep["code"] == 1
    [entry] = json.loads(deep["stdout"])["sources"]
    assert entry["stale"] == ["note2.md"] and entry["stale_count"] == 1

    assert table["code"] == 1 and "docs missing: note0.md" in table["stdout"] and "Traceback" not in table["stderr"]
    assert "`vectormill backfill --full --source docs` repairs" in " ".join(table["stderr"].split())

    # The weekly deployment's flow: the same report, published, and a failed run when the store diverges.
    with pytest.raises(AuditDiverged, match=r"diverges from source\(s\) docs"):
        audit_sources(config_file=str(config))

    # The advice repairs what it names: the window from the rewritten file's modification time redoes it.
    [found] = audit(load_config(config), "docs", deep=True)
    [window] = [repair for repair in found.repairs if "--since" in repair]
    since = window.split("--since ")[1].split("`")[0]
    ingest(config_file=str(config), sources=["docs"], since=datetime.fromisoformat(since))
    [after] = audit(load_config(config), "docs", deep=True)
    assert "note2.md" in found.stale and "note2.md" not in after.stale


@pytest.mark.slow
def test_the_audit_finds_a_wiki_page_deleted_while_no_run_ran(tmp_path, prefect_harness):
    from vectormill.flows.ingest import ingest

    with MediaWikiServer() as wiki:
        wiki.import_pages({f"Runbook {n}": f"Runbook {n}: restart service {n} at midnight." for n in range(3)})
        config = write_wiki_config(tmp_path / "vectormill.toml", wiki.api_url)
        ingest(config_file=str(config))
        wiki.advance(1)
        wiki.delete_page("Runbook 1")
        wiki.add_page("Runbook 9", "Runbook 9: a page no run has seen.")

        result = run("sources", "audit", "--json", cwd=tmp_path, env=harness_env())

    assert result.returncode == 1, result.stderr
    [entry] = json.loads(result.stdout)["sources"]
    assert (entry["extra"], entry["missing"], entry["stale"]) == (["Runbook 1"], ["Runbook 9"], [])
    assert (entry["listed"], entry["stored"]) == (3, 3)
