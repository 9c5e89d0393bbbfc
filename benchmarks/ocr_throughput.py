"""OCR throughput on this machine, and the share of a mixed corpus's ingest it takes, in one run.

Prints:
  1. pages per second of OCR (render at 300 dpi + Tesseract) on full letter pages of scanned text,
     one page at a time as one fetch task does, with the render and Tesseract times apart and the
     words Tesseract got right (a check that the pages are read, not only timed); then the same
     with Tesseract's default OpenMP threads instead of one thread per page, and the ratio;
  2. an ingest of a mixed corpus (text PDFs and scanned PDFs) with `ocr = "auto"`, and the same
     corpus with `ocr = "never"`: the `ocr` stage's seconds, its share of the run's time, and how
     much longer the run is for reading the scans.

    .venv/bin/python benchmarks/ocr_throughput.py [--pages 6] [--text-documents 20] [--scanned-documents 3]

Needs Debian's tesseract-ocr and tesseract-ocr-eng. The flow runs in Prefect's ephemeral mode, as
`vectormill backfill` does; the model is loaded before the timed runs.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from throughput import WORDS, make_corpus  # noqa: E402 - the text corpus of the throughput benchmark

from tests.corpus import write_scanned_pdf  # noqa: E402 - the scans the tests read

LETTER = (8.5, 11)


def scanned_texts(pages: int, seed: int) -> list[str]:
    """Full pages of words (about 30 lines of 60 characters each)."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(300)) + "." for _ in range(pages)]


def words_right(drawn: str, read: str) -> float:
    """Share of the words Tesseract gave that match the drawn text, in order (lines that did not
    fit on the page were not drawn, so the words read are compared, not the words written)."""
    read_words = read.split()
    matcher = difflib.SequenceMatcher(None, drawn.split(), read_words, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks()) / max(len(read_words), 1)


def ocr_pages_per_second(folder: Path, pages: int, threads: int | None) -> dict:
    from vectormill.connectors.ocr import PageRenderer, Tesseract

    texts = scanned_texts(pages, seed=11)
    path = folder / "scan.pdf"
    write_scanned_pdf(path, texts, inches=LETTER)
    tesseract = Tesseract(["eng"], page_timeout=300, threads=threads)
    assert tesseract.installed(), "install tesseract-ocr and tesseract-ocr-eng"
    rendering = reading = 0.0
    accuracy = []
    with PageRenderer(path.read_bytes()) as renderer:
        for index, text in enumerate(texts):
            started = time.perf_counter()
            image = renderer.render(index)
            rendered = time.perf_counter()
            read = tesseract.read(image, index + 1)
            rendering += rendered - started
            reading += time.perf_counter() - rendered
            accuracy.append(words_right(text, read))
    total = rendering + reading
    return {"tesseract_threads": threads or "default", "pages": pages, "pages_per_second": round(pages / total, 3), "seconds_per_page": round(total / pages, 2),
            "render_seconds_per_page": round(rendering / pages, 2), "tesseract_seconds_per_page": round(reading / pages, 2),
            "words_right": round(sum(accuracy) / len(accuracy), 4)}


def mixed_run(folder: Path, ocr: str, text_documents: int, scanned_documents: int) -> dict:
    from vectormill.flows.ingest import ingest

    pdfs = folder / "pdfs"
    if not pdfs.exists():
        make_corpus(pdfs, text_documents)
        for number in range(scanned_documents):
            write_scanned_pdf(pdfs / f"scan{number:03d}.pdf", scanned_texts(2, seed=number), inches=LETTER)
    store = folder / f"store-{ocr}"
    config = folder / f"{ocr}.toml"
    config.write_text(f'[store]\npath = "{store.name}"\n\n[[sources]]\nname = "bench"\ntype = "filesystem"\n'
                      f'root = "pdfs"\nocr = "{ocr}"\n')
    started = time.perf_counter()
    summary = ingest(config_file=str(config))
    wall = time.perf_counter() - started
    seconds = summary["seconds"]
    return {"ocr": ocr, "documents": summary["documents"], "failed": [f["document"] for f in summary["failures"]],
            "chunks_embedded": summary["chunks_embedded"], "wall_seconds": round(wall, 2),
            "seconds": seconds, "ocr_share_of_run": round(seconds.get("ocr", 0.0) / seconds["total"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=6, help="scanned letter pages to OCR one by one")
    parser.add_argument("--text-documents", type=int, default=20, help="3-page text PDFs in the mixed corpus")
    parser.add_argument("--scanned-documents", type=int, default=3, help="2-page scanned PDFs in the mixed corpus")
    args = parser.parse_args()
    if shutil.which("tesseract") is None:
        sys.exit("tesseract is not on PATH: apt-get install tesseract-ocr tesseract-ocr-eng")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        ocr = ocr_pages_per_second(folder, args.pages, threads=1)  # as the source runs it
        print(json.dumps({"ocr_throughput": ocr}))
        default_threads = ocr_pages_per_second(folder, args.pages, threads=None)
        print(json.dumps({"ocr_throughput_tesseract_default_threads": default_threads}))

        from vectormill.embedding.settings import EmbeddingSettings
        from vectormill.flows.pipeline import embedder_for

        embedder_for(EmbeddingSettings()).embed(["warm up"])  # the model loads outside the timed runs
        without = mixed_run(folder, "never", args.text_documents, args.scanned_documents)
        print(json.dumps({"mixed_corpus_without_ocr": without}))
        with_ocr = mixed_run(folder, "auto", args.text_documents, args.scanned_documents)
        print(json.dumps({"mixed_corpus_with_ocr": with_ocr}))

    scanned_pages = 2 * args.scanned_documents
    text_pages = 3 * args.text_documents
    added = with_ocr["seconds"]["total"] - without["seconds"]["total"]
    print(f"OCR: {ocr['pages_per_second']:.2f} pages/s ({ocr['seconds_per_page']:.2f} s/page: render "
          f"{ocr['render_seconds_per_page']:.2f} s + Tesseract {ocr['tesseract_seconds_per_page']:.2f} s), "
          f"{ocr['words_right']:.1%} of words right; with Tesseract's default threads "
          f"{default_threads['pages_per_second']:.2f} pages/s: one thread per page is "
          f"{ocr['pages_per_second'] / default_threads['pages_per_second']:.2f}× as fast")
    print(f"mixed corpus ({text_pages} text pages + {scanned_pages} scanned pages): run {with_ocr['seconds']['total']:.1f} s "
          f"with OCR, {without['seconds']['total']:.1f} s without; the ocr stage {with_ocr['seconds']['ocr']:.1f} s = "
          f"{with_ocr['ocr_share_of_run']:.1%} of the run; reading the scans made the run "
          f"{added:.1f} s ({added / with_ocr['seconds']['total']:.1%}) longer")


if __name__ == "__main__":
    main()
