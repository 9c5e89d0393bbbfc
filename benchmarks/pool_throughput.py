"""Embedding throughput: plain `model.encode` over a sweep of batch sizes (16–128 on CPU, 32–1024
on a GPU), in fp32 and in half precision, against the pool at its plan (the NVML-derived token
budget, in the precision `auto` chooses).

Run: `python benchmarks/pool_throughput.py [--chunks 256] [--rounds 2] [--model NAME] [--device auto]
[--precisions fp32,bf16] [--batches 16,32,64,128] [--task-chunks 64]`

It makes its own ~200-word chunks (words drawn from the bundled sample corpus, each kept under
the model's token limit), times every setting on the same chunks in the same process, and
prints chunks/s, the ratio of the pool to the best hand-tuned plain setting in the pool's
precision (the goal on a GPU: ≥ 0.9) and of each half precision to fp32. Rounds interleave the
settings and keep each one's best time, so a burst of load on a shared machine skews less.
The pool is fed the way the flow feeds it, `embed()` calls of the plan's task_chunks chunks, and
once all in one call (the plan's batching alone: what a larger task_chunks gives).
By default the plain sweep runs in fp32 and in the plan's precision (fp16 and bf16 on a GPU).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

from vectormill.embedding.capacity import plan_for_settings
from vectormill.embedding.pool import EmbeddingPool
from vectormill.embedding.sentence_transformer import SentenceTransformerEmbedder
from vectormill.embedding.settings import EmbeddingSettings
from vectormill.embedding.tokenizer import ModelTokenizer

PLAIN_BATCHES = {"cpu": (16, 32, 64, 128), "cuda": (32, 64, 128, 256, 512, 1024)}  # a GPU wants larger batches
CORPUS = Path(__file__).resolve().parent.parent / "flows" / "sample_corpus"


def make_chunks(count: int, words_per_chunk: int, tokenizer: ModelTokenizer, seed: int = 7) -> list[str]:
    vocabulary = sorted({w for f in CORPUS.iterdir() for w in re.findall(r"[A-Za-z][A-Za-z'-]+", f.read_text())})
    rng = random.Random(seed)
    chunks = []
    for _ in range(count):
        # Lengths vary ±25 % like real chunks do, so sorting by length has padding to save.
        words = rng.choices(vocabulary, k=rng.randint(words_per_chunk * 3 // 4, words_per_chunk * 5 // 4))
        while tokenizer.count([" ".join(words)])[0] > tokenizer.max_tokens:
            words = words[:-5]
        chunks.append(" ".join(words))
    return chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=256)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default=EmbeddingSettings().model)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precisions", help="plain sweep precisions, comma-separated (default: fp32 and the "
                                             "plan's; fp32, fp16 and bf16 on a GPU)")
    parser.add_argument("--task-chunks", type=int, help="chunks per pool.embed call (default: the plan's "
                                                        "task_chunks, as the flow feeds it)")
    parser.add_argument("--batches", help="plain sweep batch sizes, comma-separated (default: 16–128 on CPU, "
                                          "32–1024 on a GPU)")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    args = parser.parse_args()

    settings = EmbeddingSettings(model=args.model, device=args.device)
    tokenizer = ModelTokenizer.for_model(settings.model)
    chunks = make_chunks(args.chunks, args.words, tokenizer)
    counts = tokenizer.count(chunks)
    plan = plan_for_settings(settings)
    plain_device = "cpu" if plan.device == "cpu" else f"cuda:{next(d.cuda_index for d in plan.devices if d.workers)}"
    plain = SentenceTransformerEmbedder(settings.model, device=plain_device, tokenizer=tokenizer)
    pool = EmbeddingPool(settings.model, plan, tokenizer=tokenizer, requested_precision=settings.precision,
                         min_cosine=settings.precision_min_cosine)
    used = pool.precision_report.used
    precisions = (args.precisions.split(",") if args.precisions else
                  ["fp32", "fp16", "bf16"] if plan.device == "cuda" else sorted({"fp32", used}, key="fp32".__ne__))
    task_chunks = args.task_chunks or plan.task_chunks
    batches = [int(b) for b in args.batches.split(",")] if args.batches else PLAIN_BATCHES[plan.device]
    print(f"{len(chunks)} chunks, {min(counts)}–{max(counts)} tokens (mean {sum(counts) / len(counts):.0f}); "
          f"plan: {plan.workers} worker(s) on {plan.device}, {plan.batch_tokens} tokens per batch, "
          f"threads {plan.threads} ({plan.reason}); pool in {used} ({pool.precision_report.reason}), "
          f"fed {task_chunks} chunks per call")

    def run_plain(batch: int, precision: str) -> None:
        plain.encode(chunks, batch_size=batch, precision=precision)

    def run_pool() -> None:
        for start in range(0, len(chunks), task_chunks):
            pool.embed(chunks[start:start + task_chunks])

    settings_to_time = {f"plain {p} batch {b}": (lambda b=b, p=p: run_plain(b, p))
                        for p in precisions for b in batches}
    settings_to_time[f"pool {used} (planned)"] = run_pool
    # The plan's own batching, without the flow's call size: what a larger task_chunks would give.
    settings_to_time[f"pool {used} (one call)"] = lambda: pool.embed(chunks)
    plain.encode(chunks[:16], batch_size=16)  # warm-up: first calls pay one-off allocation costs
    pool.embed(chunks[:16])
    best: dict[str, float] = {}
    for round_ in range(args.rounds):
        for name, run in settings_to_time.items():
            started = time.perf_counter()
            run()
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
            print(f"  round {round_ + 1}: {name} {time.perf_counter() - started:.2f} s", flush=True)

    rates = {name: len(chunks) / seconds for name, seconds in best.items()}

    def best_plain(precision: str) -> str:
        return max((name for name in rates if name.startswith(f"plain {precision} ")), key=rates.__getitem__)

    for name, rate in rates.items():
        print(f"{name:<24} {rate:8.1f} chunks/s  ({best[name]:.2f} s)")
    reference = best_plain(used) if used in precisions else best_plain(precisions[0])
    ratio = rates[f"pool {used} (planned)"] / rates[reference]
    print(f"pool / best hand-tuned plain ({reference}): {ratio:.3f}")
    print(f"pool in one call / best hand-tuned plain ({reference}): "
          f"{rates[f'pool {used} (one call)'] / rates[reference]:.3f}")
    for precision in precisions:
        if precision != "fp32" and "fp32" in precisions:
            print(f"best plain {precision} / best plain fp32: "
                  f"{rates[best_plain(precision)] / rates[best_plain('fp32')]:.2f}")
    summary = pool.telemetry_summary()
    print(f"telemetry while the pool embedded: {json.dumps(summary)}")
    if args.json:
        print(json.dumps({"chunks": len(chunks), "chunks_per_s": {k: round(v, 2) for k, v in rates.items()},
                          "ratio": round(ratio, 3), "plan": plan.as_dict(), "telemetry": summary}))
    pool.close()


if __name__ == "__main__":
    main()
