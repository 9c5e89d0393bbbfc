"""A text read in pieces, held only from the first character still needed.

Tokenizing and chunking address a document's text by character offsets into the whole text;
this keeps those offsets while only a window of the text is in memory, so a document read from
a file a block at a time is chunked in memory that follows the chunk, not the document.
"""

from __future__ import annotations

from collections.abc import Iterable

# Released text is dropped once it is at least this much and half of what is held: each character
# is copied a bounded number of times, and a text given whole is not copied for small releases.
RELEASE_CHARS = 1 << 20


class TextStream:
    def __init__(self, pieces: Iterable[str]):
        self._pieces = iter(pieces)
        self._held = ""  # the text from offset self._start on, as far as it was read
        self._start = 0
        self._ended = False

    @classmethod
    def of(cls, text: "str | TextStream") -> "TextStream":
        return text if isinstance(text, TextStream) else cls((text,))

    def reach(self, end: int) -> int:
        """Read on until the text held reaches offset `end` or the text ends; how far it reaches."""
        while not self._ended and self._start + len(self._held) < end:
            piece = next(self._pieces, None)
            if piece is None:
                self._ended = True
            else:
                self._held += piece
        return self._start + len(self._held)

    def text(self, start: int, end: int) -> str:
        """The text in [start, end): read already, and not released."""
        self._check(start)
        return self._held[start - self._start:end - self._start]

    def rfind(self, sub: str, start: int, end: int) -> int:
        """str.rfind within [start, end) of the text read; -1 when not found."""
        self._check(start)
        found = self._held.rfind(sub, start - self._start, end - self._start)
        return found + self._start if found >= 0 else -1

    def release(self, offset: int) -> None:
        """Nothing before `offset` is asked for again."""
        drop = offset - self._start
        if drop >= RELEASE_CHARS and drop * 2 >= len(self._held):
            self._held = self._held[drop:]
            self._start = offset

    def _check(self, start: int) -> None:
        if start < self._start:
            raise ValueError(f"text before offset {self._start} was released (asked from {start})")
