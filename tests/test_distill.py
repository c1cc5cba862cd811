"""Distillation end to end: every mode and student through the CLI, the loss wiring, resume
after a kill, and the errors for impossible combinations.

The teacher (a one-layer BERT of width 32) and the corpus (3 classes x 10 rows per split)
are trained once per session (``tiny_teacher`` / ``tiny_corpus`` in conftest.py); students
are 16 wide, so a distillation run takes well under a second.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner, Result

import textdistill.distill.run as distill_mod
from textdistill.cli import app
from textdistill.core.config import PipelineStudent
from textdistill.core.errors import UserError
from textdistill.core.paths import work_dir_for
from textdistill.data.corpus import load_corpus
from textdistill.data.splits import prepare_training_data
from textdistill.distill.cache import SoftTargets
from textdistill.distill.losses import (
    MODES,
    LossOptions,
    LossOutput,
    ModeSpec,
    distillation_loss,
    kd_kl,
    make_projection,
)
from textdistill.distill.run import (
    default_preset,
    distill,
    preset_for,
    transfer_set,
)
from textdistill.inference.load import load
from textdistill.models.folders import load_model, read_meta
from textdistill.models.output import ClassifierOutput
from textdistill.models.students import build_student
from textdistill.pipeline import student_config

TRAIN_ROWS = 30  # tiny_corpus: 3 classes x 10 rows
BATCH = 8
STEPS_PER_EPOCH = 4  # ceil(30 / 8)


TINY_WIDTHS = {
    "bilstm": ["--hidden-dim", "16"],
    "textcnn": ["--num-filters", "8"],
    "static": ["--buckets", "64", "--ngram-orders", "2,3"],
}


def tiny_args(arch: str = "bilstm") -> list[str]:
    widths = TINY_WIDTHS[arch]
    return ["--student", arch, "--embed-dim", "16", *widths, "--batch-size", str(BATCH), "-q"]


def run_distill(corpus: Path, out: Path, *args: str, teacher: Path | None = None) -> Result:
    cmd = ["distill", "--data", str(corpus), "--out", str(out), *args]
    if teacher is not None:
        cmd += ["--teacher", str(teacher)]
    return CliRunner().invoke(app, cmd)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def history(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


class LossSpy:
    """Wraps ``distillation_loss`` to record each call's keyword arguments and batch."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.kill_at = kill_at

    def __call__(self, out: ClassifierOutput, batch: dict[str, torch.Tensor], **kw: Any) -> Any:
        self.calls.append({"labels": batch["labels"].clone(), "batch": set(batch), **kw})
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            raise Killed
        return distillation_loss(out, batch, **kw)


class Killed(Exception):
    """Stands for the process being killed mid-run."""


# --------------------------------------------------------------------- modes x students

EXPECTED_TERMS = {
    "none": {"ce"},
    "hard": {"ce"},
    "soft": {"kd", "ce"},
    "hidden": {"kd", "ce", "hidden"},
}


@pytest.mark.parametrize("arch", ["bilstm", "textcnn", "static"])
@pytest.mark.parametrize("mode", ["none", "hard", "soft", "hidden"])
def test_every_mode_and_student_writes_a_loadable_folder(
    tmp_path: Path, tiny_corpus: Path, tiny_teacher: Path, mode: str, arch: str
) -> None:
    out = tmp_path / "student"
    teacher = None if mode == "none" else tiny_teacher
    args = ["--mode", mode, "--epochs", "1", *tiny_args(arch)]
    result = ok(run_distill(tiny_corpus, out, *args, teacher=teacher))
    assert "student saved to" in result.stdout

    meta = read_meta(out)
    assert meta["kind"] == "student" and meta["mode"] == mode
    arch_meta = meta["architecture"]
    assert arch_meta["arch"] == arch and arch_meta["embed_dim"] == 16
    width = {"bilstm": ("hidden_dim", 16), "textcnn": ("num_filters", 8), "static": ("buckets", 64)}
    assert arch_meta[width[arch][0]] == width[arch][1]
    assert set(meta["dev_metrics"]) == {"loss", "accuracy", "macro_f1"}
    assert meta["transfer_rows"] == TRAIN_ROWS and meta["labelled_rows"] == TRAIN_ROWS
    if mode == "none":
        assert meta["teacher_fingerprint"] is None and meta["teachers"] == []
    else:
        assert meta["teacher_fingerprint"] == read_meta(tiny_teacher)["fingerprint"]
        assert meta["teachers"] == [str(tiny_teacher.resolve())]
    assert not work_dir_for(out).exists()  # checkpoints and logs are gone once saved

    steps = [e for e in history(out) if "eval" not in e]
    evals = [e for e in history(out) if "eval" in e]
    assert {e["stage"] for e in history(out)} == {f"distill-{mode}"}
    assert len(steps) == STEPS_PER_EPOCH and len(evals) == 1
    for entry in steps:
        terms = set(entry) & {"kd", "ce", "hidden"}
        assert terms == EXPECTED_TERMS[mode]
        assert np.isfinite(entry["loss"])

    loaded = load_model(out)
    assert loaded.kind == "student" and loaded.max_len == read_meta(tiny_teacher)["max_len"]
    clf = load(out)
    assert clf.label_names == load_corpus(tiny_corpus).label_names
    preds = clf.predict(["球队比赛冠军", "银行基金利率"])
    assert all(p.label in clf.label_names for p in preds)


