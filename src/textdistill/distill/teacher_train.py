"""Getting a teacher: fine-tune a checkpoint or train a BERT from scratch, optionally after
masked-language-model (MLM) domain pretraining on the training (and unlabeled) texts.

Every stage runs on the one training loop, :func:`textdistill.training.loop.fit`, so both stages are
resumable. Reproducibility: model initialisation is seeded (``teacher.mlm.seed`` for the MLM
model, ``teacher.train.seed`` for the classifier and its fresh head) and MLM masking is a
function of the seed and the batch's rows (:class:`MlmCollate`), so a run killed at any
point and continued with ``--resume`` ends with the teacher an uninterrupted run gives. Each
stage's checkpoint records hashes of its texts (and labels), the teacher settings and the
tokenizer, so a resume after any of them changed is refused, saying what changed.

Work folder (``<out>.work``, removed once the teacher folder is saved)::

    mlm/        MLM stage of fit(): metrics.jsonl, checkpoint/, and model/ when done
    train/      fine-tuning stage of fit(): metrics.jsonl, checkpoint/
    metrics.jsonl   both stages' history, copied into the teacher folder
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from textdistill.core import distributed
from textdistill.core.config import OUTPUT_ONLY, Config
from textdistill.core.errors import UserError
from textdistill.core.io import atomic_dir, read_json, texts_sha256, write_json
from textdistill.core.paths import work_dir_for
from textdistill.data.batching import TextDataset, collate, make_collate
from textdistill.data.corpus import Corpus, read_texts
from textdistill.data.splits import TrainingData, prepare_training_data
from textdistill.data.tokenization import (
    build_tokenizer,
    encode_cached,
    load_tokenizer,
    pad_token_id,
    tokenizer_fingerprint,
)
from textdistill.distill.losses import LossOutput, distillation_loss
from textdistill.distill.teachers import import_teacher, read_label_map
from textdistill.models.folders import save_teacher
from textdistill.models.teacher import (
    TeacherModel,
    label_maps,
    load_classifier,
    new_scratch_classifier,
    new_scratch_mlm,
    quiet_transformers,
    scratch_bert_config,
)
from textdistill.training import checkpoint as ckpt
from textdistill.training.history import METRICS_FILE
from textdistill.training.loop import Identity, fit

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label of the positions the MLM loss skips (Hugging Face's convention)."""
MLM_STAMP = "textdistill_mlm.json"
"""Written last into a finished MLM model folder: what it was trained from."""
# TrainConfig fields that do not change what a stage produces.


@dataclass
class TeacherResult:
    path: Path
    meta: dict[str, Any]


def classification_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], progress: float
) -> LossOutput:
    """Cross-entropy on gold labels (rows without one are skipped)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return distillation_loss(out, batch, mode="none", T=1.0, alpha=0.0, beta=0.0)


def mlm_loss(model: nn.Module, batch: dict[str, torch.Tensor], progress: float) -> LossOutput:
    """The masked-LM cross-entropy over the masked positions (``labels != -100``)."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
    )
    value = float(out.loss.detach())
    return LossOutput(loss=out.loss, terms={"loss": value, "mlm": value})


