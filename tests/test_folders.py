"""Model folders: save/load round trips, fingerprints, atomic saves and clear load errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from textdistill.core.config import Config, apply_overrides, load_config
from textdistill.core.errors import UserError
from textdistill.core.io import dir_size_bytes
from textdistill.data.tokenization import build_tokenizer
from textdistill.models import folders
from textdistill.models.folders import (
    META_FILE,
    WEIGHTS_FILE,
    count_parameters,
    folder_fingerprint,
    load_model,
    read_meta,
    save_student,
    save_teacher,
)
from textdistill.models.students import build_student
from textdistill.models.teacher import TeacherModel, label_maps

CLASSES = ["sports", "finance", "game"]
TEXTS = ["球队比赛冠军", "银行基金利率投资", "游戏玩家", "联赛进球"]


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return build_tokenizer(TEXTS)


def make_teacher(tok: PreTrainedTokenizerFast, seed: int = 0) -> TeacherModel:
    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=len(tok),
        **label_maps(CLASSES),
    )
    return TeacherModel(BertForSequenceClassification(config)).eval()


def make_student(tok: PreTrainedTokenizerFast, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_student(
        "bilstm", "small", len(tok), len(CLASSES), embed_dim=8, hidden_dim=8
    ).eval()


def batch(tok: PreTrainedTokenizerFast) -> dict[str, torch.Tensor]:
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


@torch.no_grad()
def outputs(model: nn.Module, tok: PreTrainedTokenizerFast) -> tuple[torch.Tensor, torch.Tensor]:
    out = model(**batch(tok))
    return out.logits, out.hidden


def save(
    kind: str, out: Path, model: nn.Module, tok: PreTrainedTokenizerFast, **kw: Any
) -> dict[str, Any]:
    saver = save_teacher if kind == "teacher" else save_student
    assert isinstance(model, TeacherModel) or kind == "student"
    return saver(out, model, tok, CLASSES, **kw)  # type: ignore[arg-type]


MAKERS: dict[str, Callable[..., nn.Module]] = {"teacher": make_teacher, "student": make_student}


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_round_trip(tmp_path: Path, tok: PreTrainedTokenizerFast, kind: str) -> None:
    model = MAKERS[kind](tok)
    history = tmp_path / "history.jsonl"
    history.write_text('{"stage": "x", "step": 1}\n', encoding="utf-8")
    cfg = apply_overrides(Config(), {"tokenizer.max_len": 24})
    out = tmp_path / kind

    meta = save(
        kind, out, model, tok, cfg=cfg, max_len=24, metrics={"accuracy": 0.5},
        history=history, extra={"note": "hi"},
    )  # fmt: skip

    assert {WEIGHTS_FILE, "labels.json", META_FILE, "config.yaml", "metrics.jsonl"} <= {
        p.name for p in out.iterdir()
    }
    assert (out / "config.json").is_file() == (kind == "teacher")
    assert (out / "metrics.jsonl").read_text(encoding="utf-8") == history.read_text(
        encoding="utf-8"
    )
    assert load_config(out / "config.yaml") == cfg
    assert meta == read_meta(out)
    assert meta["kind"] == kind and meta["note"] == "hi" and meta["max_len"] == 24
    assert meta["num_parameters"] == count_parameters(model)
    assert meta["dev_metrics"] == {"accuracy": 0.5}
    # Stored to the kB (3 decimals of MB), measured before textdistill.json was written.
    assert meta["size_mb"] == pytest.approx(dir_size_bytes(out) / 1e6, abs=1e-3)
    assert meta["fingerprint"] == folder_fingerprint(out)

    loaded = load_model(out)
    assert loaded.kind == kind and loaded.label_names == CLASSES and loaded.max_len == 24
    assert loaded.fingerprint == meta["fingerprint"]
    assert not loaded.model.training
    assert loaded.tokenizer(TEXTS)["input_ids"] == tok(TEXTS)["input_ids"]
    for got, want in zip(outputs(loaded.model, tok), outputs(model, tok), strict=True):
        torch.testing.assert_close(got, want)


def test_student_folder_rebuilds_its_architecture(
    tmp_path: Path, tok: PreTrainedTokenizerFast
) -> None:
    student = make_student(tok)
    meta = save_student(tmp_path / "s", student, tok, CLASSES)
    assert meta["architecture"] == student.config
    loaded = load_model(tmp_path / "s").model
    assert type(loaded) is type(student) and loaded.config == student.config


def test_no_duplicate_tensors_in_teacher_weights(
    tmp_path: Path, tok: PreTrainedTokenizerFast
) -> None:
    teacher = make_teacher(tok)
    save_teacher(tmp_path / "t", teacher, tok, CLASSES)
    stored = load_file(str(tmp_path / "t" / WEIGHTS_FILE))
    assert set(stored) == set(teacher.hf.state_dict())


# ---------------------------------------------------------------------------- fingerprints


@pytest.mark.parametrize("kind", ["teacher", "student"])
def test_fingerprint_identifies_the_weights(
    tmp_path: Path, tok: PreTrainedTokenizerFast, kind: str
) -> None:
    model = MAKERS[kind](tok)
    first = save(kind, tmp_path / "a", model, tok, metrics={"accuracy": 0.1})["fingerprint"]
    # Same weights elsewhere, other metrics and config: the same model.
    again = save(kind, tmp_path / "b", model, tok, metrics={"accuracy": 0.9}, cfg=Config())
    assert again["fingerprint"] == first
    assert load_model(tmp_path / "a").fingerprint == load_model(tmp_path / "b").fingerprint == first

    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    changed = save(kind, tmp_path / "c", model, tok)["fingerprint"]
    assert changed != first
    other_seed = save(kind, tmp_path / "d", MAKERS[kind](tok, seed=1), tok)["fingerprint"]
    assert other_seed not in (first, changed)


def test_weights_changed_in_place_are_refused_unless_allowed(
    tmp_path: Path,
    tok: PreTrainedTokenizerFast,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "t"
    stored = save_teacher(out, make_teacher(tok), tok, CLASSES)["fingerprint"]
    weights = load_file(str(out / WEIGHTS_FILE))
    weights["classifier.bias"] = weights["classifier.bias"] + 1.0
    save_file(weights, str(out / WEIGHTS_FILE), metadata={"format": "pt"})

    with pytest.raises(
        UserError, match=r"changed since the folder was saved \(model\.safetensors changed\)"
    ):
        load_model(out)

    with caplog.at_level(logging.WARNING, logger="textdistill.models.folders"):
        loaded = load_model(out, allow_modified=True)
    assert isinstance(loaded.model, TeacherModel)
    assert loaded.fingerprint == folder_fingerprint(out) != stored
    assert "changed since the folder was saved" in caplog.text
    bias = loaded.model.hf.get_parameter("classifier.bias")
    torch.testing.assert_close(bias, weights["classifier.bias"])

    monkeypatch.setenv("TEXTDISTILL_ALLOW_MODIFIED", "1")
    assert load_model(out).fingerprint == loaded.fingerprint


# ------------------------------------------------------------------------- atomic saving


def fail_on_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    real = folders.write_json

    def write_json(path: Path, data: Any) -> None:
        if Path(path).name == "labels.json":
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(folders, "write_json", write_json)


def fail_in_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    def save_pretrained(self: Any, directory: Any, *args: Any, **kwargs: Any) -> None:
        (Path(directory) / "tokenizer.json").write_text("{half", encoding="utf-8")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", save_pretrained)


def fail_after_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    real = BertForSequenceClassification.save_pretrained

    def save_pretrained(self: Any, directory: Any, *args: Any, **kwargs: Any) -> None:
        real(self, directory, *args, **kwargs)  # the weights are on disk when it fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(BertForSequenceClassification, "save_pretrained", save_pretrained)


FAILURES = {"weights": fail_after_weights, "tokenizer": fail_in_tokenizer, "labels": fail_on_labels}


@pytest.mark.parametrize("where", sorted(FAILURES))
def test_failed_save_leaves_no_folder(
    tmp_path: Path, tok: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    out = tmp_path / "models" / "teacher"
    teacher = make_teacher(tok)
    FAILURES[where](monkeypatch)

    with pytest.raises(UserError) as err:
        save_teacher(out, teacher, tok, CLASSES)

    message = str(err.value)
    assert str(out) in message and "No space left on device" in message
    assert "nothing was written" in message
    assert list((tmp_path / "models").iterdir()) == []  # no partial folder, no temp sibling
    with pytest.raises(UserError, match="not found"):
        load_model(out)


@pytest.mark.parametrize("where", sorted(FAILURES))
def test_failed_save_keeps_the_previous_version(
    tmp_path: Path, tok: PreTrainedTokenizerFast, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    out = tmp_path / "models" / "teacher"
    old = save_teacher(out, make_teacher(tok, seed=0), tok, CLASSES, metrics={"accuracy": 0.3})
    FAILURES[where](monkeypatch)

    with pytest.raises(UserError, match="previous version is unchanged"):
        save_teacher(out, make_teacher(tok, seed=1), tok, CLASSES, metrics={"accuracy": 0.9})

    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["teacher"]
    loaded = load_model(out)
    assert loaded.meta == old
    assert loaded.fingerprint == old["fingerprint"]


def test_save_replaces_an_existing_folder(tmp_path: Path, tok: PreTrainedTokenizerFast) -> None:
    out = tmp_path / "teacher"
    save_teacher(out, make_teacher(tok, seed=0), tok, CLASSES)
    (out / "stale.txt").write_text("from the old version", encoding="utf-8")
    new = save_teacher(out, make_teacher(tok, seed=1), tok, CLASSES)
    assert not (out / "stale.txt").exists()
    assert load_model(out).fingerprint == new["fingerprint"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]


# ---------------------------------------------------------------------------- load errors


def test_read_meta_on_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.txt").write_text("x\t0\n", encoding="utf-8")
    with pytest.raises(UserError, match="not a textdistill model folder") as err:
        read_meta(tmp_path / "data")
    assert "textdistill teacher train" in str(err.value)
    with pytest.raises(UserError, match="model folder not found"):
        read_meta(tmp_path / "missing")
    with pytest.raises(UserError, match="not a textdistill model folder"):
        load_model(tmp_path / "data")


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("{not json", "unreadable"),
        ('["a list"]', "not textdistill model metadata"),
        ('{"kind": "tokenizer"}', "not textdistill model metadata"),
        ('{"kind": "teacher", "format_version": 99}', "newer than this textdistill supports"),
    ],
)
def test_read_meta_rejects_bad_metadata(tmp_path: Path, meta: str, message: str) -> None:
    (tmp_path / META_FILE).write_text(meta, encoding="utf-8")
    with pytest.raises(UserError, match=message):
        read_meta(tmp_path)


@pytest.mark.parametrize("kind", ["teacher", "student"])
@pytest.mark.parametrize("damage", ["no labels", "truncated weights", "no weights"])
def test_damaged_folder_fails_cleanly(
    tmp_path: Path, tok: PreTrainedTokenizerFast, kind: str, damage: str
) -> None:
    out = tmp_path / kind
    save(kind, out, MAKERS[kind](tok), tok)
    if damage == "no labels":
        (out / "labels.json").unlink()
    elif damage == "no weights":
        (out / WEIGHTS_FILE).unlink()
    else:
        data = (out / WEIGHTS_FILE).read_bytes()
        (out / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    expected = {
        "no labels": "labels.json: missing",
        "no weights": "model.safetensors: missing",
        "truncated weights": r"changed since the folder was saved \(model.safetensors changed\)",
    }[damage]
    with pytest.raises(UserError, match=expected):
        load_model(out)
    if damage == "truncated weights":  # accepted as changed, it still fails cleanly
        with pytest.raises(UserError, match=f"{out}: cannot load the {kind}"):
            load_model(out, allow_modified=True)


def test_teacher_with_missing_tensors_fails_cleanly(
    tmp_path: Path, tok: PreTrainedTokenizerFast
) -> None:
    # A weights file without the classification head must not load with a random head.
    out = tmp_path / "t"
    save_teacher(out, make_teacher(tok), tok, CLASSES)
    weights = load_file(str(out / WEIGHTS_FILE))
    del weights["classifier.weight"]
    save_file(weights, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    with pytest.raises(UserError, match=r"classifier\.weight"):
        load_model(out, allow_modified=True)


def test_metadata_is_plain_json(tmp_path: Path, tok: PreTrainedTokenizerFast) -> None:
    save_teacher(tmp_path / "t", make_teacher(tok), tok, CLASSES, cfg=Config())
    raw = json.loads((tmp_path / "t" / META_FILE).read_text(encoding="utf-8"))
    assert raw["architecture"] == {
        "type": "hf",
        "model_type": "bert",
        "hidden_size": 32,
        "layers": 2,
        "vocab_size": len(tok),
    }
    assert raw["config"] == Config().to_dict()
    assert raw["format_version"] == folders.FORMAT_VERSION
