"""Ensemble folders: their outputs equal the combined members', they load anywhere a model
does, they refuse stale members, and distilling from one equals listing its members."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner, Result

from textdistill.cli import app
from textdistill.core.config import apply_overrides
from textdistill.core.errors import UserError
from textdistill.data.corpus import load_corpus
from textdistill.distill.run import distill
from textdistill.distill.teachers import expand_teachers
from textdistill.evaluation.evaluate import evaluate_model
from textdistill.inference.ensemble import EnsembleClassifier
from textdistill.inference.load import load
from textdistill.models.ensemble import is_ensemble, make_ensemble, read_ensemble
from textdistill.models.folders import read_meta

TEXTS = ["球队比赛冠军", "银行基金利率", "游戏玩家网游", "", "进球"]


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    return (
        z
        - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - z.max(-1, keepdims=True)
    )


def invoke(*args: Any) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture
def members(tmp_path: Path, tiny_teacher: Path, tiny_student: Path) -> list[Path]:
    """Copies of the session's tiny teacher and student, free to move or change."""
    out = []
    for name, src in (("teacher", tiny_teacher), ("student", tiny_student)):
        dst = tmp_path / "run" / name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*cache*"))
        out.append(dst)
    return out


@pytest.mark.parametrize("combine", ["logprob", "prob"])
def test_ensemble_output_is_the_weighted_combination_of_its_members(
    tmp_path: Path, members: list[Path], combine: str
) -> None:
    ens = make_ensemble(members, tmp_path / "run" / "ens", weights=[3.0, 1.0], combine=combine)
    clf = load(ens)
    assert isinstance(clf, EnsembleClassifier) and clf.kind == "ensemble"

    lp_t, lp_s = (log_softmax(load(m).logits(TEXTS)) for m in members)
    if combine == "logprob":
        expected = (3 * lp_t + lp_s) / 4
    else:
        expected = np.log((3 * np.exp(lp_t) + np.exp(lp_s)) / 4)
    np.testing.assert_allclose(clf.logits(TEXTS, batch_size=2), expected, atol=1e-5)

    preds = clf.predict(TEXTS, top_k=2)
    assert [p.label_id for p in preds] == [
        None if not t else int(np.argmax(expected[i])) for i, t in enumerate(TEXTS)
    ]
    meta = read_meta(ens)
    assert meta["num_parameters"] == sum(read_meta(m)["num_parameters"] for m in members)
    assert clf.size_mb() == pytest.approx(sum(load(m).size_mb() for m in members))


def test_equal_weights_average_the_log_probabilities(tmp_path: Path, members: list[Path]) -> None:
    clf = load(make_ensemble(members, tmp_path / "ens"))
    expected = sum(log_softmax(load(m).logits(TEXTS)) for m in members) / 2
    np.testing.assert_allclose(clf.logits(TEXTS), expected, atol=1e-5)


def test_evaluate_measures_an_ensemble_like_any_model(
    tmp_path: Path, members: list[Path], tiny_corpus: Path
) -> None:
    ens = make_ensemble(members, tmp_path / "ens")
    split = load_corpus(tiny_corpus).split("test")
    ev = evaluate_model(ens, split, efficiency=True)
    # The accuracy is the ensemble's own: its argmax over the split, scored by hand.
    own = np.argmax(load(ens).logits(split.texts), axis=1)
    assert ev.metrics["accuracy"] == pytest.approx(np.mean(own == np.asarray(split.labels)))
    assert ev.metrics["n"] == len(split)
    assert ev.efficiency is not None and ev.efficiency.model_p50_ms > 0


def test_a_moved_run_folder_keeps_its_ensemble(tmp_path: Path, members: list[Path]) -> None:
    make_ensemble(members, tmp_path / "run" / "ensembles" / "pair")
    before = load(tmp_path / "run" / "ensembles" / "pair").logits(TEXTS)
    shutil.move(tmp_path / "run", tmp_path / "moved")
    after = load(tmp_path / "moved" / "ensembles" / "pair").logits(TEXTS)
    np.testing.assert_array_equal(before, after)


