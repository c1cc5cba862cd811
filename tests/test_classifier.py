"""Prediction: the ``textdistill predict`` command (arguments, files, stdin; table, JSON and
JSONL) and the Python API ``textdistill.load(DIR).predict([...])``."""

from __future__ import annotations

import json
import math
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner, Result

import textdistill
from textdistill.cli import app
from textdistill.core.errors import UserError
from textdistill.core.text import MAX_TEXT_CHARS
from textdistill.runtime.classifier import (
    EMPTY_REASON,
    Classifier,
    ModelOutputError,
    Prediction,
)

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


# ------------------------------------------------------------------------------ hardening


class FakeBackend(Classifier):
    """A backend whose logits are given by hand; it records every batch it is asked to encode."""

    backend = "fake"

    def __init__(self, logits: list[float] | None = None) -> None:
        super().__init__(path=Path("/models/fake"), label_names=["a", "b", "c"], max_len=8, meta={})
        self.row = torch.tensor(logits if logits is not None else [0.0, 1.0, 2.0])
        self.encoded: list[list[str]] = []

    def size_mb(self) -> float:
        return 0.0

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        self.encoded.append(list(texts))
        return {"input_ids": torch.zeros((len(texts), 1), dtype=torch.long)}

    def forward_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.row.expand(int(batch["input_ids"].shape[0]), -1).clone()


NON_FINITE = {
    "nan": [0.0, math.nan, 1.0],
    "+inf": [0.0, math.inf, 1.0],
    "all -inf": [-math.inf, -math.inf, -math.inf],
    "+inf and -inf": [math.inf, -math.inf, 0.0],
}


@pytest.mark.parametrize("logits", NON_FINITE.values(), ids=NON_FINITE.keys())
def test_non_finite_outputs_raise_a_clear_error_never_nan(logits: list[float]) -> None:
    clf = FakeBackend(logits)
    with pytest.raises(ModelOutputError, match="cannot predict") as info:
        clf.predict(["球队", "银行"])
    assert isinstance(info.value, UserError)  # the CLI prints it, exit code 2
    message = str(info.value)
    assert "/models/fake" in message and "damaged" in message and "2 of 2 texts" in message
    with pytest.raises(ModelOutputError):
        clf.logits(["球队"])


def test_one_minus_inf_logit_is_a_valid_output() -> None:
    clf = FakeBackend([0.0, -math.inf, 1.0])  # probability 0 for "b"
    (p,) = clf.predict(["球队"], top_k=3)
    assert p.label == "c" and p.top_k[-1] == {"label": "b", "probability": 0.0}
    assert all(math.isfinite(t["probability"]) for t in p.top_k)


INVISIBLE = ["\u200b", "\ufeff", "\x01", "\x00", "\x00\x00", "\u200b\ufeff\x01 \t\u3000\u2028"]


def test_texts_without_a_visible_character_get_a_reason_and_skip_the_model() -> None:
    clf = FakeBackend()
    preds = clf.predict([*INVISIBLE, "球\x00队"])
    for p, text in zip(preds, INVISIBLE, strict=False):
        assert p.text == text and p.label is None and p.reason == EMPTY_REASON
    assert preds[-1].label == "c" and preds[-1].reason is None
    assert clf.encoded == [["球\x00队"]]  # only the visible text reached the model


def test_a_huge_text_is_clipped_before_encoding() -> None:
    clf = FakeBackend()
    text = "球" * 1_000_000
    tracemalloc.start()
    try:
        (p,) = clf.predict([text])
        clf.logits([text])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [len(batch[0]) for batch in clf.encoded] == [MAX_TEXT_CHARS, MAX_TEXT_CHARS]
    assert clf.encoded[0][0] == text[:MAX_TEXT_CHARS]
    assert p.text is text and p.label == "c"  # the result keeps the whole text
    # No copy of the whole text (about 2 MB as UCS-2) was made, let alone tokenized.
    assert peak < 1_000_000, peak


def test_lone_surrogates_do_not_break_the_tokenizer(clf: Classifier) -> None:
    # A Python string can hold them (e.g. a surrogate-escaped command-line argument).
    preds = clf.predict(["球队\ud800比赛", "\ud83d\ude00银行"])
    assert all(p.label in clf.label_names for p in preds)
    assert preds[0].text == "球队\ud800比赛"


def test_a_real_model_encodes_at_most_the_cap(clf: Classifier) -> None:
    seen: list[int] = []
    encode = clf.encode

    def spy(texts: Sequence[str]) -> dict[str, torch.Tensor]:
        seen.extend(len(t) for t in texts)
        return encode(texts)

    text = "球队比赛冠军进球联赛" * 100_000  # a million characters
    try:
        clf.encode = spy  # type: ignore[method-assign]
        (p,) = clf.predict([text])
    finally:
        del clf.encode  # the module-scoped classifier gets its own method back
    assert seen == [MAX_TEXT_CHARS] and p.label in clf.label_names


@pytest.fixture(scope="module")
def overflow_student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose weights are finite (it loads) but overflow: infinite logits, NaN
    probabilities - what a bit flip in an exponent does."""
    from textdistill.data.tokenization import build_tokenizer
    from textdistill.models.folders import save_student
    from textdistill.models.students import build_student

    tokenizer = build_tokenizer([*TEXTS, *TEXTS], vocab_size=60)
    model = build_student("bilstm", "small", len(tokenizer), 3, embed_dim=8, hidden_dim=8)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.fill_(3e38 if name.startswith("classifier") else 10.0)
    out = tmp_path_factory.mktemp("overflow") / "student"
    save_student(out, model, tokenizer, ["sports", "finance", "game"], max_len=16)
    return out


@pytest.mark.parametrize("fmt", ["json", "jsonl", "table"])
def test_cli_a_model_that_cannot_predict_exits_2_without_nan(
    overflow_student: Path, fmt: str
) -> None:
    result = invoke(TEXTS[0], "", "-m", overflow_student, "-f", fmt)
    assert result.exit_code == 2, result.output
    message = " ".join(result.stderr.split())
    assert "cannot predict" in message and str(overflow_student) in message
    assert "Traceback" not in result.output and "NaN" not in result.stdout


def test_cli_json_is_strict_json(tiny_student: Path) -> None:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} in the output")

    result = ok(invoke(TEXTS[0], "\u200b", "-m", tiny_student, "-f", "json", "-k", "3"))
    items = json.loads(result.stdout, parse_constant=refuse)
    assert items[1]["label"] is None and items[1]["reason"] == EMPTY_REASON
