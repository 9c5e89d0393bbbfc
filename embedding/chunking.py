"""Token-aware chunking with the model's own tokenizer: whole words, bounded size, stable ids.

Pure logic over a `tokens(text)` function, so it is tested with the real tokenizer and
without a model.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from .text_stream import TextStream
from .tokenizer import Token


class ChunkingError(ValueError):
    pass


class PageText(Protocol):
    @property
    def number(self) -> int | None: ...  # 1-based; None for sources without pages

    @property
    def text(self) -> str: ...

    @property
    def ocr(self) -> bool: ...  # the text was read by OCR from the page's image


class PagedDocument(Protocol):
    """What chunking reads of a document: the connectors' `Document` is one."""

    @property
    def source(self) -> str: ...

    @property
    def id(self) -> str: ...

    @property
    def pages(self) -> Sequence[PageText]: ...

    # None, or (a large text without pages) a way to read its text in pieces instead of `pages`
    text_pieces: Callable[[], Iterable[str]] | None


@dataclass(frozen=True)
class Chunk:
    id: str  # stable: derived from source, document id, position and content hash
    source: str
    document: str
    position: int
    text: str
    content_hash: str
    page: int | None  # page the chunk starts on
    last_page: int | None
    tokens: int
    ocr: bool = False  # some of its text was read by OCR (it may hold recognition errors)
    pages: tuple[int, ...] = ()  # every page it holds, in order (none for sources without pages)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def chunk_id(source: str, document: str, position: int, digest: str) -> str:
    key = "\x1f".join((source, document, str(position), digest))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def validate_chunk_size(chunk_tokens: int, overlap: int, max_content_tokens: int, model: str) -> None:
    """Refuse a chunk size the model would truncate: the text past its limit would never be embedded."""
    if chunk_tokens > max_content_tokens:
        raise ChunkingError(
            f"chunking.tokens = {chunk_tokens} is above what model {model!r} takes "
            f"({max_content_tokens} tokens besides its special tokens); lower it to at most {max_content_tokens}"
        )
    if overlap >= chunk_tokens:
        raise ChunkingError(f"chunking.overlap = {overlap} must be smaller than chunking.tokens = {chunk_tokens}")


@dataclass(frozen=True)
class _Piece:
    """A whole word (or a chunk-sized piece of a longer one): its tokens [first, end) and characters."""

    first: int
    end: int
    start_char: int
    end_char: int


def _pieces(tokens: Iterable[Token], size: int) -> Iterator[_Piece]:
    """Whole words in order; a word's tokens are never split unless it alone is longer than `size`
    (long URLs, base64), which is cut into `size`-token pieces."""
    first = count = 0
    word: int | None = None
    start_char = end_char = 0
    for index, token in enumerate(tokens):
        if count and (token.word is None or token.word != word or count == size):
            yield _Piece(first, index, start_char, end_char)
            count = 0
        if not count:
            first, word, start_char = index, token.word, token.start
        count += 1
        end_char = token.end
    if count:
        yield _Piece(first, first + count, start_char, end_char)


def _windows(pieces: Iterator[_Piece], size: int, overlap: int) -> Iterator[tuple[_Piece, _Piece]]:
    """(first, last) pieces of token windows of at most `size` tokens on word boundaries, each
    overlapping the one before by ≤ `overlap`; only the pieces of one window are held."""
    held: deque[_Piece] = deque(itertools.islice(pieces, 1))  # from the window's first piece on
    while held:
        last = 0
        while True:
            if last + 1 == len(held):
                held.extend(itertools.islice(pieces, 1))
            if last + 1 < len(held) and held[last + 1].end - held[0].first <= size:
                last += 1
            else:
                break
        yield held[0], held[last]
        if last + 1 == len(held):
            return  # no piece left
        # Step back over whole words that fit in the overlap, always moving forward.
        next_first = last + 1
        while next_first - 1 > 0 and held[last].end - held[next_first - 1].first <= overlap:
            next_first -= 1
        for _ in range(next_first):
            held.popleft()


def chunk_document(
    document: PagedDocument,
    tokenize: Callable[[str | TextStream], Iterable[Token]],
    chunk_tokens: int,
    overlap: int,
) -> list[Chunk]:
    """The document's chunks; `tokenize` streams tokens, so besides the chunks, memory follows one chunk."""
    return list(stream_chunks(document, tokenize, chunk_tokens, overlap))


def stream_chunks(
    document: PagedDocument,
    tokenize: Callable[[str | TextStream], Iterable[Token]],
    chunk_tokens: int,
    overlap: int,
) -> Iterator[Chunk]:
    """The document's chunks one at a time. A document read in pieces (`text_pieces`) is read only as
    far as its chunks are taken: memory follows the chunk, not the document."""
    page_starts: list[int] = []
    page_numbers: list[int | None] = []
    page_ocr: list[bool] = []
    if getattr(document, "text_pieces", None) is not None:
        page_starts, page_numbers, page_ocr = [0], [None], [False]
        stream = TextStream(document.text_pieces())
    else:
        parts: list[str] = []
        length = 0
        for page in document.pages:
            if length:
                parts.append("\n\n")
                length += 2
            page_starts.append(length)
            page_numbers.append(page.number)
            page_ocr.append(page.ocr)
            parts.append(page.text)
            length += len(page.text)
        stream = TextStream(("".join(parts),))
        del parts

    windows = _windows(_pieces(tokenize(stream), chunk_tokens), chunk_tokens, overlap)
    for position, (first, last) in enumerate(windows):
        start, end = first.start_char, last.end_char
        piece = stream.text(start, end)
        stream.release(start)  # the chunks that follow start here or later
        digest = content_hash(piece)
        first_page_index = bisect.bisect_right(page_starts, start) - 1
        last_page_index = bisect.bisect_right(page_starts, max(start, end - 1)) - 1
        yield Chunk(
            id=chunk_id(document.source, document.id, position, digest),
            source=document.source,
            document=document.id,
            position=position,
            text=piece,
            content_hash=digest,
            page=page_numbers[first_page_index],
            last_page=page_numbers[last_page_index],
            tokens=last.end - first.first,
            ocr=any(page_ocr[first_page_index:last_page_index + 1]),
            pages=tuple(n for n in page_numbers[first_page_index:last_page_index + 1] if n is not None),
        )
