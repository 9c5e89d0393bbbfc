"""Peak memory of one large document: a big text file and a PDF of many pages, each against an empty one.

Each measurement runs in a fresh process and prints its peak RSS (`ru_maxrss`):

- `chunk` (default): the filesystem source reads one document (PDF: pypdf, page by page; a text
  file over 4 MiB: in pieces) and `stream_chunks` chunks it with the model's tokenizer, one chunk
  at a time;
- `ingest` (`--ingest`): a whole `vectormill backfill` of a folder holding only that document
  (embedding included: ~20 chunks/s on 2 CPU cores, 925 chunks a MB of this text; a text file over
  4 MiB goes through the run in parts of 1,024 chunks). Measure two sizes to see whether the peak
  grows with the document.

The figure that matters is the peak above the empty document's run in the same mode
(goal: ≤ 400 MiB for a 200 MB text file and a 2,000-page PDF). To show whether memory follows the
document, the parent also samples the child's RSS (Linux `/proc`) every second and prints the
highest sample in each quarter of the run: flat quarters mean nothing accumulates as the document
goes through.

    .venv/bin/python benchmarks/large_document.py [--text-mb 200 [MB ...]] [--pdf-pages 2000] [--ingest]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("request served cache miss upstream latency retry queue worker shard replica timeout "
         "connection pool checkpoint segment vector index merge compaction").split()
MODEL = "all-MiniLM-L6-v2"


def write_text(path: Path, megabytes: float, seed: int = 18) -> None:
    """Log-like lines up to `megabytes` MB, written a block at a time."""
    rng = random.Random(seed)
    target = int(megabytes * 1_000_000)
    with open(path, "w", encoding="utf-8") as out:
        written = line = 0
        while written < target:
            block = "".join(f"{line + n} {' '.join(rng.choices(WORDS, k=12))} in {rng.randrange(1000)} ms\n"
                            for n in range(2000))
            out.write(block)
            written += len(block)
            line += 2000


def write_pdf_pages(path: Path, pages: int, seed: int = 18) -> None:
    from vectormill.flows.sample import write_pdf

    rng = random.Random(seed)
    write_pdf([" ".join(rng.choices(WORDS, k=250)) + "." for _ in range(pages)], path)


def child(mode: str, path: Path, part_chunks: int | None) -> None:
    """Read and chunk (or ingest) the one document under path's folder; print peak RSS in MiB."""
    started = time.perf_counter()
    if part_chunks:
        from vectormill.flows import pipeline

        pipeline.PART_CHUNKS = part_chunks
    if mode == "chunk":
        from vectormill.connectors.base import DocumentRef
        from vectormill.connectors.filesystem import FilesystemSource
        from vectormill.connectors.settings import FilesystemSourceSettings
        from vectormill.embedding.chunking import stream_chunks
        from vectormill.embedding.tokenizer import ModelTokenizer

        tokenizer = ModelTokenizer.for_model(MODEL)
        source = FilesystemSource(FilesystemSourceSettings(name="big", type="filesystem", root=path.parent,
                                                           max_file_mb=1000, ocr="never"))
        # One chunk at a time, as a run's embedding windows take them from a large document.
        count = sum(1 for _ in stream_chunks(source.fetch(DocumentRef(path.name, "v")), tokenizer.tokens,
                                             tokenizer.max_content_tokens, 32))
    else:
        from vectormill.flows.ingest import ingest

        config = path.parent.parent / "vectormill.toml"
        config.write_text(f'[store]\npath = "store"\n\n[[sources]]\nname = "big"\ntype = "filesystem"\n'
                          f'root = "{path.parent.name}"\nmax_file_mb = 1000\nocr = "never"\n')
        count = ingest(config_file=str(config))["chunks_embedded"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"chunks": count, "peak_rss_mib": round(peak, 1),
                      "seconds": round(time.perf_counter() - started, 1)}))


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration):  # not Linux, or the process is gone
        return None


def quarter_peaks(samples: list[float]) -> list[float]:
    """The highest sample in each quarter of the run (fewer than 4 samples: none)."""
    if len(samples) < 4:
        return []
    bounds = [len(samples) * quarter // 4 for quarter in range(5)]
    return [max(samples[low:high]) for low, high in zip(bounds, bounds[1:])]


def measure(mode: str, path: Path, part_chunks: int | None) -> dict:
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, __file__, "--child", mode, str(path), str(part_chunks or 0)],
                                 stdout=out, stderr=err, text=True)
        samples: list[float] = []
        while child.poll() is None:
            if (rss := rss_mib(child.pid)) is not None:
                samples.append(rss)
            time.sleep(1)
        if child.returncode:
            err.seek(0)
            raise SystemExit(f"child failed on {path.name}:\n{err.read()[-3000:]}")
        out.seek(0)
        result = json.loads(out.read().strip().splitlines()[-1])
    return result | {"quarter_peaks_mib": quarter_peaks(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-mb", type=float, nargs="+", default=[200.0], help="text file sizes (0 to skip)")
    parser.add_argument("--pdf-pages", type=int, default=2000, help="0 to skip the PDF")
    parser.add_argument("--ingest", action="store_true", help="measure a whole backfill, not fetch + chunk")
    parser.add_argument("--part-chunks", type=int, help="chunks of a document written in parts per part "
                                                        "(default: flows/pipeline.py's PART_CHUNKS)")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "PATH", "PART_CHUNKS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), int(args.child[2]))
        return
    mode = "ingest" if args.ingest else "chunk"
    with tempfile.TemporaryDirectory() as scratch:
        cases = {"empty document": ("empty.txt", lambda p: p.write_text("one line\n"))}
        for megabytes in filter(None, args.text_mb):
            cases[f"{megabytes:g} MB text file"] = (f"big-{megabytes:g}.txt",
                                                     lambda p, megabytes=megabytes: write_text(p, megabytes))
        if args.pdf_pages:
            cases[f"{args.pdf_pages}-page PDF"] = ("big.pdf", lambda p: write_pdf_pages(p, args.pdf_pages))
        baseline = None
        for label, (name, make) in cases.items():
            folder = Path(scratch, name.replace(".", "-"), "docs")  # one document per run
            folder.mkdir(parents=True)
            make(folder / name)
            result = measure(mode, folder / name, args.part_chunks)
            baseline = baseline if baseline is not None else result["peak_rss_mib"]
            print(f"{mode} {label:>22}: {(folder / name).stat().st_size / 1e6:8.1f} MB, {result['chunks']:7d} chunks, "
                  f"peak RSS {result['peak_rss_mib']:7.0f} MiB (+{result['peak_rss_mib'] - baseline:.0f} over empty), "
                  f"{result['seconds']:.0f} s" + (", RSS sampled per quarter of the run: " + " / ".join(
                      f"{peak:.0f}" for peak in result["quarter_peaks_mib"]) + " MiB"
                                                   if result["quarter_peaks_mib"] else ""))


if __name__ == "__main__":
    main()
