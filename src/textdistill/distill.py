"""Distillation: train a student from cached teacher soft targets on the shared loop.

Modes differ only in the loss (:func:`textdistill.losses.distillation_loss`):
``none`` (gold labels, no teacher: the baseline twin), ``hard`` (teacher argmax),
``soft`` (temperature-scaled KL + cross-entropy), ``hidden`` (soft + sentence-vector
matching through a learned projection).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from textdistill.batching import TextDataset, make_collate
from textdistill.cache import SoftTargets, build_soft_targets
from textdistill.config import Config
from textdistill.data import Corpus, read_texts
from textdistill.errors import UserError
from textdistill.folders import load_model, read_meta, save_student
from textdistill.losses import LossOutput, distillation_loss, make_projection, temperature_at
from textdistill.models.students import build_student, init_embeddings_from_teacher
from textdistill.models.teacher import TeacherModel
from textdistill.tokenization import build_tokenizer, encode_cached, load_tokenizer
from textdistill.train import fit
from textdistill.workspace import TrainingData, prepare_training_data, work_dir_for

log = logging.getLogger(__name__)


@dataclass
class StudentResult:
    path: Path
    meta: dict[str, Any]


@dataclass
class TransferSet:
    """The rows a student learns from: labelled training rows, then unlabeled texts."""

    texts: list[str]
    labels: list[int]  # -1 where there is no gold label

    @property
    def n_labelled(self) -> int:
        return sum(1 for y in self.labels if y >= 0)


def transfer_set(cfg: Config, data: TrainingData) -> TransferSet:
    texts = list(data.train.texts)
    labels = list(data.train.labels)
    if cfg.distill.mode != "none":
        extra = list(data.unlabeled_texts)
        for f in cfg.distill.extra:
            extra.extend(read_texts(f))
        texts += extra
        labels += [-1] * len(extra)
    return TransferSet(texts, labels)


def _student_tokenizer(
    cfg: Config, teachers: list[str], data: TrainingData
) -> PreTrainedTokenizerBase:
    # Students share the (first) teacher's tokenizer, so one encoding serves both and the
    # `none` twin sees exactly the same input ids as the distilled students.
    if teachers:
        return load_tokenizer(teachers[0])
    return build_tokenizer(
        data.train.texts + data.unlabeled_texts,
        vocab_size=cfg.tokenizer.vocab_size,
        min_frequency=cfg.tokenizer.min_frequency,
        lowercase=cfg.tokenizer.lowercase,
    )


def _check_mode(cfg: Config, targets: SoftTargets | None) -> None:
    mode = cfg.distill.mode
    if mode == "none":
        return
    if targets is None:
        raise UserError(f"--mode {mode} needs a teacher (--teacher DIR)")
    if mode == "hidden" and targets.pooled is None:
        raise UserError(
            "--mode hidden needs the teacher's pooled vectors, but the soft-target cache has "
            "none and the teacher cannot produce them; use --mode soft, or a teacher whose "
            "folder yields a sentence vector"
        )


def _teacher_fingerprints(teachers: list[str]) -> list[str]:
    return [str(read_meta(t).get("fingerprint", "")) for t in teachers]


def distill(
    cfg: Config, corpus: Corpus, out: str | Path, *, stage_key: str | None = None
) -> StudentResult:
    """Train a student as ``cfg.distill`` says and write its folder to ``out``.

    ``stage_key`` (from the pipeline) is stored in the folder's metadata.
    """
    out = Path(out)
    work = work_dir_for(out)
    d = cfg.distill
    teachers = list(d.teachers)
    data = prepare_training_data(cfg, corpus)
    tokenizer = _student_tokenizer(cfg, teachers, data)
    transfer = transfer_set(cfg, data)
    max_len = (
        int(read_meta(teachers[0]).get("max_len", cfg.tokenizer.max_len))
        if teachers
        else (cfg.tokenizer.max_len)
    )

    targets = None
    if d.mode != "none":
        if not teachers:
            raise UserError(f"--mode {d.mode} needs a teacher (--teacher DIR)")
        targets = build_soft_targets(
            teachers,
            transfer.texts,
            weights=d.teacher_weights,
            ensemble=d.ensemble,
            with_pooled=d.mode == "hidden",
            batch_size=d.cache_batch_size,
            progress=cfg.student.train.progress,
        )
    _check_mode(cfg, targets)

    s = cfg.student
    student = build_student(
        s.arch,
        s.preset,
        vocab_size=len(tokenizer),
        num_labels=len(corpus.label_names),
        pad_id=int(tokenizer.pad_token_id or 0),
        embed_dim=s.embed_dim,
        hidden_dim=s.hidden_dim,
        layers=s.layers,
        dropout=s.dropout,
        num_filters=s.num_filters,
        filter_sizes=tuple(s.filter_sizes) if s.filter_sizes else None,
    )
    if s.init_embeddings == "teacher":
        _init_from_teacher(student, teachers)

    enc = encode_cached(tokenizer, transfer.texts, max_len, cache_dir=None)
    train_ds = TextDataset(
        enc,
        np.asarray(transfer.labels),
        teacher_logits=targets.logits if targets is not None else None,
        teacher_hidden=targets.pooled if (targets is not None and d.mode == "hidden") else None,
    )
    dev_ds = TextDataset(
        encode_cached(tokenizer, data.select.texts, max_len, cache_dir=None), data.select.labels
    )
    proj = None
    if d.mode == "hidden":
        assert targets is not None and targets.pooled is not None
        student_width = int(getattr(student, "hidden_size"))  # noqa: B009 - every student has it
        proj = make_projection(student_width, int(targets.pooled.shape[1]))

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], progress: float) -> LossOutput:
        out_ = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return distillation_loss(
            out_,
            batch,
            mode=d.mode,
            T=temperature_at(progress, d.temperature, d.temperature_end),
            alpha=d.alpha,
            beta=d.beta,
            hard_target=d.hard_target,
            hidden_loss=d.hidden_loss,
            proj=proj,
        )

    log.info(
        "distilling %s/%s in mode %s on %d rows (%d labelled)",
        s.arch,
        s.preset,
        d.mode,
        len(transfer.texts),
        transfer.n_labelled,
    )
    result = fit(
        student,
        loss_fn,
        train_ds,
        s.train,
        work / "train",
        collate_fn=make_collate(int(tokenizer.pad_token_id or 0)),
        dev_set=dev_ds,
        extra_modules=[proj] if proj is not None else [],
        num_labels=len(corpus.label_names),
        stage=f"distill-{d.mode}",
    )
    meta = save_student(
        out,
        result.model.cpu(),
        tokenizer,
        corpus.label_names,
        cfg=cfg,
        max_len=max_len,
        metrics=result.best_metrics,
        history=work / "train" / "metrics.jsonl",
        extra={
            "mode": d.mode,
            "teachers": [str(Path(t).resolve()) for t in teachers],
            "teacher_fingerprint": ",".join(_teacher_fingerprints(teachers)) or None,
            "transfer_rows": len(transfer.texts),
            "labelled_rows": transfer.n_labelled,
            "best_step": result.best_step,
            "soft_targets": str(targets.path) if targets is not None else None,
            "stage_key": stage_key,
        },
    )
    shutil.rmtree(work, ignore_errors=True)
    return StudentResult(path=out, meta=meta)


def _init_from_teacher(student: nn.Module, teachers: list[str]) -> None:
    if not teachers:
        raise UserError("student.init_embeddings=teacher needs a teacher (--teacher DIR)")
    loaded = load_model(teachers[0])
    if not isinstance(loaded.model, TeacherModel):
        raise UserError(f"{teachers[0]}: embedding initialisation needs a BERT teacher folder")
    init_embeddings_from_teacher(student, loaded.model.word_embeddings())