def test_textcnn_without_preset_takes_its_default_preset(
    make_tiny_config: Callable[..., Any],
) -> None:
    # The config's default preset is bilstm's "small"; switching --student to textcnn
    # without --preset must not fail on it.
    assert default_preset("textcnn") == "default"
    assert default_preset("bilstm") == "small"
    assert preset_for("textcnn", "bilstm", "small") == "default"
    assert preset_for("bilstm", "bilstm", "seed") == "seed"
    cfg = make_tiny_config(Path("data"))
    entry = PipelineStudent(name="cnn", arch="textcnn", mode="soft")
    assert student_config(cfg, entry, [Path("t")]).student.preset == "default"


# ----------------------------------------------------------------- hidden projection


def test_hidden_projection_is_trained_with_the_student(
    tmp_path: Path,
    tiny_corpus: Path,
    tiny_teacher: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The projection the loss uses is the module fit() optimises, and it learns."""
    spy = LossSpy()
    monkeypatch.setattr(distill_mod, "distillation_loss", spy)
    seen: dict[str, Any] = {}
    real_fit = distill_mod.fit

    def fit_spy(*args: Any, **kwargs: Any) -> Any:
        extras = list(kwargs["extra_modules"])
        seen["extras"] = extras
        seen["before"] = [p.detach().clone() for m in extras for p in m.parameters()]
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(distill_mod, "fit", fit_spy)
    out = tmp_path / "student"
    ok(
        run_distill(
            tiny_corpus,
            out,
            "--mode",
            "hidden",
            "--epochs",
            "1",
            *tiny_args(),
            teacher=tiny_teacher,
        )
    )

    (proj,) = seen["extras"]
    teacher_width = read_meta(tiny_teacher)["architecture"]["hidden_size"]
    assert isinstance(proj, torch.nn.Linear)
    assert (proj.in_features, proj.out_features) == (2 * 16, teacher_width)
    assert all(call["proj"] is proj for call in spy.calls)
    assert all("teacher_hidden" in call["batch"] for call in spy.calls)
    after = [p.detach() for p in proj.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(seen["before"], after, strict=True))
    # The projection belongs to the loss: it is not part of the saved student.
    assert not any(k.startswith("proj") for k in load_file(out / "model.safetensors"))


def test_hidden_loss_sends_gradients_to_projection_and_student() -> None:
    torch.manual_seed(0)
    student = build_student(
        "bilstm", "small", vocab_size=20, num_labels=3, embed_dim=8, hidden_dim=4
    )
    proj = make_projection(student.hidden_size, 6)  # type: ignore[arg-type]
    ids = torch.randint(1, 20, (5, 7))
    mask = torch.ones_like(ids)
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.tensor([0, 1, 2, -1, -1]),
        "teacher_logits": torch.randn(5, 3),
        "teacher_hidden": torch.randn(5, 6),
    }
    out = student(input_ids=ids, attention_mask=mask)
    loss = distillation_loss(out, batch, mode="hidden", T=2.0, alpha=0.5, beta=1.0, proj=proj)
    assert isinstance(loss, LossOutput) and set(loss.terms) == {"kd", "ce", "hidden", "loss"}
    loss.loss.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert student.embedding.weight.grad is not None  # type: ignore[union-attr]
    assert student.embedding.weight.grad.abs().sum() > 0  # type: ignore[union-attr]


# --------------------------------------------------------------------------- resume


def test_resume_after_kill_matches_an_uninterrupted_run(
    tmp_path: Path,
    tiny_corpus: Path,
    tiny_teacher: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("student: {train: {checkpoint_every: 2}}\n", encoding="utf-8")
    args = ["--mode", "soft", "--epochs", "2", "--config", str(config), *tiny_args()]

    whole = tmp_path / "whole"
    ok(run_distill(tiny_corpus, whole, *args, teacher=tiny_teacher))

    resumed = tmp_path / "resumed"
    # Killed inside step 7: the last checkpoint is the one after step 6.
    monkeypatch.setattr(distill_mod, "distillation_loss", LossSpy(kill_at=7))
    killed = run_distill(tiny_corpus, resumed, *args, teacher=tiny_teacher)
    assert isinstance(killed.exception, Killed)
    assert not resumed.exists() and (work_dir_for(resumed) / "train" / "checkpoint").is_dir()

    spy = LossSpy()
    monkeypatch.setattr(distill_mod, "distillation_loss", spy)
    ok(run_distill(tiny_corpus, resumed, *args, "--resume", teacher=tiny_teacher))
    assert len(spy.calls) == 2 * STEPS_PER_EPOCH - 6  # only the steps after the checkpoint

    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)

    def timeless(folder: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in e.items() if k != "samples_per_s"} for e in history(folder)]

    assert timeless(whole) == timeless(resumed)
    assert read_meta(whole)["dev_metrics"] == pytest.approx(read_meta(resumed)["dev_metrics"])


# --------------------------------------------------------------------- impossible asks


def test_soft_mode_without_teacher_exits_2(tmp_path: Path, tiny_corpus: Path) -> None:
    result = run_distill(tiny_corpus, tmp_path / "s", "--mode", "soft", *tiny_args())
    assert result.exit_code == 2
    assert "--mode soft needs a teacher (--teacher DIR)" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "s").exists()


def test_hidden_mode_without_teacher_vectors_is_a_user_error(
    tmp_path: Path,
    tiny_corpus: Path,
    tiny_teacher: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_tiny_config: Callable[..., Any],
) -> None:
    real = distill_mod.build_soft_targets

    def without_pooled(*args: Any, **kwargs: Any) -> SoftTargets:
        targets = real(*args, **kwargs)
        return SoftTargets(targets.logits, None, targets.manifest, targets.path)

    monkeypatch.setattr(distill_mod, "build_soft_targets", without_pooled)
    cfg = make_tiny_config(
        tiny_corpus, **{"distill.mode": "hidden", "distill.teachers": [str(tiny_teacher)]}
    )
    with pytest.raises(UserError, match="--mode hidden needs the teacher's pooled vectors"):
        distill(cfg, load_corpus(tiny_corpus), tmp_path / "s")
    assert not (tmp_path / "s").exists()

    result = run_distill(
        tiny_corpus, tmp_path / "s", "--mode", "hidden", *tiny_args(), teacher=tiny_teacher
    )
    assert result.exit_code == 2 and "use --mode soft" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--student", "gru"], "unknown student architecture 'gru'; valid: bilstm, textcnn"),
        (
            ["--student", "textcnn", "--preset", "small"],
            "unknown preset 'small' for student 'textcnn'; valid: default",
        ),
        (["--student", "textcnn", "--hidden-dim", "8"], "do not apply to student 'textcnn'"),
        (["--mode", "medium"], "distill.mode"),
        (["--hard-target", "oracle"], "distill.hard_target"),
        (
            ["--teacher-weight", "1", "--teacher-weight", "2"],
            "2 teacher weight(s) for 1 teacher(s); give one --teacher-weight per --teacher",
        ),
    ],
)
def test_bad_options_exit_2_with_the_valid_choices(
    tmp_path: Path, tiny_corpus: Path, tiny_teacher: Path, args: list[str], message: str
) -> None:
    result = run_distill(tiny_corpus, tmp_path / "s", *args, "-q", teacher=tiny_teacher)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())
    assert not (tmp_path / "s").exists()


def test_unknown_student_fails_before_the_teacher_runs(
    tmp_path: Path,
    tiny_corpus: Path,
    tiny_teacher: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_tiny_config: Callable[..., Any],
) -> None:
    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the teacher ran before the student spec was checked")

    monkeypatch.setattr(distill_mod, "build_soft_targets", never)
    cfg = make_tiny_config(
        tiny_corpus,
        **{"distill.mode": "soft", "distill.teachers": [str(tiny_teacher)], "student.arch": "gru"},
    )
    with pytest.raises(UserError, match="valid: bilstm, textcnn"):
        distill(cfg, load_corpus(tiny_corpus), tmp_path / "s")


def test_teacher_of_other_classes_is_refused(
    tmp_path: Path, make_corpus: Callable[..., Path], tiny_teacher: Path
) -> None:
    other = make_corpus(tmp_path / "other", classes=("sports", "game", "finance"))
    result = run_distill(
        other, tmp_path / "s", "--mode", "soft", *tiny_args(), teacher=tiny_teacher
    )
    assert result.exit_code == 2
    assert "differ from the data's ['sports', 'game', 'finance']" in " ".join(result.stderr.split())


def test_missing_teacher_folder_is_a_user_error(tmp_path: Path, tiny_corpus: Path) -> None:
    result = run_distill(
        tiny_corpus, tmp_path / "s", "--mode", "soft", *tiny_args(), teacher=tmp_path / "nope"
    )
    assert result.exit_code == 2 and "nope" in result.stderr


# ------------------------------------------------------------- transfer set and options


def test_extra_texts_join_the_transfer_set_without_labels(
    tmp_path: Path,
    tiny_corpus: Path,
    tiny_teacher: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extra = tmp_path / "extra.txt"
    extra.write_text(
        "球队今日比赛\n\n银行理财新闻\n网游公测消息\n股市大盘\n高考招生\n", encoding="utf-8"
    )
    spy = LossSpy()
    monkeypatch.setattr(distill_mod, "distillation_loss", spy)
    out = tmp_path / "s"
    args = ["--mode", "soft", "--epochs", "1", "--extra", str(extra), "--hard-target", "gold"]
    ok(run_distill(tiny_corpus, out, *args, *tiny_args(), teacher=tiny_teacher))

    meta = read_meta(out)
    assert meta["transfer_rows"] == TRAIN_ROWS + 5  # the empty line is not a text
    assert meta["labelled_rows"] == TRAIN_ROWS
    assert meta["config"]["distill"]["hard_target"] == "gold"
    labels = torch.cat([c["labels"] for c in spy.calls])
    assert len(labels) == TRAIN_ROWS + 5 and int((labels == -1).sum()) == 5
    assert all(c["hard_target"] == "gold" for c in spy.calls)
    assert all(np.isfinite(e["ce"]) for e in history(out) if "ce" in e)


def test_transfer_set_order_and_mode_none_ignores_extra(
    tmp_path: Path, tiny_corpus: Path, make_tiny_config: Callable[..., Any]
) -> None:
    extra = tmp_path / "extra.txt"
    extra.write_text("一\n二\n", encoding="utf-8")
    corpus = load_corpus(tiny_corpus)
    soft = make_tiny_config(tiny_corpus, **{"distill.mode": "soft", "distill.extra": [str(extra)]})
    ts = transfer_set(soft, prepare_training_data(soft, corpus))
    assert ts.texts[-2:] == ["一", "二"] and ts.labels[-2:] == [-1, -1]
    assert ts.texts[:TRAIN_ROWS] == corpus.split("train").texts
    assert ts.n_labelled == TRAIN_ROWS

    none = make_tiny_config(tiny_corpus, **{"distill.mode": "none", "distill.extra": [str(extra)]})
    ts = transfer_set(none, prepare_training_data(none, corpus))
    assert len(ts.texts) == TRAIN_ROWS and ts.n_labelled == TRAIN_ROWS


def test_temperature_schedule_anneals_per_step(
    tmp_path: Path,
    tiny_corpus: Path,
    tiny_teacher: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = LossSpy()
    monkeypatch.setattr(distill_mod, "distillation_loss", spy)
    args = ["--mode", "soft", "--epochs", "1", "-T", "4", "--temperature-end", "1"]
    ok(run_distill(tiny_corpus, tmp_path / "s", *args, *tiny_args(), teacher=tiny_teacher))
    # T(p) = 4 + (1 - 4) * p with p = steps done / 4 steps.
    assert [c["T"] for c in spy.calls] == pytest.approx([4.0, 3.25, 2.5, 1.75])
    assert read_meta(tmp_path / "s")["config"]["distill"]["temperature_end"] == 1.0


def test_student_reads_the_teachers_max_len_unless_told(
    tmp_path: Path, tiny_corpus: Path, tiny_teacher: Path
) -> None:
    teacher_len = read_meta(tiny_teacher)["max_len"]
    args = ["--mode", "hard", "--epochs", "1", *tiny_args()]
    ok(run_distill(tiny_corpus, tmp_path / "a", *args, teacher=tiny_teacher))
    assert read_meta(tmp_path / "a")["max_len"] == teacher_len

    ok(run_distill(tiny_corpus, tmp_path / "b", *args, "--max-len", "6", teacher=tiny_teacher))
    assert read_meta(tmp_path / "b")["max_len"] == 6
    clf = load(tmp_path / "b")
    assert clf.encode(["球队比赛冠军进球联赛" * 5])["input_ids"].shape == (1, 6)


def test_ensemble_of_teacher_and_student(
    tmp_path: Path, tiny_corpus: Path, tiny_teacher: Path, tiny_student: Path
) -> None:
    out = tmp_path / "s"
    args = ["--mode", "hidden", "--epochs", "1", "--teacher", str(tiny_student)]
    args += ["--teacher-weight", "3", "--teacher-weight", "1", "--ensemble", "prob"]
    ok(run_distill(tiny_corpus, out, *args, *tiny_args("textcnn"), teacher=tiny_teacher))
    meta = read_meta(out)
    # Teachers in command-line order; the sentence vectors come from the first (a BiLSTM).
    assert [Path(t).name for t in meta["teachers"]] == ["student", "teacher"]
    assert meta["teacher_fingerprint"] == ",".join(
        read_meta(p)["fingerprint"] for p in (tiny_student, tiny_teacher)
    )
    assert meta["config"]["distill"]["teacher_weights"] == [3.0, 1.0]
    assert meta["config"]["distill"]["ensemble"] == "prob"


def test_augment_copies_from_the_command_line(
    tmp_path: Path, tiny_corpus: Path, tiny_teacher: Path
) -> None:
    args = ["--mode", "soft", "--epochs", "1", "--augment-copies", "2", *tiny_args()]
    ok(run_distill(tiny_corpus, tmp_path / "s", *args, teacher=tiny_teacher))
    meta = read_meta(tmp_path / "s")
    assert (meta["labelled_rows"], meta["transfer_rows"]) == (30, 90)
    assert meta["config"]["distill"]["augment_copies"] == 2


def test_a_new_mode_is_one_spec(
    tmp_path: Path,
    tiny_corpus: Path,
    tiny_teacher: Path,
    make_tiny_config: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An entry in MODES is all the CLI, distill() and the cache need to run a new mode."""
    seen: list[tuple[int, ...]] = []

    def kd_only(
        out: ClassifierOutput, batch: dict[str, torch.Tensor], o: LossOptions, proj: Any
    ) -> LossOutput:
        seen.append(tuple(batch["teacher_hidden"].shape))
        kd = kd_kl(out.logits, batch["teacher_logits"], o.T)
        value = float(kd.detach())
        return LossOutput(loss=kd, terms={"kd": value, "loss": value})

    monkeypatch.setitem(MODES, "kd", ModeSpec("KD only", kd_only, needs_pooled=True))
    ok(run_distill(tiny_corpus, tmp_path / "s", "--mode", "kd", "-q", teacher=tiny_teacher))
    meta = read_meta(tmp_path / "s")
    assert meta["mode"] == "kd"
    assert seen and all(shape[1] == 32 for shape in seen)  # the teacher's pooled width
    history = (tmp_path / "s" / "metrics.jsonl").read_text(encoding="utf-8")
    assert '"stage": "distill-kd"' in history
    bad = run_distill(tiny_corpus, tmp_path / "t", "--mode", "kd2", "-q", teacher=tiny_teacher)
    assert bad.exit_code == 2
    valid = "valid: none, hard, soft, hidden, layers, kd"
    assert f"unknown distillation mode 'kd2'; {valid}" in bad.stderr


def _rotate_train_labels(corpus: Path) -> str:
    """Give every training row another class (same texts, same row count); returns the
    original file's text, to restore it."""
    train = corpus / "train.txt"
    before = train.read_text(encoding="utf-8")
    rows = [line.rsplit("\t", 1) for line in before.splitlines()]
    train.write_text("".join(f"{t}\t{(int(y) + 1) % 3}\n" for t, y in rows), encoding="utf-8")
    return before


def test_resume_refuses_changed_labels_or_settings_and_says_what_changed(
    tmp_path: Path,
    tiny_teacher: Path,
    corpus_builder: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    corpus = corpus_builder(tmp_path / "data", per_class=10)  # tiny_corpus's rows, writable
    config = tmp_path / "c.yaml"
    config.write_text("student: {train: {checkpoint_every: 2}}\n", encoding="utf-8")
    args = ["--mode", "soft", "--epochs", "2", "--config", str(config), *tiny_args()]
    out = tmp_path / "student"
    monkeypatch.setattr(distill_mod, "distillation_loss", LossSpy(kill_at=7))
    assert isinstance(run_distill(corpus, out, *args, teacher=tiny_teacher).exception, Killed)
    monkeypatch.setattr(distill_mod, "distillation_loss", distillation_loss)

    def refused(*extra: str) -> str:
        result = run_distill(corpus, out, *args, *extra, "--resume", teacher=tiny_teacher)
        assert result.exit_code == 2, (result.output, result.exception)
        assert "Traceback" not in result.output
        return " ".join(result.output.split())

    said = refused("--temperature", "4")
    assert (
        "the configuration changed since the checkpoint (distill.temperature: 2.0 -> 4.0)" in said
    )

    original = _rotate_train_labels(corpus)
    said = refused()
    assert "the training data changed since the checkpoint (texts: same, labels: different" in said
    assert "or restore the data" in said

    (corpus / "train.txt").write_text(original, encoding="utf-8")
    spy = LossSpy()
    monkeypatch.setattr(distill_mod, "distillation_loss", spy)
    ok(run_distill(corpus, out, *args, "--resume", teacher=tiny_teacher))
    assert len(spy.calls) == 2 * STEPS_PER_EPOCH - 6  # resumed, not restarted


# --------------------------------------------------------------------- transformer student


@pytest.mark.parametrize("mode", ["none", "soft", "hidden", "layers"])
def test_transformer_student_from_the_teacher_in_every_mode(
    tmp_path: Path, tiny_corpus: Path, tiny_teacher: Path, mode: str
) -> None:
    out = tmp_path / "student"
    args = ["--mode", mode, "--student", "transformer", "--layers", "1", "--epochs", "1"]
    ok(run_distill(tiny_corpus, out, *args, "--batch-size", str(BATCH), "-q", teacher=tiny_teacher))
    meta = read_meta(out)
    arch = meta["architecture"]
    teacher_cfg = json.loads((tiny_teacher / "config.json").read_text(encoding="utf-8"))
    assert arch["arch"] == "transformer" and arch["layers"] == 1
    assert arch["teacher_layers"] == [teacher_cfg["num_hidden_layers"] - 1]
    assert arch["hidden"] == teacher_cfg["hidden_size"]
    steps = [e for e in history(out) if "eval" not in e]
    assert ("layers" in steps[0]) == (mode == "layers")
    assert all(np.isfinite(e["loss"]) for e in steps)
    clf = load(out)
    assert clf.tokenizer.get_vocab() == load_model(tiny_teacher).tokenizer.get_vocab()
    assert all(p.label in clf.label_names for p in clf.predict(["球队比赛冠军", ""]) if p.label)


def test_transformer_student_starts_from_the_teacher(
    tmp_path: Path, tiny_corpus: Path, tiny_teacher: Path
) -> None:
    """With all of the teacher's layers and steps too small to change them (lr 1e-12), the
    student predicts what the teacher does: it starts as the teacher."""
    out = tmp_path / "student"
    teacher_layers = json.loads((tiny_teacher / "config.json").read_text())["num_hidden_layers"]
    args = ["--mode", "none", "--student", "transformer", "--layers", str(teacher_layers)]
    ok(
        run_distill(
            tiny_corpus, out, *args, "--epochs", "1", "--lr", "1e-12", "-q", teacher=tiny_teacher
        )
    )
    texts = ["球队比赛冠军", "银行基金利率", "游戏玩家"]
    np.testing.assert_allclose(load(out).logits(texts), load(tiny_teacher).logits(texts), atol=1e-5)


def test_mode_layers_needs_a_transformer_student(
    tmp_path: Path, tiny_corpus: Path, tiny_teacher: Path
) -> None:
    result = run_distill(
        tiny_corpus, tmp_path / "s", "--mode", "layers", *tiny_args(), teacher=tiny_teacher
    )
    assert result.exit_code == 2
    assert "use --student transformer with a BERT teacher" in result.output


def test_transformer_student_refuses_more_layers_than_the_teacher(
    tmp_path: Path, tiny_corpus: Path, tiny_teacher: Path
) -> None:
    args = ["--student", "transformer", "--layers", "9", "-q"]
    result = run_distill(tiny_corpus, tmp_path / "s", "--mode", "soft", *args, teacher=tiny_teacher)
    assert result.exit_code == 2
    assert "not 9" in result.output


NEW_STUDENTS = {
    "static": {"embed_dim": 16, "buckets": 64},
    "transformer": {"layers": 2, "hidden": 16, "heads": 2, "intermediate": 32, "max_positions": 16},
}


@pytest.mark.parametrize(
    ("arch", "mode"),
    [
        (arch, mode)
        for arch in NEW_STUDENTS
        for mode in [
            "none",
            "hard",
            "soft",
            "hidden",
            *(["layers"] if arch == "transformer" else []),
        ]
    ],
)
def test_each_mode_lowers_the_loss_on_a_fixed_batch(arch: str, mode: str) -> None:
    torch.manual_seed(0)
    student = build_student(arch, "small", 30, 3, **NEW_STUDENTS[arch])
    ids = torch.randint(1, 30, (8, 10))
    mask = (torch.arange(10)[None, :] < torch.randint(3, 11, (8, 1))).long()
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.randint(0, 3, (8,)),
        "teacher_logits": torch.randn(8, 3) * 3,
        "teacher_hidden": torch.randn(8, 12),
        "teacher_layers": torch.randn(3, 8, 10, 16),  # embeddings + 2 layers, width 16
    }
    proj = make_projection(student.hidden_size, 12) if mode == "hidden" else None
    params = list(student.parameters()) + (list(proj.parameters()) if proj else [])
    opt = torch.optim.Adam(params, lr=0.01)
    losses = []
    for _ in range(30):
        out = student(ids, mask)
        loss = distillation_loss(out, batch, mode=mode, T=2.0, alpha=0.7, beta=1.0, proj=proj)
        opt.zero_grad()
        loss.loss.backward()
        opt.step()
        losses.append(loss.terms["loss"])
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("arch", list(NEW_STUDENTS))
def test_new_students_survive_a_save_load_round_trip(tmp_path: Path, arch: str) -> None:
    from textdistill.data.tokenization import build_char_tokenizer
    from textdistill.models.folders import save_student

    texts = ["球队比赛冠军", "银行基金利率", "游戏玩家 NBA"]
    tok = build_char_tokenizer(texts)
    torch.manual_seed(0)
    student = build_student(arch, "small", len(tok), 3, **NEW_STUDENTS[arch]).eval()
    if arch == "static":
        torch.nn.init.normal_(student.ngrams.weight)  # non-zero n-gram rows
    save_student(tmp_path / "s", student, tok, ["a", "b", "c"], max_len=12)
    clf = load(tmp_path / "s")
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = student(enc["input_ids"], enc["attention_mask"]).logits.numpy()
    np.testing.assert_allclose(clf.logits(texts), want, atol=1e-6)
    assert read_meta(tmp_path / "s")["architecture"] == student.config
