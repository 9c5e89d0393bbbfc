"""Precision: the decision table (pure), the agreement guard on the real model, and retrieval agreement."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from vectormill.embedding.capacity import model_footprint, plan_for_settings
from vectormill.embedding.pool import EmbeddingPool
from vectormill.embedding.precision import (
    CPU_BF16_FLAGS,
    PrecisionChoice,
    PrecisionError,
    agreement,
    choose_precision,
    cpu_flags,
    probe_texts,
)
from vectormill.embedding.sentence_transformer import SentenceTransformerEmbedder
from vectormill.embedding.settings import EmbeddingSettings
from vectormill.embedding.tokenizer import ModelTokenizer

MODEL = "all-MiniLM-L6-v2"
README = Path(__file__).resolve().parent.parent / "README.md"
CORPUS = Path(__file__).resolve().parent.parent / "flows" / "sample_corpus"


# ---- the decision table (pure) ------------------------------------------------------------------
@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "amx_bf16", "amx_tile"}, ("bf16", "amx_bf16")),
    ({"avx512f", "avx512_bf16"}, ("bf16", "avx512_bf16")),
    ({"avx2", "avx512f", "avx512_fp16"}, ("fp32", "neither")),  # fp16 flags alone do not make auto pick fp16
    (set(), ("fp32", "neither")),
])
def test_auto_on_cpu_follows_the_bf16_flags(flags, expected):
    choice = choose_precision("auto", "cpu", frozenset(flags))
    assert choice.precision == expected[0] and expected[1] in choice.reason


@pytest.mark.parametrize("capabilities, expected", [
    ([(9, 0)], "bf16"), ([(8, 0), (8, 6)], "bf16"), ([(8, 0), (7, 5)], "fp16"),  # one precision: what all support
    ([(7, 0)], "fp16"), ([(6, 1)], "fp16"), ([(5, 2)], "fp32"), ([None], "fp32"), ([(9, 0), None], "fp32"),
])
def test_auto_on_cuda_follows_the_compute_capability(capabilities, expected):
    assert choose_precision("auto", "cuda", gpu_capabilities=capabilities).precision == expected


def test_explicit_requests():
    assert choose_precision("fp32", "cuda", gpu_capabilities=[(9, 0)]).precision == "fp32"
    assert choose_precision("fp32", "cpu", frozenset(CPU_BF16_FLAGS)).precision == "fp32"
    assert choose_precision("fp16", "cuda", gpu_capabilities=[(9, 0)]).precision == "fp16"
    # On a CPU an explicit half precision is honoured, and the reason says when it is emulated.
    emulated = choose_precision("bf16", "cpu", frozenset({"avx2"}))
    assert emulated.precision == "bf16" and "emulated, likely slower than fp32" in emulated.reason
    assert "emulated" not in choose_precision("fp16", "cpu", frozenset({"avx512_fp16"})).reason
    # A GPU cannot run what it lacks: one line saying what to set.
    with pytest.raises(PrecisionError, match=r'precision = "bf16" needs GPUs of compute capability ≥ 8\.0, but the '
                                             r'plan uses one of 7\.5: set precision = "auto" or "fp16" or "fp32"'):
        choose_precision("bf16", "cuda", gpu_capabilities=[(7, 5)])
    with pytest.raises(PrecisionError, match=r'"fp16" needs GPUs of compute capability ≥ 6\.0, but .* 5\.2'):
        choose_precision("fp16", "cuda", gpu_capabilities=[(5, 2)])


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512_bf16 amx_tile\n\n"
                                      "processor\t: 1\nflags\t\t: fpu sse2 avx512_bf16 amx_tile\n")
    assert cpu_flags(tmp_path / "cpuinfo") == {"fpu", "sse2", "avx512_bf16", "amx_tile"}
    assert cpu_flags(tmp_path / "absent") == frozenset()  # not Linux: nothing known, so auto means fp32


def test_agreement_is_the_cosine_of_each_row_to_its_reference():
    reference = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    candidate = np.array([[1.0, 0.0], [0.0, 1.0], [4.0, 3.0]], dtype=np.float32)
    result = agreement(reference, candidate)
    assert result.texts == 3 and result.min_cosine == pytest.approx(24 / 25)
    assert result.mean_cosine == pytest.approx((1 + 1 + 24 / 25) / 3)
    with pytest.raises(ValueError):
        agreement(reference, candidate[:2])


def test_the_probe_set_is_packaged_varied_and_some_texts_sit_at_the_token_limit():
    tokenizer = ModelTokenizer.for_model(MODEL)
    texts = probe_texts(tokenizer)
    counts = tokenizer.count(texts)
    assert len(texts) >= 8 and max(counts) <= tokenizer.max_tokens
    assert sum(count >= tokenizer.max_tokens - 4 for count in counts) >= 3  # cut to the limit (at a word boundary)
    assert min(counts) < 16  # short queries too
    assert any(re.search(r"[\u4e00-\u9fff]", t) for t in texts) and any("def " in t for t in texts)


# ---- the guard on the real model ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer() -> ModelTokenizer:
    return ModelTokenizer.for_model(MODEL)


@pytest.fixture(scope="module")
def replica(tokenizer) -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(MODEL, device="cpu", tokenizer=tokenizer)


def test_bf16_passes_the_guard_and_changes_the_vectors_only_slightly(replica, tokenizer):
    report = replica.guard_precision(PrecisionChoice("bf16", "test"), "bf16", 0.999)
    assert (report.chosen, report.used, report.fallback) == ("bf16", "bf16", None)
    assert 0.999 <= report.probe_min_cosine < 1.0 and report.probe_texts == len(probe_texts(tokenizer))
    assert report.probe_seconds > 0
    texts = probe_texts(tokenizer)
    half, full = replica.encode(texts), replica.encode(texts, precision="fp32")
    assert not np.array_equal(half, full)  # bf16 really ran
    np.testing.assert_allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-5)
    assert agreement(full, half).min_cosine == pytest.approx(report.probe_min_cosine, abs=1e-6)


def test_the_guard_falls_back_to_fp32_when_the_vectors_disagree_and_says_why(replica, tokenizer):
    # A real disagreement: bf16 does not reproduce fp32 to a cosine of 1.0.
    report = replica.guard_precision(PrecisionChoice("bf16", "the CPU reports avx512_bf16"), "auto", 1.0)
    assert (report.chosen, report.used) == ("bf16", "fp32")
    assert report.fallback.startswith("bf16 vectors of the probe set agree with fp32 only to cosine 0.99")
    assert report.fallback.endswith("below precision_min_cosine = 1: embedding in fp32")
    texts = probe_texts(tokenizer)
    np.testing.assert_array_equal(replica.encode(texts), replica.encode(texts, precision="fp32"))
    assert replica.guard_precision(PrecisionChoice("fp32", "x"), "fp32", 1.0).probe_min_cosine is None  # no probe


def test_every_pool_worker_runs_in_the_planned_precision_or_falls_back(tokenizer):
    settings = EmbeddingSettings(device="cpu", precision="bf16")
    plan = plan_for_settings(settings, model_footprint(MODEL, tokenizer))
    assert plan.precision == "bf16"
    texts = probe_texts(tokenizer)
    with EmbeddingPool(MODEL, plan, tokenizer=tokenizer, requested_precision="bf16") as pool:
        assert pool.precision_report.used == "bf16" and pool.telemetry_summary()["workers"][0]["precision"] == "bf16"
        half = pool.embed(texts)
    with EmbeddingPool(MODEL, plan, tokenizer=tokenizer, requested_precision="bf16", min_cosine=1.0) as pool:
        assert pool.precision_report.used == "fp32" and "below precision_min_cosine" in pool.precision_report.fallback
        full = pool.embed(texts)
    assert 0.999 <= agreement(full, half).min_cosine < 1.0


# ---- retrieval agreement on a PDF corpus (acceptance) -------------------------------------------
def _pdf_corpus(root: Path) -> None:
    """PDFs of real technical prose: the README's sections and the sample corpus, a page per paragraph."""
    from vectormill.flows.sample import write_pdf

    root.mkdir()
    sections = re.split(r"\n(?=## )", README.read_text(encoding="utf-8"))
    sections += [path.read_text(encoding="utf-8") for path in sorted(CORPUS.iterdir())]
    for number, section in enumerate(sections):
        pages = [p.strip() for p in section.split("\n\n") if len(p.split()) > 8]
        if pages:
            write_pdf(pages, root / f"section{number:02d}.pdf")


