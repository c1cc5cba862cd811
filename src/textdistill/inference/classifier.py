"""The prediction interface every backend honours: ``load(DIR).predict(["..."])``.

:class:`Classifier` is the one contract between a loaded model folder and everything that
uses one (``predict``, ``evaluate``, ``compare``, ``serve``, the efficiency measurements): a
backend implements ``encode`` (texts -> a batch) and ``forward_batch`` (batch -> logits) and
``size_mb``; the base class turns them into ``logits`` and ``predict`` (batching, softmax,
top-k, empty-text handling), so two backends of the same model differ only by numerics.
Backends: :mod:`~textdistill.inference.torch` (teacher and student folders),
:mod:`~textdistill.inference.onnx` (ONNX exports), :mod:`~textdistill.inference.ensemble`;
:func:`textdistill.inference.load.load` is the only place that knows them all.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

EMPTY_REASON = "empty text"


@dataclass
class Prediction:
    """One text's result; ``label`` is None (with ``reason``) when no prediction is possible."""

    text: str
    label: str | None
    label_id: int | None
    probability: float | None
    top_k: list[dict[str, Any]] = field(default_factory=list)
    latency_ms: float | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Classifier(ABC):
    """A loaded model folder that classifies texts.

    ``path``: the folder; ``label_names``: class names in id order; ``max_len``: tokens per
    text; ``meta``: the folder's ``textdistill.json``. ``backend`` names the runtime
    (``torch``, ``onnx``, ``ensemble``); ``kind`` is what reports call the model.
    """

    backend: str = ""

    def __init__(
        self, *, path: Path, label_names: Sequence[str], max_len: int, meta: dict[str, Any]
    ) -> None:
        self.path = Path(path)
        self.label_names = list(label_names)
        self.max_len = int(max_len)
        self._meta = meta

    @property
    def meta(self) -> dict[str, Any]:
        return self._meta

    @property
    def kind(self) -> str:
        return str(self._meta.get("kind", self.backend))

    @property
    def num_parameters(self) -> int | None:
        """Parameters as the folder records them (None when it does not)."""
        n = self._meta.get("num_parameters")
        return int(n) if n is not None else None

    @abstractmethod
    def size_mb(self) -> float:
        """The model's size on disk in MB (its weight files)."""

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize to a batch, e.g. ``input_ids``/``attention_mask`` (B, T)."""

    @abstractmethod
    def forward_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, C) for an encoded batch; model time only."""

    def prepare_for_serving(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Adjust runtime settings for a long-running server (default: nothing to do)."""

    def logits(self, texts: str | Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Logits (N, C) for texts, in order (empty texts included: they get [CLS][SEP]).

        A single string is one text (N = 1), not a sequence of characters.
        """
        texts = _as_texts(texts)
        parts = [
            self.forward_batch(self.encode(texts[i : i + batch_size])).numpy()
            for i in range(0, len(texts), batch_size)
        ]
        if not parts:
            return np.zeros((0, len(self.label_names)), np.float32)
        return np.concatenate(parts)

    def predict(
        self, texts: str | Sequence[str], *, top_k: int = 1, batch_size: int = 64
    ) -> list[Prediction]:
        """Classify texts; empty or whitespace-only texts get ``label=None`` and a reason.

        A single string is one text (one result), not a sequence of characters.
        ``latency_ms`` is the model's time per text within its batch (tokenization included).
        """
        texts = _as_texts(texts)
        results: list[Prediction | None] = [None] * len(texts)
        valid = []
        for i, t in enumerate(texts):
            if t and t.strip():
                valid.append(i)
            else:
                results[i] = Prediction(t, None, None, None, reason=EMPTY_REASON)
        k = max(1, min(top_k, len(self.label_names)))
        for start in range(0, len(valid), batch_size):
            chunk = valid[start : start + batch_size]
            t0 = time.perf_counter()
            logits = self.forward_batch(self.encode([texts[i] for i in chunk]))
            probs = torch.softmax(logits, dim=-1)
            per_text_ms = (time.perf_counter() - t0) * 1000 / len(chunk)
            top_p, top_i = probs.topk(k, dim=-1)
            for row, i in enumerate(chunk):
                ids = top_i[row].tolist()
                ps = top_p[row].tolist()
                results[i] = Prediction(
                    text=texts[i],
                    label=self.label_names[ids[0]],
                    label_id=ids[0],
                    probability=ps[0],
                    top_k=[
                        {"label": self.label_names[j], "probability": p}
                        for j, p in zip(ids, ps, strict=True)
                    ],
                    latency_ms=per_text_ms,
                )
        return [r for r in results if r is not None]


def _as_texts(texts: str | Sequence[str]) -> Sequence[str]:
    # A str is a Sequence[str] too: without this, "球队" would be classified per character.
    return [texts] if isinstance(texts, str) else texts
