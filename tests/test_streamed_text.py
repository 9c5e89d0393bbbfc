"""A large text file is chunked from pieces read a block at a time, with the chunks of the whole text."""

import io
import os
import random

import pytest

from vectormill.connectors import filesystem
from vectormill.connectors.base import Document, DocumentRef, Page
from vectormill.connectors.errors import DocumentEmpty, DocumentError
from vectormill.connectors.filesystem import FilesystemSource, utf8_pieces
from vectormill.connectors.settings import FilesystemSourceSettings
from vectormill.embedding import text_stream
from vectormill.embedding.chunking import chunk_document
from vectormill.embedding.tokenizer import ModelTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return ModelTokenizer.for_model("all-MiniLM-L6-v2")


def awkward_text(seed: int = 18) -> str:
    """Multibyte characters (2, 3 and 4 bytes), CRLF and lone CR, tabs, runs without white space, blank runs."""
    rng = random.Random(seed)
    words = ["naïve", "café", "数据处理", "emoji😀😀", "line\r\nbreak", "cr\ronly", "\t", "plain", "words", "of",
             "a", "log", "x" * 90, "é" * 40, "  \n\n  ", "U.S.A.", "don't", "3.14159"]
    return " ".join(rng.choice(words) for _ in range(1500))


def streamed(text: str, block: int) -> Document:
    data = text.encode("utf-8")
    return Document("docs", "big.txt", "v1", "big", (), "/big.txt",
                    text_pieces=lambda: utf8_pieces(io.BytesIO(data), len(data), block))


@pytest.mark.parametrize("block", [1, 7, 64, 4096])  # blocks that cut characters of 2, 3 and 4 bytes
@pytest.mark.parametrize("window_chars", [120, 32 * 1024])
def test_streamed_chunks_equal_the_chunks_of_the_text_held_whole(tokenizer, monkeypatch, block, window_chars):
    monkeypatch.setattr(text_stream, "RELEASE_CHARS", 50)  # release read text often, as a large file does
    text = awkward_text()
    whole = Document("docs", "big.txt", "v1", "big", (Page(None, text),), "/big.txt")

    def tokens(value):
        return tokenizer.tokens(value, window_chars=window_chars)

    expected = chunk_document(whole, tokens, 60, 12)
    assert len(expected) > 20
    assert chunk_document(streamed(text, block), tokens, 60, 12) == expected


def test_pieces_decode_as_the_whole_file_does_and_name_the_bad_byte():
    text = awkward_text()
    data = text.encode("utf-8")
    assert "".join(utf8_pieces(io.BytesIO(data), len(data), 5)) == data.decode("utf-8")
    bad = data[:1001] + b"\xff" + data[1001:]
    with pytest.raises(UnicodeDecodeError) as whole:
        bad.decode("utf-8")
    with pytest.raises(DocumentError, match=f"not UTF-8 text: invalid start byte at byte {whole.value.start}$"):
        "".join(utf8_pieces(io.BytesIO(bad), len(bad), 7))
    with pytest.raises(DocumentError, match="grew past"):
        "".join(utf8_pieces(io.BytesIO(data), len(data) - 1, 64))


def source(root) -> FilesystemSource:
    return FilesystemSource(FilesystemSourceSettings(name="docs", type="filesystem", root=root))


def test_a_text_file_above_the_threshold_is_read_in_pieces_with_the_same_chunks(tokenizer, tmp_path, monkeypatch):
    text = awkward_text()
    (tmp_path / "small.txt").write_bytes(text.encode())
    held = source(tmp_path).fetch(DocumentRef("small.txt", "v"))
    monkeypatch.setattr(filesystem, "STREAM_TEXT_BYTES", 1000)
    monkeypatch.setattr(filesystem, "TEXT_BLOCK_BYTES", 333)
    big = source(tmp_path).fetch(DocumentRef("small.txt", "v"))
    assert held.text_pieces is None and big.text_pieces is not None and big.pages == ()
    assert big.text == held.text == text
    assert chunk_document(big, tokenizer.tokens, 60, 12) == chunk_document(held, tokenizer.tokens, 60, 12)

    (tmp_path / "blank.txt").write_text(" \n" * 2000)
    with pytest.raises(DocumentEmpty, match="only blank space"):
        source(tmp_path).fetch(DocumentRef("blank.txt", "v"))


def test_a_large_text_file_changed_after_its_fetch_is_refused_not_chunked_as_another_version(tmp_path, monkeypatch):
    monkeypatch.setattr(filesystem, "STREAM_TEXT_BYTES", 1000)
    path = tmp_path / "log.txt"
    path.write_text("entry " * 1000)
    document = source(tmp_path).fetch(DocumentRef("log.txt", "v"))
    with open(path, "a") as out:
        out.write("one more entry\n")
    with pytest.raises(DocumentError, match="changed while it was read"):
        "".join(document.text_pieces())
    document = source(tmp_path).fetch(DocumentRef("log.txt", "v"))
    os.truncate(path, 2000)
    with pytest.raises(DocumentError, match="changed while it was read"):
        "".join(document.text_pieces())
