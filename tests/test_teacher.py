"""The teacher: the model wrapper, scratch presets, MLM masking, and ``teacher train`` end to end.

Models are tiny BERTs (hidden 32, 2 layers) on generated 3-class corpora; every run takes
about a second.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    PreTrainedTokenizerFast,
)
from typer.testing import CliRunner, Result

from textdistill.cli import app
from textdistill.core.config import Config, load_config
from textdistill.core.errors import UserError
from textdistill.core.io import dir_size_bytes
from textdistill.data.corpus import load_corpus
from textdistill.data.tokenization import build_tokenizer
from textdistill.distill import teacher_train
from textdistill.distill.teacher_train import IGNORE_INDEX, MlmCollate
from textdistill.inference.load import load
from textdistill.models.folders import count_parameters, folder_fingerprint, load_model
from textdistill.models.output import ClassifierOutput
from textdistill.models.teacher import (
    SCRATCH_PRESETS,
    TeacherModel,
    label_maps,
    scratch_bert_config,
)

CLASSES = ["sports", "finance", "game"]


def tiny_tokenizer(texts: list[str] | None = None) -> PreTrainedTokenizerFast:
    return build_tokenizer(texts or ["球队比赛冠军", "银行基金利率", "游戏玩家网游"])


def tiny_bert_config(tok: PreTrainedTokenizerFast, **overrides: Any) -> BertConfig:
    return BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=len(tok),
        **overrides,
    )


def tiny_classifier(tok: PreTrainedTokenizerFast, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(tok, **label_maps(CLASSES)))


def padded_batch(tok: PreTrainedTokenizerFast, texts: list[str]) -> dict[str, torch.Tensor]:
    enc = tok(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.output, result.exception)
    return result


# --------------------------------------------------------------------------- the wrapper


def test_pooled_vector_is_berts_pooler_output() -> None:
    tok = tiny_tokenizer()
    hf = tiny_classifier(tok).eval()
    teacher = TeacherModel(hf).eval()
    batch = padded_batch(tok, ["球队比赛冠军冠军", "银行"])  # the second row is padded

    out = teacher(**batch)

    assert isinstance(out, ClassifierOutput)
    assert out.logits.shape == (2, 3) and out.hidden is not None and out.hidden.shape == (2, 32)
    with torch.no_grad():
        reference = hf.bert(**batch).pooler_output
        logits = hf(**batch).logits
    torch.testing.assert_close(out.hidden, reference)
    torch.testing.assert_close(out.logits, logits)
    assert teacher.hidden_size == 32 and teacher.num_labels == 3


def test_albert_pooled_vector_includes_its_separate_tanh() -> None:
    # ALBERT's pooler is a bare Linear; the tanh is a sibling module (pooler_activation).
    torch.manual_seed(0)
    config = AlbertConfig(  # type: ignore[call-arg]  # num_labels: a PretrainedConfig kwarg
        vocab_size=40,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    hf = AlbertForSequenceClassification(config).eval()
    ids = torch.randint(5, 40, (3, 6))
    mask = torch.ones_like(ids)

    out = TeacherModel(hf)(ids, mask)

    with torch.no_grad():
        reference = hf.albert(input_ids=ids, attention_mask=mask).pooler_output
    torch.testing.assert_close(out.hidden, reference)
    assert float(out.hidden.detach().abs().max()) <= 1.0  # tanh range


def test_model_without_pooler_uses_first_token_of_last_layer() -> None:
    torch.manual_seed(0)
    config = DistilBertConfig(  # type: ignore[call-arg]  # num_labels: a PretrainedConfig kwarg
        vocab_size=40, dim=32, n_layers=1, n_heads=2, hidden_dim=64, num_labels=3
    )
    hf = DistilBertForSequenceClassification(config).eval()
    ids = torch.randint(5, 40, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])

    out = TeacherModel(hf)(ids, mask)

    with torch.no_grad():
        reference = hf.distilbert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
    torch.testing.assert_close(out.hidden, reference)


def test_wrapper_does_not_duplicate_pooler_weights_in_state_dict() -> None:
    hf = tiny_classifier(tiny_tokenizer())
    keys = list(TeacherModel(hf).state_dict())
    assert keys == [f"hf.{k}" for k in hf.state_dict()]


# ------------------------------------------------------------------------ scratch presets


def test_scratch_presets_and_overrides() -> None:
    cfg = scratch_bert_config("tiny", vocab_size=100, num_labels=4, pad_token_id=0)
    layers, hidden, heads, inter = SCRATCH_PRESETS["tiny"]
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (layers, hidden)
    assert (cfg.num_attention_heads, cfg.intermediate_size) == (heads, inter)
    assert (cfg.vocab_size, cfg.num_labels) == (100, 4)

    small = scratch_bert_config("mini", vocab_size=100, num_labels=2, hidden=64, layers=1)
    assert (small.hidden_size, small.num_hidden_layers) == (64, 1)
    assert small.num_attention_heads == SCRATCH_PRESETS["mini"][2]

    custom = scratch_bert_config(
        "custom", vocab_size=100, num_labels=2, layers=3, hidden=48, heads=3, dropout=0.0
    )
    assert (custom.num_hidden_layers, custom.hidden_size, custom.intermediate_size) == (3, 48, 192)
    assert custom.hidden_dropout_prob == custom.attention_probs_dropout_prob == 0.0


@pytest.mark.parametrize(
    ("preset", "sizes", "message"),
    [
        ("huge", {}, "unknown scratch preset 'huge'"),
        ("custom", {"layers": 2}, "needs --layers, --hidden and --heads"),
        ("tiny", {"hidden": 30, "heads": 4}, "not divisible by 4 heads"),
    ],
)
def test_scratch_config_errors(preset: str, sizes: dict[str, int], message: str) -> None:
    with pytest.raises(UserError, match=message):
        scratch_bert_config(preset, vocab_size=100, num_labels=2, **sizes)


# ---------------------------------------------------------------------------- MLM masking


@pytest.fixture(scope="module")
def mlm_tokenizer() -> PreTrainedTokenizerFast:
    return tiny_tokenizer([f"球队比赛冠军进球联赛银行基金利率投资理财{i}" for i in range(10)])


def mlm_rows(tok: PreTrainedTokenizerFast, n: int, start: int = 0) -> list[dict[str, torch.Tensor]]:
    """Rows as ``TextDataset`` gives them, with lengths 3..22 so that batches get padding."""
    rows = []
    for i in range(start, start + n):
        text = "球队比赛冠军进球联赛银行基金利率投资理财"[: 1 + i % 20]
        ids = tok(text)["input_ids"]
        rows.append(
            {
                "input_ids": torch.tensor(ids),
                "labels": torch.tensor(-1),
                "index": torch.tensor(i),
            }
        )
    return rows


def test_mlm_masking_is_a_function_of_seed_and_rows(mlm_tokenizer: PreTrainedTokenizerFast) -> None:
    collate = MlmCollate(mlm_tokenizer, 0.15, seed=7)
    rows = mlm_rows(mlm_tokenizer, 64)

    torch.manual_seed(0)
    first = collate(rows)
    torch.manual_seed(12345)  # the global RNG plays no part ...
    rng_before = torch.random.get_rng_state()
    second = collate(rows)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # ... and is not consumed

    for key in ("input_ids", "attention_mask", "labels", "index"):
        assert torch.equal(first[key], second[key]), key
    # Other rows, or the same rows in another order or with another seed, mask differently.
    other_rows = collate(mlm_rows(mlm_tokenizer, 64, start=1))
    assert not torch.equal(other_rows["labels"], first["labels"])
    reordered = collate(rows[::-1])
    assert not torch.equal(reordered["labels"].flip(0), first["labels"])
    other_seed = MlmCollate(mlm_tokenizer, 0.15, seed=8)(rows)
    assert not torch.equal(other_seed["labels"], first["labels"])


def test_mlm_masking_follows_bert_proportions(mlm_tokenizer: PreTrainedTokenizerFast) -> None:
    tok = mlm_tokenizer
    collate = MlmCollate(tok, 0.15, seed=3)
    rows = mlm_rows(tok, 4000)
    batch = collate(rows)
    clean = torch.nn.utils.rnn.pad_sequence(
        [r["input_ids"] for r in rows], batch_first=True, padding_value=tok.pad_token_id
    )
    mask = batch["attention_mask"].bool()
    special = torch.isin(clean, torch.tensor(tok.all_special_ids))
    maskable = mask & ~special
    selected = batch["labels"] != IGNORE_INDEX

    # Labels: the original id where selected, -100 elsewhere.
    assert torch.equal(batch["labels"][selected], clean[selected])
    # Never a special token ([CLS], [SEP]) nor padding.
    assert not (selected & ~maskable).any()
    assert torch.equal(batch["input_ids"][~selected], clean[~selected])

    n_maskable = int(maskable.sum())
    assert n_maskable > 40_000  # about 6000 selected: 0.025 is 5 standard deviations below
    assert int(selected.sum()) / n_maskable == pytest.approx(0.15, abs=0.01)
    changed = batch["input_ids"][selected]
    originals = clean[selected]
    masked = changed == tok.mask_token_id
    kept = changed == originals
    # 80 % [MASK], 10 % unchanged, 10 % random (a random draw is [MASK] or the original id
    # with probability 1/V each).
    chance = 0.1 / len(tok)
    assert float(masked.float().mean()) == pytest.approx(0.8 + chance, abs=0.025)
    assert float(kept.float().mean()) == pytest.approx(0.1 + chance, abs=0.025)
    replaced = ~masked & ~kept
    assert float(replaced.float().mean()) == pytest.approx(0.1 - 2 * chance, abs=0.025)
    assert int(changed[replaced].max()) < len(tok)


def test_mlm_batch_always_has_a_masked_token(mlm_tokenizer: PreTrainedTokenizerFast) -> None:
    # With a tiny probability nothing would be selected; the loss would then be 0/0 = NaN.
    collate = MlmCollate(mlm_tokenizer, 1e-6, seed=0)
    batch = collate(mlm_rows(mlm_tokenizer, 2, start=4))
    selected = batch["labels"] != IGNORE_INDEX
    assert int(selected.sum()) == 1
    ids = batch["input_ids"]
    assert int(ids[0, 0]) == mlm_tokenizer.cls_token_id  # specials still untouched
    assert not selected[:, 0].any()


def test_mlm_collate_needs_a_mask_token(mlm_tokenizer: PreTrainedTokenizerFast) -> None:
    tok = tiny_tokenizer()
    tok.mask_token = None
    with pytest.raises(UserError, match="mask token"):
        MlmCollate(tok, 0.15, seed=0)


# ------------------------------------------------------------------- teacher train (CLI)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, corpus_builder: Callable[..., Path]) -> Path:
    return corpus_builder(tmp_path_factory.mktemp("corpus") / "data", per_class=8)


def corpus_texts(corpus: Path) -> list[str]:
    lines = (corpus / "train.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[0] for line in lines]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """A tiny BERT checkpoint (masked-LM head, no classifier) with its tokenizer."""
    path = tmp_path_factory.mktemp("pretrained") / "tiny-bert"
    tok = tiny_tokenizer(corpus_texts(corpus))
    torch.manual_seed(0)
    BertForMaskedLM(tiny_bert_config(tok, max_position_embeddings=64)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


FOLDER_FILES = {
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "labels.json",
    "config.yaml",
    "textdistill.json",
    "metrics.jsonl",
}


def read_history(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_fine_tune_a_checkpoint(tmp_path: Path, corpus: Path, pretrained: Path) -> None:
    out = tmp_path / "teacher"
    # A learning rate so small that the encoder stays the checkpoint's: proves it was loaded.
    result = ok(
        invoke(
            "teacher", "train", "--model", pretrained, "--data", corpus, "--out", out,
            "--epochs", "1", "--batch-size", "8", "--lr", "1e-12", "--max-len", "16", "-q",
        )
    )  # fmt: skip

    assert f"teacher saved to {out}" in " ".join(result.output.split())
    assert {p.name for p in out.iterdir()} >= FOLDER_FILES
    assert not (tmp_path / "teacher.work").exists()
    assert json.loads((out / "labels.json").read_text(encoding="utf-8")) == CLASSES

    loaded = load_model(out)
    encoder = load_file(str(pretrained / "model.safetensors"))
    assert isinstance(loaded.model, TeacherModel)
    hf = loaded.model.hf
    torch.testing.assert_close(
        loaded.model.word_embeddings(), encoder["bert.embeddings.word_embeddings.weight"]
    )
    assert hf.config.id2label == dict(enumerate(CLASSES))
    assert hf.config.max_position_embeddings == 64

    meta = loaded.meta
    assert meta["kind"] == "teacher" and meta["initialized_from"] == str(pretrained)
    assert meta["num_parameters"] == count_parameters(loaded.model)
    assert meta["size_mb"] == pytest.approx(dir_size_bytes(out) / 1e6, rel=0.05)
    assert meta["fingerprint"] == folder_fingerprint(out)
    assert meta["max_len"] == 16 and meta["train_rows"] == 24
    assert set(meta["dev_metrics"]) == {"loss", "accuracy", "macro_f1"}
    # The saved dev accuracy is the saved model's: re-scored by hand from its logits.
    dev = load_corpus(corpus).split("dev")
    own = np.argmax(load(out).logits(dev.texts), axis=1)
    assert meta["dev_metrics"]["accuracy"] == pytest.approx(
        np.mean(own == np.asarray(dev.labels)), abs=1e-6
    )

    cfg = load_config(out / "config.yaml")
    assert cfg.teacher.model == str(pretrained) and cfg.teacher.train.lr == 1e-12
    assert cfg.data.dir == str(corpus) and cfg.tokenizer.max_len == 16
    assert meta["config"] == cfg.to_dict()

    history = read_history(out)
    assert {e["stage"] for e in history} == {"teacher"}
    evals = [e for e in history if "eval" in e]
    assert len(evals) == 1 and evals[0]["eval"] == pytest.approx(meta["dev_metrics"])


def scratch_args(corpus: Path, out: Path, *extra: str) -> list[str]:
    return [
        "teacher", "train", "--scratch", "tiny", "--layers", "2", "--hidden", "32",
        "--heads", "2", "--data", str(corpus), "--out", str(out), "--batch-size", "8",
        "--max-len", "16", "-q", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_train_from_scratch_end_to_end(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "teacher"
    ok(invoke(*scratch_args(corpus, out, "--epochs", "10", "--lr", "5e-3", "--seed", "1")))

    assert {p.name for p in out.iterdir()} >= FOLDER_FILES
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    _, _, _, intermediate = SCRATCH_PRESETS["tiny"]
    assert (config["num_hidden_layers"], config["hidden_size"]) == (2, 32)
    assert (config["num_attention_heads"], config["intermediate_size"]) == (2, intermediate)

    loaded = load_model(out)
    assert config["vocab_size"] == len(loaded.tokenizer)
    meta = loaded.meta
    assert meta["initialized_from"] == "scratch:tiny" and meta["mlm_epochs"] == 0
    # It learned the keyword classes (chance is 1/3 and ln 3 = 1.0986).
    assert meta["dev_metrics"]["accuracy"] > 0.6
    assert meta["dev_metrics"]["loss"] < math.log(3)
    assert load_config(out / "config.yaml").teacher.train.seed == 1
    # A trained teacher folder is servable and exportable as it is (its metadata must not
    # look like an export's).
    from fastapi.testclient import TestClient

    from textdistill.deploy.export import export_model
    from textdistill.deploy.serve import create_app

    with TestClient(create_app(out)) as client:
        assert client.get("/v1/model").json()["kind"] == "teacher"
    assert export_model(out, tmp_path / "teacher-onnx").format == "onnx"


def test_mlm_pretraining_changes_the_encoder(tmp_path: Path, corpus: Path) -> None:
    """MLM then no fine-tuning at all: the encoder differs from its seeded initial weights."""
    cfg = Config.model_validate(
        {
            "data": {"dir": str(corpus)},
            "tokenizer": {"max_len": 16},
            "teacher": {
                "scratch": "tiny",
                "layers": 2,
                "hidden": 32,
                "heads": 2,
                "mlm": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "progress": False},
                "train": {"epochs": 0, "progress": False},
            },
        }
    )
    from textdistill.data.splits import open_corpus

    result = teacher_train.train_teacher(cfg, open_corpus(cfg), tmp_path / "teacher")

    tok = load_model(result.path).tokenizer
    torch.manual_seed(cfg.teacher.mlm.seed)
    initial = teacher_train.new_scratch_mlm(teacher_train._scratch_config(cfg, tok, 3))
    after = load_file(str(result.path / "model.safetensors"))
    for name in (
        "bert.embeddings.word_embeddings.weight",
        "bert.encoder.layer.0.output.dense.weight",
    ):
        before = initial.state_dict()[name]
        assert before.shape == after[name].shape
        assert not torch.allclose(before, after[name]), name
    # The seeded initial weights are the starting point: positions never reached (max_len 16)
    # get no gradient and only shrink by weight decay (3 steps of lr 1e-3 x 0.01).
    torch.testing.assert_close(
        initial.state_dict()["bert.embeddings.position_embeddings.weight"][16:],
        after["bert.embeddings.position_embeddings.weight"][16:],
        rtol=1e-4,
        atol=1e-7,
    )
    history = read_history(result.path)
    mlm_steps = [e for e in history if e["stage"] == "mlm" and "loss" in e]
    assert [e["step"] for e in mlm_steps] == [1, 2, 3]
    assert all(math.isfinite(e["mlm"]) for e in mlm_steps)
    assert result.meta["mlm_epochs"] == 1


def test_max_len_beyond_the_checkpoint_positions(
    tmp_path: Path, corpus: Path, pretrained: Path
) -> None:
    result = invoke(
        "teacher", "train", "--model", pretrained, "--data", corpus, "--out", tmp_path / "t",
        "--epochs", "1", "--max-len", "100", "-q",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "exceeds the model's 64 positions" in " ".join(result.output.split())
    assert not (tmp_path / "t").exists()


def test_missing_checkpoint_is_a_user_error(tmp_path: Path, corpus: Path) -> None:
    result = invoke(
        "teacher", "train", "--model", tmp_path / "nope", "--data", corpus, "--out", tmp_path / "t"
    )
    assert result.exit_code == 2, result.output
    assert "nope" in result.output


# ---------------------------------------------------------------------------- resumption


class Killed(Exception):
    """Stands in for a SIGKILL in the middle of training."""


class LossCalls:
    """Wraps the two stage losses: counts their calls and raises :class:`Killed` at one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = {"mlm": 0, "teacher": 0}
        self.kill_at: tuple[str, int] | None = None
        for stage, name in (("mlm", "mlm_loss"), ("teacher", "classification_loss")):
            monkeypatch.setattr(
                teacher_train, name, self._wrap(stage, getattr(teacher_train, name))
            )

    def _wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any) -> Any:
            self.calls[stage] += 1
            if self.kill_at == (stage, self.calls[stage]):
                raise Killed
            return fn(*args)

        return wrapped

    def reset(self, kill_at: tuple[str, int] | None = None) -> None:
        self.calls = {"mlm": 0, "teacher": 0}
        self.kill_at = kill_at


