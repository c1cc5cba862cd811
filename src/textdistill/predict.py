"""Prediction API: ``from textdistill import load; load(DIR).predict(["..."])``.

The same :class:`Classifier` serves the CLI, the HTTP service and the efficiency
measurements (it implements ``encode`` and ``forward_batch`` of
:class:`textdistill.efficiency.TextClassifier`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textdistill.folders import LoadedModel, load_model, read_meta

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


class Classifier:
    """A loaded model folder that classifies texts."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.label_names = loaded.label_names
        self.max_len = loaded.max_len
        self.path = loaded.path

    @property
    def kind(self) -> str:
        return self.loaded.kind

    @property
    def meta(self) -> dict[str, Any]:
        return self.loaded.meta

    def size_mb(self) -> float:
        """The model's size on disk in MB (its weight files)."""
        from textdistill.efficiency import size_on_disk_mb

        return size_on_disk_mb(self.path)

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenize to ``input_ids``/``attention_mask`` (B, T), padded to the longest row."""
        enc = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_len,
            padding=True,
            return_tensors="pt",
        )
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    @torch.inference_mode()
    def forward_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, C) for an encoded batch; model time only."""
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.logits.float()

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


def load(path: str | Path, *, backend: str | None = None) -> Classifier:
    """Load a model folder (teacher, student, ensemble or ONNX export) for prediction.

    ``backend``: ``None`` runs the folder as what it is (an ONNX export on ONNX Runtime,
    anything else on PyTorch); ``"torch"`` or ``"onnx"`` insist on one and raise a
    :class:`~textdistill.errors.UserError` for a folder of the other kind. A PyTorch folder
    marked ``quantize: int8`` (``textdistill export --format torch --quantize int8``) stores
    fp32 weights and is dynamically quantized here, at load time.
    """
    from textdistill.onnx_backend import OnnxClassifier, check_backend, folder_format

    meta = read_meta(path)
    if meta.get("kind") == "ensemble":
        from textdistill.ensemble import EnsembleClassifier

        # Each member runs on the backend its own folder says.
        return EnsembleClassifier.from_folder(path)
    fmt = folder_format(meta)
    check_backend(path, fmt, backend)
    if fmt == "onnx":
        return OnnxClassifier.from_folder(path)
    loaded = load_model(path)
    if meta.get("quantize") == "int8":
        from textdistill.export import quantize_torch_dynamic

        loaded.model = quantize_torch_dynamic(loaded.model)
    return Classifier(loaded)
