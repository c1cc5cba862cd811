"""evaluate and compare: metrics against scikit-learn, teacher agreement, eval_<split>.json,
efficiency fields, the comparison report, and label mismatches.

Models are the session's tiny teacher and student (conftest.py) plus a TextCNN trained here
once per module; latency is measured on 10 texts after 2 warm-up calls to stay fast.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)
from typer.testing import CliRunner, Result

from textdistill.cli import app
from textdistill.core.config import EvalConfig
from textdistill.core.errors import UserError
from textdistill.data.corpus import Split, load_corpus
from textdistill.distill.run import distill
from textdistill.evaluation.evaluate import (
    compare_models,
    evaluate_model,
    model_names,
    save_evaluation,
)
from textdistill.inference.load import load
from textdistill.models.folders import read_meta

FAST_EVAL = EvalConfig(latency_texts=10, warmup=2, batch_size=16)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cnn_student(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_corpus: Path,
    tiny_teacher: Path,
    make_tiny_config: Callable[..., Any],
) -> Path:
    """A second student (TextCNN, mode hard) for the comparison."""
    out = tmp_path_factory.mktemp("cnn") / "cnn"
    overrides = {
        "distill.mode": "hard",
        "distill.teachers": [str(tiny_teacher)],
        "student.arch": "textcnn",
        "student.preset": "default",
        "student.options": {"embed_dim": 16, "num_filters": 8},
    }
    cfg = make_tiny_config(tiny_corpus, **overrides)
    distill(cfg, load_corpus(tiny_corpus), out)
    return out


@pytest.fixture
def fast_config(tmp_path: Path) -> Path:
    path = tmp_path / "eval.yaml"
    path.write_text("eval: {latency_texts: 10, warmup: 2}\n", encoding="utf-8")
    return path


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def argmax_predictions(model: Path, texts: list[str]) -> np.ndarray:
    """Predictions computed independently of evaluate: the model's own forward pass."""
    clf = load(model)
    with torch.no_grad():
        logits = clf.model(**clf.encode(texts)).logits
    return logits.argmax(-1).numpy()


# ------------------------------------------------------------------------ evaluate_model


def test_metrics_equal_scikit_learn_on_the_predictions(
    tiny_corpus: Path, tiny_student: Path
) -> None:
    split = load_corpus(tiny_corpus).split("test")
    ev = evaluate_model(tiny_student, split, efficiency=False, eval_cfg=FAST_EVAL)
    gold = np.array(split.labels)
    pred = argmax_predictions(tiny_student, split.texts)
    assert ev.predictions == pred.tolist()
    assert len(set(ev.predictions)) > 1  # a trained model, not a constant one

    m = ev.metrics
    assert m["n"] == len(gold) == 30
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    for average in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            gold, pred, labels=[0, 1, 2], average=average, zero_division=0
        )
        assert (m[f"{average}_precision"], m[f"{average}_recall"], m[f"{average}_f1"]) == (
            pytest.approx(p),
            pytest.approx(r),
            pytest.approx(f),
        )
    per_class_f1 = f1_score(gold, pred, labels=[0, 1, 2], average=None, zero_division=0)
    names = load_corpus(tiny_corpus).label_names
    assert [m["per_class"][n]["f1"] for n in names] == pytest.approx(per_class_f1.tolist())
    assert [m["per_class"][n]["support"] for n in names] == [10, 10, 10]
    assert m["confusion"] == confusion_matrix(gold, pred, labels=[0, 1, 2]).tolist()


def test_student_agreement_with_its_recorded_teacher(
    tiny_corpus: Path, tiny_student: Path, tiny_teacher: Path
) -> None:
    split = load_corpus(tiny_corpus).split("test")
    ev = evaluate_model(tiny_student, split, efficiency=False)
    teacher_pred = argmax_predictions(tiny_teacher, split.texts)
    expected = float(np.mean(np.array(ev.predictions) == teacher_pred))
    assert ev.teacher == str(tiny_teacher.resolve())
    assert ev.agreement == pytest.approx(expected)

    # A teacher has no teacher of its own; an explicit one is compared against.
    assert evaluate_model(tiny_teacher, split, efficiency=False).agreement is None
    same = evaluate_model(tiny_teacher, split, teacher=tiny_teacher, efficiency=False)
    assert same.agreement == 1.0


