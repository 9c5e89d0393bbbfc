"""What `vectormill sources audit` costs per 10,000 filesystem documents, shallow and --deep.

    .venv/bin/python benchmarks/audit_cost.py [--documents 10000]

Writes `--documents` small Markdown files (~300 characters, one chunk each) and a store that holds
every one of them at its listed version with its real chunk content hashes (vectors are random: the
audit never reads them as numbers), then times `audit` — a full listing (stat of each file) against
the store's versions and queue — and `audit --deep` (each file read, parsed and chunked again, its
chunk hashes compared with the stored ones). Both must find the store in order.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from vectormill.connectors.filesystem import FilesystemSource
from vectormill.embedding.chunking import chunk_document
from vectormill.embedding.tokenizer import ModelTokenizer
from vectormill.flows.audit import audit
from vectormill.flows.config import parse_config
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.records import ChunkRecord, DocumentUpsert

TEXT = ("# Note {n}\n\nThe warehouse in city {n} ships {m} pallets of item {n} every day; the night shift "
        "counts them again before the trucks leave, and the difference is written to the stock log.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        root = base / "notes"
        for n in range(args.documents):
            sub = root / f"team{n % 100:02d}"
            sub.mkdir(parents=True, exist_ok=True)
            (sub / f"note{n:05d}.md").write_text(TEXT.format(n=n, m=n * 7 % 997))
        config = parse_config({"store": {"path": "store"}, "chunking": {"tokens": 128, "overlap": 16},
                               "sources": [{"name": "notes", "type": "filesystem", "root": "notes"}]}, base, {})
        settings = config.sources[0]
        tokenizer = ModelTokenizer.for_model(config.embedding.model)
        source = FilesystemSource(settings)
        rng = np.random.default_rng(7)
        with FaissStore.open(config.store, model=config.embedding.model, dimension=384) as store:
            batch = []
            for ref in source.list_documents():
                chunks = chunk_document(source.fetch(ref), tokenizer.tokens, 128, 16)
                records = tuple(ChunkRecord(c.id, c.position, c.text, c.content_hash, c.page, c.last_page, c.tokens)
                                for c in chunks)
                vectors = rng.standard_normal((len(chunks), 384)).astype(np.float32)
                batch.append(DocumentUpsert("notes", ref.id, ref.version, ref.id, ref.id, ref.modified, records,
                                            vectors))
                if len(batch) == 500:
                    store.write(batch)
                    batch = []
            store.write(batch)
            store.checkpoint()

        per = 10_000 / args.documents
        for deep in (False, True):
            started = time.perf_counter()
            [result] = audit(config, deep=deep)
            seconds = time.perf_counter() - started
            assert result.ok and result.listed == result.stored == args.documents, result
            print(f"audit{' --deep' if deep else ''}: {args.documents} documents in {seconds:.2f} s "
                  f"= {seconds * per:.2f} s per 10,000 documents")
        print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