def _queries(chunks: list[str], count: int) -> list[str]:
    """Question-sized phrases spread over the corpus: ten words from inside every n-th chunk."""
    step = len(chunks) / count
    return [" ".join(chunks[int(i * step)].split()[3:13]) for i in range(count)]


@pytest.mark.slow
def test_bf16_top5_retrieval_agrees_with_fp32_on_a_pdf_corpus(tmp_path, replica, tokenizer):
    import faiss

    from vectormill.connectors.filesystem import FilesystemSource
    from vectormill.connectors.settings import FilesystemSourceSettings
    from vectormill.embedding.chunking import chunk_document

    _pdf_corpus(tmp_path / "pdfs")
    source = FilesystemSource(FilesystemSourceSettings(name="docs", type="filesystem", root=tmp_path / "pdfs"))
    chunks = [chunk.text for ref in source.list_documents()
              for chunk in chunk_document(source.fetch(ref), tokenizer.tokens, 64, 8)]
    queries = _queries(chunks, 50)
    assert len(chunks) >= 120 and len(set(queries)) == 50

    def top5(index_precision: str, query_precision: str) -> np.ndarray:
        index = faiss.IndexFlatIP(replica.dimension)
        index.add(replica.encode(chunks, precision=index_precision))
        return index.search(replica.encode(queries, precision=query_precision), 5)[1]

    reference = top5("fp32", "fp32")
    for index_precision, query_precision in (("bf16", "bf16"), ("bf16", "fp32")):  # search embeds queries in fp32
        found = top5(index_precision, query_precision)
        overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(reference, found)])
        assert overlap >= 0.98, (index_precision, query_precision, overlap)


