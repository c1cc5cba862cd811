"""The one training loop, shared by teacher fine-tuning, MLM pretraining and distillation.

:func:`fit` runs on Hugging Face Accelerate (CPU, one GPU, or ``accelerate launch`` with several
processes): AdamW with linear warmup/decay, gradient accumulation and clipping, optional bf16
autocast, evaluation with early stopping on the best metric, resumable checkpoints, a progress
bar and a ``metrics.jsonl`` history. What is trained is defined by the caller's ``loss_fn``;
the loop knows nothing about teachers, students or distillation.

Reproducibility contract: with the same seed, data and config, a run killed at any point and
continued with ``cfg.resume`` ends with the same weights and history as an uninterrupted run
(up to float noise). A resume is refused (:class:`UserError` naming what changed) when the
checkpoint's stage, row count, process count or ``TrainConfig`` (bar ``OUTPUT_ONLY``) differ,
or when the caller's ``identity`` of the run (hashes of the texts and labels, the rest of the
configuration, the teacher) does. To keep the contract:

* the shuffling order of epoch ``e`` depends only on ``(seed, e)``;
* the RNG states, optimizer, scheduler and counters are checkpointed and restored;
* evaluation runs with the RNG state saved and restored, so evaluating more or less often
  never changes the training trajectory;
* ``collate_fn`` must not draw from the global RNGs (derive any randomness, e.g. MLM masking,
  from a generator seeded by the batch's row indices), because resumed runs re-collate the
  batch that was prefetched when the checkpoint was taken.

Work-dir layout: ``metrics.jsonl`` (kept; lines of other stages are preserved, lines of this
stage are replaced by this run's history) and ``checkpoint/`` (see
:mod:`textdistill.training.checkpoint`), kept when the run finishes: the caller saves the final
model folder and then removes the work dir, so a failed final save (a full disk) loses
nothing and ``resume`` picks up from there.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    gather_object,
    set_seed,
)
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from transformers import get_linear_schedule_with_warmup

from textdistill.core import distributed
from textdistill.core.config import OUTPUT_ONLY, TrainConfig
from textdistill.core.errors import UserError
from textdistill.core.progress import progress
from textdistill.evaluation.metrics import selection_metrics
from textdistill.training import checkpoint as ckpt
from textdistill.training.history import METRICS_FILE, MetricsLog

logger = logging.getLogger(__name__)


Identity = Mapping[str, Mapping[str, Any]]
"""What a run is, beyond ``TrainConfig``: groups (``data``, ``config``, ``teacher``) of named
JSON values, e.g. ``{"data": {"texts": sha, "labels": sha}}``. A resume is refused when any
value differs; hex digests are reported as same/different, other values as old -> new."""

_IDENTITY_WORDS = {
    "data": ("the training data", "the data"),
    "config": ("the configuration", "the previous configuration"),
    "teacher": ("the teacher", "the previous teacher"),
}
"""Group -> (what changed, what to restore) in a refusal; other groups use their name."""
_DIGEST = re.compile(r"[0-9a-f]{16,128}")


class HasLoss(Protocol):
    """What a loss function returns: the tensor to minimise and named float terms to log."""

    @property
    def loss(self) -> Tensor: ...

    @property
    def terms(self) -> Mapping[str, float]: ...


LossFn = Callable[[nn.Module, dict[str, Tensor], float], HasLoss]
"""``loss_fn(model, batch, progress)``: ``progress`` is the fraction of optimizer steps done."""

EvalFn = Callable[[nn.Module], dict[str, float]]
"""Custom evaluation of the (unwrapped, eval-mode) model. Called on every process; it must
return the same metrics on each, including ``cfg.metric``."""

CollateFn = Callable[[list[Any]], dict[str, Tensor]]


@dataclass
class FitResult:
    model: nn.Module
    """The unwrapped model holding the BEST weights (by ``cfg.metric``), on the accelerator
    device. Extra modules passed to :func:`fit` are restored to the same step."""
    best_metrics: dict[str, float]
    """Evaluation metrics of the best step (empty without any evaluation)."""
    best_step: int
    history: list[dict[str, Any]] = field(default_factory=list)
    """This stage's entries of ``metrics.jsonl``."""
    stopped_early: bool = False
    steps: int = 0
    """Optimizer steps taken in total (including those of an interrupted earlier run)."""


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    train_set: Dataset[Any],
    cfg: TrainConfig,
    work_dir: str | Path,
    *,
    collate_fn: CollateFn,
    dev_set: Dataset[Any] | None = None,
    extra_modules: Sequence[nn.Module] = (),
    eval_fn: EvalFn | None = None,
    num_labels: int | None = None,
    stage: str = "train",
    identity: Identity | None = None,
) -> FitResult:
    """Train ``model`` by minimising ``loss_fn`` over ``train_set``; return the best weights.

    ``extra_modules`` are trained jointly (e.g. the projection of a hidden-state distillation
    loss that ``loss_fn`` calls): they join the optimizer and the checkpoints. Evaluation uses
    ``eval_fn`` when given, else the built-in classifier evaluation on ``dev_set`` (accuracy,
    macro-F1 over ``range(num_labels)``, cross-entropy on gold labels); with neither, the last
    weights are returned. ``stage`` tags the ``metrics.jsonl`` lines and the checkpoint, so
    several stages may share one ``work_dir`` (one at a time). ``identity`` (see
    :data:`Identity`) is stored in the checkpoint; resuming refuses a checkpoint whose
    identity differs, so give everything the trained weights depend on that ``cfg`` does not
    hold: the data's hashes, the model and loss settings, the teacher.
    """
    return _Trainer(
        model=model,
        loss_fn=loss_fn,
        train_set=train_set,
        cfg=cfg,
        work_dir=Path(work_dir),
        collate_fn=collate_fn,
        dev_set=dev_set,
        extra_modules=list(extra_modules),
        eval_fn=eval_fn,
        num_labels=num_labels,
        stage=stage,
        identity=identity or {},
    ).run()


