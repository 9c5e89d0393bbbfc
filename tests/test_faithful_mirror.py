"""A faithful mirror (issue 18): no event at a source leaves the store silently wrong.

An unreadable folder or an unmounted share fails its source and deletes nothing; one run deletes
no more than `max_delete_ratio` of a source unless confirmed; a document emptied at its source is
removed; any error of one source fails that source alone; one queued failure does not fail a
quiet run; a document that kills its process is counted and, once stuck, skipped. Real files,
the packaged model, the MediaWiki and HubSpot test servers, real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from vectormill.flows.config import load_config
from vectormill.flows.deletions import deletion_refusal
from vectormill.flows.retry_queue import INTERRUPTED, INTERRUPTED_ALONE, list_failures
from vectormill.stores.faiss_store import FaissStore

from .cli_process import VECTORMILL, Preloaded, harness_env, run, run_many
from .corpus import topic_pages, write_config
from .servers.hubspot_server import hubspot_server
from .servers.mediawiki_server import MediaWikiServer
from .test_retry_queue import without_file_access_override

NOTES = {f"note{n}.md": f"# Note {n}\n\nThe warehouse in city {n} ships {n * 7 + 3} pallets of item {n} daily.\n"
         for n in range(6)}


def write_notes(root: Path, notes: dict[str, str] = NOTES) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in notes.items():
        (root / name).write_text(text)


def write_wiki_config(path: Path, api_url: str, extra: str = "") -> Path:
    """A config at `path` with one MediaWiki source, `wiki`, and a store beside it named after the file."""
    path.write_text(f'[store]\npath = "{path.stem}-store"\n\n[chunking]\ntokens = 64\noverlap = 8\n\n'
                    f'[[sources]]\nname = "wiki"\ntype = "mediawiki"\napi_url = "{api_url}"\n'
                    f'requests_per_second = 200\nburst = 20\n{extra}')
    return path


def stored_documents(config_file, source: str = "docs") -> set[str]:
    with FaissStore.open(load_config(config_file).store, writable=False) as store:
        return set(store.document_versions(source))


# ---- the deletion safety valve (pure) -----------------------------------------------------------
def test_the_valve_refuses_deletions_above_the_ratio_and_an_empty_listing_unless_allowed():
    assert deletion_refusal("docs", 5, 10, 0.5) is None  # at the ratio: allowed
    refusal = deletion_refusal("docs", 6, 10, 0.5)
    assert "delete 6 of its 10 stored documents (60%)" in refusal and "max_delete_ratio = 0.5" in refusal
    assert "`vectormill backfill --source docs --allow-deletions`" in refusal and "\n" not in refusal
    assert deletion_refusal("docs", 6, 10, 0.5, allowed=True) is None
    assert deletion_refusal("docs", 3, 0, 0.5) is None  # nothing stored: nothing to protect
    empty = deletion_refusal("docs", 10, 10, 1.0, listed_nothing=True, where="/mnt/share")
    assert "lists no documents at '/mnt/share' while the store holds 10" in empty
    assert deletion_refusal("docs", 10, 10, 1.0, listed_nothing=True, allowed=True) is None


# ---- a listing is complete, or the source fails --------------------------------------------------
@pytest.mark.slow
def test_an_unreadable_folder_fails_the_source_naming_it_and_deletes_nothing(tmp_path, prefect_harness):
    from vectormill.flows.ingest import ingest

    write_notes(tmp_path / "pdfs")
    write_notes(tmp_path / "pdfs" / "team", {"plan.md": "# Plan\n\nThe team meets on Tuesdays in room 4.\n"})
    config = write_config(tmp_path)
    ingest(config_file=str(config))
    before = stored_documents(config)
    assert "team/plan.md" in before

    (tmp_path / "pdfs" / "team").chmod(0)
    (tmp_path / "locked").mkdir(mode=0)
    try:
        # One process for both (a process start and its imports cost seconds). `sources check` lists with the
        # same code: an unreadable root fails it, naming the folder.
        result, check = run_many([["backfill", "--json"],
                                  [f"VECTORMILL_SOURCES__DOCS__ROOT={tmp_path / 'locked'}", "sources", "check", "--json"]],
                                 cwd=tmp_path, env=harness_env(), timeout=600, prefix=without_file_access_override())
    finally:
        (tmp_path / "pdfs" / "team").chmod(0o755)

    assert result["code"] == 1, result["stderr"][-3000:]
    summary = json.loads(result["stdout"].strip().splitlines()[-1])
    [source] = summary["sources"]
    assert source["status"] == "failed" and source["documents"]["deleted"] == 0
    assert f"cannot list {str(tmp_path / 'pdfs' / 'team')!r}: Permission denied" in source["error"]
    assert "source 'docs' failed" in result["stderr"] and "Traceback" not in result["stderr"]
    assert stored_documents(config) == before
    assert check["code"] == 1, check["stderr"]
    [checked] = json.loads(check["stdout"])
    assert not checked["ok"] and f"cannot list {str(tmp_path / 'locked')!r}: Permission denied" in checked["detail"]


@pytest.mark.slow
def test_an_unmounted_share_fails_the_run_while_the_other_commands_work(tmp_path, prefect_harness):
    from vectormill.flows.ingest import IngestFailed, ingest

    write_notes(tmp_path / "pdfs")
    config = write_config(tmp_path)
    ingest(config_file=str(config))

    (tmp_path / "pdfs").rename(tmp_path / "elsewhere")  # not mounted: no folder at all
    env = harness_env()
    # One process for the four command lines: a process start and its imports cost seconds.
    *others, result = run_many([["store", "stats", "--json"], ["failures", "--json"],
                                ["search", "pallets of item 3", "--json"], ["backfill", "--json"]], cwd=tmp_path, env=env)
    for other in others:
        assert other["code"] == 0, (other["argv"], other["stderr"])
    assert result["code"] == 1
    assert f"root folder {str(tmp_path / 'pdfs')!r} does not exist (is the share mounted?)" in result["stderr"]
    assert stored_documents(config) == set(NOTES)

    (tmp_path / "pdfs").mkdir()  # mounted on nothing: an empty mount point
    with pytest.raises(IngestFailed, match=r"source 'docs' failed: the source lists no documents at '.*pdfs' "
                                           r"while the store holds 6 of it") as caught:
        ingest(config_file=str(config))
    assert caught.value.summary["documents"]["deleted"] == 0 and stored_documents(config) == set(NOTES)
    check = subprocess.run([VECTORMILL, "sources", "check", "--json"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0  # reachable, and empty

    confirmed = ingest(config_file=str(config), allow_deletions=True)
    assert confirmed["documents"]["deleted"] == 6 and stored_documents(config) == set()


@pytest.mark.slow
def test_a_run_deleting_more_than_max_delete_ratio_deletes_nothing_until_confirmed(tmp_path, prefect_harness):
    from vectormill.flows.ingest import IngestFailed, ingest

    write_notes(tmp_path / "pdfs")
    config = write_config(tmp_path)
    ingest(config_file=str(config))
    for name in list(NOTES)[:4]:
        (tmp_path / "pdfs" / name).unlink()

    env = harness_env()
    refused = run("backfill", cwd=tmp_path, env=env)
    assert refused.returncode == 1
    assert ("this run would delete 4 of its 6 stored documents (67%), above max_delete_ratio = 0.5; nothing was "
            "deleted; if that is right, confirm it with `vectormill backfill --source docs --allow-deletions`"
            in " ".join(refused.stderr.split()))
    assert stored_documents(config) == set(NOTES)

    confirmed = run("backfill", "--source", "docs", "--allow-deletions", "--json", cwd=tmp_path, env=env)
    assert confirmed.returncode == 0, confirmed.stderr[-2000:]
    assert json.loads(confirmed.stdout.strip().splitlines()[-1])["documents"]["deleted"] == 4
    assert stored_documents(config) == set(list(NOTES)[4:])

    # A wiki's delete log counts too.
    with MediaWikiServer() as wiki:
        wiki.import_pages({f"Runbook {n}": "\n\n".join(topic_pages(f"service {n}", f"Service {n} restarts."))
                           for n in range(3)})
        wiki_config = write_wiki_config(tmp_path / "wiki.toml", wiki.api_url)
        ingest(config_file=str(wiki_config))
        wiki.advance(1)
        wiki.delete_page("Runbook 0")
        wiki.delete_page("Runbook 1")
        with pytest.raises(IngestFailed, match="would delete 2 of its 3 stored documents"):
            ingest(config_file=str(wiki_config))
        assert stored_documents(wiki_config, "wiki") == {"Runbook 0", "Runbook 1", "Runbook 2"}
        assert ingest(config_file=str(wiki_config), allow_deletions=True)["documents"]["deleted"] == 2
        assert stored_documents(wiki_config, "wiki") == {"Runbook 2"}


# ---- a document empty at its source is removed ---------------------------------------------------
@pytest.mark.slow
def test_documents_emptied_at_their_source_are_removed_not_kept_stale(tmp_path, prefect_harness):
    from vectormill.flows.ingest import ingest

    write_notes(tmp_path / "pdfs")
    config = write_config(tmp_path)
    ingest(config_file=str(config))
    (tmp_path / "pdfs" / "note1.md").write_text("")  # truncated to nothing
    (tmp_path / "pdfs" / "fresh.pdf").write_bytes(b"")  # new and empty: never stored

    summary = ingest(config_file=str(config))

    assert sorted(summary["removed"], key=lambda entry: entry["document"]) == [
        {"source": "docs", "document": "fresh.pdf", "reason": "empty at source"},
        {"source": "docs", "document": "note1.md", "reason": "empty at source"}]
    # Only what was stored counts as deleted: the never-stored empty PDF is not a deletion.
    assert summary["documents"]["deleted"] == 1 and summary["documents"]["failed"] == 0
    assert summary["retry_queue"] == {"docs": 0}
    assert stored_documents(config) == set(NOTES) - {"note1.md"}

    with MediaWikiServer() as wiki:
        wiki.import_pages({f"Runbook {n}": f"Runbook {n}: restart service {n} at midnight." for n in range(3)})
        wiki_config = write_wiki_config(tmp_path / "wiki.toml", wiki.api_url)
        ingest(config_file=str(wiki_config))
        wiki.advance(1)
        wiki.edit_page("Runbook 2", "")  # blanked
        blanked = ingest(config_file=str(wiki_config))
        assert blanked["removed"] == [{"source": "wiki", "document": "Runbook 2", "reason": "empty at source"}]
        assert blanked["retry_queue"] == {"wiki": 0}
        assert stored_documents(wiki_config, "wiki") == {"Runbook 0", "Runbook 1"}


# ---- isolation ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_an_unexpected_error_of_one_source_fails_it_alone(tmp_path, monkeypatch, prefect_harness):
    from vectormill.flows.ingest import IngestFailed, ingest

    token = "pat-na1-0b8d6c3e-2f11-4c5a-9d7e-isolat000001"
    monkeypatch.setenv("HUBSPOT_ISOLATION_TOKEN", token)
    write_notes(tmp_path / "pdfs")
    # The connector checks every answer it reads (a malformed record is a SourceError of its own), so
    # an unexpected error can only come from a bug: one is put in its record check, the lowest seam.
    from vectormill.connectors import hubspot

    monkeypatch.setattr(hubspot, "record_problem", lambda record: record["no such key"])
    with hubspot_server(token) as server:
        server.app.add("companies", name="Acme", description="Makes anvils.")
        # The CRM source first: its error must not stop the files after it.
        config = tmp_path / "vectormill.toml"
        config.write_text(
            '[store]\npath = "store"\n\n[chunking]\ntokens = 64\noverlap = 8\n\n'
            '[[sources]]\nname = "crm"\ntype = "hubspot"\ntoken_env = "HUBSPOT_ISOLATION_TOKEN"\n'
            f'base_url = "{server.url}"\nobject_type = "companies"\nproperties = ["name", "description"]\n'
            'requests_per_second = 200\nburst = 20\nmax_attempts = 2\nmax_backoff_seconds = 0.1\n\n'
            '[[sources]]\nname = "docs"\ntype = "filesystem"\nroot = "pdfs"\n')

        with pytest.raises(IngestFailed, match=r"source 'crm' failed: unexpected KeyError: 'no such key'") as caught:
            ingest(config_file=str(config))
    summary = caught.value.summary
    statuses = {source["name"]: source["status"] for source in summary["sources"]}
    assert statuses == {"crm": "failed", "docs": "completed"}
    assert summary["documents"]["new"] == len(NOTES)
    assert stored_documents(config) == set(NOTES)


# ---- max_failed_ratio over the source's documents ---------------------------------------------------
@pytest.mark.slow
def test_one_queued_failure_in_a_quiet_run_warns_instead_of_failing(tmp_path, prefect_harness):
    from vectormill.flows.ingest import ingest

    with MediaWikiServer() as wiki:
        wiki.import_pages({f"Runbook {n}": f"Runbook {n}: restart service {n} at midnight." for n in range(4)})
        config = write_wiki_config(tmp_path / "vectormill.toml", wiki.api_url,
                                   "max_attempts = 1\nmax_backoff_seconds = 0.1\n")
        wiki.fail_parse_of("Runbook 3")
        first = ingest(config_file=str(config))  # 1 of 4 failed: a warning
        assert first["documents"]["failed"] == 1

        quiet = ingest(config_file=str(config), return_state=True)  # nothing edited: only the queued page

        assert quiet.is_completed(), quiet.message
        summary = quiet.result()
        assert summary["documents"]["seen"] == 1 and summary["documents"]["failed"] == 1
        assert any("1 of 4 documents failed (25%), within max_failed_ratio" in w for w in summary["warnings"])


# ---- no poison pills ----------------------------------------------------------------------------
KILLER = '''
import os, signal
from vectormill.connectors import filesystem

_fetch = filesystem.FilesystemSource.fetch


def fetch(self, ref):
    if ref.id == "poison.md":
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer or a crashing parser would
    return _fetch(self, ref)


filesystem.FilesystemSource.fetch = fetch
'''


@pytest.mark.slow
def test_a_document_that_kills_its_process_is_quarantined_without_holding_another_source(tmp_path, prefect_harness):
    """The issue's acceptance: a run is killed when source A opens one file; source B (a wiki, edited before every run)
    runs beside it, its edits land and its cursor moves in every run after the first, and the killer is quarantined
    by its second death (not after max_document_attempts)."""
    notes = {f"note{n}.md": NOTES[f"note{n}.md"] for n in range(5)}
    notes["poison.md"] = "# Poison\n\nThis file kills whatever process reads it.\n"
    write_notes(tmp_path / "pdfs", notes)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILLER)
    env = harness_env(PYTHONPATH=os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
                      PREFECT_LOGGING_LEVEL="WARNING")

    def backfill(runs: Preloaded) -> tuple[int, str, str]:
        """Its exit code, stdout and stderr."""
        run = runs.start("backfill", "--json", cwd=tmp_path)
        stdout, stderr = run.communicate(timeout=600)
        return run.returncode, stdout, stderr

    def attempts() -> dict[str, tuple[int, str]]:
        return {e.document: (e.attempts, e.reason) for e in list_failures(load_config(config))}

    def wiki_state() -> tuple[dict[str, str], str | None]:
        with FaissStore.open(load_config(config).store, writable=False) as store:
            return store.document_versions("wiki"), store.cursor("wiki")

    with MediaWikiServer() as wiki, Preloaded(env, tmp_path / "runs") as runs:
        wiki.import_pages({f"Runbook {n}": f"Runbook {n}: restart service {n} at midnight." for n in range(3)})
        config = write_config(tmp_path, fetch_batch_size=2)  # max_document_attempts: the default, 10
        config.write_text(config.read_text() + f'\n[[sources]]\nname = "wiki"\ntype = "mediawiki"\n'
                                               f'api_url = "{wiki.api_url}"\nrequests_per_second = 200\nburst = 20\n')
        code, _, stderr = backfill(runs)
        assert code == -9, stderr[-2000:]
        assert attempts()["poison.md"] == (1, INTERRUPTED)  # counted before it was processed
        with FaissStore.open(load_config(config).store, writable=False) as store:
            # The killed run recorded the precision of what it wrote (before its first vectors).
            assert bool(store.properties().get("precision")) == bool(store.stats()["vectors"])

        cursors = [wiki_state()[1]]
        for run in (1, 2):
            wiki.advance(1)
            wiki.edit_page("Runbook 1", f"Runbook 1: since edit {run}, restart service 1 at noon.")
            code, stdout, stderr = backfill(runs)
            versions, cursor = wiki_state()
            assert versions["Runbook 1"] == str(wiki.revision("Runbook 1")), run  # B's edit landed
            assert cursor not in cursors, run  # B's cursor moved
            cursors.append(cursor)
            if run == 1:  # the suspects go after every source's other work, alone: the poison kills again
                assert code == -9, stderr[-2000:]
                assert attempts() == {"poison.md": (2, INTERRUPTED_ALONE)}
            else:  # quarantined: not read again, and the run completes, warning about it
                assert code == 0, stderr[-2000:]
                summary = json.loads(stdout.strip().splitlines()[-1])
                assert [entry["document"] for entry in summary["stuck"]] == ["poison.md"]
                assert any("poison.md" in warning and "stuck" in warning for warning in summary["warnings"])
                assert attempts() == {"poison.md": (2, INTERRUPTED_ALONE)}
                assert not any("embedded in" in warning for warning in summary["warnings"])  # one precision
    with FaissStore.open(load_config(config).store, writable=False) as store:
        assert store.properties()["precision"] == summary["precision"]["used"]
    assert stored_documents(config) == set(notes) - {"poison.md"}


# ---- failures keep their reason; nothing stays stale by attrition ---------------------------------------
@pytest.mark.slow
def test_refused_runs_keep_real_reasons_and_warn_until_the_emptied_files_are_deleted(tmp_path, prefect_harness):
    """The issue's acceptance: with max_document_attempts = 2, four runs refused by the valve make nothing stuck;
    each warns naming the emptied files, a broken PDF keeps its real reason, and --allow-deletions removes them."""
    from vectormill.flows.ingest import IngestFailed, ingest

    from .test_retry_queue import best_hit

    write_notes(tmp_path / "pdfs")
    (tmp_path / "pdfs" / "scan.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog")
    config = write_config(tmp_path, extra="max_document_attempts = 2\n")
    first = ingest(config_file=str(config))
    assert first["documents"]["new"] == 6 and first["documents"]["failed"] == 1
    emptied = sorted(NOTES)[:4]
    for name in emptied:
        (tmp_path / "pdfs" / name).write_text("")

    for _ in range(4):
        with pytest.raises(IngestFailed, match="would delete 4 of its 6 stored documents") as refused:
            ingest(config_file=str(config))
        summary = refused.value.summary
        assert any(all(name in warning for name in emptied) and "deletion refused" in warning
                   for warning in summary["warnings"]), summary["warnings"]
        queue = {e.document: e for e in list_failures(load_config(config))}
        assert set(queue) == {"scan.pdf", *emptied}
        assert "PDF" in queue["scan.pdf"].reason and queue["scan.pdf"].reason != INTERRUPTED
        assert all(queue[name].reason.startswith("empty at source, not deleted") and queue[name].attempts == 0
                   and not queue[name].stuck for name in emptied)
        assert stored_documents(config) == set(NOTES)
    assert queue["scan.pdf"].stuck and [s["document"] for s in summary["stuck"]] == ["scan.pdf"]
    confirmed = ingest(config_file=str(config), allow_deletions=True)
    assert confirmed["documents"]["deleted"] == 4
    assert stored_documents(config) == set(NOTES) - set(emptied)
    assert best_hit(config, NOTES[emptied[0]]).document not in emptied  # no longer answers searches
    assert [s["document"] for s in confirmed["stuck"]] == ["scan.pdf"]
    assert any("scan.pdf" in warning and "stuck" in warning for warning in confirmed["warnings"])


@pytest.mark.slow
def test_a_listing_refused_midway_records_not_reached_instead_of_interrupted(tmp_path, monkeypatch, prefect_harness):
    from vectormill.flows.ingest import IngestFailed, ingest

    token = "pat-na1-0b8d6c3e-2f11-4c5a-9d7e-midway000001"
    monkeypatch.setenv("HUBSPOT_MIDWAY_TOKEN", token)
    with hubspot_server(token) as server:
        for n in range(30):
            server.app.add("companies", name=f"Company {n}", description=f"Makes widget model {n}.")
        config = tmp_path / "vectormill.toml"
        config.write_text('[store]\npath = "store"\n\n[chunking]\ntokens = 64\noverlap = 8\n\n'
                          '[[sources]]\nname = "crm"\ntype = "hubspot"\ntoken_env = "HUBSPOT_MIDWAY_TOKEN"\n'
                          f'base_url = "{server.url}"\nobject_type = "companies"\nproperties = ["name", "description"]\n'
                          'page_size = 5\nfetch_batch_size = 4\nrequests_per_second = 200\nburst = 20\n')
        server.fail_matching(lambda request: request.param("after") == "MjA=", 400)  # the 5th page: offset 20

        with pytest.raises(IngestFailed, match="HTTP 400"):
            ingest(config_file=str(config))

        queue = list_failures(load_config(config))
        assert queue and all(entry.reason.startswith("not reached: the source failed: ") and "HTTP 400" in entry.reason
                             and entry.attempts == 0 for entry in queue)
        server.clear_faults()
        landed = ingest(config_file=str(config))
        assert landed["documents"]["failed"] == 0 and list_failures(load_config(config)) == []
        assert len(stored_documents(config, "crm")) == 30