def test_rows_without_gold_label_are_left_out(tiny_corpus: Path, tiny_student: Path) -> None:
    full = load_corpus(tiny_corpus).split("test")
    labels = list(full.labels)
    labels[:7] = [-1] * 7
    part = Split("test", list(full.texts), labels)
    ev = evaluate_model(tiny_student, part, efficiency=False)
    assert ev.metrics["n"] == 23 and len(ev.predictions) == 23

    unlabelled = Split("test", list(full.texts), [-1] * len(full.texts))
    with pytest.raises(UserError, match="no labelled rows"):
        evaluate_model(tiny_student, unlabelled, efficiency=False)


def test_efficiency_and_eval_json(tmp_path: Path, tiny_corpus: Path, tiny_student: Path) -> None:
    split = load_corpus(tiny_corpus).split("dev")
    ev = evaluate_model(tiny_student, split, eval_cfg=FAST_EVAL)
    path = save_evaluation(ev, tmp_path)
    assert path == tmp_path / "eval_dev.json"
    saved = json.loads(path.read_text(encoding="utf-8"))
    assert saved["split"] == "dev" and saved["metrics"]["n"] == 30
    eff = saved["efficiency"]
    assert eff["n_latency"] == 10 and eff["warmup"] == 2 and eff["threads"] == 1
    for key in ("model_p50_ms", "model_p95_ms", "e2e_p50_ms", "e2e_p95_ms"):
        assert eff[key] > 0
    assert eff["model_p50_ms"] <= eff["model_p95_ms"]
    assert eff["e2e_texts_per_s"] > 0 and eff["model_texts_per_s"] > 0


def test_label_mismatch_is_a_user_error(
    tmp_path: Path, make_corpus: Callable[..., Path], tiny_student: Path
) -> None:
    other = load_corpus(make_corpus(tmp_path / "other", classes=("a", "b", "c")))
    with pytest.raises(UserError, match=r"differ from the data's \['a', 'b', 'c'\]"):
        evaluate_model(tiny_student, other.split("test"), label_names=other.label_names)


# -------------------------------------------------------------------------- CLI evaluate


def test_cli_evaluate_prints_the_report_and_writes_json(
    tmp_path: Path, tiny_corpus: Path, tiny_student: Path, fast_config: Path
) -> None:
    out = tmp_path / "out"
    result = ok(
        invoke(
            "evaluate", "--model", tiny_student, "--data", tiny_corpus, "--split", "test",
            "--out", out, "--config", fast_config,
        )
    )  # fmt: skip
    text = result.stdout
    for name in load_corpus(tiny_corpus).label_names:
        assert name in text
    assert "on test (30 texts)" in text
    assert "accuracy" in text and "macro" in text
    assert "agreement with teacher" in text
    assert "latency (batch 1, 1 thread(s))" in text
    saved = json.loads((out / "eval_test.json").read_text(encoding="utf-8"))
    assert saved["teacher_agreement"] is not None
    assert saved["efficiency"]["n_latency"] == 10


def test_cli_evaluate_defaults_to_the_model_folder(
    tmp_path: Path, tiny_corpus: Path, tiny_student: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_student, model)
    ok(invoke("evaluate", "-m", model, "-d", tiny_corpus, "-s", "dev", "--no-efficiency"))
    saved = json.loads((model / "eval_dev.json").read_text(encoding="utf-8"))
    assert saved["efficiency"] is None and saved["metrics"]["n"] == 30


@pytest.mark.parametrize(
    ("data_kind", "args", "message"),
    [
        ("other", [], "the model's classes ['sports', 'finance', 'game'] differ"),
        ("same", ["--split", "nope"], "no split named 'nope'"),
    ],
)
def test_cli_evaluate_errors_exit_2(
    tmp_path: Path,
    make_corpus: Callable[..., Path],
    tiny_corpus: Path,
    tiny_student: Path,
    data_kind: str,
    args: list[str],
    message: str,
) -> None:
    data = (
        make_corpus(tmp_path / "o", classes=("x", "y", "z"))
        if data_kind == "other"
        else tiny_corpus
    )
    result = invoke("evaluate", "--model", tiny_student, "--data", data, "--no-efficiency", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.stderr.split())