RESUME_CONFIG: dict[str, Any] = {
    # 24 rows in batches of 8: 3 steps per epoch, 6 per stage. Checkpoints at steps 2, 3 (epoch
    # end) and 4: mid-epoch ones are taken with the next batch already collated (prefetched),
    # which a resumed run collates again - MLM masking must not depend on the global RNG.
    "tokenizer": {"max_len": 16},
    "teacher": {
        "scratch": "tiny",
        "layers": 2,
        "hidden": 32,
        "heads": 2,
        "dropout": 0.2,  # the RNG state matters: it must be restored
        "mlm": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 2},
        "train": {"epochs": 2, "batch_size": 8, "lr": 2e-3, "patience": 0, "checkpoint_every": 2},
    },
}


def without_timing(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "samples_per_s"} for e in history]


@pytest.mark.slow
def test_resume_after_kills_reproduces_the_uninterrupted_run(
    tmp_path: Path,
    corpus: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    records_close: Callable[..., None],
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(RESUME_CONFIG), encoding="utf-8")
    losses = LossCalls(monkeypatch)

    def run(out: Path, *flags: str) -> Result:
        return invoke(
            "teacher", "train", "-c", config, "--data", corpus, "--out", out, "-q", *flags
        )

    reference = tmp_path / "reference"
    ok(run(reference))
    assert losses.calls == {"mlm": 6, "teacher": 6}

    out = tmp_path / "teacher"
    # Killed in the second MLM epoch: the MLM checkpoint of step 4 is left.
    losses.reset(kill_at=("mlm", 5))
    assert isinstance(run(out).exception, Killed)
    assert not out.exists()
    # Resumed, then killed in the second fine-tuning epoch.
    losses.reset(kill_at=("teacher", 5))
    assert isinstance(run(out, "--resume").exception, Killed)
    assert losses.calls == {"mlm": 2, "teacher": 5}  # MLM continued from step 4, not step 0
    # Resumed again: the finished MLM model is reused, fine-tuning continues from step 4.
    losses.reset()
    with caplog.at_level(logging.INFO, logger="textdistill"):
        ok(run(out, "--resume"))
    assert losses.calls == {"mlm": 0, "teacher": 2}
    assert "reusing it" in caplog.text

    got, want = (
        load_file(str(out / "model.safetensors")),
        load_file(str(reference / "model.safetensors")),
    )
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=name)
    got_meta = json.loads((out / "textdistill.json").read_text(encoding="utf-8"))
    want_meta = json.loads((reference / "textdistill.json").read_text(encoding="utf-8"))
    assert got_meta["dev_metrics"] == pytest.approx(want_meta["dev_metrics"], abs=1e-6)
    assert got_meta["best_step"] == want_meta["best_step"]
    records_close(without_timing(read_history(out)), without_timing(read_history(reference)))
    assert {e["stage"] for e in read_history(out)} == {"mlm", "teacher"}
    assert not (tmp_path / "teacher.work").exists()


