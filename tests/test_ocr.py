"""OCR of scanned PDF pages: the decisions, the real Tesseract on page images the tests draw, and
`backfill` + `search` through the CLI with and without Tesseract on PATH."""

import json
import shutil

import pytest

from vectormill.connectors.base import Document, DocumentRef, Page
from vectormill.connectors.errors import DocumentError, SourceError
from vectormill.connectors.filesystem import FilesystemSource
from vectormill.connectors.ocr import (MAX_PAGE_PIXELS, OcrUnavailableError, check_page_budget,
                                       has_text_layer, pages_needing_ocr, render_scale)
from vectormill.connectors.settings import FilesystemSourceSettings
from vectormill.embedding.chunking import chunk_document
from vectormill.embedding.tokenizer import ModelTokenizer

from .cli_process import harness_env, run_many
from .corpus import FILLER, TOPICS, write_config, write_corpus, write_scanned_pdf

SCANNED_SENTENCE = "The lighthouse keeper logs every passing ship in a leather bound journal."
SCANNED_PAGES = ["Notes on lighthouses, page one. The keeper climbs the spiral stairs at dusk to light the lamp.",
                 "Notes on lighthouses, page two. " + FILLER * 2 + SCANNED_SENTENCE + " " + FILLER]
HARBOUR_SENTENCE = "The harbour master writes down every tide and the name of each fishing boat."
NOTICE = "pages without text were skipped: install tesseract-ocr"


def needs_tesseract(test):
    skip = pytest.mark.skipif(shutil.which("tesseract") is None,
                              reason="needs Debian's tesseract-ocr and tesseract-ocr-eng (.ci/run installs them)")
    return pytest.mark.tesseract(skip(test))


def source(root, **settings):
    return FilesystemSource(FilesystemSourceSettings(name="docs", type="filesystem", root=root, **settings))


@pytest.fixture
def no_tesseract_on_path(tmp_path, monkeypatch):
    """PATH without the `tesseract` program, as on a machine where it is not installed."""
    empty = tmp_path / "bin-without-tesseract"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert shutil.which("tesseract") is None


# ---- decisions ---------------------------------------------------------------------------------
def test_which_pages_are_read_from_their_images():
    texts = ["A page with a real text layer.", "", "  12  \n", "Short but 10 chars"]
    assert not has_text_layer("  12  \n") and has_text_layer("0123456789")
    assert pages_needing_ocr(texts, "auto") == (1, 2)
    assert pages_needing_ocr(texts, "always") == (0, 1, 2, 3)
    assert pages_needing_ocr(texts, "never") == ()


def test_pages_render_at_300_dpi_unless_that_would_take_too_much_memory():
    assert render_scale(612, 792) == 300 / 72  # US letter: 2550 × 3300 pixels
    poster = render_scale(72 * 100, 72 * 100)  # 100 × 100 inches would be 900 million pixels
    assert (72 * 100 * poster) ** 2 == pytest.approx(MAX_PAGE_PIXELS)


def test_a_document_needing_more_ocr_than_allowed_fails_naming_the_setting():
    check_page_budget(200, 200)
    with pytest.raises(DocumentError, match=r"^201 pages need OCR, over ocr_max_pages = 200 "):
        check_page_budget(201, 200)


def test_a_chunk_is_ocr_text_when_a_page_it_covers_was_read_by_ocr():
    tokenizer = ModelTokenizer.for_model("all-MiniLM-L6-v2")
    words = " ".join(f"word{i}" for i in range(55))  # 55 words: a chunk spans the page break
    document = Document("docs", "mixed.pdf", "v", "Mixed", (Page(1, words), Page(2, words, ocr=True)), "/mixed.pdf")
    chunks = chunk_document(document, tokenizer.tokens, 40, 0)
    assert {(c.page, c.last_page) for c in chunks} == {(1, 1), (1, 2), (2, 2)}
    for chunk in chunks:
        assert chunk.ocr == (chunk.last_page == 2), chunk
        assert chunk.pages == tuple(range(chunk.page, chunk.last_page + 1)), chunk


# ---- the real Tesseract ------------------------------------------------------------------------
@needs_tesseract
def test_a_scanned_pdf_becomes_a_document_with_page_numbers_read_by_ocr(tmp_path):
    write_scanned_pdf(tmp_path / "scan.pdf", SCANNED_PAGES)
    document = source(tmp_path).fetch(DocumentRef("scan.pdf", "v"))
    assert [(page.number, page.ocr) for page in document.pages] == [(1, True), (2, True)]
    assert " ".join(document.pages[1].text.split()) == " ".join(SCANNED_PAGES[1].split())  # word for word
    assert "spiral stairs" in document.pages[0].text
    assert document.ocr_seconds > 0 and document.ocr_skipped_pages == 0


