"""The prediction interface every backend honours: ``load(DIR).predict(["..."])``.

Torch-free (numpy only), so that the runtime for exported folders and the full package run
the same prediction code. :class:`Classifier` is the one contract between a loaded model
folder and everything that uses one (``predict``, ``evaluate``, ``compare``, ``serve``, the
efficiency measurements): a backend implements ``encode`` (texts -> a batch of its own
arrays or tensors), ``forward_batch`` (batch -> logits, a float32 numpy array (B, C)) and
``size_mb``; the base class turns them into ``logits`` and ``predict`` (batching, softmax,
top-k, empty-text handling), so two backends of the same model differ only by numerics.

What the base class guarantees every backend, whatever the input or the weights:

- A text with no visible character (:func:`textdistill.core.text.has_visible_text`: empty,
  whitespace, zero-width spaces, byte-order marks, control characters such as NUL) gets
  ``label=None`` and ``reason`` :data:`EMPTY_REASON` and never reaches the model.
- Every text is cut to :data:`textdistill.core.text.MAX_TEXT_CHARS` characters before
  ``encode`` (:func:`~textdistill.core.text.clip_text`, the cap training encodes use too),
  so one huge text costs no more tokenizer time and memory than a long one. Lone UTF-16
  surrogates (which a Python string can hold, and the tokenizer refuses) become U+FFFD.
- No NaN or infinity is ever returned: a model whose outputs are not finite (damaged
  weights, e.g. a bit flip or a NaN written into them) raises :class:`ModelOutputError`,
  a :class:`~textdistill.core.errors.UserError` naming the folder.

Backends: :mod:`~textdistill.runtime.onnx` (ONNX exports, torch-free),
:mod:`~textdistill.inference.torch` (teacher and student folders),
:mod:`~textdistill.inference.ensemble`; :func:`textdistill.inference.load.load` is the
only place that knows them all (:func:`textdistill.runtime.load` knows the torch-free ones).
"""

from __future__ import annotations

import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from textdistill.core.errors import UserError
from textdistill.core.text import clip_text, has_visible_text

log = logging.getLogger(__name__)

EMPTY_REASON = "empty text"
Batch = dict[str, Any]
"""An encoded batch: ``input_ids``/``attention_mask`` (B, T) as the backend needs them
(numpy arrays for ONNX Runtime, tensors for PyTorch)."""
_SURROGATE = re.compile("[\ud800-\udfff]")


