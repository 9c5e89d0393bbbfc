"""Where plain `model.encode` spends its time: tokenizing on the host, the model's forward pass in
fp32 / fp16 / bf16 (autocast, as vectormill runs half precisions), and the whole `encode` call.

    .venv/bin/python benchmarks/encode_breakdown.py [--device cuda:0] [--chunks 4096] [--batch 512]

On a GPU a small model such as all-MiniLM-L6-v2 is bound by the host: when tokenizing takes
longer than the forward pass, half precision speeds up the part that is not the bottleneck, and
neither a larger batch nor a second replica helps much. Each line is one timed pass over the same
chunks after a warm-up pass (CUDA synchronised before and after).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer
from vectormill.embedding.models import resolve_model
from vectormill.embedding.settings import EmbeddingSettings

CORPUS = Path(__file__).resolve().parent.parent / "flows" / "sample_corpus"
HALF = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_texts(count: int, seed: int = 7) -> list[str]:
    """~150-word texts (about 220 tokens), words drawn from the bundled sample corpus."""
    vocabulary = sorted({w for f in CORPUS.iterdir() for w in re.findall(r"[A-Za-z][A-Za-z'-]+", f.read_text())})
    rng = random.Random(seed)
    return [" ".join(rng.choices(vocabulary, k=rng.randint(120, 180))) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=EmbeddingSettings().model)
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--chunks", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=512)
    args = parser.parse_args()

    texts = make_texts(args.chunks)
    model = SentenceTransformer(resolve_model(args.model), device=args.device)
    device_type = args.device.split(":")[0]
    synchronize = torch.cuda.synchronize if device_type == "cuda" else (lambda: None)
    batches = [texts[i:i + args.batch] for i in range(0, len(texts), args.batch)]
    print(f"{len(texts)} chunks in batches of {args.batch} on {args.device}; torch threads {torch.get_num_threads()}")

    def timed(label: str, work: Callable[[], object]) -> None:
        work()  # warm-up: first calls pay allocation and kernel selection
        synchronize()
        started = time.perf_counter()
        work()
        synchronize()
        print(f"{label:<34} {time.perf_counter() - started:7.3f} s", flush=True)

    def autocast(precision: str) -> contextlib.AbstractContextManager:
        dtype = HALF[precision]
        return torch.autocast(device_type, dtype=dtype) if dtype else contextlib.nullcontext()

    timed("tokenize (host)", lambda: [model.tokenize(batch) for batch in batches])
    features = [{k: v.to(args.device) if hasattr(v, "to") else v for k, v in model.tokenize(batch).items()}
                for batch in batches]
    for precision in HALF:
        def forward(precision: str = precision) -> None:
            with torch.inference_mode(), autocast(precision):
                for feature in features:
                    model(dict(feature))["sentence_embedding"]

        def encode(precision: str = precision) -> None:
            with autocast(precision):
                model.encode(texts, batch_size=args.batch)

        timed(f"forward only, {precision}", forward)
        timed(f"whole encode, {precision}", encode)


if __name__ == "__main__":
    main()
