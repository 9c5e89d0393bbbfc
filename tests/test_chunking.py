import hashlib
import random
import tracemalloc

import pytest

from vectormill.connectors.base import Document, Page
from vectormill.embedding.chunking import ChunkingError, chunk_document, validate_chunk_size
from vectormill.embedding.tokenizer import ModelTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return ModelTokenizer.for_model("all-MiniLM-L6-v2")


def document(*pages: str, doc_id: str = "a.pdf") -> Document:
    return Document("docs", doc_id, "v1", "A", tuple(Page(i, text) for i, text in enumerate(pages, 1)), "/a.pdf")


def test_packaged_model_limits(tokenizer):
    assert tokenizer.max_tokens == 256
    assert tokenizer.special_tokens == 2
    assert tokenizer.max_content_tokens == 254


def test_chunks_respect_size_and_overlap_and_never_exceed_the_model(tokenizer):
    text = " ".join(f"word{i} unbelievably-hyphenated" for i in range(400))
    chunks = chunk_document(document(text), tokenizer.tokens, 50, 10)
    assert len(chunks) > 5
    for chunk in chunks:
        # Re-tokenizing the chunk text gives what the model will see: within the size, never truncated.
        assert tokenizer.count([chunk.text])[0] - tokenizer.special_tokens <= 50
        assert chunk.tokens <= 50
    # Neighbours overlap (the next chunk starts inside the previous one) and the text is fully covered.
    for before, after in zip(chunks, chunks[1:]):
        assert after.text.split()[0] in before.text
    assert chunks[0].text.startswith("word0") and chunks[-1].text.endswith(text.split()[-1])


def test_a_word_longer_than_a_chunk_is_split_not_dropped(tokenizer):
    giant = "x" * 3000  # one "word" of hundreds of tokens
    chunks = chunk_document(document(f"start {giant} end"), tokenizer.tokens, 40, 5)
    assert all(c.tokens <= 40 for c in chunks)
    assert "".join(c.text for c in chunks).count("x") >= 3000


def test_chunks_keep_their_pages(tokenizer):
    pages = [f"page one text {'alpha ' * 60}", f"page two text {'beta ' * 60}", f"page three {'gamma ' * 60}"]
    chunks = chunk_document(document(*pages), tokenizer.tokens, 40, 0)
    by_word = {word: {c.page for c in chunks if word in c.text and c.page == c.last_page} for word in ("alpha", "beta", "gamma")}
    assert by_word == {"alpha": {1}, "beta": {2}, "gamma": {3}}
    assert any(c.page != c.last_page for c in chunks)  # a chunk crossing a page break records both ends


def test_ids_are_stable_and_depend_on_source_document_position_and_content(tokenizer):
    text = "steady words " * 200
    first = chunk_document(document(text), tokenizer.tokens, 30, 5)
    again = chunk_document(document(text), tokenizer.tokens, 30, 5)
    assert [c.id for c in first] == [c.id for c in again]
    assert len({c.id for c in first}) == len(first)
    other_doc = chunk_document(document(text, doc_id="b.pdf"), tokenizer.tokens, 30, 5)
    assert not {c.id for c in first} & {c.id for c in other_doc}
    edited = chunk_document(document("changed start " + text), tokenizer.tokens, 30, 5)
    assert edited[0].id != first[0].id and edited[0].content_hash != first[0].content_hash


def test_chunk_size_above_the_model_limit_is_refused():
    with pytest.raises(ChunkingError, match="above what model 'm' takes .*at most 254"):
        validate_chunk_size(300, 10, 254, "m")
    validate_chunk_size(254, 10, 254, "m")


def golden_pages() -> list[str]:
    """Text with what tokenizers treat specially: accents, CJK, emoji, punctuation, tabs, line breaks."""
    rng = random.Random(18)
    words = ["naïve", "café", "über-long-hyphenated", "U.S.A.", "e-mail:", "x@y.org", "(parenthesis)", "数据", "emoji😀",
             "don't", "3.14159", "\t", "line\nbreak", "word", "the", "of", "ingestion", "pipeline", "vectors"]
    return [" ".join(rng.choice(words) for _ in range(700 + 50 * n)) for n in range(4)]


def fingerprint(chunks) -> str:
    return hashlib.sha256("|".join(f"{c.id}:{c.page}:{c.last_page}:{c.tokens}" for c in chunks).encode()).hexdigest()


def test_streamed_chunks_are_the_chunks_of_before_so_nothing_is_embedded_again(tokenizer):
    chunks = chunk_document(document(*golden_pages(), doc_id="golden.pdf"), tokenizer.tokens, 60, 12)
    # What the chunker made when it tokenized whole documents at once (vectormill 0bc7503).
    assert (len(chunks), fingerprint(chunks)) == (
        166, "c2b03897bc844dcdfb3b23b84088e69ed41777aa1aa0edc078c4bba27da72711")


@pytest.mark.parametrize("window_chars", [25, 64, 1000])  # each above the longest word
def test_chunks_do_not_depend_on_the_windows_the_tokenizer_reads(tokenizer, window_chars):
    doc = document(*golden_pages())
    whole = chunk_document(doc, lambda text: tokenizer.tokens(text, window_chars=10**9), 60, 12)
    windowed = chunk_document(doc, lambda text: tokenizer.tokens(text, window_chars=window_chars), 60, 12)
    assert windowed == whole


def test_chunking_memory_follows_the_chunk_not_the_document(tokenizer):
    text = " ".join(f"Line {n} of a large log file: service {n % 97} answered in {n % 1000} ms." for n in range(40_000))
    assert len(text) > 2_000_000
    doc = document(text, doc_id="big.log")
    tracemalloc.start()
    try:
        chunks = chunk_document(doc, tokenizer.tokens, 254, 32)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(chunks) > 1_500
    # Beyond the chunks it returns, chunking holds a window of tokens, not an object per token of the text.
    assert peak - held < 16 * 1024 * 1024, (held, peak)
