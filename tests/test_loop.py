"""The shared training loop: learning, evaluation, early stopping, best weights, checkpoints.

Everything runs on a bag-of-embeddings classifier over synthetic token sequences whose class
is given by two "signal" tokens among noise tokens, so a few epochs reach high accuracy.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from sklearn.metrics import f1_score
from torch import Tensor, nn
from torch.utils.data import Dataset

from textdistill.core.config import TrainConfig
from textdistill.core.errors import UserError
from textdistill.models.output import ClassifierOutput
from textdistill.training import checkpoint as ckpt
from textdistill.training.history import METRICS_FILE
from textdistill.training.loop import (
    FitResult,
    _EpochSampler,
    fit,
    param_groups,
)

VOCAB = 40
NUM_LABELS = 4
HIDDEN = 16


# ------------------------------------------------------------------------ toy problem


class ToyDataset(Dataset[dict[str, Any]]):
    def __init__(self, n: int, seed: int, random_labels: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.rows: list[dict[str, Any]] = []
        for i in range(n):
            y = i % NUM_LABELS
            length = 3 + int(torch.randint(0, 5, (1,), generator=g))
            # Tokens 1..20: five per class; 21..39: noise shared by all classes.
            signal = torch.randint(1 + 5 * y, 6 + 5 * y, (2,), generator=g)
            noise = torch.randint(21, VOCAB, (length - 2,), generator=g)
            ids = torch.cat([signal, noise])[torch.randperm(length, generator=g)]
            label = int(torch.randint(0, NUM_LABELS, (1,), generator=g)) if random_labels else y
            self.rows.append({"input_ids": ids.tolist(), "label": label})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.rows[i], "index": i}


def collate(rows: list[dict[str, Any]]) -> dict[str, Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.tensor([r["label"] for r in rows]),
        "index": torch.tensor([r["index"] for r in rows]),
    }


class BagClassifier(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, HIDDEN, padding_idx=0)
        self.norm = nn.LayerNorm(HIDDEN)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(HIDDEN, NUM_LABELS)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> ClassifierOutput:
        h = self.emb(input_ids)  # (B, T, H)
        m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        pooled = self.drop(self.norm((h * m).sum(1) / m.sum(1).clamp(min=1)))  # (B, H)
        return ClassifierOutput(logits=self.out(pooled), hidden=pooled)


@dataclass
class Loss:
    loss: Tensor
    terms: dict[str, float]


def ce_loss(model: nn.Module, batch: dict[str, Tensor], progress: float) -> Loss:
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    loss = F.cross_entropy(out.logits, batch["labels"])
    return Loss(loss, {"ce": loss.item()})


def make_model(dropout: float = 0.0, seed: int = 0) -> BagClassifier:
    torch.manual_seed(seed)
    return BagClassifier(dropout)


def config(**overrides: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "epochs": 3,
        "batch_size": 8,
        "lr": 0.05,
        "weight_decay": 0.01,
        "warmup_ratio": 0.1,
        "seed": 7,
        "metric": "accuracy",
        "patience": 0,
        "progress": False,
    }
    return TrainConfig(**{**base, **overrides})


def read_metrics(work_dir: Path) -> list[dict[str, Any]]:
    lines = (work_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def without_timing(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "samples_per_s"} for e in history]


def weights_of(*modules: nn.Module) -> list[Tensor]:
    return [t.detach().clone() for m in modules for t in m.state_dict().values()]


def assert_same_weights(a: list[Tensor], b: list[Tensor], atol: float = 1e-6) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.allclose(x, y, atol=atol), (x - y).abs().max()


# ----------------------------------------------------------------------------- learning


def model_logits(model: nn.Module, dataset: ToyDataset) -> np.ndarray:
    """Float32 logits (N, C) of every row, one row at a time (no padding, no loop code)."""
    model.eval()
    with torch.no_grad():
        rows = [collate([dataset[i]]) for i in range(len(dataset))]
        out = [model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]) for b in rows]
    return torch.cat([o.logits for o in out]).float().numpy()


def test_fit_learns_separable_data(tmp_path: Path) -> None:
    train, dev = ToyDataset(96, seed=1), ToyDataset(40, seed=2)
    result = fit(
        make_model(),
        ce_loss,
        train,
        config(epochs=4),
        tmp_path,
        collate_fn=collate,
        dev_set=dev,
        num_labels=NUM_LABELS,
    )
    train_logs = [e for e in result.history if "loss" in e and "eval" not in e]
    assert train_logs[-1]["loss"] < 0.5 * train_logs[0]["loss"]
    assert result.best_metrics["accuracy"] >= 0.95
    assert result.steps == 4 * 12

    # The reported metrics are those of the returned model on the dev set.
    logits = model_logits(result.model, dev)
    assert logits.shape == (40, NUM_LABELS) and logits.dtype == np.float32
    gold = np.array([r["label"] for r in dev.rows])
    preds = logits.argmax(1)
    assert result.best_metrics["accuracy"] == pytest.approx((preds == gold).mean())
    assert result.best_metrics["macro_f1"] == pytest.approx(
        f1_score(gold, preds, average="macro", labels=range(NUM_LABELS))
    )
    ce = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(gold)).item()
    assert result.best_metrics["loss"] == pytest.approx(ce, rel=1e-5)
    # A finished run keeps its history and its checkpoint: the caller removes the work dir
    # only after saving the model folder, so a failed save can still be resumed.
    assert (tmp_path / METRICS_FILE).is_file()
    assert ckpt.find_checkpoint(tmp_path) is not None


def test_dev_rows_without_gold_label_are_ignored(tmp_path: Path) -> None:
    dev = ToyDataset(20, seed=2)
    for row in dev.rows[10:]:
        row["label"] = -1
    result = fit(
        make_model(),
        ce_loss,
        ToyDataset(32, seed=1),
        config(epochs=1),
        tmp_path,
        collate_fn=collate,
        dev_set=dev,
    )
    evals = [e for e in result.history if "eval" in e]
    assert evals[0]["rows"] == 20
    logits = model_logits(result.model, dev)[:10]
    gold = np.array([r["label"] for r in dev.rows[:10]])
    assert result.best_metrics["accuracy"] == pytest.approx((logits.argmax(1) == gold).mean())


def test_learning_rate_warms_up_then_decays_linearly(tmp_path: Path) -> None:
    # 80 rows / batch 8 = 10 steps; warmup ceil(0.2 * 10) = 2 steps. The logged rate is the
    # one each step used: 0, 1/2, then (10 - s) / 8 for s = 2..9.
    result = fit(
        make_model(),
        ce_loss,
        ToyDataset(80, seed=1),
        config(epochs=1, lr=0.1, warmup_ratio=0.2, log_every=1),
        tmp_path,
        collate_fn=collate,
    )
    lrs = [e["lr"] for e in result.history]
    expected = [0.0, 0.05] + [0.1 * (10 - s) / 8 for s in range(2, 10)]
    assert lrs == pytest.approx(expected)
    assert [e["step"] for e in result.history] == list(range(1, 11))


def test_param_groups_skip_decay_on_biases_and_norms() -> None:
    model = nn.ModuleDict(
        {
            "emb": nn.Embedding(5, 4),
            "norm": nn.LayerNorm(4),
            "lstm": nn.LSTM(4, 3),
            "head": nn.Linear(3, 2),
            "frozen": nn.Linear(2, 2),
        }
    )
    model["frozen"].requires_grad_(False)
    extra = nn.Linear(4, 4)
    extra.weight = model["emb"].weight  # shared with the model: must appear once
    groups = param_groups([model, extra], weight_decay=0.5)
    names = {id(p): n for n, p in [*extra.named_parameters(), *model.named_parameters()]}
    decay = sorted(names[id(p)] for p in groups[0]["params"])
    no_decay = sorted(names[id(p)] for p in groups[1]["params"])
    assert groups[0]["weight_decay"] == 0.5 and groups[1]["weight_decay"] == 0.0
    assert decay == ["emb.weight", "head.weight", "lstm.weight_hh_l0", "lstm.weight_ih_l0"]
    assert no_decay == [
        "bias",
        "head.bias",
        "lstm.bias_hh_l0",
        "lstm.bias_ih_l0",
        "norm.bias",
        "norm.weight",
    ]


def test_epoch_order_depends_only_on_seed_and_epoch() -> None:
    a, b = _EpochSampler(50, seed=3), _EpochSampler(50, seed=3)
    first = list(a)
    assert sorted(first) == list(range(50))
    assert list(b) == first
    a.epoch = 1
    second = list(a)
    assert second != first
    b.epoch = 1
    assert list(b) == second
    assert list(_EpochSampler(50, seed=4)) != first


# ------------------------------------------------------------------ evaluation / stopping


def scripted_eval(values: list[float], snapshots: list[list[Tensor]]) -> Callable[..., Any]:
    """An eval_fn that returns ``values`` in turn and records the weights it saw."""
    calls = iter(values)

    def evaluate(model: nn.Module) -> dict[str, float]:
        assert not model.training
        snapshots.append(weights_of(model))
        return {"accuracy": next(calls)}

    return evaluate


def test_early_stopping_after_patience_evaluations_without_improvement(tmp_path: Path) -> None:
    seen: list[list[Tensor]] = []
    result = fit(
        make_model(),
        ce_loss,
        ToyDataset(48, seed=1),
        config(epochs=5, eval_every=1, patience=2),
        tmp_path,
        collate_fn=collate,
        eval_fn=scripted_eval([0.5, 0.4, 0.45, 0.9], seen),
    )
    # Evaluations at steps 1 (best), 2 and 3 (no improvement twice) -> stop mid-epoch at 3.
    assert result.stopped_early
    assert result.steps == 3
    evals = [e for e in result.history if "eval" in e]
    assert [e["step"] for e in evals] == [1, 2, 3]
    assert [e["best"] for e in evals] == [True, False, False]
    assert result.best_step == 1 and result.best_metrics == {"accuracy": 0.5}
    assert_same_weights(weights_of(result.model), seen[0], atol=0)


def test_early_stopping_on_unlearnable_dev_set(tmp_path: Path) -> None:
    # Random dev labels: the loss on them cannot keep improving while training fits the
    # train set, so patience 1 must end the run well before its 20-epoch budget.
    result = fit(
        make_model(),
        ce_loss,
        ToyDataset(48, seed=1),
        config(epochs=20, metric="loss", patience=1),
        tmp_path,
        collate_fn=collate,
        dev_set=ToyDataset(40, seed=2, random_labels=True),
    )
    assert result.stopped_early
    assert result.steps < 20 * 6
    evals = [e for e in result.history if "eval" in e]
    assert evals[-1]["best"] is False
    assert result.best_metrics["loss"] == min(e["eval"]["loss"] for e in evals)


def test_evaluation_does_not_change_the_training_trajectory(tmp_path: Path) -> None:
    def greedy_eval(model: nn.Module) -> dict[str, float]:
        # Draws from every global RNG; improves each time so the best is the last step.
        greedy_eval.calls += 1  # type: ignore[attr-defined]
        torch.rand(7)
        random.random()
        np.random.rand(3)
        return {"accuracy": float(greedy_eval.calls)}  # type: ignore[attr-defined]

    greedy_eval.calls = 0  # type: ignore[attr-defined]
    runs = []
    for eval_fn in (greedy_eval, None):
        model = make_model(dropout=0.3)
        fit(
            model,
            ce_loss,
            ToyDataset(32, seed=1),
            config(epochs=2, eval_every=1),
            tmp_path / str(eval_fn is None),
            collate_fn=collate,
            eval_fn=eval_fn,
        )
        runs.append(weights_of(model))
    assert greedy_eval.calls == 8  # type: ignore[attr-defined]
    assert_same_weights(runs[0], runs[1], atol=0)


def test_returns_the_best_weights_not_the_last(tmp_path: Path) -> None:
    seen: list[list[Tensor]] = []
    proj = nn.Linear(HIDDEN, 3)
    result = fit(
        make_model(),
        loss_with_projection(proj),
        ToyDataset(48, seed=1),
        config(epochs=2, eval_every=2),
        tmp_path,
        collate_fn=collate,
        extra_modules=[proj],
        eval_fn=scripted_eval([0.1, 0.9, 0.5, 0.3, 0.2, 0.1], seen),
    )
    # 6 steps per epoch: evaluations at 2, 4, 6 (epoch end, once), 8, 10, 12 (epoch end).
    assert [e["step"] for e in result.history if "eval" in e] == [2, 4, 6, 8, 10, 12]
    assert result.best_step == 4
    assert_same_weights(weights_of(result.model), seen[1], atol=0)
    assert not torch.allclose(weights_of(result.model)[0], seen[-1][0])


# --------------------------------------------------------------------- extra modules


def loss_with_projection(proj: nn.Module, noisy: bool = False) -> Callable[..., Loss]:
    """CE plus an MSE pulling ``proj(hidden)`` towards fixed per-class targets.

    ``noisy`` scales the loss by draws from Python's and NumPy's RNGs, so a resumed run only
    matches if those states are restored too.
    """
    targets = torch.linspace(-1, 1, NUM_LABELS * 3).reshape(NUM_LABELS, 3)

    def loss_fn(model: nn.Module, batch: dict[str, Tensor], progress: float) -> Loss:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        ce = F.cross_entropy(out.logits, batch["labels"])
        mse = F.mse_loss(proj(out.hidden), targets[batch["labels"]])
        loss = ce + mse
        if noisy:
            loss = loss * (1 + 0.01 * random.random() + 0.01 * float(np.random.rand()))
        return Loss(loss, {"ce": ce.item(), "mse": mse.item(), "progress": progress})

    return loss_fn


def test_extra_modules_are_trained(tmp_path: Path) -> None:
    torch.manual_seed(5)
    proj = nn.Linear(HIDDEN, 3)
    before = weights_of(proj)
    result = fit(
        make_model(),
        loss_with_projection(proj),
        ToyDataset(48, seed=1),
        config(epochs=3, log_every=1),
        tmp_path,
        collate_fn=collate,
        extra_modules=[proj],
    )
    after = weights_of(proj)
    assert all(not torch.allclose(a, b) for a, b in zip(before, after, strict=True))
    mse = [e["mse"] for e in result.history]
    assert mse[-1] < 0.5 * mse[0]
    # progress is steps done / total steps (18): 0 for the first step's batch.
    assert result.history[0]["progress"] == 0.0
    assert result.history[-1]["progress"] == pytest.approx(17 / 18)


def test_without_evaluation_the_last_weights_are_returned(tmp_path: Path) -> None:
    model = make_model()
    result = fit(
        model, ce_loss, ToyDataset(24, seed=1), config(epochs=2), tmp_path, collate_fn=collate
    )
    assert result.model is model
    assert result.best_step == result.steps == 6
    assert result.best_metrics == {}
    assert not any("eval" in e for e in result.history)


# ----------------------------------------------------------------------- metrics.jsonl


def test_metrics_jsonl_holds_train_and_eval_entries(tmp_path: Path) -> None:
    (tmp_path / METRICS_FILE).write_text(
        json.dumps({"stage": "mlm", "step": 1, "loss": 3.0}) + "\n", encoding="utf-8"
    )
    proj = nn.Linear(HIDDEN, 3)
    kwargs: dict[str, Any] = {
        "collate_fn": collate,
        "dev_set": ToyDataset(20, seed=2),
        "extra_modules": [proj],
        "num_labels": NUM_LABELS,
        "stage": "distill",
    }
    cfg = config(epochs=2, eval_every=2, eval_subset=8, log_every=2)
    fit(make_model(), loss_with_projection(proj), ToyDataset(48, seed=1), cfg, tmp_path, **kwargs)
    # A second run of the same stage replaces that stage's lines, not the other stages'.
    result = fit(
        make_model(), loss_with_projection(proj), ToyDataset(48, seed=1), cfg, tmp_path, **kwargs
    )
    lines = read_metrics(tmp_path)
    assert lines[0] == {"stage": "mlm", "step": 1, "loss": 3.0}
    assert lines[1:] == result.history

    train = [e for e in result.history if "eval" not in e]
    assert [e["step"] for e in train] == [2, 4, 6, 8, 10, 12]
    for e in train:
        assert e["stage"] == "distill"
        assert {"epoch", "lr", "loss", "ce", "mse", "grad_norm", "samples_per_s"} <= set(e)
        assert e["loss"] == pytest.approx(e["ce"] + e["mse"], rel=1e-5)
    assert train[2]["epoch"] == 1.0

    evals = [e for e in result.history if "eval" in e]
    # Mid-epoch evaluations use the first 8 dev rows; epoch ends use all 20.
    assert [(e["step"], e["rows"]) for e in evals] == [
        (2, 8),
        (4, 8),
        (6, 20),
        (8, 8),
        (10, 8),
        (12, 20),
    ]
    assert set(evals[0]["eval"]) == {"loss", "accuracy", "macro_f1"}


def test_non_finite_loss_is_reported(tmp_path: Path) -> None:
    def nan_loss(model: nn.Module, batch: dict[str, Tensor], progress: float) -> Loss:
        loss = ce_loss(model, batch, progress).loss
        return Loss(loss * float("nan"), {})

    with pytest.raises(UserError, match="learning rate"):
        fit(make_model(), nan_loss, ToyDataset(16, seed=1), config(), tmp_path, collate_fn=collate)


def test_bf16_autocast_runs(tmp_path: Path) -> None:
    result = fit(
        make_model(),
        ce_loss,
        ToyDataset(32, seed=1),
        config(epochs=2, bf16=True),
        tmp_path / "bf16",
        collate_fn=collate,
        dev_set=ToyDataset(16, seed=2),
    )
    assert all(np.isfinite(e["loss"]) for e in result.history if "eval" not in e)
    # The autocast wrapper is removed from the returned model: full precision again.
    batch = collate([ToyDataset(2, seed=3)[0]])
    out = result.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out.logits.dtype == torch.float32
    # A later run in the same process may use another precision.
    cfg = config(epochs=1)
    fit(make_model(), ce_loss, ToyDataset(16, seed=1), cfg, tmp_path / "fp32", collate_fn=collate)


# ------------------------------------------------------------------------- resumption


class Killed(Exception):
    """Stands in for a SIGKILL in the middle of training."""


def killed_at(loss_fn: Callable[..., Loss], call: int) -> Callable[..., Loss]:
    calls = 0

    def fn(model: nn.Module, batch: dict[str, Tensor], progress: float) -> Loss:
        nonlocal calls
        calls += 1
        if calls == call:
            raise Killed
        return loss_fn(model, batch, progress)

    return fn


# 48 rows / batch 8 = 6 micro-batches per epoch, grad_accum 2 -> 3 steps per epoch, 9 in all.
# Checkpoints at steps 3 (epoch end) and 5; logs at 3, 4, 6, 8 and 9. Micro-batch 11 is the
# first half of step 6, so the resumed run restarts mid-epoch 2 from step 5: it must skip the
# 4 batches already used and carry on the loss tally of step 5, not yet logged.
RESUME_CFG: dict[str, Any] = {
    "epochs": 3,
    "grad_accum": 2,
    "checkpoint_every": 5,
    "eval_every": 2,
    "eval_subset": 8,
    "log_every": 4,
    "patience": 0,
}
KILL_AT_CALL = 11


IDENTITY: dict[str, dict[str, Any]] = {
    "data": {"texts": "a" * 64, "labels": "b" * 64},
    "config": {"student": {"arch": "bilstm", "options": {"hidden_dim": 16}}},
    "teacher": {"fingerprints": "c" * 64},
}
"""What a caller (distill, teacher training) tells fit() about the run."""


def resumable_run(
    work_dir: Path,
    kill_at: int | None = None,
    identity: dict[str, dict[str, Any]] | None = None,
    **overrides: Any,
) -> tuple[FitResult, nn.Module]:
    """The run that gets killed and resumed; returns the result and the extra module."""
    model = make_model(dropout=0.2, seed=0)
    torch.manual_seed(1)
    proj = nn.Linear(HIDDEN, 3)
    loss_fn = loss_with_projection(proj, noisy=True)
    if kill_at is not None:
        loss_fn = killed_at(loss_fn, kill_at)
    result = fit(
        model,
        loss_fn,
        ToyDataset(48, seed=1),
        config(**{**RESUME_CFG, **overrides}),
        work_dir,
        collate_fn=collate,
        dev_set=ToyDataset(20, seed=2),
        extra_modules=[proj],
        num_labels=NUM_LABELS,
        identity=IDENTITY if identity is None else identity,
    )
    return result, proj


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[FitResult, nn.Module]:
    return resumable_run(tmp_path_factory.mktemp("uninterrupted"))


def kill(work_dir: Path) -> None:
    with pytest.raises(Killed):
        resumable_run(work_dir, kill_at=KILL_AT_CALL)


Run = tuple[FitResult, nn.Module]


def test_resume_after_kill_reproduces_uninterrupted_run(tmp_path: Path, uninterrupted: Run) -> None:
    kill(tmp_path)
    state, _ = ckpt.read_state(tmp_path / ckpt.CHECKPOINT_DIR)
    assert (state.step, state.epoch, state.batch_in_epoch) == (5, 1, 4)

    resumed, resumed_proj = resumable_run(tmp_path, resume=True)
    reference, reference_proj = uninterrupted
    assert resumed.steps == reference.steps == 9
    assert_same_weights(weights_of(resumed.model), weights_of(reference.model))
    assert_same_weights(weights_of(resumed_proj), weights_of(reference_proj))
    assert resumed.best_step == reference.best_step
    assert resumed.best_metrics == pytest.approx(reference.best_metrics)
    assert without_timing(resumed.history) == without_timing(reference.history)
    # metrics.jsonl holds each event once, although step 6 partly ran twice.
    assert read_metrics(tmp_path) == resumed.history
    # The final checkpoint stays (the caller removes it after saving the model folder) ...
    final, _ = ckpt.read_state(tmp_path / ckpt.CHECKPOINT_DIR)
    assert final.step == 9
    # ... so a run whose final save failed resumes to the same result without training.
    again, again_proj = resumable_run(tmp_path, resume=True)
    assert again.steps == 9
    assert_same_weights(weights_of(again.model), weights_of(reference.model))
    assert_same_weights(weights_of(again_proj), weights_of(reference_proj))
    assert again.best_metrics == pytest.approx(reference.best_metrics)


def test_fresh_start_ignores_old_checkpoint(
    tmp_path: Path, uninterrupted: Run, caplog: pytest.LogCaptureFixture
) -> None:
    kill(tmp_path)
    with caplog.at_level(logging.WARNING, logger="textdistill.training.loop"):
        fresh, _ = resumable_run(tmp_path, resume=False)
    assert "--resume" in caplog.text
    reference, _ = uninterrupted
    assert_same_weights(weights_of(fresh.model), weights_of(reference.model))
    assert without_timing(fresh.history) == without_timing(reference.history)
    assert read_metrics(tmp_path) == fresh.history


def test_checkpoint_files_load_without_unpickling(tmp_path: Path) -> None:
    kill(tmp_path)
    folder = tmp_path / ckpt.CHECKPOINT_DIR
    for name in (ckpt.OPTIMIZER_FILE, ckpt.SCHEDULER_FILE, ckpt.PROCESSES_FILE):
        torch.load(folder / name, weights_only=True)
    weights = load_file(str(folder / ckpt.WEIGHTS_FILE))
    assert {"model.emb.weight", "model.out.bias", "extra.0.weight", "extra.0.bias"} <= set(weights)
    best = load_file(str(folder / ckpt.BEST_FILE))
    assert set(best) == set(weights)
    processes = torch.load(folder / ckpt.PROCESSES_FILE, weights_only=True)
    assert len(processes) == 1 and set(processes[0]) == {"rng", "window"}
    state = json.loads((folder / ckpt.STATE_FILE).read_text(encoding="utf-8"))
    assert state["fingerprint"]["train_rows"] == 48


def test_resume_refuses_a_different_run(tmp_path: Path) -> None:
    kill(tmp_path)
    with pytest.raises(UserError, match=r"lr: 0\.05 -> 0\.01"):
        resumable_run(tmp_path, resume=True, lr=0.01)


def test_kill_while_saving_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted: Run
) -> None:
    real_save = ckpt.save_file
    weight_saves = 0

    def failing_save(tensors: dict[str, Tensor], filename: str) -> None:
        nonlocal weight_saves
        if Path(filename).name == ckpt.WEIGHTS_FILE:
            weight_saves += 1
            if weight_saves == 2:
                real_save(tensors, filename)  # a partial folder exists when the kill lands
                raise Killed
        real_save(tensors, filename)

    monkeypatch.setattr(ckpt, "save_file", failing_save)
    with pytest.raises(Killed):
        resumable_run(tmp_path)
    monkeypatch.undo()
    state, _ = ckpt.read_state(tmp_path / ckpt.CHECKPOINT_DIR)
    assert state.step == 3
    assert not list(tmp_path.glob(".checkpoint.tmp-*"))

    resumed, _ = resumable_run(tmp_path, resume=True)
    assert_same_weights(weights_of(resumed.model), weights_of(uninterrupted[0].model))


def test_parked_checkpoint_is_found(tmp_path: Path) -> None:
    kill(tmp_path)
    (tmp_path / ckpt.CHECKPOINT_DIR).rename(tmp_path / ".checkpoint.old-123")
    found = ckpt.find_checkpoint(tmp_path)
    assert found == tmp_path / ".checkpoint.old-123"
    assert ckpt.read_state(found)[0].step == 5


def test_rng_state_round_trip() -> None:
    state = ckpt.capture_rng_state()
    expected = (random.random(), float(np.random.rand()), torch.rand(1).item())
    with ckpt.preserved_rng():
        torch.rand(5)
        random.random()
        np.random.rand()
    ckpt.restore_rng_state(state)
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == expected


# ------------------------------------------------------- what a resume must match


def changed(group: str, key: str, value: Any) -> dict[str, dict[str, Any]]:
    identity = copy.deepcopy(IDENTITY)
    target = identity[group]
    *parents, last = key.split(".")
    for p in parents:
        target = target[p]
    target[last] = value
    return identity


@pytest.mark.parametrize(
    ("identity", "message"),
    [
        (
            changed("data", "labels", "d" * 64),
            "the training data changed since the checkpoint (texts: same, labels: different)"
            "; run without --resume to start over, or restore the data",
        ),
        (
            changed("config", "student.options.hidden_dim", 32),
            "the configuration changed since the checkpoint (student.options.hidden_dim: 16 -> 32)",
        ),
        (
            changed("teacher", "fingerprints", "e" * 64),
            "the teacher changed since the checkpoint (fingerprints: different)",
        ),
        (
            {},
            "the training data changed since the checkpoint (texts: different, labels: "
            "different); the configuration changed",
        ),
    ],
    ids=["labels", "config", "teacher", "none-given"],
)
def test_resume_refuses_another_identity(
    tmp_path: Path, identity: dict[str, Any], message: str
) -> None:
    kill(tmp_path)
    with pytest.raises(UserError) as err:
        resumable_run(tmp_path, resume=True, identity=identity)
    assert message.lower() in " ".join(str(err.value).split()).lower(), str(err.value)


def test_resume_names_every_change_at_once(tmp_path: Path) -> None:
    kill(tmp_path)
    both = changed("data", "texts", "f" * 64)
    both["config"]["student"]["arch"] = "textcnn"
    with pytest.raises(UserError) as err:
        resumable_run(tmp_path, resume=True, identity=both, lr=0.01)
    text = str(err.value)
    assert "lr: 0.05 -> 0.01" in text
    assert "texts: different, labels: same" in text
    assert "student.arch: 'bilstm' -> 'textcnn'" in text
    assert text.endswith(
        "restore the data and the previous configuration and the previous settings."
    )


def test_resume_refuses_a_checkpoint_of_the_older_format(tmp_path: Path) -> None:
    kill(tmp_path)
    state_file = tmp_path / ckpt.CHECKPOINT_DIR / ckpt.STATE_FILE
    raw = json.loads(state_file.read_text(encoding="utf-8"))
    raw["format"] = 1
    raw["fingerprint"].pop("identity")
    state_file.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(UserError, match=r"older textdistill.*cannot be checked.*without --resume"):
        resumable_run(tmp_path, resume=True)


class _Evil:
    """Unpickling this writes a file: proof that a checkpoint load unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "unpickled!"))


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        (ckpt.OPTIMIZER_FILE, "evil", "weights-only torch checkpoint file"),
        (ckpt.PROCESSES_FILE, b"garbage", "weights-only torch checkpoint file"),
        (ckpt.WEIGHTS_FILE, "evil", "not a safetensors checkpoint file"),
        (ckpt.WEIGHTS_FILE, b"\x00" * 7, "not a safetensors checkpoint file"),
        (ckpt.STATE_FILE, b"{not json", "not a JSON checkpoint file"),
        (ckpt.STATE_FILE, b"[1, 2]", "not a JSON checkpoint file"),
        (ckpt.STATE_FILE, b'{"format": 2, "state": {}}', "not a JSON checkpoint file"),
    ],
    ids=[
        "pickled-optimizer",
        "garbage-processes",
        "pickled-weights",
        "garbage-weights",
        "garbage-state",
        "list-state",
        "incomplete-state",
    ],
)
def test_a_pickled_or_garbage_checkpoint_is_refused_cleanly(
    tmp_path: Path, name: str, content: str | bytes, says: str
) -> None:
    work = tmp_path / "work"
    kill(work)
    marker = tmp_path / "unpickled.txt"
    target = work / ckpt.CHECKPOINT_DIR / name
    if content == "evil":
        target.write_bytes(pickle.dumps({"state": _Evil(marker)}))
    else:
        assert isinstance(content, bytes)
        target.write_bytes(content)
    with pytest.raises(UserError) as err:
        resumable_run(work, resume=True)
    text = " ".join(str(err.value).split())
    assert says in text and "nothing is unpickled" in text and "without --resume" in text, text
    assert "refused" in text and str(target) in text
    assert not marker.exists()


