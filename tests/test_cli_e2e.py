"""The command line end to end: teacher -> cache -> distill -> evaluate -> compare -> predict,
each step reading the previous step's folder, and the real entry point in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from textdistill.cli import app
from textdistill.data.corpus import load_corpus
from textdistill.inference.load import load
from textdistill.models.folders import read_meta


def invoke(*args: Any) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.mark.slow
def test_teacher_to_prediction_through_the_cli(
    tmp_path: Path, make_corpus: Callable[..., Path]
) -> None:
    data = make_corpus(per_class=10)
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    fast = tmp_path / "fast.yaml"
    fast.write_text("eval: {latency_texts: 10, warmup: 2}\n", encoding="utf-8")

    out = ok(
        invoke(
            "teacher", "train", "--data", data, "--out", teacher, "--scratch", "custom",
            "--layers", "1", "--hidden", "32", "--heads", "2", "--epochs", "3", "--lr", "5e-3",
            "--batch-size", "8", "-q",
        )
    )  # fmt: skip
    assert "teacher saved to" in out.stdout

    out = ok(invoke("teacher", "cache", "--teacher", teacher, "--data", data, "-q"))
    assert "soft targets for 30 rows" in " ".join(out.stdout.split())

    out = ok(
        invoke(
            "distill", "--teacher", teacher, "--data", data, "--out", student, "--mode", "hidden",
            "--student", "textcnn", "--embed-dim", "16", "--num-filters", "8", "--epochs", "2",
            "--batch-size", "8", "-q",
        )
    )  # fmt: skip
    # `teacher cache` and `distill` agree on what the cache holds, so it is reused.
    assert "using cached soft targets" in " ".join(out.stderr.split())
    meta = read_meta(student)
    assert meta["mode"] == "hidden" and meta["architecture"]["arch"] == "textcnn"
    assert meta["teacher_fingerprint"] == read_meta(teacher)["fingerprint"]

    ok(invoke("evaluate", "-m", student, "-d", data, "-c", fast, "-o", tmp_path / "eval"))
    saved = json.loads((tmp_path / "eval" / "eval_test.json").read_text(encoding="utf-8"))
    assert saved["metrics"]["n"] == 30
    # Agreement is the share of test rows where student and teacher pick the same class.
    texts = load_corpus(data).split("test").texts
    same = np.argmax(load(student).logits(texts), 1) == np.argmax(load(teacher).logits(texts), 1)
    assert saved["teacher_agreement"] == pytest.approx(float(np.mean(same)))

    report = tmp_path / "report"
    ok(invoke("compare", "-m", teacher, "-m", student, "-d", data, "-c", fast, "-o", report))
    rows = json.loads((report / "compare.json").read_text(encoding="utf-8"))["rows"]
    assert [r["name"] for r in rows] == ["teacher", "student"]

    out = ok(invoke("predict", "球队比赛冠军", "-m", student, "-f", "json"))
    (item,) = json.loads(out.stdout)
    assert item["label"] in ("sports", "finance", "game")


def run_module(*args: Any, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "textdistill", *(str(a) for a in args)],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_entry_point_reads_stdin_and_writes_clean_jsonl(tiny_student: Path) -> None:
    proc = run_module("predict", "-m", tiny_student, "-f", "jsonl", stdin="球队比赛\n\n银行基金\n")
    assert proc.returncode == 0, proc.stderr
    items = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [i["text"] for i in items] == ["球队比赛", "", "银行基金"]
    assert items[1]["label"] is None and items[0]["label"] is not None


@pytest.mark.slow
def test_entry_point_user_error_is_a_message_and_exit_2(tmp_path: Path, tiny_corpus: Path) -> None:
    proc = run_module("distill", "--data", tiny_corpus, "--out", tmp_path / "s", "--mode", "soft")
    assert proc.returncode == 2
    assert "error: --mode soft needs a teacher" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