def test_a_retrained_or_missing_member_is_refused(tmp_path: Path, members: list[Path]) -> None:
    ens = make_ensemble(members, tmp_path / "ens")
    meta_file = members[1] / "textdistill.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    meta_file.write_text(json.dumps({**meta, "fingerprint": "retrained"}), encoding="utf-8")
    with pytest.raises(UserError, match="changed since the ensemble was made"):
        load(ens)
    shutil.rmtree(members[1])
    with pytest.raises(UserError, match="is missing"):
        read_ensemble(ens)


def test_bad_ensembles_are_refused(tmp_path: Path, members: list[Path]) -> None:
    with pytest.raises(UserError, match="at least two members"):
        make_ensemble(members[:1], tmp_path / "one")
    with pytest.raises(UserError, match="one per member"):
        make_ensemble(members, tmp_path / "w", weights=[1.0])
    with pytest.raises(UserError, match="unknown combine rule"):
        make_ensemble(members, tmp_path / "c", combine="median")
    ens = make_ensemble(members, tmp_path / "ens")
    with pytest.raises(UserError, match="cannot be a member"):
        make_ensemble([ens, members[0]], tmp_path / "nested")
    other = tmp_path / "other"
    shutil.copytree(members[1], other)
    (other / "labels.json").write_text('["a", "b", "c"]', encoding="utf-8")
    with pytest.raises(UserError, match="differ from the first member"):
        make_ensemble([members[0], other], tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists() and not is_ensemble(members[0])


def test_distilling_from_an_ensemble_folder_equals_listing_its_members(
    tmp_path: Path,
    members: list[Path],
    tiny_corpus: Path,
    make_tiny_config: Callable[..., Any],
) -> None:
    ens = make_ensemble(members, tmp_path / "ens", weights=[2.0, 1.0], combine="prob")
    by_folder = make_tiny_config(
        tiny_corpus, **{"distill.teachers": [str(ens)], "student.train.epochs": 1}
    )
    expanded = expand_teachers(by_folder)
    assert expanded.distill.teachers == [str(m.resolve()) for m in members]
    assert expanded.distill.teacher_weights == [2.0, 1.0]
    assert expanded.distill.ensemble == "prob"
    with pytest.raises(UserError, match="only --teacher"):
        expand_teachers(apply_overrides(by_folder, {"distill.teachers": [str(ens), "x"]}))
    with pytest.raises(UserError, match="its own weights"):
        expand_teachers(apply_overrides(by_folder, {"distill.teacher_weights": [1.0]}))

    corpus = load_corpus(tiny_corpus)
    a = distill(by_folder, corpus, tmp_path / "from-folder")
    b = distill(expanded, corpus, tmp_path / "from-members")
    meta_a, meta_b = read_meta(a.path), read_meta(b.path)
    assert meta_a["teachers"] == meta_b["teachers"] == [str(m.resolve()) for m in members]
    assert meta_a["fingerprint"] == meta_b["fingerprint"]  # same targets, same weights


@pytest.mark.slow
def test_ensemble_through_the_cli(tmp_path: Path, members: list[Path], tiny_corpus: Path) -> None:
    ens = tmp_path / "ens"
    args = ["ensemble", "-t", members[0], "-t", members[1], "--out", ens]
    out = ok(invoke(*args, "--weight", "1", "--weight", "1")).stdout
    assert "ensemble of 2 models" in out and is_ensemble(ens)
    predicted = ok(invoke("predict", "--model", ens, "--format", "json", "球队比赛")).stdout
    assert json.loads(predicted)[0]["label"] in ("sports", "finance", "game")
    ok(invoke("evaluate", "--model", ens, "--data", tiny_corpus, "--split", "dev"))
    assert (ens / "eval_dev.json").is_file()

    # `teacher cache` with the folder builds the same cache as with its members.
    cache_a, cache_b = tmp_path / "cache-a", tmp_path / "cache-b"
    ok(invoke("teacher", "cache", "-t", ens, "--data", tiny_corpus, "--cache-dir", cache_a, "-q"))
    members_args = ["-t", members[0], "-t", members[1]]
    ok(
        invoke(
            "teacher", "cache", *members_args, "--data", tiny_corpus, "--cache-dir", cache_b, "-q"
        )
    )
    (ma,) = cache_a.glob("*/manifest.json")
    (mb,) = cache_b.glob("*/manifest.json")
    assert ma.parent.name == mb.parent.name

    bad = invoke("ensemble", "-t", members[0], "--out", tmp_path / "x")
    assert bad.exit_code != 0 and "at least two members" in bad.output
