"""Which rows each stage sees: the holdout, ``data.train_limit`` and the few-labels workflow
(teacher MLM on every text, fine-tuning on the labelled rows, students on all texts)."""

from __future__ import annotations

import re
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


def _folder(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (root / name).write_text(content, encoding="utf-8")
    return root


def test_a_subset_left_with_one_class_is_an_error(tmp_path: Path) -> None:
    from textdistill.core.config import Config
    from textdistill.core.errors import UserError

    # 9 rows of a, 1 of b: a 2-row stratified subset keeps only a (largest remainder).
    train = "".join(f"甲{i}\t0\n" for i in range(9)) + "乙\t1\n"
    root = _folder(tmp_path / "d", {"class.txt": "a\nb", "train.txt": train, "dev.txt": "丙\t1\n"})
    corpus = load_corpus(root)
    cfg = apply_overrides(Config(), {"data.dir": str(root)})
    assert len(prepare_training_data(cfg, corpus).train) == 10
    limited = apply_overrides(cfg, {"data.train_limit": 2})
    with pytest.raises(UserError) as info:
        prepare_training_data(limited, corpus)
    assert str(info.value) == (
        f"{root / 'train.txt'}: only one class (a) in the training rows after "
        "data.train_limit=2; a classifier needs rows of at least 2 classes; raise "
        "data.train_limit or lower data.holdout"
    )
    # The holdout can take a rare class's only row away too: 6 of 10 rows stratified give
    # a 5.4 -> 5 and b 0.6 -> 1 (the larger remainder).
    with pytest.raises(
        UserError, match=re.escape("(a) in the training rows after data.holdout=6;")
    ):
        prepare_training_data(apply_overrides(cfg, {"data.holdout": 6}), corpus)


def test_open_corpus_reads_data_labels(tmp_path: Path) -> None:
    from textdistill.core.config import Config
    from textdistill.core.errors import DataError
    from textdistill.data.splits import open_corpus

    labels = _folder(tmp_path / "meta", {"labels.txt": "x\ny\n"}) / "labels.txt"
    root = _folder(
        tmp_path / "d",
        {
            "train.jsonl": '{"text": "甲", "label": "y"}\n{"text": "乙", "label": "x"}\n',
            "dev.jsonl": '{"text": "丙", "label": "X"}\n',
        },
    )
    cfg = apply_overrides(Config(), {"data.dir": str(root)})
    with pytest.raises(DataError, match=re.escape("label 'X' is not in the labels of train.jsonl")):
        open_corpus(cfg)
    with pytest.raises(
        DataError, match=re.escape(f"label 'X' is not in {labels} (x, y); did you mean 'x'?")
    ):
        open_corpus(apply_overrides(cfg, {"data.labels": str(labels)}))
    (root / "dev.jsonl").write_text('{"text": "丙", "label": "x"}\n', encoding="utf-8")
    corpus = open_corpus(apply_overrides(cfg, {"data.labels": str(labels)}))
    assert corpus.label_names == ["x", "y"] and corpus.class_file == labels