class MlmCollate:
    """Pads rows and applies BERT's masking, deterministically per batch.

    Each real, non-special token is selected with ``probability``; a selected token becomes
    ``[MASK]`` with probability ``mask_replace``, a uniformly random token with
    ``random_replace``, and stays as it is otherwise (BERT: 15 %, 80/10/10). ``labels`` holds
    the original id at selected positions and ``-100`` elsewhere. A batch in which nothing
    was selected gets one random maskable position, so its loss is never 0/0.

    The random draws come from a generator seeded by ``(seed, the batch's row indices)``,
    never from the global RNG: a resumed run re-collates the batch that was prefetched when
    its checkpoint was taken and must mask it the same way. Rows reappear in other batches
    in later epochs (the sampler reshuffles), so the masking still changes between epochs.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        probability: float,
        seed: int,
        *,
        mask_replace: float = 0.8,
        random_replace: float = 0.1,
    ) -> None:
        if not 0 < probability < 1:
            raise ValueError(f"the masking probability must be in (0, 1), got {probability}")
        if mask_replace < 0 or random_replace < 0 or mask_replace + random_replace > 1:
            raise ValueError("mask_replace and random_replace must be >= 0 with sum <= 1")
        mask_id = tokenizer.mask_token_id
        if mask_id is None:
            raise UserError(
                "MLM pretraining needs a tokenizer with a mask token; this one has none "
                "(set teacher.mlm.epochs to 0)"
            )
        self.mask_id = int(mask_id)
        self.pad_id = pad_token_id(tokenizer)
        self.vocab_size = len(tokenizer)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.probability = probability
        self.mask_replace = mask_replace
        self.random_replace = random_replace
        self.seed = seed

    def generator(self, index: torch.Tensor) -> torch.Generator:
        """The generator of the batch made of rows ``index`` (in batch order)."""
        h = hashlib.sha256(f"textdistill-mlm:{self.seed}:".encode())
        h.update(index.numpy().astype("<i8").tobytes())
        return torch.Generator().manual_seed(int.from_bytes(h.digest()[:8], "little") >> 1)

    def __call__(self, rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = collate(rows, pad_id=self.pad_id)
        if "index" not in batch:
            raise KeyError("MLM rows need an 'index' entry (their row number) to seed masking")
        input_ids, labels = self.mask(batch["input_ids"], batch["attention_mask"], batch["index"])
        return {
            "input_ids": input_ids,
            "attention_mask": batch["attention_mask"],
            "labels": labels,
            "index": batch["index"],
        }

    def mask(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked ``input_ids`` (B, T) and MLM ``labels`` (B, T) for one padded batch."""
        gen = self.generator(index)
        shape = input_ids.shape
        # Every draw is made whatever the outcome, so the result depends on the seed only.
        select_draw = torch.rand(shape, generator=gen)  # (B, T)
        action_draw = torch.rand(shape, generator=gen)  # (B, T)
        random_ids = torch.randint(self.vocab_size, shape, generator=gen)  # (B, T)
        fallback_draw = torch.rand((), generator=gen)

        maskable = attention_mask.bool() & ~torch.isin(input_ids, self.special_ids)  # (B, T)
        selected = maskable & (select_draw < self.probability)
        if not selected.any() and maskable.any():
            candidates = maskable.flatten().nonzero().squeeze(1)
            pick = candidates[int(fallback_draw * len(candidates))]
            selected = selected.clone()
            selected.view(-1)[pick] = True

        labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
        to_mask = selected & (action_draw < self.mask_replace)
        to_random = (
            selected
            & (action_draw >= self.mask_replace)
            & (action_draw < self.mask_replace + self.random_replace)
        )
        masked = torch.where(to_mask, torch.full_like(input_ids, self.mask_id), input_ids)
        masked = torch.where(to_random, random_ids, masked)
        return masked, labels


def _make_tokenizer(cfg: Config, texts: list[str]) -> PreTrainedTokenizerBase:
    if cfg.teacher.model is not None:
        return load_tokenizer(cfg.teacher.model)
    return build_tokenizer(
        texts,
        vocab_size=cfg.tokenizer.vocab_size,
        min_frequency=cfg.tokenizer.min_frequency,
        lowercase=cfg.tokenizer.lowercase,
    )