# --------------------------------------------------------------------------- compare


@pytest.mark.slow
def test_cli_compare_writes_report_with_ratios_to_the_teacher(
    tmp_path: Path,
    tiny_corpus: Path,
    tiny_teacher: Path,
    tiny_student: Path,
    cnn_student: Path,
    fast_config: Path,
) -> None:
    out = tmp_path / "report"
    result = ok(
        invoke(
            "compare", "--models", tiny_teacher, "--models", tiny_student, "--models", cnn_student,
            "--data", tiny_corpus, "--out", out, "--config", fast_config,
        )
    )  # fmt: skip
    assert "# Model comparison" in result.stdout

    md = (out / "compare.md").read_text(encoding="utf-8")
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + 3  # header, alignment, one row per model
    assert table[2].startswith("| teacher (ref) | teacher |")

    report = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert report["reference"] == "teacher"
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["teacher", "student", "cnn"]
    t_params = read_meta(tiny_teacher)["num_parameters"]
    test = load_corpus(tiny_corpus).split("test")
    teacher_pred = argmax_predictions(tiny_teacher, test.texts)
    for name, folder in (("student", tiny_student), ("cnn", cnn_student)):
        row = rows[name]
        assert row["kind"] == "student" and not row["reference"]
        assert row["params"] == read_meta(folder)["num_parameters"]
        assert row["params_ratio"] == pytest.approx(row["params"] / t_params)
        assert row["speedup_p50"] == pytest.approx(rows["teacher"]["p50_ms"] / row["p50_ms"])
        pred = argmax_predictions(folder, test.texts)
        assert row["agreement"] == pytest.approx(float(np.mean(pred == teacher_pred)))
    assert rows["teacher"]["params_ratio"] == 1.0 and rows["teacher"]["agreement"] is None

    assert report["plots"]
    for plot in report["plots"]:
        assert (out / plot).read_bytes()[:8] == PNG_MAGIC
        assert f"]({plot})" in md
    assert {"accuracy_vs_latency.png", "confusion_teacher.png", "confusion_cnn.png"} <= set(
        report["plots"]
    )


def test_compare_with_another_reference_and_unknown_reference(
    tmp_path: Path, tiny_corpus: Path, tiny_teacher: Path, tiny_student: Path
) -> None:
    split = load_corpus(tiny_corpus).split("test")
    _, summaries = compare_models(
        [tiny_teacher, tiny_student], split, tmp_path / "r", eval_cfg=FAST_EVAL, reference="student"
    )
    report = json.loads((tmp_path / "r" / "compare.json").read_text(encoding="utf-8"))
    assert report["reference"] == "student"
    by_name = {s.name: s for s in summaries}
    assert by_name["student"].agreement is None and by_name["teacher"].agreement is not None

    result = invoke(
        "compare", "-m", tiny_teacher, "-m", tiny_student, "-d", tiny_corpus,
        "-o", tmp_path / "r2", "--reference", "bert",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--reference 'bert' is not among the models: teacher, student" in result.stderr
    assert not (tmp_path / "r2").exists()


def test_compare_refuses_models_of_other_classes(
    tmp_path: Path, make_corpus: Callable[..., Path], tiny_student: Path
) -> None:
    data = make_corpus(tmp_path / "o", classes=("x", "y", "z"))
    result = invoke("compare", "-m", tiny_student, "-d", data, "-o", tmp_path / "r")
    assert result.exit_code == 2 and "differ from the data's" in " ".join(result.stderr.split())


def test_model_names_default_to_folders_and_are_made_unique(tmp_path: Path) -> None:
    models = [tmp_path / "a" / "student", tmp_path / "b" / "student", tmp_path / "teacher"]
    assert model_names(models) == ["student", "student-2", "teacher"]
    assert model_names(models, ["x", "y", "x"]) == ["x", "y", "x-2"]
    assert model_names(models, ["x", "x-2", "x"]) == ["x", "x-2", "x-3"]
    with pytest.raises(UserError, match="one name per model"):
        model_names(models, ["x"])