def test_resume_retrains_a_finished_mlm_model_of_other_settings(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(RESUME_CONFIG), encoding="utf-8")
    losses = LossCalls(monkeypatch)
    out = tmp_path / "teacher"
    losses.reset(kill_at=("teacher", 1))
    args: list[str | Path] = [
        "teacher",
        "train",
        "-c",
        config,
        "--data",
        corpus,
        "--out",
        out,
        "-q",
    ]
    assert isinstance(invoke(*args).exception, Killed)
    assert (tmp_path / "teacher.work" / "mlm" / "model" / teacher_train.MLM_STAMP).is_file()

    # Same settings but another MLM learning rate: the finished MLM model does not apply.
    other = copy.deepcopy(RESUME_CONFIG)
    other["teacher"]["mlm"]["lr"] = 5e-4
    config.write_text(yaml.safe_dump(other), encoding="utf-8")
    losses.reset(kill_at=("teacher", 1))
    assert isinstance(invoke(*args, "--resume").exception, Killed)
    assert losses.calls["mlm"] == 6


def test_classifier_initialisation_is_seeded(tmp_path: Path, corpus: Path) -> None:
    """Two fresh runs with the same seed give the same teacher; another seed another one."""
    runs = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        ok(invoke(*scratch_args(corpus, tmp_path / name, "--epochs", "1", "--seed", seed)))
        runs[name] = load_file(str(tmp_path / name / "model.safetensors"))
    for key in runs["a"]:
        torch.testing.assert_close(runs["a"][key], runs["b"][key], rtol=0, atol=0)
    assert not torch.equal(runs["a"]["classifier.weight"], runs["c"]["classifier.weight"])
    assert folder_fingerprint(tmp_path / "a") == folder_fingerprint(tmp_path / "b")