@needs_tesseract
def test_auto_reads_only_the_pages_without_a_text_layer(tmp_path):
    write_scanned_pdf(tmp_path / "mixed.pdf", SCANNED_PAGES, text_layer_pages=frozenset({1}))
    document = source(tmp_path).fetch(DocumentRef("mixed.pdf", "v"))
    assert [(page.number, page.ocr) for page in document.pages] == [(1, False), (2, True)]
    assert SCANNED_SENTENCE in " ".join(document.pages[1].text.split())


@needs_tesseract
def test_always_reads_every_page_and_never_none(tmp_path):
    write_scanned_pdf(tmp_path / "mixed.pdf", SCANNED_PAGES, text_layer_pages=frozenset({1}))
    always = source(tmp_path, ocr="always").fetch(DocumentRef("mixed.pdf", "v"))
    assert [page.ocr for page in always.pages] == [True, True]
    assert "spiral stairs" in always.pages[0].text

    never = source(tmp_path, ocr="never").fetch(DocumentRef("mixed.pdf", "v"))
    assert [(page.ocr, page.text) for page in never.pages][1] == (False, "")
    assert never.ocr_seconds == 0 and never.ocr_skipped_pages == 0  # not skipped: left out by choice
    write_scanned_pdf(tmp_path / "scan.pdf", SCANNED_PAGES)
    with pytest.raises(DocumentError, match=r'no extractable text .*ocr = "never"'):
        source(tmp_path, ocr="never").fetch(DocumentRef("scan.pdf", "v"))


@needs_tesseract
def test_ocr_is_bounded_per_document_and_per_page(tmp_path):
    write_scanned_pdf(tmp_path / "scan.pdf", SCANNED_PAGES)
    with pytest.raises(DocumentError, match="2 pages need OCR, over ocr_max_pages = 1"):
        source(tmp_path, ocr_max_pages=1).fetch(DocumentRef("scan.pdf", "v"))
    # Tesseract cannot start and read a page in a millisecond, however fast the machine.
    with pytest.raises(DocumentError, match=r"OCR of page 1 took longer than ocr_page_timeout_seconds = 0.001"):
        source(tmp_path, ocr_page_timeout_seconds=0.001).fetch(DocumentRef("scan.pdf", "v"))


@needs_tesseract
def test_a_language_tesseract_lacks_stops_the_source_naming_the_package(tmp_path):
    write_scanned_pdf(tmp_path / "scan.pdf", SCANNED_PAGES)
    with pytest.raises(SourceError, match=r"ocr_languages \['qqq'\]: install tesseract-ocr-qqq"):
        source(tmp_path, ocr_languages=["eng", "qqq"]).fetch(DocumentRef("scan.pdf", "v"))


def test_without_tesseract_auto_skips_pages_without_text_and_always_refuses(tmp_path, no_tesseract_on_path):
    write_scanned_pdf(tmp_path / "mixed.pdf", SCANNED_PAGES, text_layer_pages=frozenset({1}))
    write_scanned_pdf(tmp_path / "scan.pdf", SCANNED_PAGES)
    mixed = source(tmp_path).fetch(DocumentRef("mixed.pdf", "v"))
    assert [(page.ocr, bool(page.text)) for page in mixed.pages] == [(False, True), (False, False)]
    assert mixed.ocr_skipped_pages == 1
    with pytest.raises(OcrUnavailableError, match="install tesseract-ocr") as caught:
        source(tmp_path).fetch(DocumentRef("scan.pdf", "v"))
    assert caught.value.skipped_pages == 2 and "\n" not in str(caught.value)
    with pytest.raises(SourceError, match=r'ocr = "always" but Tesseract is not installed: install tesseract-ocr'):
        source(tmp_path, ocr="always")


