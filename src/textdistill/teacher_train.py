"""Getting a teacher: fine-tune a checkpoint or train a BERT from scratch, optionally after
masked-language-model (MLM) domain pretraining on the training (and unlabeled) texts.

Every stage runs on the one training loop, :func:`textdistill.train.fit`.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    DataCollatorForLanguageModeling,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from textdistill.batching import TextDataset, make_collate
from textdistill.config import Config
from textdistill.data import Corpus, read_texts
from textdistill.folders import save_teacher
from textdistill.losses import LossOutput, distillation_loss
from textdistill.models.teacher import (
    TeacherModel,
    label_maps,
    load_classifier,
    new_scratch_classifier,
    new_scratch_mlm,
    scratch_bert_config,
)
from textdistill.tokenization import build_tokenizer, encode_cached, load_tokenizer
from textdistill.train import fit
from textdistill.workspace import TrainingData, prepare_training_data, work_dir_for

log = logging.getLogger(__name__)


@dataclass
class TeacherResult:
    path: Path
    meta: dict[str, Any]


def classification_loss(model: nn.Module, batch: dict[str, torch.Tensor], progress: float) -> Any:
    """Cross-entropy on gold labels (rows without one are skipped)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return distillation_loss(out, batch, mode="none", T=1.0, alpha=0.0, beta=0.0)


def mlm_loss(model: nn.Module, batch: dict[str, torch.Tensor], progress: float) -> LossOutput:
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
    )
    value = float(out.loss.detach())
    return LossOutput(loss=out.loss, terms={"loss": value, "mlm": value})


class _MlmCollate:
    """Pads rows and masks 15 % of tokens with the Hugging Face collator."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, probability: float) -> None:
        self.inner = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability)

    def __call__(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        feats = [{"input_ids": r["input_ids"].tolist()} for r in rows]
        batch = self.inner(feats)
        return {
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "labels": batch["labels"],
        }


def _make_tokenizer(cfg: Config, texts: list[str]) -> PreTrainedTokenizerBase:
    if cfg.teacher.model is not None:
        return load_tokenizer(cfg.teacher.model)
    return build_tokenizer(
        texts,
        vocab_size=cfg.tokenizer.vocab_size,
        min_frequency=cfg.tokenizer.min_frequency,
        lowercase=cfg.tokenizer.lowercase,
    )


def mlm_pretrain(
    cfg: Config,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    work: Path,
    num_labels: int,
) -> Path:
    """Domain-adaptive MLM pretraining; returns a folder loadable as a classifier."""
    if cfg.teacher.model is not None:
        mlm: PreTrainedModel = AutoModelForMaskedLM.from_pretrained(cfg.teacher.model)
    else:
        bert_cfg = _scratch_config(cfg, tokenizer, num_labels)
        mlm = new_scratch_mlm(bert_cfg)
    enc = encode_cached(tokenizer, texts, cfg.tokenizer.max_len, cache_dir=None)
    ds = TextDataset(enc, [-1] * len(texts))
    log.info("MLM pretraining on %d texts for %d epochs", len(texts), cfg.teacher.mlm.epochs)
    result = fit(
        mlm,
        mlm_loss,
        ds,
        cfg.teacher.mlm,
        work / "mlm",
        collate_fn=_MlmCollate(tokenizer, cfg.teacher.mlm_probability),
        stage="mlm",
    )
    out = work / "mlm" / "model"
    assert isinstance(result.model, PreTrainedModel)
    result.model.save_pretrained(out, safe_serialization=True)
    return out


def _scratch_config(cfg: Config, tokenizer: PreTrainedTokenizerBase, num_labels: int) -> Any:
    t = cfg.teacher
    assert t.scratch is not None
    return scratch_bert_config(
        t.scratch,
        vocab_size=len(tokenizer),
        num_labels=num_labels,
        pad_token_id=int(tokenizer.pad_token_id or 0),
        max_positions=max(512, cfg.tokenizer.max_len),
        dropout=t.dropout,
        layers=t.layers,
        hidden=t.hidden,
        heads=t.heads,
        intermediate=t.intermediate,
    )


def _classifier(
    cfg: Config, tokenizer: PreTrainedTokenizerBase, labels: list[str], mlm_dir: Path | None
) -> PreTrainedModel:
    if mlm_dir is not None:
        return AutoModelForSequenceClassification.from_pretrained(mlm_dir, **label_maps(labels))
    if cfg.teacher.model is not None:
        return load_classifier(cfg.teacher.model, labels)
    return new_scratch_classifier(_scratch_config(cfg, tokenizer, len(labels)), labels)


def train_teacher(
    cfg: Config, corpus: Corpus, out: str | Path, *, stage_key: str | None = None
) -> TeacherResult:
    """Train a teacher on ``corpus`` and write its folder to ``out``.

    ``stage_key`` (from the pipeline) is stored in the folder's metadata.
    """
    out = Path(out)
    work = work_dir_for(out)
    data: TrainingData = prepare_training_data(cfg, corpus)
    extra_texts = [t for f in cfg.teacher.unlabeled for t in read_texts(f)]
    mlm_texts = data.train.texts + data.unlabeled_texts + extra_texts
    tokenizer = _make_tokenizer(cfg, mlm_texts)
    labels = corpus.label_names

    mlm_dir = None
    if cfg.teacher.mlm.epochs > 0:
        mlm_dir = mlm_pretrain(cfg, tokenizer, mlm_texts, work, len(labels))
    hf = _classifier(cfg, tokenizer, labels, mlm_dir)
    teacher = TeacherModel(hf)

    max_len = cfg.tokenizer.max_len
    train_ds = TextDataset(
        encode_cached(tokenizer, data.train.texts, max_len, cache_dir=None), data.train.labels
    )
    dev_ds = TextDataset(
        encode_cached(tokenizer, data.dev.texts, max_len, cache_dir=None), data.dev.labels
    )
    result = fit(
        teacher,
        classification_loss,
        train_ds,
        cfg.teacher.train,
        work / "train",
        collate_fn=make_collate(int(tokenizer.pad_token_id or 0)),
        dev_set=dev_ds,
        num_labels=len(labels),
        stage="teacher",
    )
    trained = result.model
    assert isinstance(trained, TeacherModel)
    meta = save_teacher(
        out,
        trained.cpu(),
        tokenizer,
        labels,
        cfg=cfg,
        max_len=max_len,
        metrics=result.best_metrics,
        history=work / "train" / "metrics.jsonl",
        extra={
            "source": cfg.teacher.model or f"scratch:{cfg.teacher.scratch}",
            "mlm_epochs": cfg.teacher.mlm.epochs,
            "train_rows": len(data.train),
            "best_step": result.best_step,
            "stage_key": stage_key,
        },
    )
    shutil.rmtree(work, ignore_errors=True)
    return TeacherResult(path=out, meta=meta)
