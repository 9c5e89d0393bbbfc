"""The embedding model's own tokenizer, loaded without the model (no torch import) for chunking."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from .models import resolve_model


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

    def tokens(self, text: str) -> list[Token]:
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        return [Token(start, end, word) for (start, end), word in zip(encoding.offsets, encoding.word_ids)]

    def count(self, texts: Sequence[str]) -> list[int]:
        """Token counts as the model will see them (special tokens included)."""
        return [len(e.ids) for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=True)]


def _max_seq_length(folder: Path) -> int | None:
    config = folder / "sentence_bert_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("max_seq_length")
        return int(value) if value else None
    return None
