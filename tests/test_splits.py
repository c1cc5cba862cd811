"""Which rows each stage sees: the holdout, ``data.train_limit`` and the few-labels workflow
(teacher MLM on every text, fine-tuning on the labelled rows, students on all texts)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from textdistill.core.config import PipelineStudent, apply_overrides
from textdistill.data.corpus import load_corpus
from textdistill.data.splits import prepare_training_data
from textdistill.models.folders import read_meta
from textdistill.pipeline import run_pipeline


def test_train_limit_is_stratified_and_the_rest_unlabeled(
    tiny_corpus: Path, make_tiny_config: Callable[..., Any]
) -> None:
    corpus = load_corpus(tiny_corpus)
    cfg = make_tiny_config(tiny_corpus, **{"data.holdout": 6, "data.train_limit": 9})
    data = prepare_training_data(cfg, corpus)
    assert len(data.select) == 6 and data.select.name == "holdout"
    assert len(data.train) == 9 and Counter(data.train.labels) == {0: 3, 1: 3, 2: 3}
    assert data.unlabeled_texts == []  # unlabeled_rest is off: the rest is unused

    rest = prepare_training_data(apply_overrides(cfg, {"data.unlabeled_rest": True}), corpus)
    assert rest.train.texts == data.train.texts
    assert len(rest.unlabeled_texts) == 30 - 6 - 9
    seen = set(rest.select.texts) | set(rest.train.texts) | set(rest.unlabeled_texts)
    assert seen == set(corpus.split("train").texts)  # a partition of train
    # Fixed by data.seed: every stage gets the same rows.
    assert prepare_training_data(cfg, corpus).train.texts == data.train.texts


@pytest.mark.slow
def test_few_labels_workflow_is_one_config(
    tmp_path: Path, tiny_corpus: Path, make_tiny_config: Callable[..., Any]
) -> None:
    cfg = make_tiny_config(
        tiny_corpus,
        **{
            "data.train_limit": 6,
            "data.unlabeled_rest": True,
            "teacher.mlm.epochs": 1,
            "teacher.mlm.batch_size": 8,
            "teacher.mlm.progress": False,
            "student.train.epochs": 1,
            "pipeline.report_splits": ["test"],
            "eval.latency_texts": 3,
            "eval.warmup": 1,
        },
    )
    cfg.pipeline.students = [
        PipelineStudent(name="none", mode="none"),
        PipelineStudent(name="soft", mode="soft"),
    ]
    result = run_pipeline(cfg, tmp_path / "run")

    teacher = read_meta(result.teacher)
    assert teacher["train_rows"] == 6  # fine-tuned on the labelled rows only
    assert teacher["mlm_rows"] == 30  # MLM on every training text
    none, soft = (read_meta(result.students[n]) for n in ("none", "soft"))
    assert (none["labelled_rows"], none["transfer_rows"]) == (6, 6)
    assert (soft["labelled_rows"], soft["transfer_rows"]) == (6, 30)
    assert (result.out / "report-test" / "compare.md").is_file()
