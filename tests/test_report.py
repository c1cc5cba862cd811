"""The compare report: ratios, Markdown formatting, JSON and PNG files."""

from __future__ import annotations

import json
import warnings

import pytest
from matplotlib import font_manager
from PIL import Image

from textdistill.evaluation.efficiency import EfficiencyResult
from textdistill.evaluation.report import (
    CJK_FONTS,
    ModelSummary,
    build_comparison,
    history_series,
    plot_accuracy_vs_latency,
    plot_confusion,
    plot_training_curves,
    safe_filename,
    to_markdown,
    write_report,
)
from textdistill.training.history import read_history

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = ["sports", "finance", "tech"]


def _summary(name: str, kind: str, **overrides) -> ModelSummary:
    values = {
        "name": name,
        "kind": kind,
        "path": f"/models/{name}",
        "accuracy": 0.9,
        "macro_f1": 0.88,
        "params": 1_000_000,
        "size_mb": 4.0,
        "p50_ms": 1.0,
        "p95_ms": 2.0,
        "texts_per_s": 1000.0,
        "confusion": [[5, 1, 0], [0, 4, 2], [1, 0, 7]],
        "label_names": LABELS,
    }
    values.update(overrides)
    return ModelSummary(**values)


HISTORY = [  # what fit() writes (textdistill.training.history)
    {"stage": "soft", "step": 10, "epoch": 0, "loss": 1.2, "lr": 0.001},
    {"stage": "soft", "step": 20, "epoch": 0, "loss": 0.9, "lr": 0.001},
    {
        "stage": "distill-soft",
        "step": 20,
        "eval": {"loss": 0.95, "macro_f1": 0.61, "accuracy": 0.7},
    },
    {"stage": "soft", "step": 30, "epoch": 1, "loss": 0.6, "lr": 0.0005},
    {"stage": "soft", "step": 40, "eval": {"loss": 0.7, "macro_f1": 0.74, "accuracy": 0.8}},
]


@pytest.fixture
def summaries() -> list[ModelSummary]:
    return [
        _summary(
            "bert-teacher",
            "teacher",
            accuracy=0.9412,
            macro_f1=0.9399,
            params=100_000_000,
            size_mb=400.0,
            p50_ms=10.0,
            p95_ms=14.0,
            texts_per_s=500.0,
            history=HISTORY,
        ),
        _summary(
            "BiLSTM student/soft",
            "student",
            accuracy=0.9012,
            macro_f1=0.8987,
            params=2_000_000,
            size_mb=8.0,
            p50_ms=0.1,
            p95_ms=0.25,
            texts_per_s=28_500.0,
            agreement=0.95,
        ),
    ]


def test_build_comparison_ratios(summaries):
    rows = build_comparison(summaries)
    teacher, student = rows
    assert teacher["reference"] is True and student["reference"] is False
    assert teacher["params_ratio"] == pytest.approx(1.0)
    assert teacher["speedup_p50"] == pytest.approx(1.0)
    assert student["params_ratio"] == pytest.approx(0.02)
    assert student["size_ratio"] == pytest.approx(0.02)
    assert student["speedup_p50"] == pytest.approx(100.0)
    assert student["throughput_ratio"] == pytest.approx(57.0)
    assert student["speedup_model_p50"] is None  # model-only latency unknown


def test_reference_defaults_to_largest_without_teacher(summaries):
    for s in summaries:
        s.kind = "student"
    rows = build_comparison(list(reversed(summaries)))
    assert [r["reference"] for r in rows] == [False, True]
    rows = build_comparison(summaries, reference="BiLSTM student/soft")
    assert rows[0]["speedup_p50"] == pytest.approx(0.01)
    assert rows[0]["params_ratio"] == pytest.approx(50.0)


def test_build_comparison_errors(summaries):
    with pytest.raises(ValueError, match="no models"):
        build_comparison([])
    with pytest.raises(ValueError, match="'nope' is not among"):
        build_comparison(summaries, reference="nope")
    with pytest.raises(ValueError, match="repeated: bert-teacher"):
        build_comparison([summaries[0], summaries[0]])


def test_unknown_and_zero_values_render_as_dash(summaries):
    summaries[1].p50_ms = 0.0  # not measured
    summaries[1].params = None
    rows = build_comparison(summaries)
    assert rows[1]["speedup_p50"] is None and rows[1]["params_ratio"] is None
    md = to_markdown(rows)
    student_line = next(line for line in md.splitlines() if line.startswith("| BiLSTM"))
    assert student_line.count("–") == 2