def test_teacher_and_student_forward_contract_on_padded_batches() -> None:
    """A padded row gets the logits it gets alone (attention masking works end to end)."""
    tok = tiny_tokenizer()
    teacher = TeacherModel(tiny_classifier(tok)).eval()
    texts = ["球队比赛冠军冠军", "银行"]
    together = teacher(**padded_batch(tok, texts))
    with torch.no_grad():
        alone = teacher(**padded_batch(tok, texts[1:]))
    assert together.hidden is not None and alone.hidden is not None
    np.testing.assert_allclose(together.logits[1].detach(), alone.logits[0], atol=1e-5)
    np.testing.assert_allclose(together.hidden[1].detach(), alone.hidden[0], atol=1e-5)


def test_resume_refuses_a_checkpoint_of_other_labels(
    tmp_path: Path, corpus_builder: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = corpus_builder(tmp_path / "data", per_class=8)
    settings = copy.deepcopy(RESUME_CONFIG)
    settings["teacher"]["mlm"]["epochs"] = 0  # fine-tuning only: fast
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings), encoding="utf-8")
    out = tmp_path / "teacher"
    args = ["teacher", "train", "-c", config, "--data", data, "--out", out, "-q"]
    losses = LossCalls(monkeypatch)
    losses.reset(kill_at=("teacher", 5))  # after the checkpoint of step 4
    assert isinstance(invoke(*args).exception, Killed)

    train = data / "train.txt"
    rows = [line.rsplit("\t", 1) for line in train.read_text(encoding="utf-8").splitlines()]
    train.write_text("".join(f"{t}\t{(int(y) + 1) % 3}\n" for t, y in rows), encoding="utf-8")
    losses.reset()
    result = invoke(*args, "--resume")
    assert result.exit_code == 2, (result.output, result.exception)
    said = " ".join(result.output.split())
    assert "the training data changed since the checkpoint (texts: same, labels: different" in said
    assert "dev texts: same, dev labels: same" in said
    assert losses.calls == {"mlm": 0, "teacher": 0}  # refused before any training
