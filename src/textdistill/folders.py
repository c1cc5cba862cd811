"""Self-describing model folders, for teachers and students alike.

A folder holds everything needed to use the model without the training set-up:

- weights: ``model.safetensors`` (teacher: the Hugging Face ``save_pretrained`` layout with
  its ``config.json``; student: the student's state dict)
- the tokenizer files, ``labels.json`` (class names in id order)
- ``textdistill.json``: kind, architecture, max length, resolved config, dev metrics,
  parameter count, size on disk, fingerprints, library version
- ``config.yaml``: the resolved configuration, ``metrics.jsonl``: the training history

Folders are built in a temporary sibling and renamed into place (:func:`io.atomic_dir`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from textdistill import __version__
from textdistill.config import Config, save_config
from textdistill.errors import UserError
from textdistill.io import atomic_dir, dir_size_bytes, file_sha256, read_json, write_json
from textdistill.models.teacher import TeacherModel
from textdistill.tokenization import load_tokenizer

log = logging.getLogger(__name__)

META_FILE = "textdistill.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    """A model ready for inference plus everything its folder says about it."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    label_names: list[str]
    meta: dict[str, Any]
    path: Path
    max_len: int = 32
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", "unknown"))

    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("fingerprint", ""))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def folder_fingerprint(path: str | Path) -> str:
    """Hash of the weights and the architecture: what makes two models the same model."""
    path = Path(path)
    h = hashlib.sha256()
    for name in (WEIGHTS_FILE, "config.json", "model.onnx"):
        f = path / name
        if f.is_file():
            h.update(name.encode())
            h.update(file_sha256(f).encode())
    meta = path / META_FILE
    if meta.is_file():
        h.update(repr(sorted(read_json(meta).get("architecture", {}).items())).encode())
    return h.hexdigest()[:32]


def _finish_folder(
    tmp: Path,
    *,
    kind: str,
    architecture: dict[str, Any],
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    label_names: list[str],
    cfg: Config | None,
    max_len: int,
    metrics: dict[str, Any] | None,
    history: Path | None,
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    tokenizer.save_pretrained(tmp)
    write_json(tmp / "labels.json", label_names)
    if cfg is not None:
        save_config(cfg, tmp / "config.yaml")
    if history is not None and history.is_file():
        shutil.copyfile(history, tmp / "metrics.jsonl")
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "architecture": architecture,
        "max_len": max_len,
        "num_labels": len(label_names),
        "num_parameters": count_parameters(model),
        "dev_metrics": metrics or {},
        "config": cfg.to_dict() if cfg is not None else None,
        "textdistill_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    write_json(tmp / META_FILE, meta)
    meta["fingerprint"] = folder_fingerprint(tmp)
    meta["size_mb"] = round(dir_size_bytes(tmp) / 1e6, 3)
    write_json(tmp / META_FILE, meta)
    return meta


def save_teacher(
    out: str | Path,
    teacher: TeacherModel,
    tokenizer: PreTrainedTokenizerBase,
    label_names: list[str],
    *,
    cfg: Config | None = None,
    max_len: int = 32,
    metrics: dict[str, Any] | None = None,
    history: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a teacher folder atomically; returns its ``textdistill.json`` content."""
    with atomic_dir(out) as tmp:
        teacher.hf.save_pretrained(tmp, safe_serialization=True)
        arch = {
            "type": "hf",
            "model_type": teacher.hf.config.model_type,
            "hidden_size": teacher.hidden_size,
            "layers": getattr(teacher.hf.config, "num_hidden_layers", None),
            "vocab_size": getattr(teacher.hf.config, "vocab_size", None),
        }
        meta = _finish_folder(
            tmp,
            kind="teacher",
            architecture=arch,
            model=teacher,
            tokenizer=tokenizer,
            label_names=label_names,
            cfg=cfg,
            max_len=max_len,
            metrics=metrics,
            history=history,
            extra=extra,
        )
    log.info("saved teacher to %s", out)
    return meta


def save_student(
    out: str | Path,
    student: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    label_names: list[str],
    *,
    cfg: Config | None = None,
    max_len: int = 32,
    metrics: dict[str, Any] | None = None,
    history: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a student folder atomically; ``student.config`` must rebuild the architecture."""
    with atomic_dir(out) as tmp:
        st_save_model(student, str(tmp / WEIGHTS_FILE))
        arch = dict(getattr(student, "config"))  # noqa: B009 - set by every student class
        meta = _finish_folder(
            tmp,
            kind="student",
            architecture=arch,
            model=student,
            tokenizer=tokenizer,
            label_names=label_names,
            cfg=cfg,
            max_len=max_len,
            metrics=metrics,
            history=history,
            extra=extra,
        )
    log.info("saved student to %s", out)
    return meta


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise UserError(
            f"{path}: not a textdistill model folder (no {META_FILE}); "
            "train one with `textdistill teacher train` or `textdistill distill`"
        )
    meta: dict[str, Any] = read_json(meta_file)
    return meta


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a teacher or student folder for inference (eval mode)."""
    from textdistill.models.students import build_student_from_config

    path = Path(path)
    meta = read_meta(path)
    label_names: list[str] = read_json(path / "labels.json")
    tokenizer = load_tokenizer(path)
    kind = meta.get("kind")
    model: nn.Module
    if kind == "teacher":
        hf = AutoModelForSequenceClassification.from_pretrained(path)
        model = TeacherModel(hf)
    elif kind == "student":
        model = build_student_from_config(meta["architecture"])
        missing, unexpected = st_load_model(model, str(path / WEIGHTS_FILE), strict=True)
        del missing, unexpected
    else:
        raise UserError(f"{path}: unknown model kind {kind!r} in {META_FILE}")
    model.to(device).eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        label_names=label_names,
        meta=meta,
        path=path,
        max_len=int(meta.get("max_len", 32)),
    )
