"""A sentence-transformers model on one device, in the precision the plan chose, with a hard check
against silent truncation and the precision's agreement guard."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .base import TextTooLongError, unit_rows
from .models import resolve_model
from .precision import Precision, PrecisionChoice, PrecisionReport, agreement, guard_verdict, probe_texts
from .tokenizer import ModelTokenizer


def refuse_truncation(counts: Sequence[int], limit: int, model: str) -> None:
    """sentence-transformers truncates silently past max_seq_length; refuse instead."""
    for index, count in enumerate(counts):
        if count > limit:
            raise TextTooLongError(
                f"text {index} has {count} tokens, over model {model!r}'s limit of {limit}: "
                "it would be truncated; chunk it smaller", count, limit
            )


class SentenceTransformerEmbedder:
    def __init__(self, model: str, device: str = "cpu", batch_size: int = 64, tokenizer: ModelTokenizer | None = None,
                 precision: Precision = "fp32"):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # weight-loading bars would break the CLI's own

        self.model = model
        self.device = device
        self.batch_size = batch_size
        self.precision: Precision = precision
        self.precision_report: PrecisionReport | None = None  # set by guard_precision
        self._model = SentenceTransformer(resolve_model(model), device=device)
        self._model.eval()
        self._prompt = self._model._resolve_prompt(None, None)  # what encode() prepends: the default prompt, if any
        self.dimension = int(self._model.get_embedding_dimension())
        self.tokenizer = tokenizer or ModelTokenizer.for_model(model)

    @contextlib.contextmanager
    def _in(self, precision: Precision) -> Iterator[None]:
        """Half precisions run under torch.autocast (fp32 weights stay, so fp32 is always at hand)."""
        if precision == "fp32":
            yield
            return
        import torch

        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        with torch.autocast(device_type=self.device.split(":")[0], dtype=dtype):
            yield

    def encode(self, texts: Sequence[str], batch_size: int | None = None, precision: Precision | None = None) -> np.ndarray:
        """The bare model call (sentence-transformers sorts by length within it to cut padding), in
        this replica's precision unless told otherwise; normalized in float32."""
        with self._in(precision or self.precision):
            vectors = self._model.encode(
                list(texts),
                batch_size=batch_size or self.batch_size,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(unit_rows(np.asarray(vectors, dtype=np.float32)))

    def prepare(self, texts: Sequence[str]) -> dict[str, Any]:
        """The host half of `encode` for one batch: the texts tokenized and padded (the Rust tokenizer
        releases the GIL, so this overlaps another batch's forward pass); pinned on a GPU, so the
        copy to the device can run asynchronously."""
        features = self._model.preprocess(list(texts), prompt=self._prompt)
        if self.device.startswith("cuda"):
            features = {key: value.pin_memory() if hasattr(value, "pin_memory") else value
                        for key, value in features.items()}
        return features

    def run(self, features: dict[str, Any]) -> np.ndarray:
        """The device half: `encode` of the batch that `prepare` made, in this replica's precision."""
        import torch

        with torch.inference_mode(), self._in(self.precision):
            on_device = {key: value.to(self.device, non_blocking=True) if isinstance(value, torch.Tensor) else value
                         for key, value in features.items()}
            vectors = self._model(on_device)["sentence_embedding"].float().cpu().numpy()
        return np.ascontiguousarray(unit_rows(vectors))

    def guard_precision(self, choice: PrecisionChoice, requested: str, min_cosine: float) -> PrecisionReport:
        """Run in `choice` if the probe set's vectors agree with fp32 to `min_cosine`, else in fp32."""
        if choice.precision == "fp32":
            self.precision = "fp32"
            self.precision_report = PrecisionReport(requested, "fp32", "fp32", choice.reason, min_cosine)
            return self.precision_report
        started = time.perf_counter()
        texts = probe_texts(self.tokenizer)
        reference = self.encode(texts, batch_size=len(texts), precision="fp32")
        candidate = self.encode(texts, batch_size=len(texts), precision=choice.precision)
        self.precision_report = guard_verdict(choice, requested, agreement(reference, candidate), min_cosine,
                                              time.perf_counter() - started)
        self.precision = self.precision_report.used  # type: ignore[assignment]
        return self.precision_report

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        refuse_truncation(self.tokenizer.count(texts), self.tokenizer.max_tokens, self.model)
        return self.encode(texts)
