"""``textdistill demo --quick`` and ``textdistill run CONFIG`` end to end.

One demo run per module, on the built-in sample served from a fake sdist (10 classes x 10
titles; conftest ``builtin_sample``) with the packaged ``demo-quick.yaml``. The other tests
work on copies of its output folder, so they also check that a moved run stays up to date.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner, Result

import textdistill.distill.run as distill_mod
from textdistill.cli import app
from textdistill.core.config import ConfigError, PipelineEnsemble, PipelineStudent, apply_overrides
from textdistill.core.errors import UserError
from textdistill.core.paths import work_dir_for
from textdistill.data.splits import open_corpus, prepare_training_data
from textdistill.distill.losses import distillation_loss
from textdistill.models.folders import read_meta
from textdistill.pipeline import (
    _key_config,
    check_pipeline,
    demo_config,
    run_pipeline,
    stage_key,
)

STUDENTS = ["bilstm-none", "bilstm-soft", "static-none", "static-soft"]
MODES = ["none", "soft", "none", "soft"]
ARCHS = ["bilstm", "bilstm", "static", "static"]
ALL_STAGES = ["teacher", *STUDENTS, "report-test"]


@dataclass
class Demo:
    out: Path
    sample: Path
    result: Result
    stage_seconds: dict[str, float]


def invoke(*args: Any) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, builtin_sample: Path) -> Demo:
    out = tmp_path_factory.mktemp("demo") / "run"
    result = ok(invoke("demo", "--quick", "--out", out))
    summary = json.loads((out / "pipeline.json").read_text(encoding="utf-8"))
    return Demo(out, builtin_sample, result, summary["stage_seconds"])


def copy_run(demo: Demo, dest: Path) -> Path:
    shutil.copytree(demo.out, dest)
    return dest


def fingerprints(out: Path) -> dict[str, str]:
    folders = {"teacher": out / "teacher"} | {s: out / "students" / s for s in STUDENTS}
    return {name: read_meta(f)["fingerprint"] for name, f in folders.items()}


def table_rows(md: Path) -> list[str]:
    lines = md.read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.startswith("| ")][2:]


# ------------------------------------------------------------------------------- demo


@pytest.mark.slow
def test_demo_quick_trains_teacher_four_students_and_reports(demo: Demo) -> None:
    out = demo.out
    assert (demo.sample / "SAMPLE.json").is_file()  # fetched from the (fake) sdist
    teacher = read_meta(out / "teacher")
    assert teacher["kind"] == "teacher" and teacher["config"]["teacher"]["scratch"] == "mini"
    for name, mode, arch in zip(STUDENTS, MODES, ARCHS, strict=True):
        meta = read_meta(out / "students" / name)
        assert meta["mode"] == mode and meta["architecture"]["arch"] == arch
        assert meta["stage_key"] and meta["teacher_fingerprint"] == teacher["fingerprint"]
        assert not work_dir_for(out / "students" / name).exists()

    rows = table_rows(out / "report-test" / "compare.md")
    assert [r.split("|")[1].strip() for r in rows] == [
        "teacher (ref)",
        *STUDENTS,
    ]
    report = json.loads((out / "report-test" / "compare.json").read_text(encoding="utf-8"))
    assert [r["name"] for r in report["rows"]] == ["teacher", *STUDENTS]
    for plot in report["plots"]:
        assert (out / "report-test" / plot).read_bytes()[:4] == b"\x89PNG"

    pipeline = json.loads((out / "pipeline.json").read_text(encoding="utf-8"))
    assert pipeline["skipped"] == []
    assert set(pipeline["timings_s"]) == {
        "teacher",
        *(f"student:{s}" for s in STUDENTS),
        "report:test",
    }
    assert pipeline["stage_seconds"] == pipeline["timings_s"]
    assert "# Model comparison" in demo.result.stdout
    assert "stage times:" in demo.result.stdout


@pytest.mark.slow
def test_second_run_skips_every_stage(demo: Demo) -> None:
    before = fingerprints(demo.out)
    md_before = (demo.out / "report-test" / "compare.md").read_bytes()
    result = ok(invoke("demo", "--quick", "--out", demo.out))
    assert f"up to date, skipped: {', '.join(ALL_STAGES)}" in " ".join(result.stdout.split())
    assert "stage times:" not in result.stdout
    assert fingerprints(demo.out) == before
    assert (demo.out / "report-test" / "compare.md").read_bytes() == md_before
    pipeline = json.loads((demo.out / "pipeline.json").read_text(encoding="utf-8"))
    assert pipeline["timings_s"] == {} and pipeline["skipped"] == ALL_STAGES
    # The times of the run that built the stages are kept.
    assert pipeline["stage_seconds"] == demo.stage_seconds


@pytest.mark.slow
def test_changing_one_student_retrains_only_that_student(demo: Demo, tmp_path: Path) -> None:
    out = copy_run(demo, tmp_path / "moved")  # a moved run folder is still up to date
    before = fingerprints(out)
    cfg = demo_config(quick=True)
    students = [s.model_copy() for s in cfg.pipeline.students]
    students[1] = students[1].model_copy(update={"overrides": {"distill.temperature": 4.0}})
    cfg.pipeline.students = students

    result = run_pipeline(cfg, out)
    assert result.skipped == ["teacher", "bilstm-none", "static-none", "static-soft"]
    assert set(result.timings) == {"student:bilstm-soft", "report:test"}
    after = fingerprints(out)
    assert {k for k in before if before[k] != after[k]} == {"bilstm-soft"}
    soft = read_meta(out / "students" / "bilstm-soft")
    assert soft["config"]["distill"]["temperature"] == 4.0

    # Settings that only change progress output or resumption are not inputs of a stage.
    quiet = apply_overrides(
        cfg, {"student.train.progress": False, "teacher.train.checkpoint_every": 7}
    )
    assert run_pipeline(quiet, out).skipped == ALL_STAGES


@pytest.mark.slow
def test_run_custom_config_with_an_ensemble_teacher(demo: Demo, tmp_path: Path) -> None:
    out = copy_run(demo, tmp_path / "custom")
    raw = yaml.safe_load(demo_config(quick=True).to_yaml())
    raw["pipeline"] = {
        "students": [
            {"name": "bilstm-none", "mode": "none"},
            {
                "name": "ens",
                "arch": "textcnn",  # no preset: textcnn's default, not bilstm's "small"
                "mode": "soft",
                "teachers": ["pair"],
                "overrides": {"student.options.num_filters": 16, "student.options.embed_dim": 16},
            },
        ],
        "ensembles": [{"name": "pair", "members": ["teacher", "bilstm-none"]}],
        "report_splits": ["test", "dev"],
    }
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")

    # The same data given as a folder: its location is not part of any stage key.
    result = ok(invoke("run", config, "--data", demo.sample, "--out", out))
    skipped = " ".join(result.stdout.split())
    assert "up to date, skipped: teacher, bilstm-none" in skipped

    ens = read_meta(out / "students" / "ens")
    assert ens["architecture"]["arch"] == "textcnn" and ens["architecture"]["num_filters"] == 16
    assert ens["teachers"] == [
        str((out / "teacher").resolve()),
        str((out / "students" / "bilstm-none").resolve()),
    ]
    assert ens["teacher_fingerprint"] == ",".join(
        read_meta(out / p)["fingerprint"] for p in ("teacher", "students/bilstm-none")
    )
    test_rows = table_rows(out / "report-test" / "compare.md")
    names = [r.split("|")[1].strip() for r in test_rows]
    assert names == ["teacher (ref)", "pair", "bilstm-none", "ens"]
    pair = read_meta(out / "ensembles" / "pair")
    assert pair["kind"] == "ensemble" and pair["members"] == [
        "../../teacher",
        "../../students/bilstm-none",
    ]
    # The ensemble is an input of its student by its members' fingerprints: a second run
    # skips both.
    again = ok(invoke("run", config, "--data", demo.sample, "--out", out))
    assert "up to date, skipped: teacher, bilstm-none, pair, ens" in " ".join(again.stdout.split())
    assert (out / "report-dev" / "compare.md").is_file()


# ---------------------------------------------------------------- kill and resume


class Killed(Exception):
    pass


@pytest.mark.slow
def test_killed_stage_resumes_from_its_checkpoint(
    demo: Demo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = copy_run(demo, tmp_path / "killed")
    cfg = demo_config(quick=True)
    students = list(cfg.pipeline.students)
    students[1] = students[1].model_copy(update={"overrides": {"student.train.lr": 0.003}})
    cfg.pipeline.students = students
    calls: list[int] = []

    def loss(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if kill_at is not None and len(calls) == kill_at:
            raise Killed
        return distillation_loss(*args, **kwargs)

    monkeypatch.setattr(distill_mod, "distillation_loss", loss)
    # 80 rows in batches of 64: 2 steps per epoch, a checkpoint after epoch 1 (step 2).
    kill_at: int | None = 3
    with pytest.raises(Killed):
        run_pipeline(cfg, out)
    work = work_dir_for(out / "students" / "bilstm-soft")
    assert (work / "train" / "checkpoint").is_dir() and (work / "stage.json").is_file()

    kill_at, calls[:] = None, []
    with caplog.at_level(logging.INFO, logger="textdistill"):
        result = run_pipeline(cfg, out)
    assert len(calls) == 2  # steps 3 and 4 only
    assert "resuming from" in caplog.text
    assert result.skipped == ["teacher", "bilstm-none", "static-none", "static-soft"]
    assert read_meta(out / "students" / "bilstm-soft")["config"]["student"]["train"]["lr"] == 0.003
    assert not work.exists()


@pytest.mark.slow
def test_leftovers_of_another_config_are_not_resumed(
    demo: Demo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = copy_run(demo, tmp_path / "stale")
    work = work_dir_for(out / "students" / "bilstm-soft")
    (work / "train" / "checkpoint").mkdir(parents=True)
    (work / "stage.json").write_text('{"stage_key": "other"}', encoding="utf-8")
    cfg = demo_config(quick=True)
    students = list(cfg.pipeline.students)
    students[1] = students[1].model_copy(update={"overrides": {"distill.beta": 0.5}})
    cfg.pipeline.students = students
    seen: list[bool] = []
    real = distill_mod.fit

    def fit(*args: Any, **kwargs: Any) -> Any:
        seen.append(args[3].resume)
        return real(*args, **kwargs)

    monkeypatch.setattr(distill_mod, "fit", fit)
    run_pipeline(cfg, out)
    assert seen == [False] and not work.exists()


# --------------------------------------------------------------------- validation


PAIR = {"name": "pair", "members": ["teacher", "a"]}


@pytest.mark.parametrize(
    ("students", "message", "ensembles"),
    [
        ([{"name": "a"}, {"name": "b", "teachers": ["pair"]}], None, [PAIR]),
        ([{"name": "b", "teachers": ["pair"]}, {"name": "a"}], "needs ['a'] trained first", [PAIR]),
        (
            [{"name": "a"}, {"name": "b", "teachers": ["pair", "a"]}],
            "'pair' must be its only teacher",
            [PAIR],
        ),
        ([{"name": "a"}], "unknown member(s) ['c']", [{"name": "p", "members": ["a", "c"]}]),
        ([{"name": "a"}], "'a' is used twice", [{"name": "a", "members": ["teacher", "a"]}]),
        ([{"name": "a"}], "1 weight(s) for 2 members", [{**PAIR, "weights": [1.0]}]),
        ([{"name": "a"}], "'pair' is used twice", [PAIR, PAIR]),
        ([{"name": "teacher"}], "'teacher' is used twice", []),
        ([{"name": "a"}, {"name": "a"}], "'a' is used twice", []),
        ([{"name": "a", "teachers": ["b"]}, {"name": "b"}], "unknown teacher stage 'b'", []),
        ([{"name": "a/b"}], "not a usable folder name", []),
        ([{"name": "a", "teachers": []}], "at least one teacher stage", []),
    ],
)
def test_invalid_pipeline_is_refused_before_any_work(
    tmp_path: Path,
    students: list[dict[str, Any]],
    message: str | None,
    ensembles: list[dict[str, Any]],
) -> None:
    cfg = demo_config(quick=True)
    cfg.pipeline.students = [PipelineStudent(**s) for s in students]
    cfg.pipeline.ensembles = [PipelineEnsemble(**e) for e in ensembles]
    if message is None:
        check_pipeline(cfg)  # the valid order: members first, then their ensemble's student
        return
    with pytest.raises(UserError) as err:
        check_pipeline(cfg)
    assert message in str(err.value)
    with pytest.raises(UserError):
        run_pipeline(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_run_reports_config_errors(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("pipeline: {students: [{name: x, mode: loud}]}\n", encoding="utf-8")
    result = invoke("run", config, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "pipeline.students.0.mode" in result.stderr
    result = invoke("run", tmp_path / "missing.yaml")
    assert result.exit_code == 2 and "config file not found" in result.stderr


def test_stage_keys_ignore_location_and_output_settings() -> None:
    cfg = demo_config(quick=True)
    moved = apply_overrides(
        cfg,
        {"data.dir": "/elsewhere", "student.train.progress": False, "teacher.mlm.resume": True},
    )
    for sections in (("data", "tokenizer", "teacher"), ("data", "student", "distill")):
        assert stage_key(_key_config(cfg, *sections)) == stage_key(_key_config(moved, *sections))
    changed = apply_overrides(cfg, {"student.train.lr": 0.01})
    assert _key_config(changed, "student") != _key_config(cfg, "student")
    with pytest.raises(ConfigError):
        apply_overrides(cfg, {"student.train.nope": 1})


# ---------------------------------------------------------------------- workspace


def test_open_corpus_reads_every_split_the_config_names(
    tmp_path: Path, make_corpus: Callable[..., Path]
) -> None:
    data = make_corpus(splits=("train", "dev", "eval", "extra"))
    cfg = apply_overrides(demo_config(quick=True), {"data.dir": str(data)})
    assert set(open_corpus(cfg).splits) == {"train", "dev"}  # no test.txt: nothing else
    custom = apply_overrides(cfg, {"data.test_split": "eval"})
    assert set(open_corpus(custom).splits) == {"train", "dev", "eval"}
    assert set(open_corpus(custom, also=["extra"]).splits) == {"train", "dev", "eval", "extra"}
    reported = apply_overrides(cfg, {"pipeline.report_splits": ["extra"]})
    assert "extra" in open_corpus(reported).splits


def test_holdout_replaces_a_missing_dev_split(
    tmp_path: Path, make_corpus: Callable[..., Path]
) -> None:
    data = make_corpus(splits=("train", "test"))
    cfg = apply_overrides(demo_config(quick=True), {"data.dir": str(data)})
    with pytest.raises(UserError, match=r"dev\.txt or dev\.jsonl"):
        open_corpus(cfg)
    held = apply_overrides(cfg, {"data.holdout": 6})
    corpus = open_corpus(held)
    data_ = prepare_training_data(held, corpus)
    assert data_.select.name == "holdout" and len(data_.select) == 6
    assert sorted(data_.select.labels) == [0, 0, 1, 1, 2, 2]  # stratified
    assert len(data_.train) == 30 - 6
    assert not set(data_.select.texts) & set(data_.train.texts)
    assert set(data_.report) == {"test"}


def test_cli_evaluate_on_a_split_outside_the_config(
    tmp_path: Path, make_corpus: Callable[..., Path], tiny_student: Path
) -> None:
    # tiny_student was trained on 3 classes x 10 rows with the default class names.
    data = make_corpus(splits=("train", "dev", "later"))
    result = ok(invoke("evaluate", "-m", tiny_student, "-d", data, "-s", "later",
                       "--no-efficiency", "-o", tmp_path / "e"))  # fmt: skip
    assert (tmp_path / "e" / "eval_later.json").is_file() and "on later" in result.stdout