def test_to_markdown_formatting(summaries):
    md = to_markdown(build_comparison(summaries))
    lines = md.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:4] == ["Model", "Kind", "Accuracy", "Macro-F1"]
    assert "Agreement" in header  # one model has it
    assert "Model p50 (ms)" not in header  # none has it
    assert lines[1].startswith("| :--- | :--- | ---:")
    cells = dict(zip(header, [c.strip() for c in lines[3].strip("|").split("|")], strict=True))
    assert cells["Model"] == "BiLSTM student/soft"
    assert cells["Accuracy"] == "90.12%"
    assert cells["Macro-F1"] == "89.87%"
    assert cells["Agreement"] == "95.00%"
    assert cells["Params"] == "2.00M"
    assert cells["Size (MB)"] == "8.00"
    assert cells["Size vs ref"] == "2.00%"
    assert cells["p50 (ms)"] == "0.100"
    assert cells["p95 (ms)"] == "0.250"
    assert cells["Texts/s"] == "28,500"
    assert cells["Speed-up (p50)"] == "100x"
    assert cells["Speed-up (texts/s)"] == "57x"
    teacher = [c.strip() for c in lines[2].strip("|").split("|")]
    assert teacher[0] == "bert-teacher (ref)"
    assert teacher[header.index("Params")] == "100.0M"
    assert teacher[header.index("Agreement")] == "–"
    assert teacher[header.index("Size vs ref")] == "100%"
    assert teacher[header.index("Speed-up (p50)")] == "1.0x"
    assert "relative to `bert-teacher`" in md


def test_markdown_escapes_pipes():
    rows = build_comparison([_summary("a|b", "teacher")])
    assert "| a\\|b (ref) |" in to_markdown(rows)


def test_from_results_uses_end_to_end_numbers():
    eff = EfficiencyResult(
        model_p50_ms=0.5,
        model_p95_ms=0.7,
        model_mean_ms=0.55,
        e2e_p50_ms=0.8,
        e2e_p95_ms=1.1,
        e2e_mean_ms=0.85,
        model_texts_per_s=9000.0,
        e2e_texts_per_s=6000.0,
        threads=1,
        n_latency=10,
        warmup=2,
        batch_size=8,
        n_texts=16,
        repeats=2,
        device="cpu",
        torch_version="x",
        platform="p",
        processor="c",
        cpu_count=2,
    )
    metrics = {
        "accuracy": 0.5,
        "macro_f1": 0.4,
        "confusion": [[1, 1], [0, 0]],
        "label_names": ["a", "b"],
    }
    s = ModelSummary.from_results(
        name="m", kind="student", path="/x", metrics=metrics, efficiency=eff, params=10, size_mb=1
    )
    assert (s.p50_ms, s.p95_ms, s.texts_per_s) == (0.8, 1.1, 6000.0)
    assert (s.model_p50_ms, s.model_texts_per_s) == (0.5, 9000.0)
    assert s.extras["efficiency"]["threads"] == 1
    assert s.confusion == [[1, 1], [0, 0]] and s.history == []


def _is_png(path) -> bool:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as img:
        img.verify()
        return img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def test_write_report(tmp_path, summaries):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no font or layout warnings leak out
        md_path = write_report(summaries, tmp_path / "out")
    out = tmp_path / "out"
    assert md_path == out / "compare.md"
    md = md_path.read_text(encoding="utf-8")
    assert md.startswith("# Model comparison")
    assert "| BiLSTM student/soft |" in md and "2.00%" in md and "100x" in md
    assert "![accuracy vs latency](accuracy_vs_latency.png)" in md

    data = json.loads((out / "compare.json").read_text(encoding="utf-8"))
    assert data["reference"] == "bert-teacher"
    student = data["rows"][1]
    assert student["size_ratio"] == pytest.approx(0.02)
    assert student["speedup_p50"] == pytest.approx(100.0)
    assert data["models"][0]["history_records"] == len(HISTORY)
    assert "history" not in data["models"][0]

    expected = {
        "accuracy_vs_latency.png",
        "training_curves.png",
        "confusion_bert-teacher.png",
        "confusion_BiLSTM_student_soft.png",
    }
    assert set(data["plots"]) == expected
    assert {p.name for p in out.glob("*.png")} == expected
    for name in expected:
        assert _is_png(out / name), name
    assert not list(out.glob(".*"))  # no temporary files left


