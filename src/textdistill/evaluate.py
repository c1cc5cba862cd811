"""Evaluate and compare model folders: quality metrics, teacher agreement, efficiency."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from textdistill.config import EvalConfig
from textdistill.data import Split
from textdistill.efficiency import EfficiencyResult, measure_efficiency, size_on_disk_mb
from textdistill.errors import UserError
from textdistill.io import write_json
from textdistill.metrics import agreement, classification_metrics
from textdistill.predict import Classifier, load
from textdistill.report import ModelSummary, load_history, write_report

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
    return clf.logits(texts, batch_size=batch_size).argmax(-1)


def _known_teacher(clf: Classifier, teacher: str | Path | None) -> Path | None:
    if teacher is not None:
        return Path(teacher)
    teachers = clf.meta.get("teachers") or []
    if len(teachers) == 1 and Path(teachers[0]).is_dir():
        return Path(teachers[0])
    return None


def evaluate_model(
    model: str | Path | Classifier,
    split: Split,
    *,
    teacher: str | Path | None = None,
    efficiency: bool = True,
    eval_cfg: EvalConfig | None = None,
) -> Evaluation:
    """Accuracy, micro/macro P/R/F1, per-class report and confusion matrix on a split.

    For a student whose teacher folder is known (or given), also the agreement rate with
    the teacher's predictions. With ``efficiency``, latency and throughput as well.
    """
    cfg = eval_cfg or EvalConfig()
    clf = model if isinstance(model, Classifier) else load(model)
    labelled = [i for i, y in enumerate(split.labels) if y >= 0]
    if not labelled:
        raise UserError(f"split {split.name!r} has no labelled rows to evaluate on")
    texts = [split.texts[i] for i in labelled]
    gold = [split.labels[i] for i in labelled]
    pred = predictions(clf, texts, cfg.batch_size)
    metrics = classification_metrics(gold, pred.tolist(), clf.label_names)
    result = Evaluation(
        model=str(clf.path), split=split.name, metrics=metrics, predictions=pred.tolist()
    )
    teacher_dir = _known_teacher(clf, teacher) if clf.kind != "teacher" else None
    if teacher_dir is not None:
        t_pred = predictions(load(teacher_dir), texts, cfg.batch_size)
        result.agreement = agreement(pred.tolist(), t_pred.tolist())
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
    path = Path(out_dir) / f"eval_{result.split}.json"
    write_json(path, result.to_dict())
    return path


def summarize(clf: Classifier, ev: Evaluation, name: str | None = None) -> ModelSummary:
    assert ev.efficiency is not None
    params = clf.meta.get("num_parameters")
    return ModelSummary.from_results(
        name=name or clf.path.name,
        kind=clf.kind,
        path=clf.path,
        metrics=ev.metrics,
        efficiency=ev.efficiency,
        params=int(params) if params is not None else None,
        size_mb=size_on_disk_mb(clf.path),
        history=load_history(clf.path / "metrics.jsonl"),
        agreement=ev.agreement,
        extras={"mode": clf.meta.get("mode"), "architecture": clf.meta.get("architecture")},
    )


def compare_models(
    models: Sequence[str | Path],
    split: Split,
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    eval_cfg: EvalConfig | None = None,
    reference: str | None = None,
) -> tuple[Path, list[ModelSummary]]:
    """Evaluate every model the same way and write the comparison report."""
    if names is not None and len(names) != len(models):
        raise UserError("give one name per model")
    summaries = []
    for i, m in enumerate(models):
        clf = load(m)
        log.info("evaluating %s", clf.path)
        ev = evaluate_model(clf, split, efficiency=True, eval_cfg=eval_cfg)
        summaries.append(summarize(clf, ev, names[i] if names else None))
    _dedupe_names(summaries)
    path = write_report(summaries, out_dir, reference=reference)
    return path, summaries


def _dedupe_names(summaries: list[ModelSummary]) -> None:
    seen: dict[str, int] = {}
    for s in summaries:
        if s.name in seen:
            seen[s.name] += 1
            s.name = f"{s.name}-{seen[s.name]}"
        else:
            seen[s.name] = 1
