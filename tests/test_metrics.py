"""Metrics against scikit-learn's own functions and hand-computed values."""

from __future__ import annotations

import json

import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score

from textdistill.evaluation.metrics import agreement, classification_metrics, format_report

NAMES = ["sports", "finance", "tech"]
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 0]
Y_PRED = [0, 1, 0, 1, 2, 2, 2, 0, 2, 0]


def test_matches_sklearn():
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(accuracy_score(Y_TRUE, Y_PRED))
    assert m["macro_f1"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))
    assert m["micro_f1"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="micro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="weighted"))
    assert m["macro_precision"] == pytest.approx(precision_score(Y_TRUE, Y_PRED, average="macro"))
    assert m["confusion"] == confusion_matrix(Y_TRUE, Y_PRED).tolist()


def test_hand_computed_values():
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES)
    assert m["accuracy"] == pytest.approx(0.7)
    # sports: 3 of 4 predicted-sports right, 3 of 4 true sports found.
    assert m["per_class"]["sports"] == pytest.approx(
        {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
    )
    # finance: predicted twice, right once; 2 true rows, 1 found.
    assert m["per_class"]["finance"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert m["per_class"]["tech"]["support"] == 4
    assert m["confusion"] == [[3, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert m["label_names"] == NAMES
    json.dumps(m)  # plain Python types only


def test_class_absent_from_predictions_and_gold():
    names = ["a", "b", "c", "d"]
    y_true = [0, 1, 1, 2]
    y_pred = [0, 1, 0, 1]  # c never predicted; d neither gold nor predicted
    m = classification_metrics(y_true, y_pred, names)
    assert len(m["confusion"]) == 4 and all(len(r) == 4 for r in m["confusion"])
    assert m["confusion"][2] == [0, 1, 0, 0]
    assert m["confusion"][3] == [0, 0, 0, 0]
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_class"]["d"]["support"] == 0
    # Macro averages over all 4 declared classes, as sklearn with labels=range(4).
    expected = f1_score(y_true, y_pred, labels=[0, 1, 2, 3], average="macro", zero_division=0)
    assert m["macro_f1"] == pytest.approx(expected)
    # a: P=1/2 R=1 F=2/3; b: P=1/2 R=1/2 F=1/2; c, d: 0 -> (2/3 + 1/2) / 4
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 4)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [
        ([0, 1], [0], "y_true has 2 labels but y_pred has 1"),
        ([], [], "zero examples"),
        ([0, -1], [0, 1], "drop unlabeled rows"),
        ([0, 3], [0, 1], r"outside \[0, 3\)"),
        ([0.5, 1], [0, 1], "integer class ids"),
    ],
)
def test_rejects_bad_input(y_true, y_pred, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y_true, y_pred, NAMES)


def test_rejects_duplicate_names():
    with pytest.raises(ValueError, match="duplicates"):
        classification_metrics([0], [0], ["a", "a"])


def test_agreement():
    assert agreement([0, 1, 2, 3], [0, 1, 0, 3]) == pytest.approx(0.75)
    assert agreement([2, 2], [2, 2]) == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        agreement([0, 1], [0])
    with pytest.raises(ValueError, match="zero predictions"):
        agreement([], [])


def test_format_report():
    text = format_report(classification_metrics(Y_TRUE, Y_PRED, NAMES))
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    assert lines[2].split() == ["sports", "0.7500", "0.7500", "0.7500", "4"]
    assert lines[3].split() == ["finance", "0.5000", "0.5000", "0.5000", "2"]
    acc = next(line for line in lines if line.strip().startswith("accuracy"))
    assert acc.split() == ["accuracy", "0.7000", "10"]
    for label in ("macro avg", "micro avg", "weighted avg"):
        assert any(line.strip().startswith(label) for line in lines)
    # Columns line up: every score row has the same width as the header.
    widths = {len(line) for line in lines if line.strip()}
    assert len(widths) == 1


def test_format_report_digits_and_wide_names():
    m = classification_metrics([0, 1], [0, 1], ["体育", "finance"])
    text = format_report(m, digits=2)
    assert "1.00" in text and "1.0000" not in text
    rows = [line for line in text.splitlines() if "体育" in line or "finance" in line]
    # The CJK name takes 2 columns per character, so both rows end at the same column.
    assert rows[0].index("1.00") + 2 == rows[1].index("1.00")