def _mlm_stamp(cfg: Config, tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> dict[str, Any]:
    """Everything an MLM model depends on; a finished one is reused only if this matches."""
    teacher = cfg.teacher.model_dump(mode="json", exclude={"train", "mlm"})
    mlm = cfg.teacher.mlm.model_dump(mode="json", exclude=set(OUTPUT_ONLY))
    return {
        "teacher": teacher,
        "mlm": mlm,
        "max_len": cfg.tokenizer.max_len,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "texts": texts_sha256(texts),
        "rows": len(texts),
    }


def _mlm_identity(stamp: dict[str, Any], texts: list[str]) -> Identity:
    """The MLM checkpoint's identity: the stamp without ``cfg.teacher.mlm`` (``fit`` checks
    that itself) and with the texts as data (so the unlabeled files' paths do not count,
    their contents do)."""
    config = {k: v for k, v in stamp.items() if k not in ("mlm", "texts", "rows")}
    config["teacher"] = {k: v for k, v in config["teacher"].items() if k != "unlabeled"}
    return {"data": ckpt.data_identity({"": (texts, None)}), "config": config}


def _teacher_identity(
    cfg: Config,
    tokenizer: PreTrainedTokenizerBase,
    data: TrainingData,
    mlm_texts: list[str],
) -> Identity:
    """The fine-tuning checkpoint's identity: its rows, the settings that shape the model
    (the MLM stage included: its result is the starting point) and the tokenizer."""
    splits: dict[str, tuple[list[str], Any]] = {
        "": (data.train.texts, data.train.labels),
        "dev": (data.dev.texts, data.dev.labels),
    }
    if cfg.teacher.mlm.epochs > 0:
        splits["mlm"] = (mlm_texts, None)
    teacher = cfg.teacher.model_dump(mode="json", exclude={"train", "unlabeled"})
    teacher["mlm"] = cfg.teacher.mlm.model_dump(mode="json", exclude=set(OUTPUT_ONLY))
    return {
        "data": ckpt.data_identity(splits),
        "config": {
            "teacher": teacher,
            "max_len": cfg.tokenizer.max_len,
            "tokenizer": tokenizer_fingerprint(tokenizer),
        },
    }


def _finished_mlm(out: Path, stamp: dict[str, Any]) -> bool:
    marker = out / MLM_STAMP
    return marker.is_file() and read_json(marker) == stamp


def _mlm_model(cfg: Config, tokenizer: PreTrainedTokenizerBase, num_labels: int) -> PreTrainedModel:
    if cfg.teacher.model is None:
        return new_scratch_mlm(_scratch_config(cfg, tokenizer, num_labels))
    try:
        model: PreTrainedModel = AutoModelForMaskedLM.from_pretrained(cfg.teacher.model)
    except (OSError, ValueError) as err:
        raise UserError(
            f"cannot load {cfg.teacher.model!r} for MLM pretraining: {err}\n"
            "Give a folder or hub id of a masked-LM checkpoint, or set teacher.mlm.epochs to 0."
        ) from None
    return model


def mlm_pretrain(
    cfg: Config,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    work: Path,
    num_labels: int,
) -> Path:
    """Domain-adaptive MLM pretraining; returns a folder loadable as a classifier.

    With ``teacher.mlm.resume`` a finished MLM model of the same settings, tokenizer and
    texts (left by an interrupted run) is reused instead of trained again.
    """
    out = work / "mlm" / "model"
    stamp = _mlm_stamp(cfg, tokenizer, texts)
    if cfg.teacher.mlm.resume and _finished_mlm(out, stamp):
        log.info("MLM pretraining already finished in %s; reusing it", out)
        return out
    torch.manual_seed(cfg.teacher.mlm.seed)  # model initialisation draws from it
    mlm = _mlm_model(cfg, tokenizer, num_labels)
    enc = encode_cached(tokenizer, texts, cfg.tokenizer.max_len)
    ds = TextDataset(enc, np.full(len(texts), -1))
    log.info("MLM pretraining on %d texts for %d epochs", len(texts), cfg.teacher.mlm.epochs)
    result = fit(
        mlm,
        mlm_loss,
        ds,
        cfg.teacher.mlm,
        work / "mlm",
        collate_fn=MlmCollate(tokenizer, cfg.teacher.mlm_probability, cfg.teacher.mlm.seed),
        stage="mlm",
        identity=_mlm_identity(stamp, texts),
    )
    trained = result.model
    assert isinstance(trained, PreTrainedModel)

    def save() -> None:
        with atomic_dir(out) as tmp, quiet_transformers():
            trained.cpu().save_pretrained(tmp)
            write_json(tmp / MLM_STAMP, stamp)
        # The stamped MLM model now stands for the stage; its checkpoint is done with.
        ckpt.remove_checkpoints(work / "mlm")

    distributed.on_main(save)  # one writer; the other processes wait for the folder
    return out


def _scratch_config(cfg: Config, tokenizer: PreTrainedTokenizerBase, num_labels: int) -> Any:
    t = cfg.teacher
    assert t.scratch is not None
    return scratch_bert_config(
        t.scratch,
        vocab_size=len(tokenizer),
        num_labels=num_labels,
        pad_token_id=pad_token_id(tokenizer),
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
    # Fresh weights (a scratch model, or the head of a checkpoint) come from the global RNG.
    torch.manual_seed(cfg.teacher.train.seed)
    if mlm_dir is not None:
        # The report would list the classification head and pooler as missing: expected.
        with quiet_transformers():
            return AutoModelForSequenceClassification.from_pretrained(mlm_dir, **label_maps(labels))
    if cfg.teacher.model is not None:
        return load_classifier(cfg.teacher.model, labels)
    return new_scratch_classifier(_scratch_config(cfg, tokenizer, len(labels)), labels)


def _check_max_len(model: PreTrainedModel, max_len: int) -> None:
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and max_len > positions:
        raise UserError(
            f"tokenizer.max_len {max_len} exceeds the model's {positions} positions; "
            f"use --max-len {positions} or less"
        )


def _merge_history(work: Path) -> Path:
    """Both stages' ``metrics.jsonl`` lines (MLM first) in one file."""
    merged = work / METRICS_FILE
    parts = [work / stage / METRICS_FILE for stage in ("mlm", "train")]
    merged.write_text(
        "".join(p.read_text(encoding="utf-8") for p in parts if p.is_file()), encoding="utf-8"
    )
    return merged


def train_teacher(
    cfg: Config, corpus: Corpus, out: str | Path, *, stage_key: str | None = None
) -> TeacherResult:
    """Train a teacher on ``corpus`` and write its folder to ``out``.

    ``stage_key`` (from the pipeline) is stored in the folder's metadata.
    """
    out = Path(out)
    t = cfg.teacher
    if t.model is not None and t.train.epochs == 0 and t.mlm.epochs == 0:
        # Nothing to train: the checkpoint is the teacher. Import it (classes matched by
        # name, evaluated on the selection split) instead of saving an unevaluated copy.
        label_map = read_label_map(cfg.distill.label_map) if cfg.distill.label_map else None
        meta = import_teacher(
            t.model, out, cfg, corpus, label_map=label_map, extra={"stage_key": stage_key}
        )
        return TeacherResult(path=out, meta=meta)
    work = work_dir_for(out)
    data: TrainingData = prepare_training_data(cfg, corpus)
    extra_texts = [t for f in cfg.teacher.unlabeled for t in read_texts(f)]
    mlm_texts = data.train.texts + data.unlabeled_texts + extra_texts
    tokenizer = _make_tokenizer(cfg, mlm_texts)
    labels = corpus.label_names
    max_len = cfg.tokenizer.max_len

    mlm_dir = None
    if cfg.teacher.mlm.epochs > 0:
        mlm_dir = mlm_pretrain(cfg, tokenizer, mlm_texts, work, len(labels))
    hf = _classifier(cfg, tokenizer, labels, mlm_dir)
    _check_max_len(hf, max_len)
    teacher = TeacherModel(hf)

    train_ds = TextDataset(encode_cached(tokenizer, data.train.texts, max_len), data.train.labels)
    dev_ds = TextDataset(encode_cached(tokenizer, data.dev.texts, max_len), data.dev.labels)
    result = fit(
        teacher,
        classification_loss,
        train_ds,
        cfg.teacher.train,
        work / "train",
        collate_fn=make_collate(pad_token_id(tokenizer)),
        dev_set=dev_ds,
        num_labels=len(labels),
        stage="teacher",
        identity=_teacher_identity(cfg, tokenizer, data, mlm_texts),
    )
    trained = result.model
    assert isinstance(trained, TeacherModel)

    def save() -> dict[str, Any]:
        return save_teacher(
            out,
            trained.cpu(),
            tokenizer,
            labels,
            cfg=cfg,
            max_len=max_len,
            metrics=result.best_metrics,
            history=_merge_history(work),
            extra={
                "initialized_from": cfg.teacher.model or f"scratch:{cfg.teacher.scratch}",
                "mlm_epochs": cfg.teacher.mlm.epochs,
                "train_rows": len(data.train),
                "mlm_rows": len(mlm_texts) if cfg.teacher.mlm.epochs > 0 else 0,
                "best_step": result.best_step,
                "stage_key": stage_key,
            },
        )

    # One writer; the other processes wait for the folder and receive its metadata.
    meta = distributed.on_main(save)
    if distributed.is_main_process():
        shutil.rmtree(work, ignore_errors=True)
    return TeacherResult(path=out, meta=meta)
