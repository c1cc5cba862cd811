"""``textdistill data fetch|check`` through the real CLI entry point."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from textdistill.cli import app
from textdistill.data import sample

runner = CliRunner()


def test_help() -> None:
    result = runner.invoke(app, ["data", "--help"])
    assert result.exit_code == 0
    assert "fetch" in result.output and "check" in result.output
    result = runner.invoke(app, ["data", "check", "--help"])
    assert result.exit_code == 0
    assert "--max-errors" in result.output and "--json" in result.output
    result = runner.invoke(app, ["data", "fetch", "--help"])
    assert result.exit_code == 0
    assert "thucnews-sample" in result.output


def test_check_good_folder(corpus_dir: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(corpus_dir)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "3 classes" in out
    for name in ("0 sports", "1 finance", "2 game"):
        assert name in out
    assert "train (train.txt)" in out and "test (test.txt)" in out
    assert "OK: 90 rows, no errors" in out
    assert "warning" not in out


def test_check_malformed_line(corpus_dir: Path) -> None:
    dev = corpus_dir / "dev.txt"
    lines = dev.read_text(encoding="utf-8").split("\n")
    lines[1] = "这一行没有标签"
    dev.write_text("\n".join(lines), encoding="utf-8")
    result = runner.invoke(app, ["data", "check", str(corpus_dir)])
    assert result.exit_code == 1
    assert f"{dev}:2: no tab: expected 'text<TAB>label_id', got '这一行没有标签'" in result.output
    assert "1 error(s)" in result.output
    # The statistics still cover the valid rows.
    assert re.search(r"total\s*│\s*30\s*│\s*29\s*│\s*30\s*│", result.output)


def test_check_missing_class_file(make_corpus: Callable[..., Path]) -> None:
    root = make_corpus(class_file=False)
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 1
    assert f"{root}: missing class.txt" in result.output


def test_check_jsonl_with_label_names(make_corpus: Callable[..., Path]) -> None:
    root = make_corpus(fmt="jsonl", class_file=False, splits=("train", "dev"))
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 0, result.output
    assert "train (train.jsonl)" in result.output
    for name in ("0 finance", "1 game", "2 sports"):
        assert name in result.output


def test_check_json_output_and_max_errors(corpus_dir: Path) -> None:
    with (corpus_dir / "train.txt").open("a", encoding="utf-8") as f:
        f.write("坏一\n坏二\n坏三\n")
    result = runner.invoke(app, ["data", "check", str(corpus_dir), "--json", "--max-errors", "2"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False
    assert report["total_errors"] == 3
    assert report["errors"] == [
        f"{corpus_dir / 'train.txt'}:{n}: no tab: expected 'text<TAB>label_id', got '坏{c}'"
        for n, c in ((31, "一"), (32, "二"))
    ]
    assert report["splits"]["dev"]["class_counts"] == {"sports": 10, "finance": 10, "game": 10}


def test_check_warnings_are_shown(corpus_dir: Path) -> None:
    train = corpus_dir / "train.txt"
    first = train.read_text(encoding="utf-8").split("\n")[0]
    with train.open("a", encoding="utf-8") as f:
        f.write(first + "\n")
    result = runner.invoke(app, ["data", "check", str(corpus_dir)])
    assert result.exit_code == 0
    assert "warning: train.txt: 1 duplicate lines" in result.output


def test_check_missing_folder_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "check", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "data folder not found" in result.output


def test_fetch_sample(sample_sdist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sample.ENV_SAMPLE_SDIST, str(sample_sdist))
    out = tmp_path / "sample"
    result = runner.invoke(app, ["data", "fetch", "thucnews-sample", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"thucnews-sample: {out}" in result.output
    assert "rows: train 80, dev 10, test 10; 10 classes" in result.output
    assert runner.invoke(app, ["data", "check", str(out)]).exit_code == 0


def test_fetch_unknown_name(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "fetch", "mnist", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "unknown data set 'mnist'; built-in data sets: thucnews-sample" in result.output


def test_check_with_labels_option(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("finance\nweather\n", encoding="utf-8")
    root = tmp_path / "data"
    root.mkdir()
    rows = ['{"text": "股市", "label": "finance"}', '{"text": "下雨", "label": "Weather"}']
    (root / "train.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "dev.jsonl").write_text('{"text": "晴", "label": "weather"}\n', encoding="utf-8")
    result = runner.invoke(app, ["data", "check", str(root), "--labels", str(labels)])
    assert result.exit_code == 1
    assert (
        f"{root / 'train.jsonl'}:2: label 'Weather' is not in {labels} (finance, weather); "
        "did you mean 'weather'?"
    ) in result.output
    (root / "train.jsonl").write_text(rows[0] + "\n" + rows[1].lower() + "\n", encoding="utf-8")
    result = runner.invoke(app, ["data", "check", str(root), "--labels", str(labels)])
    assert result.exit_code == 0, result.output
    assert "0 finance" in result.output and "1 weather" in result.output
    assert "--labels" in runner.invoke(app, ["data", "check", "--help"]).output


def test_check_reports_one_class_training_data(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "class.txt").write_text("a\nb\n", encoding="utf-8")
    (root / "train.txt").write_text("甲\t0\n乙\t0\n", encoding="utf-8")
    (root / "dev.txt").write_text("丙\t1\n", encoding="utf-8")
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 1
    assert f"{root / 'train.txt'}: only one class (a) in the training rows" in result.output


def test_check_reports_invisible_and_nul_texts(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "class.txt").write_text("a\nb\n", encoding="utf-8")
    (root / "train.txt").write_text("甲\t0\n\u200b\t1\n乙\x00\t1\n", encoding="utf-8")
    (root / "dev.txt").write_text("丙\t1\n", encoding="utf-8")
    result = runner.invoke(app, ["data", "check", str(root), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["errors"] == [
        f"{root / 'train.txt'}:2: empty text (only invisible characters: U+200B)",
        f"{root / 'train.txt'}:3: text holds control character U+0000",
    ]


@pytest.mark.parametrize(
    "command",
    [
        ["distill", "-o", "{tmp}/s", "--mode", "none"],
        ["teacher", "train", "-o", "{tmp}/t", "-q"],
        ["teacher", "cache", "-t", "{tmp}/t"],
        ["evaluate", "-m", "{tmp}/m"],
        ["compare", "-m", "{tmp}/m", "-o", "{tmp}/r"],
        [
            "run",
            str(Path(sample.__file__).parent.parent / "configs" / "demo-quick.yaml"),
            "-o",
            "{tmp}/run",
        ],
        ["demo", "--quick", "-o", "{tmp}/demo"],
    ],
)
def test_data_commands_take_labels(command: list[str], corpus_dir: Path, tmp_path: Path) -> None:
    # A missing --labels file fails when the data is opened, before any model work.
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    missing = tmp_path / "missing.txt"
    result = runner.invoke(app, [*args, "-d", str(corpus_dir), "--labels", str(missing)])
    assert result.exit_code == 2, result.output
    assert f"{missing}: labels file not found" in result.output
