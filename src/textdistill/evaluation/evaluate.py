"""Evaluate and compare model folders: quality metrics, teacher agreement, efficiency."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from textdistill.core.config import EvalConfig
from textdistill.core.errors import UserError
from textdistill.core.io import write_json
from textdistill.data.corpus import Split
from textdistill.evaluation.efficiency import EfficiencyResult, measure_efficiency
from textdistill.evaluation.metrics import agreement, classification_metrics
from textdistill.evaluation.report import ModelSummary, build_comparison, write_report
from textdistill.inference.load import load
from textdistill.runtime.classifier import Classifier
from textdistill.training.history import read_history

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Metrics of one model on one split (plus efficiency when measured)."""

    model: str
    split: str
    metrics: dict[str, Any]
    predictions: list[int]
    agreement: float | None = None
    teacher: str | None = None
    efficiency: EfficiencyResult | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "split": self.split,
            "metrics": self.metrics,
            "teacher_agreement": self.agreement,
            "teacher": self.teacher,
            "efficiency": self.efficiency.to_dict() if self.efficiency else None,
            **self.extras,
        }


def predictions(clf: Classifier, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Predicted class ids (N,) of ``texts``, in order."""
    return clf.logits(texts, batch_size=batch_size).argmax(-1)


def check_labels(clf: Classifier, label_names: Sequence[str], what: str = "data") -> None:
    """Raise a :class:`UserError` unless ``clf`` predicts exactly ``label_names`` in order.

    Comparing predicted ids with gold ids of another class list would give meaningless
    numbers without any error.
    """
    if list(clf.label_names) != list(label_names):
        raise UserError(
            f"{clf.path}: the model's classes {list(clf.label_names)} differ from the "
            f"{what}'s {list(label_names)}"
        )


def _known_teacher(clf: Classifier, teacher: str | Path | None) -> Path | None:
    if teacher is not None:
        return Path(teacher)
    teachers = clf.meta.get("teachers") or []
    if len(teachers) == 1 and Path(teachers[0]).is_dir():
        return Path(teachers[0])
    return None


def _labelled(split: Split) -> tuple[list[str], list[int]]:
    rows = [i for i, y in enumerate(split.labels) if y >= 0]
    if not rows:
        raise UserError(f"split {split.name!r} has no labelled rows to evaluate on")
    return [split.texts[i] for i in rows], [split.labels[i] for i in rows]


def evaluate_model(
    model: str | Path | Classifier,
    split: Split,
    *,
    teacher: str | Path | None = None,
    efficiency: bool = True,
    eval_cfg: EvalConfig | None = None,
    label_names: Sequence[str] | None = None,
    with_agreement: bool = True,
) -> Evaluation:
    """Accuracy, micro/macro P/R/F1, per-class report and confusion matrix on a split.

    Rows without a gold label are left out. With ``with_agreement``, for a student whose
    teacher folder is given or known (its only teacher, recorded in its folder), also the
    rate of agreement with the teacher's predictions. With ``efficiency``, latency and
    throughput as well.

    Raises:
        UserError: the split has no labelled row, or the model's (or teacher's) classes
            differ from ``label_names`` (when given) or from each other.
    """
    cfg = eval_cfg or EvalConfig()
    clf = model if isinstance(model, Classifier) else load(model)
    if label_names is not None:
        check_labels(clf, label_names)
    texts, gold = _labelled(split)
    pred = predictions(clf, texts, cfg.batch_size).tolist()
    metrics = classification_metrics(gold, pred, clf.label_names)
    result = Evaluation(model=str(clf.path), split=split.name, metrics=metrics, predictions=pred)
    teacher_dir = _known_teacher(clf, teacher) if with_agreement else None
    if teacher_dir is not None:
        t_clf = load(teacher_dir)
        check_labels(t_clf, clf.label_names, what="student")
        result.agreement = agreement(pred, predictions(t_clf, texts, cfg.batch_size).tolist())
        result.teacher = str(teacher_dir)
    if efficiency:
        result.efficiency = measure_efficiency(
            clf,
            texts,
            threads=cfg.threads,
            n_latency=cfg.latency_texts,
            warmup=cfg.warmup,
            batch_size=cfg.batch_size,
        )
    return result


def save_evaluation(result: Evaluation, out_dir: str | Path) -> Path:
    """Write ``eval_<split>.json`` into ``out_dir``; returns its path."""
    path = Path(out_dir) / f"eval_{result.split}.json"
    write_json(path, result.to_dict())
    return path


def summarize(clf: Classifier, ev: Evaluation, name: str | None = None) -> ModelSummary:
    """The report's view of one evaluation (which must include efficiency)."""
    if ev.efficiency is None:
        raise ValueError("summarize needs an evaluation with efficiency measurements")
    params = clf.meta.get("num_parameters")
    return ModelSummary.from_results(
        name=name or clf.path.name,
        kind=clf.kind,
        path=clf.path,
        metrics=ev.metrics,
        efficiency=ev.efficiency,
        params=int(params) if params is not None else None,
        size_mb=clf.size_mb(),
        history=read_history(clf.path / "metrics.jsonl"),
        agreement=ev.agreement,
        extras={"mode": clf.meta.get("mode"), "architecture": clf.meta.get("architecture")},
    )


def model_names(models: Sequence[str | Path], names: Sequence[str] | None = None) -> list[str]:
    """Display names: ``names`` when given, else the folder names; repeats get ``-2``, ``-3``."""
    if names is not None and len(names) != len(models):
        raise UserError(f"give one name per model ({len(models)} models, {len(names)} names)")
    raw = list(names) if names is not None else [Path(m).resolve().name for m in models]
    out: list[str] = []
    for name in raw:
        unique, n = name, 1
        while unique in out:  # also skips a suffix another model already carries
            n += 1
            unique = f"{name}-{n}"
        out.append(unique)
    return out


def compare_models(
    models: Sequence[str | Path],
    split: Split,
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    eval_cfg: EvalConfig | None = None,
    reference: str | None = None,
    label_names: Sequence[str] | None = None,
) -> tuple[Path, list[ModelSummary]]:
    """Evaluate every model the same way and write the comparison report.

    The reference model (``reference`` by name, else the first teacher, else the largest
    model) is what the report's ratios and each model's ``agreement`` refer to.

    Raises:
        UserError: no models, an unknown ``reference``, or classes that differ from
            ``label_names`` (when given) or between the models.
    """
    if not models:
        raise UserError("give at least one model to compare")
    shown = model_names(models, names)
    if reference is not None and reference not in shown:
        raise UserError(f"--reference {reference!r} is not among the models: {', '.join(shown)}")
    cfg = eval_cfg or EvalConfig()
    classifiers = [load(m) for m in models]
    expected = list(label_names) if label_names is not None else classifiers[0].label_names
    for clf in classifiers:
        check_labels(clf, expected, "data" if label_names is not None else "first model")
    summaries, preds = [], []
    for clf, name in zip(classifiers, shown, strict=True):
        log.info("evaluating %s", clf.path)
        # Agreement is measured below against the reference, not each model's own teacher.
        ev = evaluate_model(clf, split, efficiency=True, eval_cfg=cfg, with_agreement=False)
        summaries.append(summarize(clf, ev, name))
        preds.append(ev.predictions)
    rows = build_comparison(summaries, reference)
    ref = next(i for i, row in enumerate(rows) if row["reference"])
    for i, summary in enumerate(summaries):
        summary.agreement = None if i == ref else agreement(preds[i], preds[ref])
    path = write_report(summaries, out_dir, reference=reference)
    return path, summaries
