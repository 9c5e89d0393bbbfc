"""An incremental run of an HTTP source (a MediaWiki test server) SIGKILLed mid-way, then re-run: no change is skipped."""

import os
import signal
import subprocess
import time

import pytest

from vectormill.flows.config import load_config
from vectormill.flows.ingest import ingest
from vectormill.stores.faiss_store import FaissStore

from .cli_process import VECTORMILL
from .servers.mediawiki_server import MediaWikiServer

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

PAGES = {f"Runbook {n}": f"Runbook {n} explains how service {n} is restarted after an outage. " * 8 for n in range(16)}


def state(config_file):
    with FaissStore.open(load_config(config_file).store, writable=False) as store:
        return store.document_versions("wiki"), store.cursor("wiki"), store.stats()["vectors"]


def test_a_killed_incremental_run_is_finished_by_the_next_one(tmp_path):
    from prefect.settings import PREFECT_API_URL

    with MediaWikiServer() as wiki:
        wiki.import_pages(PAGES)
        config = tmp_path / "vectormill.toml"
        # A slow request budget, so the kill lands while the edited pages are being fetched.
        config.write_text(
            '[store]\npath = "store"\n\n[embedding]\ntask_chunks = 2\n\n'
            f'[[sources]]\nname = "wiki"\ntype = "mediawiki"\napi_url = "{wiki.api_url}"\n'
            'requests_per_second = 6\nburst = 1\nfetch_batch_size = 1\n')
        ingest(config_file=str(config))
        _, first_cursor, _ = state(config)

        wiki.advance(1)
        for title in PAGES:
            wiki.edit_page(title, f"{title} now points to the new incident process. " * 8)
        edited = {title: str(wiki.revision(title)) for title in PAGES}

        env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value())
        process = subprocess.Popen([VECTORMILL, "backfill", "--json", "--config", str(config)], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            versions, cursor, _ = state(config)
            if sum(versions[t] == edited[t] for t in PAGES) >= 3:  # some edits stored, not all
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)

        versions, cursor, _ = state(config)
        stored_edits = sum(versions[t] == edited[t] for t in PAGES)
        assert 3 <= stored_edits < len(PAGES), "the kill should land mid-way"
        assert cursor == first_cursor  # not advanced: the changes it covers were not all written

        summary = ingest(config_file=str(config))

        versions, cursor, vectors = state(config)
        assert versions == edited
        assert cursor > first_cursor
        assert summary["documents"]["changed"] == len(PAGES) - stored_edits
        with FaissStore.open(load_config(config).store, writable=False) as store:
            texts = [row[0] for row in store.db.execute("SELECT text FROM chunks")]
        assert texts and all("new incident process" in text for text in texts)
        assert vectors == len(texts)