# ---- backfill and search through the CLI --------------------------------------------------------
@needs_tesseract
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_backfill_ocrs_a_scanned_pdf_that_search_then_finds_and_never_ocrs_it_again(tmp_path):
    env = harness_env()
    write_corpus(tmp_path / "pdfs", {k: TOPICS[k] for k in ("chess", "baking")})
    write_scanned_pdf(tmp_path / "pdfs" / "lighthouse.pdf", SCANNED_PAGES)
    # A short text page and a scanned page 2: one chunk holds both, and says so.
    write_scanned_pdf(tmp_path / "pdfs" / "harbour.pdf", ["Harbour log, cover page.", HARBOUR_SENTENCE],
                      text_layer_pages=frozenset({1}))
    write_config(tmp_path)

    # One process for the five command lines: the point is what each finds, not a fresh start.
    first, scanned, harbour, baking, again = run_many(
        [["backfill", "--json"], ["search", SCANNED_SENTENCE, "-k", "3", "--json"],
         ["search", HARBOUR_SENTENCE, "-k", "1", "--json"], ["search", TOPICS["baking"], "-k", "1", "--json"],
         ["backfill", "--json"]], cwd=tmp_path, env=env)
    assert first["code"] == 0, first["stderr"][-3000:]
    summary = json.loads(first["stdout"].strip().splitlines()[-1])
    assert summary["documents"]["new"] == 4 and summary["failures"] == []
    assert summary["seconds"]["ocr"] > 0 and NOTICE not in first["stderr"]

    assert scanned["code"] == 0, scanned["stderr"]
    best = json.loads(scanned["stdout"])[0]
    assert (best["document"], best["page"], best["pages"], best["ocr"]) == ("lighthouse.pdf", 2, [2], True)
    assert SCANNED_SENTENCE in " ".join(best["text"].split())
    best = json.loads(harbour["stdout"])[0]
    assert (best["document"], best["page"], best["pages"], best["ocr"]) == ("harbour.pdf", 1, [1, 2], True)
    best = json.loads(baking["stdout"])[0]
    assert (best["document"], best["ocr"]) == ("baking.pdf", False)

    # Unchanged: the version (size + mtime) says so before the file is opened: no OCR, nothing embedded.
    assert again["code"] == 0, again["stderr"][-3000:]
    again = json.loads(again["stdout"].strip().splitlines()[-1])
    assert again["documents"]["unchanged"] == 4 and again["chunks_embedded"] == 0
    assert again["seconds"]["ocr"] == 0


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_without_tesseract_on_path_auto_skips_those_pages_with_one_notice_and_the_run_completes(tmp_path):
    empty = tmp_path / "bin-without-tesseract"
    empty.mkdir()
    env = dict(harness_env(), PATH=str(empty))
    write_corpus(tmp_path / "pdfs", {k: TOPICS[k] for k in ("chess", "baking", "sailing")})
    write_scanned_pdf(tmp_path / "pdfs" / "lighthouse.pdf", SCANNED_PAGES)  # 2 pages, no text layer
    write_scanned_pdf(tmp_path / "pdfs" / "mixed.pdf", SCANNED_PAGES, text_layer_pages=frozenset({1}))
    write_config(tmp_path)

    result, searched = run_many([["backfill", "--json"],
                                 ["search", "The keeper climbs the spiral stairs at dusk", "-k", "1", "--json"]],
                                cwd=tmp_path, env=env)
    assert result["code"] == 0, result["stderr"][-3000:]
    summary = json.loads(result["stdout"].strip().splitlines()[-1])
    assert f"3 {NOTICE}" in summary["warnings"]
    assert result["stderr"].count(NOTICE) == 1  # once per run, for two documents
    assert summary["documents"]["new"] == 4 and summary["documents"]["failed"] == 1
    (failure,) = summary["failures"]
    assert failure["document"] == "lighthouse.pdf" and "install tesseract-ocr" in failure["reason"]
    assert summary["seconds"]["ocr"] == 0

    best = json.loads(searched["stdout"])[0]
    assert (best["document"], best["page"], best["ocr"]) == ("mixed.pdf", 1, False)


@needs_tesseract
@pytest.mark.slow
def test_ocr_runs_in_the_fetch_tasks_on_dask_workers(tmp_path, prefect_harness, monkeypatch):
    """The worker has Tesseract on its PATH, the flow's process does not: the pages are read all the same."""
    from distributed import Client, LocalCluster
    from prefect.settings import PREFECT_API_URL

    from vectormill.flows.ingest import ingest

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    write_corpus(tmp_path / "pdfs", {"chess": TOPICS["chess"]})
    write_scanned_pdf(tmp_path / "pdfs" / "lighthouse.pdf", SCANNED_PAGES)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster, set_as_default=False):
        config = write_config(tmp_path, f'\n[execution]\ntask_runner = "dask"\n'
                                        f'dask_address = "{cluster.scheduler_address}"\n')
        empty = tmp_path / "bin-without-tesseract"
        empty.mkdir()
        monkeypatch.setenv("PATH", str(empty))
        summary = ingest(config_file=str(config))

    assert summary["execution"]["task_runner"] == "dask"
    assert summary["documents"]["new"] == 2 and summary["failures"] == []
    assert summary["seconds"]["ocr"] > 0 and not any(NOTICE in warning for warning in summary["warnings"])