# ------------------------------------------------------------------------------ helpers


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    """An :class:`Accelerator` configured for ``cfg``, fresh for every :func:`fit`.

    Accelerate keeps its state in process-wide singletons and refuses a second Accelerator
    with another precision; a pipeline trains the teacher and the student one after the other
    with different settings, so the per-run state is reset first (the distributed process
    group, held by ``PartialState``, is kept).

    ``cfg.batch_size`` is the global batch: each batch is split evenly across the processes
    (``split_batches``), so one config trains the same model on any number of processes.
    """
    processes = distributed.num_processes()  # also creates the process state the right way
    if cfg.batch_size % processes:
        raise UserError(
            f"the batch size {cfg.batch_size} is the global batch, split evenly across the "
            f"{processes} processes; use a multiple of {processes}"
        )
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    return Accelerator(
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision="bf16" if cfg.bf16 else "no",
        cpu=distributed.use_cpu(),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        # The loop steps the schedule itself, once per optimizer step, so the schedule's
        # length does not depend on the number of processes.
        step_scheduler_with_optimizer=False,
        # BERT's pooler is unused by MLM, students may skip their hidden output: with
        # several processes DDP would otherwise fail on parameters without gradients.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def param_groups(modules: Sequence[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: no weight decay on biases, norm layers and other 1-D tensors.

    Decaying a LayerNorm gain pulls it towards 0 rather than its neutral 1, and biases carry
    no capacity to regularise; matrices (linear, conv, embeddings, LSTM weights) decay.
    Frozen parameters are left out; parameters shared between modules appear once.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in modules:
        for sub in module.modules():
            is_norm = _is_norm_layer(sub)
            for param in sub.parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                (no_decay if is_norm or param.ndim < 2 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _is_norm_layer(module: nn.Module) -> bool:
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)
    # Custom norms (e.g. ``T5LayerNorm``) are recognised by name.
    return isinstance(module, norm_types) or type(module).__name__.endswith("Norm")


class _EpochSampler(Sampler[int]):
    """A shuffle whose order depends only on ``(seed, epoch)``, identical on every process.

    Not named ``set_epoch`` on purpose: Accelerate calls ``set_epoch`` with its own counter,
    which restarts at 0 for the loader that skips batches on resume.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        entropy = np.random.SeedSequence([self.seed % 2**63, self.epoch])
        seed = int(entropy.generate_state(1, dtype=np.uint64)[0] % 2**63)
        gen = torch.Generator().manual_seed(seed)
        return iter(torch.randperm(self.size, generator=gen).tolist())


def _loader(
    dataset: Dataset[Any],
    batch_size: int,
    collate_fn: CollateFn,
    seed: int,
    sampler: Sampler[int] | None = None,
) -> DataLoader[Any]:
    # A private generator: otherwise creating each epoch's iterator draws a base seed from
    # the global torch RNG and a resumed run would drift from an uninterrupted one.
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed % 2**63),
    )


def _rows(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, Tensor) and value.ndim > 0:
            return int(value.shape[0])
    return 0


def _logits_of(output: Any) -> Tensor:
    logits = output.logits if hasattr(output, "logits") else output
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        raise TypeError("the model must return ClassifierOutput (or a tensor) with (B, C) logits")
    return logits.float()


def _collect(
    model: nn.Module,
    loader: DataLoader[Any],
    accelerator: Accelerator | None,
    with_labels: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (and gold labels) of every row of ``loader``, in order, across processes."""
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {"logits": [], "labels": []}
    try:
        with torch.no_grad():
            for batch in loader:
                item = _predict_batch(model, batch, accelerator, device, with_labels)
                for key, value in item.items():
                    parts[key].append(value.cpu().numpy())
    finally:
        model.train(was_training)
    if not parts["logits"]:
        return np.zeros((0, 0), dtype=np.float32), None
    logits = np.concatenate(parts["logits"]).astype(np.float32, copy=False)
    labels = np.concatenate(parts["labels"]) if with_labels else None
    return logits, labels


def _predict_batch(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    accelerator: Accelerator | None,
    device: torch.device,
    with_labels: bool,
) -> dict[str, Tensor]:
    if accelerator is None:
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        item = {"logits": _logits_of(out)}
    else:
        with accelerator.autocast():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        item = {"logits": _logits_of(out)}
    if with_labels:
        if "labels" not in batch:
            raise KeyError("evaluation batches need a 'labels' entry")
        item["labels"] = batch["labels"]
    if accelerator is not None:
        # Drops the rows duplicated to even out the last batch across processes.
        item = accelerator.gather_for_metrics(item)
    return item


def _is_better(new: float, old: float | None, higher_is_better: bool) -> bool:
    if old is None or math.isnan(old):
        return True
    if math.isnan(new):
        return False
    return new > old if higher_is_better else new < old


@dataclass
class _Window:
    """Running sums since the last log line (per process; checkpointed with the RNG)."""

    loss: float = 0.0
    micro_batches: int = 0
    rows: int = 0
    grad_norm: float = 0.0
    optimizer_steps: int = 0
    terms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "micro_batches": self.micro_batches,
            "rows": self.rows,
            "grad_norm": self.grad_norm,
            "optimizer_steps": self.optimizer_steps,
            "terms": dict(self.terms),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> _Window:
        return cls(**{**raw, "terms": dict(raw["terms"])})


# ------------------------------------------------------------------------------ trainer


class _Trainer:
    """State and steps of one :func:`fit` call."""

    def __init__(
        self,
        *,
        model: nn.Module,
        loss_fn: LossFn,
        train_set: Dataset[Any],
        cfg: TrainConfig,
        work_dir: Path,
        collate_fn: CollateFn,
        dev_set: Dataset[Any] | None,
        extra_modules: list[nn.Module],
        eval_fn: EvalFn | None,
        num_labels: int | None,
        stage: str,
        identity: Identity,
    ) -> None:
        self.cfg = cfg
        self.loss_fn = loss_fn
        self.work_dir = work_dir
        self.eval_fn = eval_fn
        self.num_labels = num_labels
        self.stage = stage
        self.train_size = _dataset_size(train_set, "training set")
        if dev_set is not None and eval_fn is None:
            _dataset_size(dev_set, "dev set")

        self.accelerator = make_accelerator(cfg)
        acc = self.accelerator
        set_seed(cfg.seed)
        self.is_main = acc.is_main_process
        self.metrics_log = MetricsLog(work_dir / METRICS_FILE, stage, self.is_main)

        self.sampler = _EpochSampler(self.train_size, cfg.seed)
        train_loader = _loader(train_set, cfg.batch_size, collate_fn, cfg.seed, self.sampler)
        # Extra modules are moved, not wrapped: ``loss_fn`` calls them directly, so a DDP
        # wrapper would never run; their gradients are averaged by hand in ``_sync_extras``.
        self.extras = [m.to(acc.device) for m in extra_modules]
        self.model = acc.prepare(model)
        optimizer = torch.optim.AdamW(
            param_groups([self.model, *self.extras], cfg.weight_decay), lr=cfg.lr
        )
        self.optimizer, self.train_loader = acc.prepare(optimizer, train_loader)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

        self.batches_per_epoch = len(self.train_loader)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / cfg.grad_accum)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.log_every = cfg.log_every or max(1, self.steps_per_epoch // 20)
        scheduler = get_linear_schedule_with_warmup(
            self.optimizer.optimizer,
            num_warmup_steps=math.ceil(cfg.warmup_ratio * self.total_steps),
            num_training_steps=max(1, self.total_steps),
        )
        self.scheduler = acc.prepare(scheduler)

        self.dev_loaders: dict[bool, DataLoader[Any]] = {}
        if dev_set is not None and eval_fn is None:
            self.dev_loaders = self._dev_loaders(dev_set, collate_fn)
        self.evaluates = eval_fn is not None or bool(self.dev_loaders)
        self.higher_is_better = cfg.metric != "loss"

        self.state = ckpt.RunState()
        self.window = _Window()
        self.best_weights: dict[str, Tensor] | None = None
        self.best_in_checkpoint = False  # this run's last checkpoint already holds them
        self.stopped_early = False
        self.lr = float(self.scheduler.get_last_lr()[0])
        self.fingerprint = {
            "stage": stage,
            "train_rows": self.train_size,
            "num_processes": acc.num_processes,
            "config": cfg.model_dump(mode="json"),
            # Through JSON, as the checkpoint stores it: tuples and lists then compare equal.
            "identity": json.loads(json.dumps({g: dict(v) for g, v in identity.items()})),
        }

    # ----------------------------------------------------------------------- driving

    def run(self) -> FitResult:
        acc = self.accelerator
        self._start_or_resume()
        self.model.train()
        for extra in self.extras:
            extra.train()
        bar = progress(
            total=self.total_steps,
            initial=self.state.step,
            desc=self.stage,
            unit="step",
            disable=not (self.cfg.progress and self.is_main),
        )
        self.bar = bar
        self.window_t0 = time.perf_counter()
        try:
            while self.state.epoch < self.cfg.epochs and not self.stopped_early:
                self._train_epoch()
        finally:
            bar.close()
        return self._finish(acc)

    def _start_or_resume(self) -> None:
        if self.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temporaries(self.work_dir)
        self.accelerator.wait_for_everyone()
        found = ckpt.find_checkpoint(self.work_dir)
        if found is not None and self.cfg.resume:
            self._resume(found)
        elif found is not None:
            try:
                step: int | str = ckpt.read_state(found)[0].step
            except UserError:
                step = "unreadable"  # not resumed, so not refused: this run replaces it
            if self.is_main:
                logger.warning(
                    "%s: found a checkpoint of an earlier run (step %s); starting fresh. "
                    "Pass --resume to continue it instead; this run's checkpoints replace it.",
                    found,
                    step,
                )
        elif self.cfg.resume and self.is_main:
            logger.info("%s: no checkpoint to resume from; starting fresh", self.work_dir)
        self.metrics_log.reset(self.state.history)
        # A run resumed from its final checkpoint after early stopping stays stopped.
        self.stopped_early = bool(
            self.cfg.patience and self.evaluates and self.state.bad_evals >= self.cfg.patience
        )

    def _train_epoch(self) -> None:
        acc, cfg, state = self.accelerator, self.cfg, self.state
        self.sampler.epoch = state.epoch
        loader = self.train_loader
        if state.batch_in_epoch:
            loader = acc.skip_first_batches(self.train_loader, state.batch_in_epoch)
        for batch in loader:
            self._micro_step(batch)
            if not acc.sync_gradients:
                continue
            state.step += 1
            self.bar.update(1)
            epoch_end = state.batch_in_epoch == self.batches_per_epoch
            if state.step % self.log_every == 0 or epoch_end:
                self._log_train()
            if epoch_end:
                # Let the loader run out by itself so Accelerate closes its bookkeeping;
                # the epoch-end evaluation and checkpoint follow the loop.
                continue
            if self.evaluates and cfg.eval_every and state.step % cfg.eval_every == 0:
                self._evaluate(full=cfg.eval_subset is None)
                if self.stopped_early:
                    self._save_checkpoint()
                    return
            if state.step % cfg.checkpoint_every == 0:
                self._save_checkpoint()
        state.epoch += 1
        state.batch_in_epoch = 0
        if self.evaluates:
            self._evaluate(full=True)
        # Also after the last epoch: the final state stays resumable until the caller has
        # saved the model folder.
        self._save_checkpoint()

    def _micro_step(self, batch: dict[str, Tensor]) -> None:
        acc, cfg = self.accelerator, self.cfg
        progress = self.state.step / max(1, self.total_steps)
        with acc.accumulate(self.model):
            with acc.autocast():
                out = self.loss_fn(self.model, batch, progress)
            acc.backward(out.loss)
            if acc.sync_gradients:
                self._sync_extras()
                if cfg.max_grad_norm > 0:
                    norm = acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
                    self.window.grad_norm += float(norm)
                self.window.optimizer_steps += 1
                self.lr = float(self.scheduler.get_last_lr()[0])  # the rate of this step
            self.optimizer.step()
            if acc.sync_gradients:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.state.batch_in_epoch += 1
        w = self.window
        w.loss += float(out.loss.detach())
        w.micro_batches += 1
        w.rows += _rows(batch)
        for name, value in out.terms.items():
            w.terms[name] = w.terms.get(name, 0.0) + float(value)

    def _sync_extras(self) -> None:
        if self.accelerator.num_processes == 1:
            return
        for extra in self.extras:
            for param in extra.parameters():
                if param.grad is not None:
                    param.grad = self.accelerator.reduce(param.grad, reduction="mean")

    # ------------------------------------------------------------------ log / eval

    def _log_train(self) -> None:
        acc, w = self.accelerator, self.window
        names = sorted(w.terms)
        count = max(1, w.micro_batches)
        local = [w.loss / count, *(w.terms[n] / count for n in names)]
        local.append(w.grad_norm / max(1, w.optimizer_steps))
        means = acc.reduce(torch.tensor(local, device=acc.device, dtype=torch.float64), "mean")
        means_list = means.tolist()
        elapsed = max(time.perf_counter() - self.window_t0, 1e-9)
        entry: dict[str, Any] = {
            **self._where(),
            "lr": self.lr,
            "loss": means_list[0],
            **{n: v for n, v in zip(names, means_list[1:-1], strict=True)},
        }
        if self.cfg.max_grad_norm > 0:
            entry["grad_norm"] = means_list[-1]
        entry["samples_per_s"] = round(w.rows * acc.num_processes / elapsed, 1)
        if not math.isfinite(entry["loss"]):
            raise UserError(
                f"{self.stage}: the training loss became {entry['loss']} at step "
                f"{self.state.step}; lower the learning rate (now {self.cfg.lr}) or keep "
                "gradient clipping on"
            )
        self._record(entry)
        self.bar.set_postfix(
            loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}", rows_s=entry["samples_per_s"]
        )
        if not self.bar.disable:
            logger.debug("%s", entry)
        elif self.is_main:
            logger.info(
                "%s step %d/%d: loss %.4f, lr %.2e, %.0f samples/s",
                self.stage,
                self.state.step,
                self.total_steps,
                entry["loss"],
                entry["lr"],
                entry["samples_per_s"],
            )
        self.window = _Window()
        self.window_t0 = time.perf_counter()

    def _evaluate(self, full: bool) -> None:
        t0 = time.perf_counter()
        with ckpt.preserved_rng():
            metrics, rows = self._compute_metrics(full)
        if self.cfg.metric not in metrics:
            raise ValueError(
                f"evaluation returned {sorted(metrics)}, without the early-stopping metric "
                f"{self.cfg.metric!r}"
            )
        state = self.state
        value = float(metrics[self.cfg.metric])
        improved = _is_better(value, state.best_metric, self.higher_is_better)
        if improved:
            state.best_metric, state.best_step, state.bad_evals = value, state.step, 0
            state.best_metrics = dict(metrics)
            self.best_weights = self._snapshot()
            self.best_in_checkpoint = False
        else:
            state.bad_evals += 1
        entry = {**self._where(), "eval": dict(metrics), "best": improved}
        if rows is not None:
            entry["rows"] = rows
        self._record(entry)
        if self.is_main:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            mark = " (best)" if improved else f" (best {state.best_metric:.4f} @ {state.best_step})"
            logger.info("%s step %d eval: %s%s", self.stage, state.step, shown, mark)
        if self.cfg.patience and state.bad_evals >= self.cfg.patience:
            self.stopped_early = True
            if self.is_main:
                logger.info(
                    "%s: no improvement of %s in %d evaluations; stopping early",
                    self.stage,
                    self.cfg.metric,
                    state.bad_evals,
                )
        self.window_t0 += time.perf_counter() - t0  # keep samples/s about training only

    def _compute_metrics(self, full: bool) -> tuple[dict[str, float], int | None]:
        if self.eval_fn is not None:
            unwrapped = self.accelerator.unwrap_model(self.model)
            was_training = unwrapped.training
            unwrapped.eval()
            try:
                return {k: float(v) for k, v in self.eval_fn(unwrapped).items()}, None
            finally:
                unwrapped.train(was_training)
        # ``False`` (the subset) exists only when eval_subset is smaller than the dev set.
        loader = self.dev_loaders.get(full, self.dev_loaders[True])
        logits, labels = _collect(self.model, loader, self.accelerator, with_labels=True)
        assert labels is not None
        if self.num_labels is not None and logits.shape[1] != self.num_labels:
            raise ValueError(f"the model returns {logits.shape[1]} logits, not {self.num_labels}")
        return selection_metrics(logits, labels, self.num_labels), len(labels)

    def _dev_loaders(
        self, dev_set: Dataset[Any], collate_fn: CollateFn
    ) -> dict[bool, DataLoader[Any]]:
        acc, cfg = self.accelerator, self.cfg
        full = acc.prepare_data_loader(_loader(dev_set, cfg.batch_size, collate_fn, cfg.seed))
        loaders: dict[bool, DataLoader[Any]] = {True: full}
        size = _dataset_size(dev_set, "dev set")
        if cfg.eval_every and cfg.eval_subset is not None and cfg.eval_subset < size:
            subset = Subset(dev_set, range(cfg.eval_subset))
            loaders[False] = acc.prepare_data_loader(
                _loader(subset, cfg.batch_size, collate_fn, cfg.seed)
            )
        return loaders

    def _where(self) -> dict[str, Any]:
        epoch = self.state.step / max(1, self.steps_per_epoch)
        return {"stage": self.stage, "epoch": round(epoch, 4), "step": self.state.step}

    def _record(self, entry: dict[str, Any]) -> None:
        self.state.history.append(entry)
        self.metrics_log.append(entry)

    # ------------------------------------------------------------------ checkpoints

    def _snapshot(self) -> dict[str, Tensor]:
        return ckpt.snapshot_weights(self.accelerator.unwrap_model(self.model), self.extras)

    def _save_checkpoint(self) -> None:
        t0 = time.perf_counter()
        acc = self.accelerator
        processes = gather_object(
            [{"rng": ckpt.capture_rng_state(), "window": self.window.to_json()}]
        )
        if self.is_main:
            ckpt.save_checkpoint(
                self.work_dir,
                state=self.state,
                fingerprint=self.fingerprint,
                weights=self._snapshot(),
                best_weights=self.best_weights,
                reuse_best=self.best_in_checkpoint,
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                processes=processes,
            )
            logger.debug("%s: checkpoint at step %d", self.stage, self.state.step)
        self.best_in_checkpoint = self.best_weights is not None
        acc.wait_for_everyone()
        self.window_t0 += time.perf_counter() - t0

    def _resume(self, path: Path) -> None:
        acc = self.accelerator
        loaded = ckpt.load_checkpoint(path)
        self._check_compatible(path, loaded.fingerprint)
        try:
            ckpt.load_weights(acc.unwrap_model(self.model), self.extras, loaded.weights)
        except RuntimeError as err:
            raise UserError(
                f"{path}: the checkpoint does not fit this model ({err}); remove it or run "
                "without --resume"
            ) from None
        self.optimizer.load_state_dict(loaded.optimizer)
        self.scheduler.load_state_dict(loaded.scheduler)
        self.state = loaded.state
        self.best_weights = loaded.best_weights
        mine = loaded.processes[acc.process_index]
        ckpt.restore_rng_state(mine["rng"])
        self.window = _Window.from_json(mine["window"])
        self.window.rows = 0  # samples/s after resuming counts only rows seen since then
        if self.is_main:
            logger.info(
                "%s: resuming from %s at step %d (epoch %d, batch %d)",
                self.stage,
                path,
                self.state.step,
                self.state.epoch + 1,
                self.state.batch_in_epoch,
            )

    def _check_compatible(self, path: Path, fingerprint: Mapping[str, Any]) -> None:
        mine, theirs = self.fingerprint, fingerprint
        diffs = [
            f"{key}: {theirs.get(key)!r} -> {mine[key]!r}"
            for key in ("stage", "train_rows", "num_processes")
            if theirs.get(key) != mine[key]
        ]
        old_cfg, new_cfg = theirs.get("config", {}), mine["config"]
        diffs += [
            f"{key}: {old_cfg.get(key)!r} -> {new_cfg[key]!r}"
            for key in new_cfg
            if key not in OUTPUT_ONLY and old_cfg.get(key) != new_cfg[key]
        ]
        changes, restore = _identity_changes(theirs.get("identity", {}), mine["identity"])
        if diffs:
            changes.insert(
                0, "the checkpoint was written by a different run (" + "; ".join(diffs) + ")"
            )
            restore.append("the previous settings")
        if changes:
            raise UserError(
                f"{path}: cannot resume: "
                + "; ".join(changes)
                + "; run without --resume to start over, or restore "
                + " and ".join(restore)
                + "."
            )

    # ----------------------------------------------------------------------- finish

    def _finish(self, acc: Accelerator) -> FitResult:
        state = self.state
        acc.wait_for_everyone()
        model = acc.unwrap_model(self.model, keep_fp32_wrapper=False)
        if self.evaluates and self.best_weights is not None:
            if state.best_step != state.step:
                ckpt.load_weights(model, self.extras, self.best_weights)
            best_step, best_metrics = state.best_step, dict(state.best_metrics)
        else:
            best_step, best_metrics = state.step, {}
        if self.is_main:
            # The checkpoint stays until the caller has saved the model folder and removes
            # the work dir: a failed final save (full disk) can still be resumed.
            logger.info(
                "%s: done after %d steps%s; best step %d%s",
                self.stage,
                state.step,
                " (stopped early)" if self.stopped_early else "",
                best_step,
                f" ({self.cfg.metric} {state.best_metric:.4f})" if best_metrics else "",
            )
        acc.wait_for_everyone()
        return FitResult(
            model=model,
            best_metrics=best_metrics,
            best_step=best_step,
            history=list(state.history),
            stopped_early=self.stopped_early,
            steps=state.step,
        )


