"""The teacher soft-target cache: equal to live outputs, reused while valid, rebuilt when not.

The teachers are tiny random BERTs and a tiny BiLSTM student saved as model folders; the
values only need to be non-trivial, not good.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast
from typer.testing import CliRunner

from textdistill.cli import app
from textdistill.core.errors import UserError
from textdistill.core.io import file_sha256
from textdistill.data.batching import encoded_batch
from textdistill.data.tokenization import build_tokenizer, encode, encode_cache_path
from textdistill.distill import cache
from textdistill.distill.cache import SoftTargets, build_soft_targets
from textdistill.models.ensemble import combine_ensemble
from textdistill.models.folders import (
    WEIGHTS_FILE,
    folder_fingerprint,
    load_model,
    save_student,
    save_teacher,
)
from textdistill.models.students import build_student
from textdistill.models.teacher import TeacherModel, label_maps

CLASSES = ["sports", "finance", "game"]
MAX_LEN = 16
# Lengths from 1 to beyond MAX_LEN (truncated), so batches are padded and sorted by length.
TEXTS = [
    "球队",
    "银行基金利率投资理财今日消息",
    "游戏玩家网游副本公测新闻发布报道今日消息最新",  # longer than MAX_LEN tokens
    "联赛进球",
    "理财",
    "冠军比赛球队联赛",
    "公测",
    "基金利率",
    "副本玩家游戏网游公测",
]


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return build_tokenizer(TEXTS)


def bert_teacher(tok: PreTrainedTokenizerFast, seed: int) -> TeacherModel:
    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=len(tok),
        **label_maps(CLASSES),
    )
    hf = BertForSequenceClassification(config)
    with torch.no_grad():  # larger logits than BERT's 0.02-std init: a sharper test
        hf.classifier.weight.mul_(50.0)
    return TeacherModel(hf).eval()


@pytest.fixture(scope="module")
def models(
    tmp_path_factory: pytest.TempPathFactory, tok: PreTrainedTokenizerFast
) -> dict[str, Path]:
    """Two BERT teachers and a BiLSTM student, as model folders."""
    root = tmp_path_factory.mktemp("models")
    save_teacher(root / "a", bert_teacher(tok, 0), tok, CLASSES, max_len=MAX_LEN)
    save_teacher(root / "b", bert_teacher(tok, 1), tok, CLASSES, max_len=MAX_LEN)
    torch.manual_seed(2)
    student = build_student("bilstm", "small", len(tok), len(CLASSES), embed_dim=8, hidden_dim=8)
    save_student(root / "student", student, tok, CLASSES, max_len=MAX_LEN)
    return {"a": root / "a", "b": root / "b", "student": root / "student"}


def live(folder: Path, texts: list[str] = TEXTS) -> tuple[np.ndarray, np.ndarray]:
    """Logits and hidden vectors of the model in ``folder``: one padded batch, no cache."""
    loaded = load_model(folder)
    enc = encode(loaded.tokenizer, texts, loaded.max_len)
    with torch.no_grad():
        out = loaded.model(**encoded_batch(enc, range(len(texts))))
    assert out.hidden is not None
    return out.logits.numpy(), out.hidden.numpy()


def build(
    teachers: list[Path], cache_dir: Path, texts: list[str] = TEXTS, **kw: Any
) -> SoftTargets:
    return build_soft_targets(
        [str(t) for t in teachers], texts, cache_dir=cache_dir, progress=False, **kw
    )


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    return (
        z
        - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
        - z.max(1, keepdims=True)
    )


class RunCounter:
    """Counts teacher runs; ``fail=True`` makes any run an error (the cache must be used)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.fail = False
        real = cache.run_teacher

        def run_teacher(*args: Any, **kwargs: Any) -> Any:
            if self.fail:
                raise AssertionError("the teacher ran although a valid cache exists")
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(cache, "run_teacher", run_teacher)


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> RunCounter:
    return RunCounter(monkeypatch)


# -------------------------------------------------------------------------- cached values


