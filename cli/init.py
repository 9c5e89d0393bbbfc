"""`vectormill init`: write a commented example config. Needs no config file itself."""

from __future__ import annotations

from pathlib import Path

import typer

from rich.markup import escape

from .common import UserError, console

EXAMPLE_CONFIG = '''\
# vectormill configuration. Relative paths are relative to this file's folder.
# Any key can be overridden from the environment: VECTORMILL_STORE__PATH=/data/store,
# VECTORMILL_EMBEDDING__DEVICE=cpu, VECTORMILL_SOURCES__DOCS__ROOT=/mnt/share.

[store]
path = "store"                      # the FAISS store (created on first run)
# checkpoint_every_vectors = 50000  # checkpoint after this many vectors…
# checkpoint_every_seconds = 600    # …or this many seconds, and always at the end of a run
# keep_generations = 3              # checkpoints kept (older ones are deleted)
# index_factory = "auto"            # auto: HNSW32 graphs; "Flat": all exact; any faiss.index_factory string
# train_vectors = 100000            # segments this large get the factory's index; smaller ones stay exact
# recall_target = 0.95              # recall@10 each approximate segment must show on its own vectors
# search_parameters = ""            # e.g. "nprobe=32" (IVF) or "efSearch=128" (HNSW), over the measured effort
# merge_factor = 10                 # compaction at checkpoints: merge this many segments of one size tier…
# max_dead_ratio = 0.25             # …and rewrite a segment once this share of it is deleted or replaced
# min_replicas_confirmed = 1        # replicas that must confirm each checkpoint (none configured: off)
#
# [[store.replicas]]                # copies of every checkpoint, verified by checksum
# name = "backup"
# url = "s3://bucket/vectormill"    # or a local path; anything fsspec opens
# storage_options = { client_kwargs = { endpoint_url = "http://127.0.0.1:9000" } }

[search]
# mode = "hybrid"                   # vector | keyword (BM25) | hybrid (both, reciprocal rank fusion)
# vector_weight = 1.0               # hybrid: weights of the two rankings
# keyword_weight = 1.5

[chunking]
# tokens = 256                      # tokens per chunk (default: the model's limit)
overlap = 32                        # tokens shared by neighbouring chunks

[embedding]
# model = "all-MiniLM-L6-v2"        # packaged default; any sentence-transformers path or name
device = "auto"                     # auto | cpu | cuda (GPUs sized from the free memory NVML reports)
# precision = "auto"                # auto | fp32 | bf16 | fp16 (auto: bf16/fp16 where the hardware has it)
# precision_min_cosine = 0.999      # agreement with fp32 on a probe set, else the run falls back to fp32
# batch_size = 64                   # cap on chunks per model batch (default: from the token budget)
# max_workers = 2                   # cap on model replicas
# max_batch_tokens = 16384          # cap on padded tokens per model batch
# memory_reserve_fraction = 0.1     # share of each GPU's memory left free
#
# [embedding.service]               # embed through a text-embeddings-inference server instead
# url = "http://tei.internal:8080"  # [embedding] model must name the model it serves
# requests_per_second = 20
# token_env = "TEI_API_KEY"

[[sources]]
name = "docs"
type = "filesystem"
root = "pdfs"                       # folder (or s3://bucket/prefix, smb://server/share/folder) of PDFs, text,
                                    # Word, PowerPoint, Excel, CSV, HTML and mail files
# include = ["**/*"]
# formats = ["pdf", "txt", "md", "docx", "pptx", "xlsx", "csv", "html", "eml", "msg"]  # default: all read
# exclude = ["drafts/**"]
# max_file_mb = 100
# ocr = "auto"                      # read PDF pages without a text layer with Tesseract: auto | always | never
# ocr_languages = ["eng"]           # Debian: tesseract-ocr-<language>
# max_failed_ratio = 0.5            # the run fails when more of this source's documents fail
# max_document_attempts = 10        # failed runs after which a queued document is reported as stuck

# [[sources]]
# name = "wiki"
# type = "mediawiki"
# api_url = "https://wiki.example.org/w/api.php"
# namespaces = [0]
# requests_per_second = 5
# burst = 10
#
# [[sources]]
# name = "crm"
# type = "hubspot"
# object_type = "companies"
# properties = ["name", "domain", "description"]
# token_env = "HUBSPOT_TOKEN"       # or token_secret_block = "hubspot-token"

# [deployments]                     # schedules of `vectormill serve` / deployments/prefect.yaml
# all_schedule = "0 3 * * *"
# [deployments.schedules]
# docs = "0 * * * *"

# [execution]
# task_runner = "local"             # or "dask" (dask_address = "tcp://host:8786")

# [drift]
# min_centroid_cosine = 0.7         # warn when a run's vectors move away from the last run's
'''


def register(app: typer.Typer, store_app: typer.Typer) -> None:
    @app.command()
    def init(path: Path = typer.Argument(Path("vectormill.toml"), help="Where to write the example config."),
             force: bool = typer.Option(False, help="Overwrite an existing file.")) -> None:
        """Write a commented example config."""
        if path.exists() and not force:
            raise UserError([f"{path} exists; pass --force to overwrite it"])
        path.write_text(EXAMPLE_CONFIG)
        console.print(escape(f"wrote {path}: edit the [[sources]] entry, then run `vectormill backfill`"))
