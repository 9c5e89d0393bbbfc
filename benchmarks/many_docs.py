"""Many small documents: `vectormill backfill` against a bare encode script, whole processes, one run.

    .venv/bin/python benchmarks/many_docs.py [--notes 10000]

`--notes` one-paragraph `.txt` notes (~40 tokens each, one chunk each). Printed:
- the wall time of a `vectormill backfill --json` process (first run, no Prefect server: it starts
  its temporary one, as users see it) against a bare script's process: import
  sentence-transformers, load the model, read the files, `model.encode` them at its best batch size
  (the best of a few sizes, tried on the same texts in this process beforehand);
- the embed stage's rate inside the run (`chunks_embedded / seconds.embed`) against the bare
  script's `encode` rate on the same texts;
- fetch/parse/chunk's CPU per document (`fetch_parse_chunk`'s function on the notes in this process,
  in batches of the size a run plans for them, MAX_FETCH_BATCH: goal ≤ 0.5 ms), and what the pool did (model calls,
  chunks, padded-token share).
Goals: whole process ≤ 1.05 × bare, embed stage ≥ 0.95 × bare encode.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.sources_side_by_side import paragraph  # noqa: E402
from tests.cli_process import VECTORMILL  # noqa: E402

BATCH_SIZES = (32, 64, 128, 256)

BARE = """
import sys, time
from pathlib import Path
from sentence_transformers import SentenceTransformer
from vectormill.embedding.models import resolve_model
model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"), device="cpu")
texts = [path.read_text() for path in sorted(Path(sys.argv[1]).glob("*.txt"))]
started = time.perf_counter()
model.encode(texts, batch_size=int(sys.argv[2]), normalize_embeddings=True)
print(len(texts) / (time.perf_counter() - started))
"""


def best_batch_size(texts: list[str]) -> tuple[int, dict[int, float]]:
    """The batch size at which plain `encode` runs these texts fastest (chunks/s per size tried)."""
    from sentence_transformers import SentenceTransformer
    from vectormill.embedding.models import resolve_model

    model = SentenceTransformer(resolve_model("all-MiniLM-L6-v2"), device="cpu")
    model.encode(texts[:64], batch_size=64)
    rates = {}
    for size in BATCH_SIZES:
        started = time.perf_counter()
        model.encode(texts, batch_size=size, normalize_embeddings=True)
        rates[size] = len(texts) / (time.perf_counter() - started)
    return max(rates, key=rates.get), rates


def fetch_cpu_per_document(notes: Path) -> float:
    """CPU milliseconds a note costs in `fetch_parse_chunk` (the tokenizer's threads included)."""
    from vectormill.connectors.settings import FilesystemSourceSettings
    from vectormill.flows.pipeline import fetch_parse_chunk, source_for
    from vectormill.flows.task_sizes import MAX_FETCH_BATCH

    settings = FilesystemSourceSettings(name="notes", type="filesystem", root=notes)
    refs = [(ref, True) for ref in source_for(settings).list_documents()]
    batches = [refs[i:i + MAX_FETCH_BATCH] for i in range(0, len(refs), MAX_FETCH_BATCH)]
    fetch_parse_chunk.fn(settings, batches[0], "all-MiniLM-L6-v2", 254, 0)  # the tokenizer loads
    started = time.process_time()
    for batch in batches:
        fetch_parse_chunk.fn(settings, batch, "all-MiniLM-L6-v2", 254, 0)
    return 1000 * (time.process_time() - started) / len(refs)


def timed(command: list[str], **kwargs) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True, **kwargs)
    return time.perf_counter() - started, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=10_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vectormill-many-") as temp:
        base = Path(temp)
        notes = base / "notes"
        notes.mkdir()
        for n in range(args.notes):
            (notes / f"note{n:05d}.txt").write_text(paragraph(n) + "\n")
        texts = [path.read_text() for path in sorted(notes.glob("*.txt"))]
        size, rates = best_batch_size(texts[:min(len(texts), 1000)])
        fetch_cpu = fetch_cpu_per_document(notes)

        bare_seconds, out = timed([sys.executable, "-c", BARE, str(notes), str(size)])
        bare_rate = float(out.strip().splitlines()[-1])

        config = base / "vectormill.toml"
        config.write_text('[store]\npath = "store"\n\n[[sources]]\nname = "notes"\ntype = "filesystem"\n'
                          'root = "notes"\n')
        env = {**os.environ, "PREFECT_HOME": str(base / "prefect-home")}
        env.pop("PREFECT_API_URL", None)
        run_seconds, out = timed([VECTORMILL, "backfill", "--config", str(config), "--json"], env=env, cwd=base)
        summary = json.loads(out)

    seconds = summary["seconds"]
    embed_rate = summary["chunks_embedded"] / seconds["embed"]
    print(f"{args.notes} notes, {summary['chunks_embedded']} chunks")
    print("plain encode, chunks/s by batch size (1,000 notes): "
          + ", ".join(f"{s}: {r:.0f}" for s, r in rates.items()) + f" -> batch {size}")
    print(f"{'process':<34}{'wall s':>9}")
    print(f"{'bare script (read + encode)':<34}{bare_seconds:>9.1f}")
    print(f"{'vectormill backfill --json':<34}{run_seconds:>9.1f}   ({run_seconds / bare_seconds:.2f}x bare; "
          "goal <= 1.05x)")
    print(f"embed stage {embed_rate:.0f} chunks/s vs bare encode {bare_rate:.0f} chunks/s: "
          f"{embed_rate / bare_rate:.2f}x (goal >= 0.95x)")
    print(f"fetch_parse_chunk {seconds['fetch_parse_chunk']:.1f} s "
          f"({1000 * seconds['fetch_parse_chunk'] / args.notes:.2f} ms a document, wall in its threads beside the "
          f"model); alone: {fetch_cpu:.2f} ms of CPU a document (goal <= 0.5 ms)")
    print("run seconds: " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    for worker in (summary.get("telemetry") or {}).get("workers", []):
        print(f"pool worker {worker['device']}: {worker['batches']} model calls, {worker['chunks']} chunks, "
              f"padded-token share {worker['padded_share']:.1%}, budget {worker['batch_tokens']} tokens")


if __name__ == "__main__":
    main()