class ModelOutputError(UserError):
    """The model produced NaN or infinite outputs: it cannot predict (damaged weights)."""


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
        # Spelled out: dataclasses.asdict deep-copies recursively, a cost per text in a server.
        return {
            "text": self.text,
            "label": self.label,
            "label_id": self.label_id,
            "probability": self.probability,
            "top_k": [dict(entry) for entry in self.top_k],
            "latency_ms": self.latency_ms,
            "reason": self.reason,
        }


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
    def encode(self, texts: Sequence[str]) -> Batch:
        """Tokenize to a batch, e.g. ``input_ids``/``attention_mask`` (B, T)."""

    @abstractmethod
    def forward_batch(self, batch: Batch) -> np.ndarray:
        """Logits (B, C), float32 on the CPU, for an encoded batch; model time only."""

    @property
    def device(self) -> str:
        """Where the model runs (``"cpu"``, ``"cuda:0"``); reports record it."""
        return "cpu"

    def prepare_for_serving(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Adjust runtime settings for a long-running server (default: nothing to do)."""

    def set_threads(self, threads: int | None) -> None:  # noqa: B027 - an optional hook
        """Use ``threads`` intra-op threads for inference (None: the backend's default);
        default: nothing to set."""

    def logits(self, texts: str | Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Logits (N, C) for texts, in order (empty texts included: they get [CLS][SEP]).

        A single string is one text (N = 1), not a sequence of characters. Texts are clipped
        as in :meth:`predict`; raises :class:`ModelOutputError` rather than return NaN.
        """
        texts = _as_texts(texts)
        parts = []
        for i in range(0, len(texts), batch_size):
            logits = self.forward_batch(self._encode_clipped(texts[i : i + batch_size]))
            self._probabilities(logits)  # raises on NaN/inf: callers take argmax or softmax
            parts.append(logits)
        if not parts:
            return np.zeros((0, len(self.label_names)), np.float32)
        return np.concatenate(parts)

    def predict(
        self, texts: str | Sequence[str], *, top_k: int = 1, batch_size: int = 64
    ) -> list[Prediction]:
        """Classify texts; texts without a visible character get ``label=None`` and a reason.

        A single string is one text (one result), not a sequence of characters; ``text`` is
        given back whole, though the model saw at most ``MAX_TEXT_CHARS`` of it.
        ``latency_ms`` is the model's time per text within its batch (tokenization included).
        Raises :class:`ModelOutputError` when the model's outputs are not finite.
        """
        texts = _as_texts(texts)
        results: list[Prediction | None] = [None] * len(texts)
        valid = []
        for i, t in enumerate(texts):
            if has_visible_text(t):
                valid.append(i)
            else:
                results[i] = Prediction(t, None, None, None, reason=EMPTY_REASON)
        k = max(1, min(top_k, len(self.label_names)))
        for start in range(0, len(valid), batch_size):
            chunk = valid[start : start + batch_size]
            t0 = time.perf_counter()
            logits = self.forward_batch(self._encode_clipped([texts[i] for i in chunk]))
            probs = self._probabilities(logits)
            per_text_ms = (time.perf_counter() - t0) * 1000 / len(chunk)
            # Highest first; a stable sort keeps the lower class id first among equals.
            top_i = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
            top_p = np.take_along_axis(probs, top_i, axis=-1)
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

    def _encode_clipped(self, texts: Sequence[str]) -> Batch:
        # Clipped here, not in each backend's encode: the tokenizer would otherwise read (and
        # allocate for) the whole text before its own truncation to max_len tokens.
        return self.encode([_tokenizable(clip_text(t)) for t in texts])

    def _probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Softmax of ``logits`` (B, C); raises :class:`ModelOutputError` unless finite."""
        probs = softmax(logits)
        check_finite(probs, self.path)
        return probs


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``logits`` (B, C) in float32.

    Non-finite inputs give NaN rows (a +inf or NaN logit, a row of only -inf), which
    :func:`check_finite` reports; a single -inf logit is probability 0.
    """
    x = np.asarray(logits, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        z = np.exp(x - x.max(axis=-1, keepdims=True))
        return np.asarray(z / z.sum(axis=-1, keepdims=True), dtype=np.float32)


def check_finite(values: np.ndarray, path: Path) -> None:
    """Raise :class:`ModelOutputError` unless every row of ``values`` (B, C) is finite.

    Softmax probabilities are what to check: NaN and +inf logits make NaN probabilities, and
    so does a row of only -inf, while a single -inf logit (probability 0) is a valid output.
    """
    finite = np.isfinite(np.asarray(values))
    if bool(finite.all()):
        return
    rows = finite.reshape(len(finite), -1).all(axis=-1) if finite.ndim else finite.reshape(1)
    bad, total = int((~rows).sum()), len(rows)
    log.error("%s: non-finite model outputs for %d of %d texts", path, bad, total)
    raise ModelOutputError(
        f"the model in {path} cannot predict: it produced NaN or infinite outputs for {bad} "
        f"of {total} texts (its weights are damaged or overflow); retrain or re-export it"
    )


def _tokenizable(text: str) -> str:
    # A lone surrogate (from a surrogateescape'd argument, or Python code) makes the Rust
    # tokenizer raise; a valid pair written as two code points becomes its character.
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _as_texts(texts: str | Sequence[str]) -> Sequence[str]:
    # A str is a Sequence[str] too: without this, "球队" would be classified per character.
    return [texts] if isinstance(texts, str) else texts
