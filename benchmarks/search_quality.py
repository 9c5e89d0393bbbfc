"""What each search mode finds: vector, keyword (BM25) and hybrid (reciprocal rank fusion) on one generated corpus.

    .venv/bin/python benchmarks/search_quality.py [--documents 400] [--queries 150] [--dir /tmp]

The corpus: support cases, one document each (one chunk), where prose (a product, what went wrong, what the
customer asked for, a city) sits next to identifiers: an invoice number (neighbours differ by two swapped
digits: INV-2024-00417 / INV-2024-00471), an error code, a SKU and the customer's name. Two query sets:
* identifier queries: the exact token as a user pastes it (an invoice number, error code, SKU or name);
* paraphrased questions: the case told in other words (synonyms for the product, the fault and the remedy; no
  identifier, no city), the kind of question a small embedding model is for;
* mixed: the paraphrased question followed by the case's error code ("... It showed E4172-C.").
Each query has one right document. For every mode: recall@5 (the right document among the first 5 hits) and MRR
(over the first 10). Embedded with the packaged model (all-MiniLM-L6-v2, fp32, CPU), searched through
FaissStore.search as `vectormill search --mode` does. Goals (issue 31): hybrid recall@5 ≥ 0.95 on identifiers;
hybrid ≥ vector on paraphrases. Also a few fusion weightings, to show what the default rests on.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from vectormill.embedding.precision import cpu_flags
from vectormill.embedding.registry import build_embedder
from vectormill.embedding.settings import EmbeddingSettings
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.fusion import Fusion
from vectormill.stores.records import ChunkRecord, DocumentUpsert
from vectormill.stores.settings import SearchSettings, StoreSettings

# (as the case is written, as a customer would ask about it)
PRODUCTS = [("dishwasher", "dish washing machine"), ("espresso machine", "coffee maker"), ("road bike", "bicycle"),
            ("laptop", "notebook computer"), ("winter jacket", "warm coat"), ("office chair", "desk seat"),
            ("vacuum cleaner", "hoover"), ("electric kettle", "water boiler"), ("smartphone", "mobile phone"),
            ("television", "TV set"), ("refrigerator", "fridge"), ("sofa", "couch"), ("printer", "printing device"),
            ("headphones", "earphones"), ("wristwatch", "watch"), ("cordless drill", "power drill"),
            ("baby stroller", "pram"), ("mattress", "bed"), ("tent", "camping shelter"), ("microwave oven", "microwave")]
FAULTS = [("water leaked into the packaging during transport", "it got wet in the box on the way"),
          ("the courier dropped the parcel on the doorstep", "the delivery man let the package fall"),
          ("the label carried a wrong street address", "it was sent to an incorrect address"),
          ("the battery overheated after an hour of use", "the battery became very hot quickly"),
          ("a mounting screw was missing from the kit", "one of the screws was not included"),
          ("the glass front cracked in the first week", "the front panel broke within days"),
          ("the order arrived three weeks after the promised date", "delivery was weeks late"),
          ("the colour did not match the catalogue photo", "it looks a different colour than pictured"),
          ("it made a loud rattling noise when switched on", "it is very noisy when running"),
          ("the power cable was frayed out of the box", "the cord was damaged on arrival"),
          ("the size ran two numbers too small", "it is much smaller than the size ordered"),
          ("the software update left it unable to start", "it no longer boots after updating")]
REMEDIES = [("a full refund of the purchase price", "all my money back"),
            ("a replacement unit shipped by express", "a new one sent quickly"),
            ("store credit for the next order", "a voucher to spend later"),
            ("a technician visit to repair it at home", "someone to come and fix it"),
            ("a partial refund as compensation", "some money back for the trouble"),
            ("a prepaid label to return the item", "a free way to send it back")]
CITIES = ["Lisbon", "Tampere", "Ghent", "Bologna", "Krakow", "Utrecht", "Graz", "Aarhus", "Bilbao", "Lyon", "Cork",
          "Brno", "Tartu", "Malmo", "Porto", "Leipzig", "Basel", "Split", "Riga", "Nantes"]
FIRST = ["Marta", "Jonas", "Aino", "Luca", "Ines", "Pieter", "Sofia", "Mateusz", "Chloe", "Emil", "Nadia", "Tomas",
         "Greta", "Hugo", "Leila", "Oskar", "Vera", "Milan", "Ida", "Rafael"]
LAST = ["Kowalczyk", "Virtanen", "De Smet", "Moretti", "Ferreira", "Jansen", "Novak", "Lindqvist", "Garcia", "Dubois",
        "Horvat", "Berzins", "Tamm", "Murphy", "Schneider", "Keller", "Rossi", "Petrov", "Nielsen", "Weber"]
DEFAULT = "hybrid (the default [search] settings)"
FILLER = ("The case was opened through the web form and assigned to the second-line team, who checked the order "
          "history and the courier's tracking events before answering.")


def invoice_number(number: int) -> int:
    """Pairs of invoice numbers with their last two digits swapped (00417 and 00471 are both cases), or one apart."""
    base = 417 + number // 2 * 97
    if number % 2 == 0:
        return base
    tens, ones = divmod(base % 100, 10)
    return base - base % 100 + ones * 10 + tens if tens != ones else base + 1


def cases(count: int, rng: random.Random) -> list[dict[str, str]]:
    combos = rng.sample([(p, f, r) for p in range(len(PRODUCTS)) for f in range(len(FAULTS))
                         for r in range(len(REMEDIES))], count)
    names = rng.sample([(first, last) for first in FIRST for last in LAST], count)  # at most 400 documents
    found = []
    for number, ((product, fault, remedy), (first, last)) in enumerate(zip(combos, names)):
        invoice = f"INV-2024-{invoice_number(number):05d}"
        case = {"invoice": invoice, "code": f"E{rng.randint(1000, 9999)}-{rng.choice('ABCDEFGH')}",
                "sku": f"SKU-{rng.choice(['BK', 'HM', 'EL', 'SP'])}-{rng.randint(1000, 9999)}",
                "name": f"{first} {last}", "city": rng.choice(CITIES)}
        case["text"] = (f"Customer {case['name']} from {case['city']} reported that with the {PRODUCTS[product][0]} "
                        f"(item {case['sku']}) {FAULTS[fault][0]}. Support logged error code {case['code']} on "
                        f"invoice {case['invoice']} and agreed to {REMEDIES[remedy][0]}. {FILLER}")
        case["question"] = (f"My {PRODUCTS[product][1]} is a problem: {FAULTS[fault][1]}. "
                            f"Can I get {REMEDIES[remedy][1]}?")
        found.append(case)
    assert len({case["invoice"] for case in found}) == count
    return found


def upsert(number: int, case: dict[str, str], vector: np.ndarray) -> DocumentUpsert:
    chunk_id = hashlib.sha256(f"case{number}".encode()).hexdigest()[:32]
    chunk = ChunkRecord(chunk_id, 0, case["text"], hashlib.sha256(case["text"].encode()).hexdigest(), None, None, 80)
    return DocumentUpsert("support", f"case{number}", "v1", f"Case {number}", f"crm/{number}", None, (chunk,),
                          vector.reshape(1, -1))


def score(store: FaissStore, queries: list[tuple[str, np.ndarray, str]], mode: str, fusion: Fusion
          ) -> tuple[float, float]:
    """(recall@5, MRR@10) of `mode` over (text, vector, right document) queries."""
    found, reciprocal = 0, 0.0
    for text, vector, right in queries:
        documents = [hit.document for hit in store.search(vector, 10, text=text, mode=mode, fusion=fusion)]
        found += right in documents[:5]
        reciprocal += 1 / (documents.index(right) + 1) if right in documents else 0.0
    return found / len(queries), reciprocal / len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=400, help="at most 400")
    parser.add_argument("--queries", type=int, default=150, help="per query set")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8"})
    print(f"CPU flags: {' '.join(flags) or 'none of avx2/avx512/amx'}")
    rng = random.Random(31)
    corpus = cases(args.documents, rng)
    embedder = build_embedder(EmbeddingSettings(precision="fp32"))
    started = time.perf_counter()
    vectors = embedder.embed([case["text"] for case in corpus])
    chosen = rng.sample(range(len(corpus)), args.queries)
    kinds = ("invoice", "code", "sku", "name")
    identifiers = [(corpus[n][kinds[i % len(kinds)]], n) for i, n in enumerate(chosen)]
    paraphrases = [(corpus[n]["question"], n) for n in chosen]
    mixed = [(f"{corpus[n]['question']} It showed {corpus[n]['code']}.", n) for n in chosen]
    query_vectors = embedder.embed([text for text, _ in identifiers + paraphrases + mixed])
    print(f"{len(corpus)} documents and {3 * args.queries} queries embedded in {time.perf_counter() - started:.1f} s "
          f"({embedder.model})")
    embedder.close()
    sets = {"identifiers": [(text, query_vectors[i], f"case{n}") for i, (text, n) in enumerate(identifiers)],
            "paraphrases": [(text, query_vectors[args.queries + i], f"case{n}") for i, (text, n) in
                            enumerate(paraphrases)],
            "mixed": [(text, query_vectors[2 * args.queries + i], f"case{n}") for i, (text, n) in enumerate(mixed)]}
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        settings = StoreSettings(path=Path(folder) / "store", checkpoint_every_seconds=None)
        with FaissStore.open(settings, model=embedder.model, dimension=embedder.dimension) as store:
            store.write([upsert(n, case, vectors[n]) for n, case in enumerate(corpus)])
            store.checkpoint()
            runs = [("vector", "vector", Fusion()), ("keyword", "keyword", Fusion()),
                    (DEFAULT, "hybrid", SearchSettings().fusion),
                    ("hybrid, weights 1:1", "hybrid", Fusion()),
                    ("hybrid, keyword weight 2", "hybrid", Fusion(keyword_weight=2)),
                    ("hybrid, vector weight 2", "hybrid", Fusion(vector_weight=2))]
            print(f"\n{'mode':40}" + "".join(f" {name + ' R@5':>16} {'MRR':>5}" for name in sets))
            results = {}
            for label, mode, fusion in runs:
                measured = [score(store, queries, mode, fusion) for queries in sets.values()]
                results[label] = [recall for recall, _ in measured]
                print(f"{label:40}" + "".join(f" {recall:>16.3f} {mrr:>5.3f}" for recall, mrr in measured))
            for kind in kinds:
                subset = [query for query, (text, n) in zip(sets["identifiers"], identifiers)
                          if corpus[n][kind] == text]
                line = "  ".join(f"{mode} {score(store, subset, mode, Fusion())[0]:.2f}"
                                 for mode in ("vector", "keyword", "hybrid"))
                print(f"  identifiers by kind: {kind:8} ({len(subset)} queries) recall@5: {line}")
    hybrid_ids, hybrid_paraphrases, _ = results[DEFAULT]
    vector_paraphrases = results["vector"][1]
    print(f"\ngoal: hybrid recall@5 on identifiers >= 0.95: {hybrid_ids:.3f} "
          f"({'met' if hybrid_ids >= 0.95 else 'NOT met'}); hybrid >= vector on paraphrases: "
          f"{hybrid_paraphrases:.3f} vs {vector_paraphrases:.3f} "
          f"({'met' if hybrid_paraphrases >= vector_paraphrases else 'NOT met'})")


if __name__ == "__main__":
    main()
