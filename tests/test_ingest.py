"""The ingest flow end to end on real PDFs, the packaged model and a real FAISS store, in a Prefect test harness."""

import os

import numpy as np
import pytest

from vectormill.flows.config import load_config
from vectormill.flows.ingest import IngestFailed, ingest
from vectormill.flows.pipeline import embedder_for
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.lock import StoreLockedError

from .corpus import TOPICS, topic_pages, write_broken_pdfs, write_config, write_corpus
from vectormill.flows.sample import write_pdf

pytestmark = pytest.mark.usefixtures("prefect_harness")


def stored(config_file):
    config = load_config(config_file)
    with FaissStore.open(config.store, writable=False) as store:
        return store.chunk_vectors(), store.stats()


def search(config_file, text, k=3):
    config = load_config(config_file)
    with FaissStore.open(config.store, writable=False) as store:
        return store.search(embedder_for(config.embedding).embed([text])[0], k)


@pytest.fixture
def corpus(tmp_path):
    known = write_corpus(tmp_path / "pdfs")
    return tmp_path, write_config(tmp_path), known


@pytest.mark.slow  # 23 s on a loaded 2-core machine: the module's first run loads the model
def test_good_documents_are_searchable_and_broken_ones_reported(tmp_path):
    known = write_corpus(tmp_path / "pdfs")
    broken = write_broken_pdfs(tmp_path / "pdfs")
    config = write_config(tmp_path)

    summary = ingest(config_file=str(config))

    assert summary["documents"]["seen"] == len(known) + len(broken)
    assert summary["documents"]["new"] == len(known)
    assert summary["documents"]["failed"] == len(broken)
    reasons = {f["document"]: f["reason"] for f in summary["failures"]}
    assert set(reasons) == set(broken)
    for name, word in broken.items():
        assert word in reasons[name]
    # Failed new files stay visible on the retry queue; later runs fetch them again.
    assert summary["retry_queue"] == {"docs": len(broken)}
    with FaissStore.open(load_config(config).store, writable=False) as store:
        assert {queued.document for queued in store.retry_queue("docs")} == set(broken)
    assert summary["chunks_embedded"] > len(known) * 3  # several chunks per 3-page document
    assert summary["telemetry"]["device"] == "cpu"  # sampled while the model embedded

    for document, sentence in known.items():
        best = search(config, sentence)[0]
        assert (best.document, best.page) == (document, 2), (sentence, best)
        assert sentence.split()[1] in best.text


def test_reruns_do_only_the_work_that_changed(corpus):
    folder, config, known = corpus
    first = ingest(config_file=str(config))
    before, _ = stored(config)

    again = ingest(config_file=str(config))
    assert again["chunks_embedded"] == 0
    assert again["documents"]["unchanged"] == len(known)
    assert stored(config)[0].keys() == before.keys()

    # Change one document: only its chunks are embedded again, and its old chunks are gone.
    write_pdf(topic_pages("chess", "Grandmasters prefer the Najdorf variation in sharp games."), folder / "pdfs" / "chess.pdf")
    changed = ingest(config_file=str(config))
    assert changed["documents"]["changed"] == 1 and changed["documents"]["unchanged"] == len(known) - 1
    chess_chunks = first["chunks_embedded"] // len(known)
    assert 0 < changed["chunks_embedded"] <= chess_chunks + 1
    after, _ = stored(config)
    assert search(config, "Najdorf variation in sharp games")[0].document == "chess.pdf"
    assert not any("Sicilian" in hit.text for hit in search(config, TOPICS["chess"], k=10) if hit.document == "chess.pdf")
    unchanged_ids = {cid for cid in before if cid in after}
    assert len(after) - len(unchanged_ids) <= changed["chunks_embedded"] + changed["chunks_reused"]

    # Delete one: its vectors are gone.
    os.remove(folder / "pdfs" / "sailing.pdf")
    deleted = ingest(config_file=str(config))
    assert deleted["documents"]["deleted"] == 1 and deleted["chunks_embedded"] == 0
    remaining, stats = stored(config)
    assert stats["documents"] == len(known) - 1
    assert all(hit.document != "sailing.pdf" for hit in search(config, TOPICS["sailing"], k=20))
    assert len(remaining) == stats["vectors"]


def test_touching_a_file_reuses_its_vectors(corpus):
    folder, config, known = corpus
    ingest(config_file=str(config))
    before, _ = stored(config)
    os.utime(folder / "pdfs" / "baking.pdf", ns=(10**18, 10**18))
    summary = ingest(config_file=str(config))
    assert summary["documents"]["changed"] == 1
    assert summary["chunks_embedded"] == 0 and summary["chunks_reused"] > 0
    after, _ = stored(config)
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], before[k]) for k in before)


def test_too_many_failures_fail_the_run_with_the_source_named(tmp_path):
    write_corpus(tmp_path / "pdfs", {"chess": TOPICS["chess"]})
    write_broken_pdfs(tmp_path / "pdfs")  # 4 broken of 5: 80 % > 50 %
    config = write_config(tmp_path)
    with pytest.raises(IngestFailed, match=r"source 'docs': 4 of 5 documents failed .*max_failed_ratio = 0.5") as caught:
        ingest(config_file=str(config))
    # The good document is stored all the same: failures never undo acknowledged work.
    assert caught.value.summary["documents"]["new"] == 1
    assert stored(config)[1]["documents"] == 1


def test_a_second_writer_is_refused(corpus):
    folder, config, _ = corpus
    settings = load_config(config)
    with FaissStore.open(settings.store, model=settings.embedding.model, dimension=384):
        with pytest.raises(StoreLockedError, match="already open for writing by another process"):
            ingest(config_file=str(config))


def test_a_backfill_window_redoes_the_documents_modified_in_it_and_nothing_else(corpus):
    from datetime import datetime, timezone

    folder, config, known = corpus
    old = datetime(2020, 6, 1, tzinfo=timezone.utc).timestamp()
    for name in ("chess.pdf", "taxes.pdf"):
        os.utime(folder / "pdfs" / name, (old, old))
    ingest(config_file=str(config))
    os.remove(folder / "pdfs" / "sailing.pdf")  # outside the window: a window never reconciles deletions

    summary = ingest(config_file=str(config), since=datetime(2020, 1, 1), until=datetime(2020, 12, 31))

    assert summary["documents"]["seen"] == 2 and summary["documents"]["changed"] == 2
    assert summary["documents"]["deleted"] == 0
    assert summary["chunks_embedded"] == 0 and summary["chunks_reused"] > 0  # same text: stored vectors reused
    assert stored(config)[1]["documents"] == len(known)
