"""Prediction: the ``textdistill predict`` command (arguments, files, stdin; table, JSON and
JSONL) and the Python API ``textdistill.load(DIR).predict([...])``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner, Result

import textdistill
from textdistill.cli import app
from textdistill.inference.classifier import EMPTY_REASON, Classifier, Prediction

TEXTS = ["球队比赛冠军进球", "银行基金利率投资", "游戏玩家网游公测"]


def invoke(*args: Any, input: str | None = None) -> Result:
    return CliRunner().invoke(app, ["predict", *(str(a) for a in args)], input=input)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def clf(tiny_student: Path) -> Classifier:
    return textdistill.load(tiny_student)


# ------------------------------------------------------------------------------ API


def test_python_api_round_trip(tiny_student: Path) -> None:
    clf = textdistill.load(tiny_student)
    assert isinstance(clf, textdistill.Classifier)
    preds = clf.predict(TEXTS)
    assert len(preds) == 3 and all(isinstance(p, textdistill.Prediction) for p in preds)
    logits = torch.from_numpy(clf.logits(TEXTS))
    probs = torch.softmax(logits, dim=-1)
    for i, p in enumerate(preds):
        assert p.text == TEXTS[i] and p.reason is None
        assert isinstance(p.label, str) and p.label in clf.label_names
        assert isinstance(p.label_id, int) and clf.label_names[p.label_id] == p.label
        assert p.label_id == int(logits[i].argmax())
        assert p.probability is not None and 0 < p.probability <= 1
        assert p.probability == pytest.approx(float(probs[i].max()), abs=1e-6)
        assert p.top_k == [{"label": p.label, "probability": p.probability}]
        assert p.latency_ms is not None and p.latency_ms > 0
    assert preds[0].to_dict()["label"] == preds[0].label


def test_a_single_string_is_one_text(clf: Classifier) -> None:
    (p,) = clf.predict(TEXTS[0])
    assert p.text == TEXTS[0] and p.label == clf.predict([TEXTS[0]])[0].label
    assert clf.logits(TEXTS[0]).shape == (1, 3)


def test_results_do_not_depend_on_batching(clf: Classifier) -> None:
    texts = [*TEXTS, "球", "银行银行银行银行银行银行银行银行"]
    one = clf.predict(texts, batch_size=1)
    many = clf.predict(texts, batch_size=64)
    assert [p.label for p in one] == [p.label for p in many]
    assert [p.probability for p in one] == pytest.approx([p.probability for p in many], abs=1e-5)


def test_top_k_is_sorted_and_sums_to_one_over_all_classes(clf: Classifier) -> None:
    (p,) = clf.predict([TEXTS[0]], top_k=3)
    probs = [t["probability"] for t in p.top_k]
    assert len(p.top_k) == 3 and probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert {t["label"] for t in p.top_k} == set(clf.label_names)
    assert p.top_k[0] == {"label": p.label, "probability": p.probability}
    # k beyond the number of classes is capped, k below 1 means the best label only.
    assert len(clf.predict([TEXTS[0]], top_k=10)[0].top_k) == 3
    assert len(clf.predict([TEXTS[0]], top_k=0)[0].top_k) == 1


def test_empty_texts_get_no_label_and_a_reason(clf: Classifier) -> None:
    preds = clf.predict(["", "   ", "\u3000\t", TEXTS[0]])
    for p in preds[:3]:
        assert p.label is None and p.label_id is None and p.probability is None
        assert p.reason == EMPTY_REASON and p.top_k == []
    assert preds[3].label is not None and preds[3].text == TEXTS[0]
    assert clf.predict([]) == []


def test_very_long_text_is_truncated(clf: Classifier) -> None:
    long_text = "球队比赛冠军进球联赛" * 500
    (p,) = clf.predict([long_text])
    assert p.label in clf.label_names and p.text == long_text
    assert clf.encode([long_text])["input_ids"].shape == (1, clf.max_len)


# ------------------------------------------------------------------------------ CLI


def test_cli_text_arguments_as_json(tiny_student: Path, clf: Classifier) -> None:
    result = ok(invoke(TEXTS[0], TEXTS[1], "--model", tiny_student, "--format", "json"))
    items = json.loads(result.stdout)
    expected = clf.predict(TEXTS[:2])
    assert [i["text"] for i in items] == TEXTS[:2]
    assert [i["label"] for i in items] == [p.label for p in expected]
    for item in items:
        assert 0 < item["probability"] <= 1 and item["reason"] is None
        assert set(item) == set(Prediction.__dataclass_fields__)


def test_cli_input_file_as_jsonl_keeps_one_result_per_line(
    tmp_path: Path, tiny_student: Path
) -> None:
    path = tmp_path / "in.txt"
    path.write_text(f"\ufeff{TEXTS[0]}\n\n{TEXTS[2]}\n", encoding="utf-8")
    items = json_lines(ok(invoke("--input", path, "-m", tiny_student, "-f", "jsonl")))
    assert [i["text"] for i in items] == [TEXTS[0], "", TEXTS[2]]  # the BOM is dropped
    assert items[1]["label"] is None and items[1]["reason"] == EMPTY_REASON
    assert items[0]["label"] is not None and items[2]["label"] is not None


@pytest.mark.parametrize("extra", [[], ["--input", "-"]])
def test_cli_reads_stdin(tiny_student: Path, extra: list[str]) -> None:
    stdin = f"{TEXTS[0]}\n{TEXTS[1]}\n"
    items = json_lines(ok(invoke("-m", tiny_student, "-f", "jsonl", *extra, input=stdin)))
    assert [i["text"] for i in items] == TEXTS[:2]


def test_cli_top_k_in_json_and_table(tiny_student: Path) -> None:
    (item,) = json.loads(ok(invoke(TEXTS[0], "-m", tiny_student, "-f", "json", "-k", "3")).stdout)
    assert len(item["top_k"]) == 3
    assert sum(t["probability"] for t in item["top_k"]) == pytest.approx(1.0, abs=1e-5)

    table = ok(invoke(TEXTS[0], "", "-m", tiny_student, "-k", "3")).stdout
    # Rich may wrap or elide cells to the terminal width: look for short pieces only.
    assert "top-k" in table and TEXTS[0][:4] in table and item["label"] in table
    assert f"({EMPTY_REASON})" in table


def test_cli_empty_and_long_texts_do_not_crash(tiny_student: Path) -> None:
    long_text = "银行基金利率投资理财" * 400
    items = json.loads(ok(invoke("", "  ", long_text, "-m", tiny_student, "-f", "json")).stdout)
    assert [i["label"] is None for i in items] == [True, True, False]
    assert items[2]["text"] == long_text and 0 < items[2]["probability"] <= 1


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        ([], "", "no texts: give them as arguments, with --input FILE, or on stdin"),
        (["--input", "missing.txt"], None, "missing.txt: no such file"),
        (["x", "--format", "xml"], None, "unknown --format 'xml'; valid: table, json, jsonl"),
        (["x", "--top-k", "0"], None, "--top-k"),
    ],
)
def test_cli_input_errors_exit_2(
    tmp_path: Path,
    tiny_student: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    stdin: str | None,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(*args, "-m", tiny_student, input=stdin)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())


def test_cli_not_a_model_folder(tmp_path: Path) -> None:
    result = invoke("x", "-m", tmp_path)
    assert result.exit_code == 2 and "not a textdistill model folder" in result.stderr


def test_logits_of_no_texts_is_an_empty_matrix(clf: Classifier) -> None:
    out = clf.logits([])
    assert out.shape == (0, 3) and out.dtype == np.float32
