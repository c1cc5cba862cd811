"""Classification metrics shared by training, ``evaluate`` and ``compare``.

Everything is computed by scikit-learn over the fixed label set ``range(C)``, so a class
that never occurs in the gold labels or the predictions still gets its row and column
(with zero scores) instead of silently shifting the confusion matrix. Results are plain
Python types so they can be written to JSON as they are.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from textdistill.core.errors import UserError


def _as_label_array(values: Sequence[int], name: str, num_classes: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of class ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= num_classes)
    if bad.any():
        first = int(arr[bad][0])
        raise ValueError(
            f"{name} has {int(bad.sum())} ids outside [0, {num_classes}) (e.g. {first}); "
            "drop unlabeled rows (-1) before computing metrics"
        )
    return arr


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], label_names: list[str]
) -> dict[str, Any]:
    """Accuracy, micro/macro/weighted scores, per-class scores and the confusion matrix.

    Returns a JSON-ready dict::

        n, accuracy,
        micro_precision, micro_recall, micro_f1,
        macro_precision, macro_recall, macro_f1,
        weighted_precision, weighted_recall, weighted_f1,
        per_class: {name: {precision, recall, f1, support}},
        confusion: C x C list of lists (rows = true class, columns = predicted class),
        label_names

    Scores of a class with no predictions (precision) or no gold rows (recall) are 0, as
    scikit-learn's ``zero_division=0``; macro averages include such classes.
    """
    num_classes = len(label_names)
    if num_classes == 0:
        raise ValueError("label_names is empty")
    if len(set(label_names)) != num_classes:
        raise ValueError(f"label_names has duplicates: {label_names}")
    true = _as_label_array(y_true, "y_true", num_classes)
    pred = _as_label_array(y_pred, "y_pred", num_classes)
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} labels but y_pred has {pred.size}")
    if true.size == 0:
        raise ValueError("cannot compute metrics on zero examples")

    labels = list(range(num_classes))
    result: dict[str, Any] = {
        "n": int(true.size),
        "accuracy": float(accuracy_score(true, pred)),
    }
    for average in ("micro", "macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            true, pred, labels=labels, average=average, zero_division=0
        )
        result[f"{average}_precision"] = float(p)
        result[f"{average}_recall"] = float(r)
        result[f"{average}_f1"] = float(f)

    p, r, f, s = precision_recall_fscore_support(
        true, pred, labels=labels, average=None, zero_division=0
    )
    result["per_class"] = {
        name: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, name in enumerate(label_names)
    }
    result["confusion"] = confusion_matrix(true, pred, labels=labels).tolist()
    result["label_names"] = list(label_names)
    return result


def agreement(pred_a: Sequence[int], pred_b: Sequence[int]) -> float:
    """Fraction of positions where two prediction lists agree (e.g. student vs teacher)."""
    a = np.asarray(pred_a)
    b = np.asarray(pred_b)
    if a.shape != b.shape:
        raise ValueError(f"prediction lists differ in length: {a.size} vs {b.size}")
    if a.size == 0:
        raise ValueError("cannot compute agreement on zero predictions")
    return float(np.mean(a == b))


def _display_width(text: str) -> int:
    # Wide (CJK) characters take two terminal columns; without this a table with Chinese
    # class names would be misaligned.
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _rjust(text: str, width: int) -> str:
    return " " * max(0, width - _display_width(text)) + text


def format_report(metrics: dict[str, Any], digits: int = 4) -> str:
    """A text table like scikit-learn's ``classification_report``.

    ``metrics`` is the dict returned by :func:`classification_metrics`.

    One row per class (precision, recall, F1, support), then accuracy and the macro, micro
    and weighted averages.
    """
    per_class: dict[str, dict[str, Any]] = metrics["per_class"]
    n = int(metrics["n"])
    averages = [(f"{avg} avg", avg) for avg in ("macro", "micro", "weighted")]
    name_width = max(
        [_display_width(name) for name in per_class] + [len(label) for label, _ in averages]
    )
    col = max(len("precision"), digits + 2) + 1
    header = _rjust("", name_width) + "".join(
        _rjust(h, col) for h in ("precision", "recall", "f1-score", "support")
    )

    def row(label: str, scores: Sequence[float | None], support: int) -> str:
        cells = ["" if v is None else f"{v:.{digits}f}" for v in scores]
        return (
            _rjust(label, name_width)
            + "".join(_rjust(c, col) for c in cells)
            + _rjust(str(support), col)
        )

    lines = [header, ""]
    for name, scores in per_class.items():
        lines.append(
            row(name, [scores["precision"], scores["recall"], scores["f1"]], scores["support"])
        )
    lines.append("")
    lines.append(row("accuracy", [None, None, metrics["accuracy"]], n))
    for label, avg in averages:
        scores_avg = [metrics[f"{avg}_precision"], metrics[f"{avg}_recall"], metrics[f"{avg}_f1"]]
        lines.append(row(label, scores_avg, n))
    return "\n".join(lines)


def selection_metrics(
    logits: np.ndarray, labels: np.ndarray, num_labels: int | None
) -> dict[str, float]:
    """Accuracy, macro-F1 and mean cross-entropy over the rows with a gold label (not -1).

    What the training loop selects and early-stops on: ``logits`` (N, C), ``labels`` (N,)
    with -1 for no gold label; ``num_labels`` fixes the classes macro-F1 averages over.
    ``loss = mean_i -log softmax(logits_i)[y_i]``; ``macro_f1`` as :func:`classification_metrics`.
    """
    keep = labels >= 0
    if not keep.any():
        raise UserError("the dev set has no gold labels (all -1); evaluation needs labels")
    logits, labels = logits[keep], labels[keep].astype(np.int64)
    preds = logits.argmax(axis=1)
    f1_labels = list(range(num_labels)) if num_labels is not None else None
    loss = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item()
    return {
        "loss": float(loss),
        "accuracy": float((preds == labels).mean()),
        "macro_f1": float(
            f1_score(labels, preds, average="macro", labels=f1_labels, zero_division=0)
        ),
    }
