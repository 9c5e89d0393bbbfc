"""Token-aware chunking with the model's own tokenizer: whole words, bounded size, stable ids.

Pure logic over a `tokens(text)` function, so it is tested with the real tokenizer and
without a model.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

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


def _word_spans(tokens: Sequence[Token]) -> list[tuple[int, int]]:
    """[start, end) token ranges of whole words; a word's tokens are never split unless it alone is too long."""
    spans: list[tuple[int, int]] = []
    start = 0
    for index in range(1, len(tokens) + 1):
        if index == len(tokens) or tokens[index].word is None or tokens[index].word != tokens[start].word:
            spans.append((start, index))
            start = index
    return spans


def _windows(spans: list[tuple[int, int]], size: int, overlap: int) -> list[tuple[int, int]]:
    """Token windows of at most `size` tokens on word boundaries, each overlapping the last by ≤ `overlap`."""
    # Split words longer than a window (long URLs, base64) into window-sized pieces.
    pieces: list[tuple[int, int]] = []
    for start, end in spans:
        while end - start > size:
            pieces.append((start, start + size))
            start += size
        pieces.append((start, end))

    windows: list[tuple[int, int]] = []
    first = 0
    while first < len(pieces):
        last = first
        while last + 1 < len(pieces) and pieces[last + 1][1] - pieces[first][0] <= size:
            last += 1
        windows.append((pieces[first][0], pieces[last][1]))
        if last + 1 >= len(pieces):
            break
        # Step back over whole words that fit in the overlap, always moving forward.
        next_first = last + 1
        while next_first - 1 > first and pieces[last][1] - pieces[next_first - 1][0] <= overlap:
            next_first -= 1
        first = next_first
    return windows


def chunk_document(
    document: PagedDocument,
    tokenize: Callable[[str], list[Token]],
    chunk_tokens: int,
    overlap: int,
) -> list[Chunk]:
    text = ""
    page_starts: list[int] = []
    page_numbers: list[int | None] = []
    page_ocr: list[bool] = []
    for page in document.pages:
        if text:
            text += "\n\n"
        page_starts.append(len(text))
        page_numbers.append(page.number)
        page_ocr.append(page.ocr)
        text += page.text

    tokens = tokenize(text)
    chunks: list[Chunk] = []
    for position, (first, last) in enumerate(_windows(_word_spans(tokens), chunk_tokens, overlap)):
        start, end = tokens[first].start, tokens[last - 1].end
        piece = text[start:end]
        digest = content_hash(piece)
        first_page_index = bisect.bisect_right(page_starts, start) - 1
        last_page_index = bisect.bisect_right(page_starts, max(start, end - 1)) - 1
        chunks.append(
            Chunk(
                id=chunk_id(document.source, document.id, position, digest),
                source=document.source,
                document=document.id,
                position=position,
                text=piece,
                content_hash=digest,
                page=page_numbers[first_page_index],
                last_page=page_numbers[last_page_index],
                tokens=last - first,
                ocr=any(page_ocr[first_page_index:last_page_index + 1]),
                pages=tuple(n for n in page_numbers[first_page_index:last_page_index + 1] if n is not None),
            )
        )
    return chunks