# ---- the run: the precision in its summary, its artifact and the store --------------------------
@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_run_reports_its_precision_records_it_in_the_store_and_notes_a_change_once(tmp_path, monkeypatch):
    from tests.corpus import TOPICS, write_config, write_corpus
    from vectormill.flows.artifacts import summary_markdown
    from vectormill.flows.config import load_config
    from vectormill.flows.ingest import ingest
    from vectormill.stores.faiss_store import FaissStore

    def precision_property(config_file) -> str | None:
        with FaissStore.open(load_config(config_file).store, writable=False) as store:
            return store.properties().get("precision")

    write_corpus(tmp_path / "pdfs", {k: TOPICS[k] for k in ("chess", "baking")})
    config_file = str(write_config(tmp_path))

    # The guard refuses bf16 (a real disagreement at min cosine 1.0): fp32, and the summary says why.
    monkeypatch.setenv("VECTORMILL_EMBEDDING__PRECISION", "bf16")
    monkeypatch.setenv("VECTORMILL_EMBEDDING__PRECISION_MIN_COSINE", "1.0")
    first = ingest(config_file=config_file)
    assert first["chunks_embedded"] > 0
    assert (first["precision"]["requested"], first["precision"]["chosen"], first["precision"]["used"]) == \
        ("bf16", "bf16", "fp32")
    assert "below precision_min_cosine = 1: embedding in fp32" in first["precision"]["fallback"]
    assert first["warnings"] == [] and precision_property(config_file) == "fp32"
    markdown = summary_markdown(first, "all")
    assert "## Embedding precision" in markdown and "| fallback | bf16 vectors of the probe set agree" in markdown

    # bf16 accepted: vectors of a second precision join the store, said once.
    monkeypatch.setenv("VECTORMILL_EMBEDDING__PRECISION_MIN_COSINE", "0.999")
    write_corpus(tmp_path / "pdfs", {"sailing": TOPICS["sailing"]})
    second = ingest(config_file=config_file)
    assert second["precision"]["used"] == "bf16" and second["precision"]["fallback"] is None
    [note] = second["warnings"]
    assert note.startswith("the store's vectors so far were embedded in fp32; this run embeds in bf16 (its probe "
                           "vectors agree with fp32 to cosine 0.99")
    assert precision_property(config_file) == "fp32+bf16"
    write_corpus(tmp_path / "pdfs", {"taxes": TOPICS["taxes"]})
    third = ingest(config_file=config_file)
    assert third["precision"]["used"] == "bf16" and third["warnings"] == []
    assert precision_property(config_file) == "fp32+bf16"


def test_the_store_records_the_set_of_precisions_each_once_and_notes_only_a_new_one(tmp_path):
    """A pool whose workers ran in two precisions reports "bf16+fp32": nothing new for an fp32+bf16 store."""
    from vectormill.flows.precision import record_precision
    from vectormill.stores.faiss_store import FaissStore
    from vectormill.stores.settings import StoreSettings

    notes = []
    with FaissStore.open(StoreSettings(path=tmp_path / "store"), model="m", dimension=4) as store:
        for used, existed in (("fp32", False), ("bf16", True), ("bf16+fp32", True), ("fp32+bf16", True),
                              ("bf16", True), ("fp16+bf16", True)):
            notes.append(record_precision(store, {"used": used}, existed))
            if used == "fp32+bf16":
                assert store.properties()["precision"] == "fp32+bf16"
        assert store.properties()["precision"] == "fp32+bf16+fp16"
    assert notes[0] is None and notes[1].startswith("the store's vectors so far were embedded in fp32; this run")
    assert notes[2:5] == [None, None, None]
    assert notes[5].startswith("the store's vectors so far were embedded in fp32+bf16; this run embeds in fp16+bf16")
