"""The embedding model's own tokenizer, loaded without the model (no torch import) for chunking."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from .models import resolve_model
from .text_stream import TextStream

WINDOW_CHARS = 32 * 1024  # text handed to the tokenizer at once
WINDOWS_PER_BATCH = 8  # windows tokenized in one call (the Rust tokenizer runs a batch in parallel)
WHITESPACE = (" ", "\n", "\t", "\r")  # where a window may end


@dataclass(frozen=True)
class Token:
    start: int  # character offsets into the text
    end: int
    word: int | None  # index of the pre-tokenized word it belongs to


class ModelTokenizer:
    """Token offsets for chunking and exact token counts for the no-truncation check."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int):
        # tokenizer.json files often ship with truncation and padding on; both would hide lengths.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self.max_tokens = max_tokens  # the model's max_seq_length, special tokens included
        self.special_tokens = len(tokenizer.encode("", add_special_tokens=True).ids)

    @property
    def max_content_tokens(self) -> int:
        return self.max_tokens - self.special_tokens

    @classmethod
    def for_model(cls, model: str) -> "ModelTokenizer":
        location = resolve_model(model)
        folder = Path(location)
        if (folder / "tokenizer.json").is_file():
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
            max_tokens = _max_seq_length(folder)
            if max_tokens is not None:
                return cls(tokenizer, max_tokens)
        # A hub name or a folder without tokenizer.json: let transformers find it.
        from transformers import AutoTokenizer

        auto = AutoTokenizer.from_pretrained(location)
        limit = _max_seq_length(folder) if folder.is_dir() else None
        return cls(auto.backend_tokenizer, limit or min(auto.model_max_length, 512))

    def tokens(self, text: str | TextStream, window_chars: int | None = None) -> Iterator[Token]:
        """The text's tokens with offsets into `text` and word indexes, read a window at a time.

        Windows end before white space, where no word continues, so their tokens are those of the
        whole text (a run of more than `window_chars` characters without white space is cut within).
        Memory follows the windows of one batch, not the text: a document of any size is streamed,
        and a `TextStream` is read only as far as the windows tokenized.
        """
        stream = TextStream.of(text)
        words = 0  # words of the windows read so far: word indexes stay distinct across windows
        windows = text_windows(stream, window_chars or WINDOW_CHARS)
        while batch := list(itertools.islice(windows, WINDOWS_PER_BATCH)):
            encodings = self._tokenizer.encode_batch([stream.text(start, end) for start, end in batch],
                                                     add_special_tokens=False)
            for (start, _), encoding in zip(batch, encodings):
                last_word = -1
                for (first, end), word in zip(encoding.offsets, encoding.word_ids):
                    if word is not None:
                        last_word = max(last_word, word)
                        word += words
                    yield Token(start + first, start + end, word)
                words += last_word + 1

    def count(self, texts: Sequence[str]) -> list[int]:
        """Token counts as the model will see them (special tokens included)."""
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=True)]


def text_windows(text: str | TextStream, size: int) -> Iterator[tuple[int, int]]:
    """[start, end) ranges covering `text`, each at most `size` characters, ending before white
    space where the range holds any."""
    stream = TextStream.of(text)
    start = 0
    while start < (reach := stream.reach(start + size + 1)):  # one past the window: is it the text's end?
        end = min(start + size, reach)
        if end < reach:
            cut = max(stream.rfind(space, start + 1, end + 1) for space in WHITESPACE)
            end = cut if cut > start else end
        yield start, end
        start = end


def _max_seq_length(folder: Path) -> int | None:
    config = folder / "sentence_bert_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("max_seq_length")
        return int(value) if value else None
    return None