def _identity_changes(
    old: Mapping[str, Any], new: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """Sentences saying which identity groups changed and how, and what to restore."""
    changes: list[str] = []
    restore: list[str] = []
    order = [*_IDENTITY_WORDS, *sorted(set(old) | set(new))]
    for group in dict.fromkeys(g for g in order if g in old or g in new):
        before = _flatten(old.get(group) or {})
        after = _flatten(new.get(group) or {})
        if before == after:
            continue
        keys = list(dict.fromkeys([*after, *before]))
        digests = [k for k in keys if _is_digest(before.get(k)) or _is_digest(after.get(k))]
        # Hashes are listed together once one differs ("texts: same, labels: different"
        # tells what to look at); other values only when they differ.
        any_digest_changed = any(before.get(k) != after.get(k) for k in digests)
        parts = []
        for key in keys:
            a, b = before.get(key), after.get(key)
            if key in digests:
                if any_digest_changed:
                    parts.append(f"{key}: {'same' if a == b else 'different'}")
            elif a != b:
                parts.append(f"{key}: {a!r} -> {b!r}")
        what, back = _IDENTITY_WORDS.get(group, (f"the {group}", f"the previous {group}"))
        changes.append(f"{what} changed since the checkpoint ({', '.join(parts)})")
        restore.append(back)
    return changes, restore


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys, so a refusal names ``student.options.hidden_dim``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _is_digest(value: Any) -> bool:
    # Hashes mean nothing to a reader: say whether they match, not what they are.
    if isinstance(value, list | tuple):
        return bool(value) and all(_is_digest(v) for v in value)
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def _dataset_size(dataset: Dataset[Any], what: str) -> int:
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"the {what} must be a map-style dataset with a length") from None
    if size == 0:
        raise UserError(f"the {what} is empty")
    return size