def test_a_garbage_checkpoint_without_resume_is_replaced(
    tmp_path: Path, uninterrupted: Run, caplog: pytest.LogCaptureFixture
) -> None:
    kill(tmp_path)
    (tmp_path / ckpt.CHECKPOINT_DIR / ckpt.STATE_FILE).write_text("{not json", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="textdistill.training.loop"):
        fresh, _ = resumable_run(tmp_path, resume=False)
    assert "step unreadable" in caplog.text
    assert_same_weights(weights_of(fresh.model), weights_of(uninterrupted[0].model))


def _no_space(kind: str) -> BaseException:
    if kind == "oserror":
        return OSError(errno.ENOSPC, "No space left on device")
    return SafetensorError(
        "Error while serializing: IoError(No space left on device (os error 28))"
    )


@pytest.mark.parametrize("kind", ["safetensors", "oserror"])
def test_a_full_disk_while_checkpointing_is_one_clean_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted: Run, kind: str
) -> None:
    # The second save (step 5) fails; the first (step 3) must be left as it was. The
    # safetensors writer or the torch writer (optimizer, scheduler, RNG files) runs out.
    weight_saves = 0
    real_save, real_torch_save = ckpt.save_file, ckpt._torch_save
    failing = real_save if kind == "safetensors" else real_torch_save

    def writer(real: Callable[..., None]) -> Callable[..., None]:
        def write(*args: Any) -> None:
            nonlocal weight_saves
            if real is real_save and Path(args[-1]).name == ckpt.WEIGHTS_FILE:
                weight_saves += 1
            if weight_saves == 2 and real is failing:
                raise _no_space(kind)
            real(*args)

        return write

    monkeypatch.setattr(ckpt, "save_file", writer(real_save))
    monkeypatch.setattr(ckpt, "_torch_save", writer(real_torch_save))
    with pytest.raises(UserError) as err:
        resumable_run(tmp_path)
    text = " ".join(str(err.value).split())
    assert "could not write the training checkpoint of step 5" in text, text
    assert "No space left on device" in text
    assert "Nothing of it was written (the previous checkpoint (step 3) is intact)" in text
    assert "--resume" in text
    assert not list(tmp_path.glob(".checkpoint.tmp-*"))
    assert ckpt.read_state(tmp_path / ckpt.CHECKPOINT_DIR)[0].step == 3

    monkeypatch.undo()  # space freed: the same command with --resume finishes the run
    resumed, _ = resumable_run(tmp_path, resume=True)
    assert_same_weights(weights_of(resumed.model), weights_of(uninterrupted[0].model))


def test_a_failed_first_checkpoint_says_there_was_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(*args: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(args[-1]))

    monkeypatch.setattr(ckpt, "_torch_save", denied)
    with pytest.raises(UserError, match=r"Permission denied.*there was no earlier checkpoint"):
        resumable_run(tmp_path)
    assert not (tmp_path / ckpt.CHECKPOINT_DIR).exists()