def test_cached_logits_equal_live_teacher(tmp_path: Path, models: dict[str, Path]) -> None:
    targets = build([models["a"]], tmp_path / "cache")
    logits, pooled = live(models["a"])

    assert targets.logits.dtype == np.float32 and targets.logits.shape == (len(TEXTS), 3)
    np.testing.assert_allclose(targets.logits, logits, rtol=1e-5, atol=1e-5)
    assert np.abs(logits).max() > 0.5  # not a degenerate all-zero comparison
    assert targets.pooled is not None and targets.pooled.dtype == np.float16
    assert targets.pooled.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(targets.pooled.astype(np.float32), pooled, rtol=2e-3, atol=1e-3)

    assert targets.path.parent == tmp_path / "cache"
    assert {"logits.npy", "pooled.npy", "manifest.json"} == {p.name for p in targets.path.iterdir()}
    manifest = targets.manifest
    assert manifest["rows"] == len(TEXTS)
    assert manifest["teachers"][0]["fingerprint"] == folder_fingerprint(models["a"])
    assert manifest["teachers"][0]["max_len"] == MAX_LEN
    assert manifest["has_pooled"] is True


def test_without_pooled_vectors(tmp_path: Path, models: dict[str, Path]) -> None:
    targets = build([models["a"]], tmp_path / "cache", with_pooled=False)
    assert targets.pooled is None and not (targets.path / "pooled.npy").exists()
    np.testing.assert_allclose(targets.logits, live(models["a"])[0], rtol=1e-5, atol=1e-5)


def test_default_location_is_next_to_the_teacher(tmp_path: Path, models: dict[str, Path]) -> None:
    teacher = tmp_path / "teacher"
    shutil.copytree(models["a"], teacher)
    targets = build_soft_targets([str(teacher)], TEXTS, progress=False)
    assert targets.path.parent == teacher / "soft_targets"
    # A cache inside the folder does not change what the folder is.
    assert folder_fingerprint(teacher) == folder_fingerprint(models["a"])


# ------------------------------------------------------------------------ reuse and staleness


def test_second_call_reuses_the_cache(
    tmp_path: Path, models: dict[str, Path], runs: RunCounter
) -> None:
    first = build([models["a"]], tmp_path / "cache")
    assert runs.calls == 1

    runs.fail = True
    second = build([models["a"]], tmp_path / "cache")
    assert second.path == first.path
    np.testing.assert_array_equal(second.logits, first.logits)
    assert second.pooled is not None and first.pooled is not None
    np.testing.assert_array_equal(second.pooled, first.pooled)

    # The same teacher in another place is the same teacher (fingerprint, not path).
    moved = tmp_path / "moved"
    shutil.copytree(models["a"], moved)
    assert build([moved], tmp_path / "cache").path == first.path


def test_rebuild_runs_again_and_a_failed_rebuild_keeps_the_cache(
    tmp_path: Path, models: dict[str, Path], runs: RunCounter
) -> None:
    first = build([models["a"]], tmp_path / "cache")
    build([models["a"]], tmp_path / "cache", rebuild=True)
    assert runs.calls == 2

    runs.fail = True
    with pytest.raises(AssertionError, match="the teacher ran"):
        build([models["a"]], tmp_path / "cache", rebuild=True)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.path.name]  # no temp left
    again = build([models["a"]], tmp_path / "cache")
    np.testing.assert_array_equal(again.logits, first.logits)