def test_write_report_without_history_removes_stale_curves(tmp_path, summaries):
    write_report(summaries, tmp_path)
    assert (tmp_path / "training_curves.png").is_file()
    summaries[0].history = []
    write_report(summaries, tmp_path)
    assert not (tmp_path / "training_curves.png").exists()
    data = json.loads((tmp_path / "compare.json").read_text(encoding="utf-8"))
    assert "training_curves.png" not in data["plots"]
    assert "training_curves" not in (tmp_path / "compare.md").read_text(encoding="utf-8")


def test_chinese_labels_do_not_raise(tmp_path, caplog):
    model = _summary("教师", "teacher", label_names=["体育", "财经", "科技"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_report([model], tmp_path)
    assert _is_png(tmp_path / "confusion_model.png")
    fonts = {f.name for f in font_manager.fontManager.ttflist}
    if not fonts & set(CJK_FONTS):
        assert "install a CJK font" in caplog.text


def test_accuracy_vs_latency_is_log_scale(summaries):
    fig = plot_accuracy_vs_latency(summaries)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.texts] == ["bert-teacher", "BiLSTM student/soft"]
    offsets = [tuple(c.get_offsets()[0]) for c in ax.collections]
    assert offsets == [(10.0, pytest.approx(94.12)), (0.1, pytest.approx(90.12))]


def test_confusion_is_row_normalized_with_absent_class():
    s = _summary("m", "student", confusion=[[2, 2, 0], [0, 0, 0], [0, 1, 3]])
    fig = plot_confusion(s)
    ax = fig.axes[0]
    image = ax.images[0].get_array()
    assert image[0].tolist() == [0.5, 0.5, 0.0]
    assert image[1].tolist() == [0.0, 0.0, 0.0]  # no gold rows: zeros, not NaN
    assert image[2].tolist() == pytest.approx([0.0, 0.25, 0.75])
    assert [t.get_text() for t in ax.get_xticklabels()] == LABELS
    assert "0.75" in [t.get_text() for t in ax.texts]


def test_history_series():
    train, dev = history_series(HISTORY)
    assert train == [(10, 1.2), (20, 0.9), (30, 0.6)]  # the dev loss is not a train loss
    assert dev["macro_f1"] == [(20, 0.61), (40, 0.74)]
    assert dev["loss"] == [(20, 0.95), (40, 0.7)]
    odd = [
        {"step": 5, "eval": {"accuracy": 0.5, "macro_f1": float("nan")}},
        {"loss": 1.5},  # no step: left out
        {"step": 6, "loss": float("inf")},
    ]
    train, dev = history_series(odd)
    assert train == []
    assert dev == {"accuracy": [(5, 0.5)]}  # NaN dropped


def test_training_curves(summaries):
    fig = plot_training_curves(summaries)
    assert fig is not None
    loss_ax, dev_ax = fig.axes[:2]
    assert [line.get_label() for line in loss_ax.lines] == ["bert-teacher"]
    assert list(dev_ax.lines[0].get_ydata()) == [0.61, 0.74]
    assert dev_ax.get_title() == "dev macro-f1"
    assert plot_training_curves([_summary("x", "student")]) is None
    assert plot_training_curves([_summary("x", "student", history=[{"lr": 1.0}])]) is None


def test_load_history(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    assert read_history(path) == []
    path.write_text('{"step": 1, "loss": 2.0}\n\n[1, 2]\n{"step": 2, "lo', encoding="utf-8")
    assert read_history(path) == [{"step": 1, "loss": 2.0}]
    assert "metrics.jsonl:3" in caplog.text and "metrics.jsonl:4" in caplog.text


@pytest.mark.parametrize(
    ("name", "expected"),
    [("BiLSTM student/soft", "BiLSTM_student_soft"), ("../x", "x"), ("学生", "model")],
)
def test_safe_filename(name, expected):
    assert safe_filename(name) == expected


def test_colliding_filenames_stay_distinct(tmp_path):
    models = [_summary("a/b", "teacher"), _summary("a b", "student"), _summary("A_B", "student")]
    write_report(models, tmp_path)
    names = {p.name for p in tmp_path.glob("confusion_*.png")}
    # Distinct even on case-insensitive file systems.
    assert names == {"confusion_a_b.png", "confusion_a_b-2.png", "confusion_A_B-3.png"}
