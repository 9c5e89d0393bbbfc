"""End-to-end ingest throughput against bare `model.encode` on the same chunks, in one run.

Prints, for the same chunks: bare `model.encode` in fp32 (batch size 64), bare `encode` under
`torch.autocast` in bf16, and the pipeline with `[embedding] precision = "auto"` — chunks/s,
tokens/s and the ratio to bare fp32 (goal for the pipeline: ≥ 1.8× on a CPU with bf16, ≥ 0.95×
where auto means fp32); the time of an unchanged re-run as a fraction of the first (goal ≤ 3 %);
peak RSS of an ingest of the corpus at 1× and 5× its size (each in a fresh process).

    .venv/bin/python benchmarks/throughput.py [--documents 40]

The flow runs in Prefect's ephemeral mode, as `vectormill backfill` does. Pipeline time is
measured inside the flow on a model loaded beforehand (bare encode is timed on a loaded model
too); the wall time including Prefect's server start is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("river stone harbour signal engine garden ledger window copper meadow lantern orbit "
         "quarry velvet anchor summit thunder canvas marble pilot cedar falcon hollow ember").split()


BARE_BATCH_SIZE = 64  # sentence-transformers' usual setting; the pool batches by token budget


def make_corpus(root: Path, documents: int, pages: int = 3, seed: int = 7) -> None:
    """PDFs of ~200-word pages: each page becomes about one chunk of the default size."""
    import random

    from vectormill.flows.sample import write_pdf

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for number in range(documents):
        texts = [" ".join(rng.choice(WORDS) for _ in range(200)) + "." for _ in range(pages)]
        write_pdf(texts, root / f"doc{number:04d}.pdf")


def write_config(folder: Path) -> Path:
    config = folder / "vectormill.toml"
    config.write_text('[store]\npath = "store"\n\n[[sources]]\nname = "bench"\ntype = "filesystem"\nroot = "pdfs"\n')
    return config


def run_ingest(config: Path) -> tuple[dict, float]:
    from vectormill.flows.ingest import ingest

    started = time.perf_counter()
    summary = ingest(config_file=str(config))
    return summary, time.perf_counter() - started


def rss_child(documents: int) -> None:
    """Ingest a fresh corpus of `documents` PDFs in this process; print peak RSS in MiB."""
    with tempfile.TemporaryDirectory() as folder:
        make_corpus(Path(folder) / "pdfs", documents)
        summary, _ = run_ingest(write_config(Path(folder)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"documents": documents, "chunks": summary["chunks_embedded"], "peak_rss_mib": round(peak, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=40)
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--skip-rss", action="store_true", help="skip the 1×/5× peak-RSS runs")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    if args.rss_child:
        rss_child(args.rss_child)
        return

    from vectormill.flows.config import load_config
    from vectormill.flows.pipeline import embedder_for
    from vectormill.stores.faiss_store import FaissStore

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_corpus(folder / "pdfs", args.documents)
        config_file = write_config(folder)
        config = load_config(config_file)

        embedder = embedder_for(config.embedding)  # the pipeline's, loaded before both timings
        embedder.embed(["warm up the model"] * 8)
        import torch
        from sentence_transformers import SentenceTransformer

        from vectormill.embedding.models import resolve_model
        from vectormill.embedding.tokenizer import ModelTokenizer

        bare_model = SentenceTransformer(resolve_model(config.embedding.model), device="cpu")
        bare_model.encode(["warm up the model"] * 8)

        first, first_wall = run_ingest(config_file)
        chunks = first["chunks_embedded"]
        pipeline_seconds = first["seconds"]["total"]  # the model was loaded before the flow

        with FaissStore.open(config.store, writable=False) as store:
            texts = [row[0] for row in store.db.execute("SELECT text FROM chunks ORDER BY source, document, position")]
        tokens = sum(ModelTokenizer.for_model(config.embedding.model).count(texts))

        def bare(dtype) -> float:
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                bare_model.encode(texts, batch_size=BARE_BATCH_SIZE, normalize_embeddings=True)
            return time.perf_counter() - started

        bare_seconds, bf16_seconds = bare(None), bare(torch.bfloat16)

        rerun, rerun_wall = run_ingest(config_file)

    precision = first["precision"]
    print(f"corpus: {args.documents} PDFs, {chunks} chunks, {tokens} tokens; bare encode at batch size "
          f"{BARE_BATCH_SIZE}, pipeline at its planned token budget in {precision['used']} ({precision['reason']})")
    rows = [("bare encode fp32", len(texts), bare_seconds), ("bare encode bf16", len(texts), bf16_seconds),
            ("pipeline, auto", chunks, pipeline_seconds)]
    for name, count, seconds in rows:
        print(f"{name:<18}: {count / seconds:7.2f} chunks/s  {tokens / seconds:8.0f} tokens/s  "
              f"{(count / seconds) / (len(texts) / bare_seconds):6.2f}× bare fp32  ({seconds:.1f} s)")
    goal = "≥ 1.8" if precision["used"] in ("bf16", "fp16") else "≥ 0.95"
    print(f"pipeline end to end : {pipeline_seconds:.1f} s in the flow; {first_wall:.1f} s wall with Prefect's start; "
          f"ratio to bare fp32 {(chunks / pipeline_seconds) / (len(texts) / bare_seconds):.3f} (goal {goal}), "
          f"to bare bf16 {(chunks / pipeline_seconds) / (len(texts) / bf16_seconds):.3f}")
    print(f"unchanged re-run    : {rerun['seconds']['total']:.2f} s in the flow = "
          f"{rerun['seconds']['total'] / first['seconds']['total']:.1%} of the first (goal ≤ 3 %); "
          f"{rerun_wall:.1f} s wall = {rerun_wall / first_wall:.1%}; {rerun['chunks_embedded']} chunks embedded")
    print(f"stage seconds (first run): {first['seconds']}")
    if not args.skip_rss:
        for scale in (1, 5):
            child = subprocess.run([sys.executable, __file__, "--rss-child", str(args.documents * scale)],
                                   capture_output=True, text=True, check=True)
            result = json.loads(child.stdout.strip().splitlines()[-1])
            print(f"peak RSS {scale}× corpus : {result['peak_rss_mib']:.0f} MiB "
                  f"({result['documents']} PDFs, {result['chunks']} chunks)")


if __name__ == "__main__":
    main()