def test_changed_teacher_weights_invalidate_the_cache(
    tmp_path: Path, models: dict[str, Path], runs: RunCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Folders whose files changed after saving load only when allowed (models.folders); the
    # cache must then follow the files, not the stale stored fingerprint.
    monkeypatch.setenv("TEXTDISTILL_ALLOW_MODIFIED", "1")
    teacher = tmp_path / "teacher"
    shutil.copytree(models["a"], teacher)
    before = build([teacher], tmp_path / "cache")

    # Weights replaced in place (the stored fingerprint is now out of date).
    weights = load_file(str(teacher / WEIGHTS_FILE))
    weights["classifier.bias"] = weights["classifier.bias"] + torch.tensor([1.0, 0.0, 0.0])
    save_file(weights, str(teacher / WEIGHTS_FILE), metadata={"format": "pt"})
    after = build([teacher], tmp_path / "cache")

    assert runs.calls == 2 and after.path != before.path
    shift = after.logits - before.logits
    np.testing.assert_allclose(shift, np.tile([1.0, 0.0, 0.0], (len(TEXTS), 1)), atol=1e-5)
    np.testing.assert_allclose(after.logits, live(teacher)[0], rtol=1e-5, atol=1e-5)


def test_retrained_teacher_invalidates_the_cache(
    tmp_path: Path, tok: PreTrainedTokenizerFast, models: dict[str, Path], runs: RunCounter
) -> None:
    teacher = tmp_path / "teacher"
    save_teacher(teacher, bert_teacher(tok, 0), tok, CLASSES, max_len=MAX_LEN)
    before = build([teacher], tmp_path / "cache")
    save_teacher(teacher, bert_teacher(tok, 5), tok, CLASSES, max_len=MAX_LEN)  # "retrained"
    after = build([teacher], tmp_path / "cache")
    assert runs.calls == 2 and after.path != before.path
    assert not np.allclose(after.logits, before.logits)
    np.testing.assert_allclose(after.logits, live(teacher)[0], rtol=1e-5, atol=1e-5)


def test_changed_texts_make_another_cache(
    tmp_path: Path, models: dict[str, Path], runs: RunCounter
) -> None:
    first = build([models["a"]], tmp_path / "cache")
    edited = [*TEXTS[:-1], TEXTS[-1] + "新"]
    second = build([models["a"]], tmp_path / "cache", texts=edited)
    reordered = build([models["a"]], tmp_path / "cache", texts=TEXTS[::-1])
    assert runs.calls == 3
    assert len({first.path, second.path, reordered.path}) == 3
    np.testing.assert_allclose(reordered.logits, first.logits[::-1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(second.logits[:-1], first.logits[:-1], rtol=1e-5, atol=1e-5)


def test_tampered_manifest_is_rebuilt(
    tmp_path: Path, models: dict[str, Path], runs: RunCounter, caplog: pytest.LogCaptureFixture
) -> None:
    first = build([models["a"]], tmp_path / "cache")
    manifest = first.path / "manifest.json"
    manifest.write_text(manifest.read_text(encoding="utf-8").replace('"rows": 9', '"rows": 8'))
    with caplog.at_level(logging.WARNING, logger="textdistill.distill.cache"):
        second = build([models["a"]], tmp_path / "cache")
    assert "does not match the key its folder is named by" in caplog.text
    assert runs.calls == 2 and second.path == first.path
    assert second.manifest["rows"] == len(TEXTS)


# ---------------------------------------------------------------------------------- ensembles


@pytest.mark.parametrize("mode", ["logprob", "prob"])
def test_ensemble_of_a_teacher_and_a_student(
    tmp_path: Path, models: dict[str, Path], mode: str
) -> None:
    members = [models["a"], models["student"]]
    targets = build(members, tmp_path / "cache", weights=[3.0, 1.0], ensemble=mode)

    (z_a, pooled_a), (z_s, _) = live(models["a"]), live(models["student"])
    if mode == "logprob":
        expected = (3 * log_softmax(z_a) + log_softmax(z_s)) / 4
    else:
        expected = np.log((3 * np.exp(log_softmax(z_a)) + np.exp(log_softmax(z_s))) / 4)
    np.testing.assert_allclose(targets.logits, expected, rtol=1e-5, atol=1e-5)
    # Pooled vectors: the first member's.
    assert targets.pooled is not None
    np.testing.assert_allclose(targets.pooled.astype(np.float32), pooled_a, rtol=2e-3, atol=1e-3)
    assert targets.manifest["ensemble"] == mode and targets.manifest["weights"] == [3.0, 1.0]


def test_ensemble_weights_and_order_matter(tmp_path: Path, models: dict[str, Path]) -> None:
    pair = [models["a"], models["b"]]
    equal = build(pair, tmp_path / "cache")
    weighted = build(pair, tmp_path / "cache", weights=[1.0, 0.0])
    assert equal.path != weighted.path
    # Weight 0 for b: exactly a's log-probabilities.
    np.testing.assert_allclose(weighted.logits, log_softmax(live(models["a"])[0]), atol=1e-5)
    expected = (log_softmax(live(models["a"])[0]) + log_softmax(live(models["b"])[0])) / 2
    np.testing.assert_allclose(equal.logits, expected, atol=1e-5)

    student_first = build([models["student"], models["a"]], tmp_path / "cache")
    _, pooled_s = live(models["student"])
    assert student_first.pooled is not None and student_first.pooled.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(
        student_first.pooled.astype(np.float32), pooled_s, rtol=2e-3, atol=1e-3
    )


def test_combine_ensemble_by_hand() -> None:
    ln3 = math.log(3)
    a = np.array([[0.0, ln3]], np.float32)  # probabilities (1/4, 3/4)
    b = np.array([[ln3, 0.0]], np.float32)  # probabilities (3/4, 1/4)
    # Geometric mean: log-probabilities averaged.
    geo = (math.log(0.25) + math.log(0.75)) / 2
    np.testing.assert_allclose(combine_ensemble([a, b], None, "logprob"), [[geo, geo]], atol=1e-6)
    # Arithmetic mean of probabilities: (1/2, 1/2).
    half = math.log(0.5)
    np.testing.assert_allclose(combine_ensemble([a, b], None, "prob"), [[half, half]], atol=1e-6)
    # Weights 3:1 -> probabilities (3/4 * 1/4 + 1/4 * 3/4, ...) = (3/8, 5/8); normalised weights.
    np.testing.assert_allclose(
        combine_ensemble([a, b], [3.0, 1.0], "prob"),
        [[math.log(3 / 8), math.log(5 / 8)]],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        combine_ensemble([a, b], [6.0, 2.0], "logprob"),
        [
            [
                0.75 * math.log(0.25) + 0.25 * math.log(0.75),
                0.75 * math.log(0.75) + 0.25 * math.log(0.25),
            ]
        ],
        atol=1e-6,
    )


@pytest.mark.parametrize(
    ("weights", "mode", "message"),
    [
        ([1.0], "logprob", "one per teacher"),
        ([1.0, -1.0], "logprob", "non-negative"),
        ([0.0, 0.0], "prob", "not all zero"),
        (None, "median", "unknown ensemble mode"),
    ],
)
def test_combine_ensemble_rejects_bad_options(
    weights: list[float] | None, mode: str, message: str
) -> None:
    z = np.zeros((2, 3), np.float32)
    with pytest.raises(UserError, match=message):
        combine_ensemble([z, z], weights, mode)


def test_members_must_share_labels(
    tmp_path: Path, tok: PreTrainedTokenizerFast, models: dict[str, Path]
) -> None:
    other = tmp_path / "other"
    torch.manual_seed(0)
    hf = BertForSequenceClassification(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                   vocab_size=len(tok), **label_maps(["a", "b", "c"]))
    )  # fmt: skip
    save_teacher(other, TeacherModel(hf), tok, ["a", "b", "c"], max_len=MAX_LEN)
    with pytest.raises(UserError, match="labels differ"):
        build([models["a"], other], tmp_path / "cache")
    with pytest.raises(UserError, match="at least one teacher"):
        build([], tmp_path / "cache")
    with pytest.raises(UserError, match="not a textdistill model folder"):
        build([tmp_path], tmp_path / "cache")


# ------------------------------------------------------------------------------------- CLI


def test_teacher_cache_command(
    tmp_path: Path, models: dict[str, Path], corpus_builder: Any, runs: RunCounter
) -> None:
    data = corpus_builder(tmp_path / "data", per_class=4)
    extra = tmp_path / "extra.txt"
    extra.write_text("球队新闻\n银行新闻\n", encoding="utf-8")
    args = ["teacher", "cache", "-t", str(models["a"]), "-t", str(models["b"]), "--data", str(data),
            "--cache-dir", str(tmp_path / "cache"), "--extra", str(extra), "-q"]  # fmt: skip

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    output = " ".join(result.output.split())
    assert "soft targets for 14 rows" in output  # 3 classes x 4 train rows + 2 extra texts
    assert "logits (14, 3)" in output and "pooled (14, 32)" in output
    [folder] = (tmp_path / "cache").iterdir()
    assert np.load(folder / "logits.npy").shape == (14, 3)

    runs.fail = True  # the second time comes from the cache
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, (again.output, again.exception)
    assert "soft targets for 14 rows" in " ".join(again.output.split())
    assert runs.calls == 2  # one run per ensemble member, both the first time


@pytest.mark.slow
def test_teacher_cache_then_distill_runs_the_teacher_once(
    tmp_path: Path, models: dict[str, Path], corpus_builder: Any, runs: RunCounter
) -> None:
    """The README's quick tour: `teacher cache`, then `distill` in every teacher mode."""
    data = corpus_builder(tmp_path / "data", per_class=4)
    teacher = tmp_path / "teacher"
    shutil.copytree(models["a"], teacher)
    result = CliRunner().invoke(
        app, ["teacher", "cache", "-t", str(teacher), "-d", str(data), "-q"]
    )
    assert result.exit_code == 0, (result.output, result.exception)
    assert runs.calls == 1
    runs.fail = True
    for mode in ("soft", "hard", "hidden"):
        out = tmp_path / f"student-{mode}"
        args = ["distill", "-t", str(teacher), "-d", str(data), "--mode", mode, "--out", str(out),
                "--embed-dim", "8", "--hidden-dim", "8", "--epochs", "1", "--batch-size", "8",
                "-q"]  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (mode, result.output, result.exception)
        assert "using cached soft targets" in " ".join(result.stderr.split())
    assert len(list((teacher / "soft_targets").iterdir())) == 1


def test_a_cache_without_pooled_vectors_is_rebuilt_for_hidden_mode(
    tmp_path: Path, models: dict[str, Path], runs: RunCounter
) -> None:
    first = build_soft_targets([models["a"]], TEXTS, cache_dir=tmp_path, with_pooled=False)
    assert first.pooled is None and runs.calls == 1
    again = build_soft_targets([models["a"]], TEXTS, cache_dir=tmp_path, with_pooled=False)
    assert again.path == first.path and runs.calls == 1
    full = build_soft_targets([models["a"]], TEXTS, cache_dir=tmp_path, with_pooled=True)
    assert full.pooled is not None and runs.calls == 2 and full.path == first.path
    runs.fail = True  # a superset serves a run that needs only logits
    logits_only = build_soft_targets([models["a"]], TEXTS, cache_dir=tmp_path, with_pooled=False)
    np.testing.assert_array_equal(logits_only.logits, first.logits)


def test_teacher_cache_command_user_errors(tmp_path: Path, corpus_builder: Any) -> None:
    data = corpus_builder(tmp_path / "data", per_class=2)
    result = CliRunner().invoke(
        app, ["teacher", "cache", "-t", str(tmp_path / "nope"), "--data", str(data), "-q"]
    )
    assert result.exit_code == 2
    assert "model folder not found" in result.output


# ------------------------------------------------------------------------------ damage


def _rewrite_logits(folder: Path, values: np.ndarray, *, allow_pickle: bool = False) -> None:
    """A forgery: new logits with a manifest updated to match (checksum and shape), so only
    the structural checks can catch it."""
    np.save(folder / "logits.npy", values, allow_pickle=allow_pickle)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    manifest["arrays"]["logits.npy"].update(
        sha256=file_sha256(folder / "logits.npy"), shape=list(values.shape)
    )
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def _flip_last_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x40
    file.write_bytes(bytes(data))


def _edit_manifest(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def _logits(folder: Path) -> np.ndarray:
    return np.load(folder / "logits.npy")


CACHE_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated logits": (
        lambda f: (f / "logits.npy").write_bytes((f / "logits.npy").read_bytes()[:150]),
        "logits.npy does not match its recorded sha256",
    ),
    "zeroed logits": (
        lambda f: np.save(f / "logits.npy", np.zeros_like(_logits(f))),
        "logits.npy does not match its recorded sha256",
    ),
    "reversed rows": (
        lambda f: np.save(f / "logits.npy", _logits(f)[::-1].copy()),
        "logits.npy does not match its recorded sha256",
    ),
    "flipped bit": (
        lambda f: _flip_last_byte(f / "logits.npy"),
        "logits.npy does not match its recorded sha256",
    ),
    "deleted logits": (lambda f: (f / "logits.npy").unlink(), "logits.npy is missing"),
    "garbage manifest": (
        lambda f: (f / "manifest.json").write_text("{not json", encoding="utf-8"),
        "not readable JSON",
    ),
    "non-object manifest": (
        lambda f: (f / "manifest.json").write_text("[1, 2, 3]", encoding="utf-8"),
        "holds a JSON list, not an object",
    ),
    "pickled manifest": (
        lambda f: (f / "manifest.json").write_bytes(pickle.dumps({"rows": 9})),
        "not readable JSON",
    ),
    "deleted manifest": (lambda f: (f / "manifest.json").unlink(), "manifest.json is missing"),
    "manifest without checksums": (
        lambda f: _edit_manifest(f, lambda m: m.pop("arrays")),
        "manifest.json lacks arrays",
    ),
    "manifest with bad teachers": (
        lambda f: _edit_manifest(f, lambda m: m.update(teachers="a")),
        "'teachers' is not a list of objects",
    ),
    "wrong column count": (
        lambda f: _rewrite_logits(f, _logits(f)[:, :2].copy()),
        "logits.npy has shape [9, 2], expected [9, 3]",
    ),
    "NaN logits": (
        lambda f: _rewrite_logits(f, np.where(np.eye(9, 3) > 0, np.nan, _logits(f))),
        "logits.npy holds NaN or infinite values",
    ),
    "pickled logits": (
        lambda f: _rewrite_logits(f, _logits(f).astype(object), allow_pickle=True),
        "logits.npy is not a plain .npy array",
    ),
    "float64 logits": (
        lambda f: _rewrite_logits(f, _logits(f).astype(np.float64)),
        "logits.npy has dtype float64, expected float32",
    ),
    "damaged pooled": (
        lambda f: _flip_last_byte(f / "pooled.npy"),
        "pooled.npy does not match its recorded sha256",
    ),
    "deleted pooled": (lambda f: (f / "pooled.npy").unlink(), "pooled.npy is missing"),
}


@pytest.mark.parametrize("damage", list(CACHE_DAMAGE))
def test_a_damaged_cache_is_rebuilt_with_a_warning(
    tmp_path: Path,
    models: dict[str, Path],
    runs: RunCounter,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    first = build([models["a"]], tmp_path / "cache")
    folder = first.path
    assert first.pooled is not None
    want_logits, want_pooled = np.array(first.logits), np.array(first.pooled)
    del first  # drop the memory maps before the files are rewritten under them
    spoil, says = CACHE_DAMAGE[damage]
    spoil(folder)

    with caplog.at_level(logging.WARNING, logger="textdistill.distill.cache"):
        again = build([models["a"]], tmp_path / "cache")
    assert runs.calls == 2, "the damaged cache was used"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "damaged" in warned[0] and "rebuilding" in warned[0], warned
    assert says in warned[0], warned
    assert again.path == folder
    np.testing.assert_array_equal(again.logits, want_logits)
    assert again.pooled is not None
    np.testing.assert_array_equal(again.pooled, want_pooled)

    runs.fail = True  # the rebuilt cache is valid again
    third = build([models["a"]], tmp_path / "cache")
    np.testing.assert_array_equal(third.logits, want_logits)


def test_manifest_records_the_checksum_of_every_array(
    tmp_path: Path, models: dict[str, Path]
) -> None:
    targets = build([models["a"]], tmp_path / "cache")
    arrays = targets.manifest["arrays"]
    assert set(arrays) == {"logits.npy", "pooled.npy"}
    for name, info in arrays.items():
        assert info["sha256"] == file_sha256(targets.path / name)
    assert arrays["logits.npy"]["shape"] == [len(TEXTS), 3]
    assert arrays["pooled.npy"]["dtype"] == "float16"
    assert targets.manifest["version"] == cache.CACHE_VERSION


def test_soft_targets_are_never_built_from_a_tampered_encode_cache(
    tmp_path: Path, models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    enc_dir = tmp_path / "encoded"
    build([models["a"]], tmp_path / "cache", encode_cache_dir=enc_dir)
    loaded = load_model(models["a"])
    entry = encode_cache_path(loaded.tokenizer, TEXTS, MAX_LEN, cache_dir=enc_dir)
    with np.load(entry) as data:  # rows reversed, the stored checksum kept
        np.savez(entry, ids=data["ids"][::-1], lengths=data["lengths"][::-1], sha256=data["sha256"])

    with caplog.at_level(logging.WARNING, logger="textdistill.data.tokenization"):
        rebuilt = build([models["a"]], tmp_path / "cache", encode_cache_dir=enc_dir, rebuild=True)
    assert "damaged encode cache entry" in caplog.text
    np.testing.assert_allclose(rebuilt.logits, live(models["a"])[0], rtol=1e-5, atol=1e-5)


def test_verification_reads_large_memory_mapped_arrays(tmp_path: Path) -> None:
    """Arrays of THUCNews size verify (their cost: benchmarks/check_cost.py)."""
    rows, classes, width = 45_000, 10, 768
    folder = tmp_path / "big"
    folder.mkdir()
    np.save(folder / "logits.npy", np.full((rows, classes), 0.5, np.float32))
    np.save(folder / "pooled.npy", np.full((rows, width), 0.25, np.float16))
    manifest = {
        "version": cache.CACHE_VERSION,
        "teachers": [],
        "ensemble": "single",
        "texts_sha256": "",
        "rows": rows,
        "arrays": cache._array_records(folder),
    }
    arrays = cache._verify_arrays(folder, manifest, {"rows": rows, "classes": ["c"] * classes})
    assert set(arrays) == {"logits.npy", "pooled.npy"}
    assert arrays["pooled.npy"].shape == (rows, width)
    assert float(arrays["logits.npy"][-1, -1]) == 0.5
