"""Distillation: train a student from cached teacher soft targets on the shared loop.

Modes differ only in the loss (:func:`textdistill.distill.losses.distillation_loss`):
``none`` (gold labels, no teacher: the baseline twin), ``hard`` (teacher argmax),
``soft`` (temperature-scaled KL + cross-entropy), ``hidden`` (soft + sentence-vector
matching through a learned projection).

A ``--resume`` continues only the same run: the checkpoint records hashes of the transfer
and selection rows (texts and labels), the student and distillation settings, and the
teacher (folder fingerprints, soft-target cache key); any change is refused with a message
saying what changed (:func:`textdistill.training.loop.fit`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from textdistill.core import distributed
from textdistill.core.config import Config
from textdistill.core.errors import UserError
from textdistill.core.io import read_json
from textdistill.core.paths import work_dir_for
from textdistill.data.batching import TextDataset, make_collate
from textdistill.data.corpus import Corpus, read_texts
from textdistill.data.splits import TrainingData, prepare_training_data
from textdistill.data.tokenization import (
    build_char_tokenizer,
    build_tokenizer,
    encode_cached,
    load_tokenizer,
    tokenizer_fingerprint,
)
from textdistill.distill.augment import augment_texts
from textdistill.distill.cache import SoftTargets, build_soft_targets
from textdistill.distill.losses import (
    LossOutput,
    ModeSpec,
    distillation_loss,
    make_projection,
    mode_spec,
    temperature_at,
)
from textdistill.distill.predictions import is_predictions_folder
from textdistill.distill.teachers import expand_teachers
from textdistill.models.folders import load_model, read_meta, save_student
from textdistill.models.students import (
    StudentModel,
    build_student,
    init_embeddings_from_teacher,
    student_arch,
    student_tokenizer_kind,
)
from textdistill.models.teacher import TeacherModel
from textdistill.training.checkpoint import data_identity
from textdistill.training.loop import Identity, fit

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


def distill_mode(cfg: Config) -> ModeSpec:
    """The spec of ``cfg.distill.mode``; a :class:`UserError` naming the valid modes."""
    try:
        return mode_spec(cfg.distill.mode)
    except ValueError as err:
        raise UserError(f"distill.mode: {err}") from None


def transfer_set(cfg: Config, data: TrainingData) -> TransferSet:
    """Labelled train rows, then unlabeled texts, then augmented copies of both.

    Mode ``none`` has no teacher to label anything else, so it gets the labelled rows only.
    """
    d = cfg.distill
    texts = list(data.train.texts)
    labels = list(data.train.labels)
    if distill_mode(cfg).uses_unlabeled:
        extra = list(data.unlabeled_texts)
        for f in d.extra:
            extra.extend(read_texts(f))
        extra += augment_texts(
            texts + extra,
            d.augment_copies,
            seed=d.augment_seed,
            mask_prob=d.augment_mask_prob,
            ngram_prob=d.augment_ngram_prob,
        )
        texts += extra
        labels += [-1] * len(extra)
    return TransferSet(texts, labels)


def _student_tokenizer(
    cfg: Config, teachers: list[str], data: TrainingData
) -> PreTrainedTokenizerBase:
    corpus = data.train.texts + data.unlabeled_texts
    t = cfg.tokenizer
    if student_tokenizer_kind(cfg.student.arch, cfg.student.tokenizer) == "chars":
        # The student's own featurisation: the soft targets are per text, so nothing ties
        # its ids to the teacher's. Built from the same texts with or without a teacher,
        # so the `none` twin reads exactly the ids its distilled twins read.
        return build_char_tokenizer(
            corpus, vocab_size=t.vocab_size, min_frequency=t.min_frequency, lowercase=t.lowercase
        )
    # Students share the (first) teacher's tokenizer, so one encoding serves both and the
    # `none` twin sees exactly the same input ids as the distilled students.
    if (model := _first_model_teacher(teachers)) is not None:
        return load_tokenizer(model)
    return build_tokenizer(
        corpus,
        vocab_size=t.vocab_size,
        min_frequency=t.min_frequency,
        lowercase=t.lowercase,
    )


def default_preset(arch: str) -> str:
    """The preset a student architecture uses when none is chosen.

    Raises:
        UserError: unknown architecture (the message lists the valid ones).
    """
    return student_arch(arch).default_preset


def preset_for(arch: str, configured_arch: str, configured_preset: str) -> str:
    """The preset of ``arch`` when the configuration was written for ``configured_arch``.

    A preset names a size of one architecture (bilstm ``small``, textcnn ``default``), so
    switching the architecture without naming a preset takes the new one's default instead
    of failing on the old one's preset name.
    """
    return configured_preset if arch == configured_arch else default_preset(arch)


def _check_teachers(cfg: Config, teachers: list[str], label_names: list[str]) -> None:
    """Fail before any work on a mode without a teacher, a teacher of other classes or
    ensemble weights that do not match the teachers."""
    mode = cfg.distill.mode
    if distill_mode(cfg).needs_teacher and not teachers:
        raise UserError(
            f"--mode {mode} needs a teacher (--teacher DIR); only --mode none trains without one"
        )
    weights = cfg.distill.teacher_weights
    if weights is not None and len(weights) != len(teachers):
        raise UserError(
            f"{len(weights)} teacher weight(s) for {len(teachers)} teacher(s); give one "
            "--teacher-weight per --teacher"
        )
    for t in teachers:
        read_meta(t)  # a clear error for a missing or foreign folder
        theirs = _label_names(Path(t))
        if theirs != label_names:
            raise UserError(
                f"{t}: the teacher's classes {theirs} differ from the data's {label_names}; "
                "distill on the data the teacher was trained for"
            )


def _label_names(folder: Path) -> list[str]:
    path = folder / "labels.json"
    if not path.is_file():
        raise UserError(f"{folder}: no labels.json; not a complete model folder")
    names = read_json(path)
    return [str(n) for n in names]


def _check_mode(cfg: Config, targets: SoftTargets | None) -> None:
    mode = cfg.distill.mode
    spec = distill_mode(cfg)
    if not spec.needs_teacher:
        return
    if targets is None:
        raise UserError(f"--mode {mode} needs a teacher (--teacher DIR)")
    if spec.needs_pooled and targets.pooled is None:
        raise UserError(
            f"--mode {mode} needs the teacher's pooled vectors (hidden states), but the "
            "soft-target cache has none and the teacher cannot produce them (a predictions "
            "file or an export has none); use --mode soft, or a teacher model folder"
        )


def _teacher_fingerprints(teachers: list[str]) -> list[str]:
    return [str(read_meta(t).get("fingerprint", "")) for t in teachers]


def run_identity(
    cfg: Config,
    transfer: TransferSet,
    data: TrainingData,
    *,
    tokenizer: PreTrainedTokenizerBase,
    max_len: int,
    teachers: list[str],
    targets: SoftTargets | None,
) -> Identity:
    """What a distillation checkpoint must match to be resumed (besides ``student.train``).

    Paths are left out (a moved teacher or extra file is the same one): the data is hashed
    row by row, the teacher by its fingerprints and the soft-target cache key, which covers
    the teacher outputs themselves. ``cache_batch_size`` only changes how fast the cache is
    built.
    """
    fingerprints = hashlib.sha256(",".join(_teacher_fingerprints(teachers)).encode())
    return {
        "data": data_identity(
            {
                "": (transfer.texts, transfer.labels),
                "selection": (data.select.texts, data.select.labels),
            }
        ),
        "config": {
            "student": cfg.student.model_dump(mode="json", exclude={"train"}),
            "distill": cfg.distill.model_dump(
                mode="json", exclude={"teachers", "extra", "label_map", "cache_batch_size"}
            ),
            "max_len": max_len,
            "tokenizer": tokenizer_fingerprint(tokenizer),
        },
        "teacher": {
            "fingerprints": fingerprints.hexdigest(),
            "soft targets": targets.path.name if targets is not None else None,
        }
        if teachers
        else {},
    }


def _student_max_len(cfg: Config, teachers: list[str], max_len: int | None) -> int:
    # The teacher's length by default: its soft targets were computed on texts cut there,
    # and a student that sees more (or less) of a text learns a slightly different target.
    if max_len is not None:
        if max_len < 4:
            raise UserError(f"max_len must be at least 4, got {max_len}")
        return max_len
    if (model := _first_model_teacher(teachers)) is not None:
        return int(read_meta(model).get("max_len", cfg.tokenizer.max_len))
    return cfg.tokenizer.max_len


def _first_model_teacher(teachers: list[str]) -> str | None:
    """The first teacher that is a model (it has a tokenizer), not a predictions file."""
    return next((t for t in teachers if not is_predictions_folder(t)), None)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Draw initial weights from ``seed`` (the same seed gives the same student) without
    disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _new_student(
    cfg: Config, tokenizer: PreTrainedTokenizerBase, num_labels: int, teachers: list[str]
) -> tuple[StudentModel, PreTrainedModel | None]:
    """The student, and the teacher network it was built from (None for the students that
    are not built from one): mode ``layers`` runs that same network, loaded once."""
    s = cfg.student
    arch = student_arch(s.arch)
    options = dict(s.options)
    teacher_hf = None
    if arch.options_from_teacher is not None and (first := _first_model_teacher(teachers)):
        # A student built from its teacher (the transformer): the teacher's widths and
        # layers, whatever the mode - the `none` twin starts from the same weights.
        teacher_hf = _teacher_network(first)
        try:
            options = arch.options_from_teacher(teacher_hf.config, options)
        except ValueError as err:
            raise UserError(f"{first}: {err}") from None
    student = build_student(
        s.arch,
        s.preset,
        vocab_size=len(tokenizer),
        num_labels=num_labels,
        pad_id=int(tokenizer.pad_token_id or 0),
        **options,
    )
    if teacher_hf is not None and arch.init_from_teacher is not None:
        arch.init_from_teacher(student, teacher_hf)
        log.info("student initialised from the teacher's weights (%s)", options)
    return student, teacher_hf


def _teacher_network(folder: str) -> PreTrainedModel:
    """The Hugging Face model inside a teacher folder (a UserError for any other folder)."""
    loaded = load_model(folder)
    if not isinstance(loaded.model, TeacherModel):
        raise UserError(f"{folder}: a transformer student is built from a BERT teacher folder")
    return loaded.model.hf


class _LayerTeacher:
    """The teacher run live for mode ``layers``: its hidden states at the layers the student
    was initialised from, ``(K + 1, B, T, H)`` (embeddings first), computed without grad."""

    def __init__(self, hf: PreTrainedModel | None, student: StudentModel) -> None:
        mapped = getattr(student, "teacher_layers", None)
        if mapped is None or hf is None:
            raise UserError(
                "--mode layers matches a transformer student's layers to its teacher's; "
                "use --student transformer with a BERT teacher"
            )
        self.layers = [0, *(j + 1 for j in mapped)]
        self.hf = hf
        self.hf.eval().requires_grad_(False)
        width = int(self.hf.config.hidden_size)
        if width != student.hidden_size:
            raise UserError(
                f"--mode layers: the student is {student.hidden_size} wide, the teacher {width}"
            )

    @torch.no_grad()
    def states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]
        if next(self.hf.parameters()).device != ids.device:
            self.hf.to(ids.device)  # type: ignore[arg-type]  # transformers types .to oddly
        out = self.hf(
            input_ids=ids, attention_mask=batch["attention_mask"], output_hidden_states=True
        )
        return torch.stack([out.hidden_states[i] for i in self.layers])  # (K+1, B, T, H)


def distill(
    cfg: Config,
    corpus: Corpus,
    out: str | Path,
    *,
    stage_key: str | None = None,
    max_len: int | None = None,
) -> StudentResult:
    """Train a student as ``cfg.distill`` says and write its folder to ``out``.

    ``stage_key`` (from the pipeline) is stored in the folder's metadata. ``max_len``: tokens
    per text for the student; by default the (first) teacher's, without a teacher
    ``cfg.tokenizer.max_len``.

    Raises:
        UserError: a mode that needs a teacher without one, a teacher trained on other
            classes, an unknown student architecture or preset, mode ``hidden`` without
            teacher sentence vectors.
    """
    out = Path(out)
    work = work_dir_for(out)
    cfg = expand_teachers(cfg, corpus)
    d, s = cfg.distill, cfg.student
    teachers = list(d.teachers)
    _check_teachers(cfg, teachers, corpus.label_names)
    num_labels = len(corpus.label_names)
    data = prepare_training_data(cfg, corpus)
    tokenizer = _student_tokenizer(cfg, teachers, data)
    # Built before the teacher runs, so a wrong architecture or size fails at once.
    with _seeded(s.train.seed):
        student, teacher_hf = _new_student(cfg, tokenizer, num_labels, teachers)
    if s.init_embeddings == "teacher":
        _init_from_teacher(student, teachers, tokenizer)
    transfer = transfer_set(cfg, data)
    spec = distill_mode(cfg)
    live = _LayerTeacher(teacher_hf, student) if spec.needs_layers else None
    if not spec.uses_unlabeled and d.extra:
        log.warning("mode %s learns from gold labels only; the --extra texts are not used", d.mode)
    max_len = _student_max_len(cfg, teachers, max_len)

    targets = None
    if spec.needs_teacher:
        targets = build_soft_targets(
            teachers,
            transfer.texts,
            weights=d.teacher_weights,
            ensemble=d.ensemble,
            with_pooled=spec.needs_pooled,
            batch_size=d.cache_batch_size,
            progress=s.train.progress,
        )
    _check_mode(cfg, targets)

    enc = encode_cached(tokenizer, transfer.texts, max_len, cache_dir=None)
    train_ds = TextDataset(
        enc,
        np.asarray(transfer.labels),
        teacher_logits=targets.logits if targets is not None else None,
        teacher_hidden=targets.pooled if (targets is not None and spec.needs_pooled) else None,
    )
    dev_ds = TextDataset(
        encode_cached(tokenizer, data.select.texts, max_len, cache_dir=None), data.select.labels
    )
    proj = None
    if spec.needs_projection:
        assert targets is not None and targets.pooled is not None
        student_width = student.hidden_size
        with _seeded(s.train.seed + 1):
            proj = make_projection(student_width, int(targets.pooled.shape[1]))

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], progress: float) -> LossOutput:
        out_ = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        if live is not None:
            batch = {**batch, "teacher_layers": live.states(batch)}
        # `proj` is the module fit() trains (extra_modules): moved to the device in place,
        # so this closure and the optimizer see the same parameters.
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
        num_labels=num_labels,
        stage=f"distill-{d.mode}",
        identity=run_identity(
            cfg,
            transfer,
            data,
            tokenizer=tokenizer,
            max_len=max_len,
            teachers=teachers,  # mode none too: the tokenizer, maybe the embeddings
            targets=targets,
        ),
    )
    trained = result.model
    assert isinstance(trained, StudentModel)  # fit() returns the module it was given, unwrapped

    def save() -> dict[str, Any]:
        return save_student(
            out,
            trained.cpu(),
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

    # One writer; the other processes wait for the folder and receive its metadata.
    meta = distributed.on_main(save)
    if distributed.is_main_process():
        shutil.rmtree(work, ignore_errors=True)
    return StudentResult(path=out, meta=meta)


def _init_from_teacher(
    student: StudentModel, teachers: list[str], tokenizer: PreTrainedTokenizerBase
) -> None:
    if not teachers:
        raise UserError("student.init_embeddings=teacher needs a teacher (--teacher DIR)")
    loaded = load_model(teachers[0])
    if not isinstance(loaded.model, TeacherModel):
        raise UserError(f"{teachers[0]}: embedding initialisation needs a BERT teacher folder")
    rows = None
    if tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(loaded.tokenizer):
        # Another vocabulary (the static student's characters): each student token takes
        # the row of the same string in the teacher's vocabulary, where there is one.
        theirs = loaded.tokenizer.get_vocab()
        ours = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        rows = [theirs.get(str(token), -1) for token in ours]
    init_embeddings_from_teacher(student, loaded.model.word_embeddings(), rows=rows)
