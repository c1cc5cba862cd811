"""Self-describing model folders, for teachers and students alike.

A folder holds everything needed to use the model without the training set-up:

- weights: ``model.safetensors`` (teacher: the Hugging Face ``save_pretrained`` layout with
  its ``config.json``; student: the student's state dict)
- the tokenizer files, ``labels.json`` (class names in id order)
- ``textdistill.json``: kind, architecture, max length, resolved config, dev metrics,
  parameter count, size on disk, fingerprints, library version
- ``config.yaml``: the resolved configuration, ``metrics.jsonl``: the training history

Folders are built in a temporary sibling and renamed into place (:func:`io.atomic_dir`): a
failed save (full disk, kill) leaves no partial folder and keeps an earlier version intact.
The stored fingerprint is checked against the files on loading, so a folder whose weights
were replaced in place is never taken for the model it used to be (e.g. by the soft-target
cache).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model as st_save_model
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from textdistill import __version__
from textdistill.core.config import Config, save_config
from textdistill.core.errors import UserError
from textdistill.core.io import atomic_dir, dir_size_bytes, file_sha256, read_json, write_json
from textdistill.data.tokenization import load_tokenizer
from textdistill.models.students import StudentModel, build_student_from_config
from textdistill.models.teacher import TeacherModel, quiet_transformers

log = logging.getLogger(__name__)

META_FILE = "textdistill.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
MODEL_KINDS = ("teacher", "student", "ensemble")
"""What ``textdistill.json`` may say a folder is (an ensemble holds no weights of its own)."""


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
    """Number of parameters; tied weights (shared tensors) are counted once."""
    return sum(p.numel() for p in model.parameters())


WEIGHT_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "*.onnx",
    "*.onnx.data",
    "*.bin",
    "*.pt",
    "*.pth",
)

_BYTES_PER_MB = 1e6  # decimal megabytes, as the Hugging Face Hub reports them


def weight_files(path: str | Path) -> list[Path]:
    """The weight files directly inside a model folder (see :data:`WEIGHT_PATTERNS`)."""
    folder = Path(path)
    found = {f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern) if f.is_file()}
    return sorted(found)


def size_on_disk_mb(path: str | Path) -> float:
    """Size of a model in MB (10^6 bytes).

    - a file: its size;
    - a folder: the sum of its top-level weight files (``model.safetensors``, ``*.onnx`` and
      external ONNX data, ``*.bin``, ``*.pt``), so that tokenizer files, logs and
      checkpoints do not blur the comparison between models;
    - a folder without weight files: everything in it, recursively.
    """
    p = Path(path)
    if p.is_file():
        return p.stat().st_size / _BYTES_PER_MB
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such file or folder")
    files = weight_files(p)
    if files:
        return sum(f.stat().st_size for f in files) / _BYTES_PER_MB
    log.debug("%s: no weight files found, counting the whole folder", p)
    return dir_size_bytes(p) / _BYTES_PER_MB


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


def folder_meta(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    """A ``textdistill.json``: ``fields`` between the keys every folder kind carries (format
    version and kind first; library versions and creation time last)."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        **fields,
        "textdistill_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def write_meta(folder: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write ``meta`` as the ``textdistill.json`` of a folder whose other files are complete,
    with the folder's ``fingerprint`` and ``size_mb`` added (both count that file); returns it."""
    write_json(folder / META_FILE, meta)
    meta["fingerprint"] = folder_fingerprint(folder)
    meta["size_mb"] = round(dir_size_bytes(folder) / 1e6, 3)
    write_json(folder / META_FILE, meta)
    return meta


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
    meta = folder_meta(
        kind,
        {
            "architecture": architecture,
            "max_len": max_len,
            "num_labels": len(label_names),
            "num_parameters": count_parameters(model),
            "dev_metrics": metrics or {},
            "config": cfg.to_dict() if cfg is not None else None,
            **(extra or {}),
        },
    )
    return write_meta(tmp, meta)


@contextlib.contextmanager
def _building(out: str | Path, kind: str) -> Iterator[Path]:
    """:func:`atomic_dir` whose I/O errors become a :class:`UserError` saying what was kept."""
    out = Path(out)
    existed = out.exists()
    try:
        with atomic_dir(out) as tmp:
            yield tmp
    except OSError as err:
        kept = "the previous version is unchanged" if existed else "nothing was written"
        raise UserError(f"could not save the {kind} folder {out}: {err} ({kept})") from err


def _save(
    out: str | Path,
    kind: str,
    model: nn.Module,
    write_weights: Callable[[Path], dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    label_names: list[str],
    **info: Any,
) -> dict[str, Any]:
    """Build a folder: ``write_weights(tmp)`` writes the weights and returns the
    architecture; everything else is common to teachers and students."""
    with _building(out, kind) as tmp:
        arch = write_weights(tmp)
        meta = _finish_folder(
            tmp,
            kind=kind,
            architecture=arch,
            model=model,
            tokenizer=tokenizer,
            label_names=label_names,
            **info,
        )
    log.info("saved %s to %s", kind, out)
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
    """Write a teacher folder atomically; returns its ``textdistill.json`` content.

    Raises:
        UserError: the folder could not be written (``out`` is then as it was before).
    """

    def weights(tmp: Path) -> dict[str, Any]:
        with quiet_transformers():  # no shard-writing progress bar
            teacher.hf.save_pretrained(tmp)
        return {
            "type": "hf",
            "model_type": teacher.hf.config.model_type,
            "hidden_size": teacher.hidden_size,
            "layers": getattr(teacher.hf.config, "num_hidden_layers", None),
            "vocab_size": getattr(teacher.hf.config, "vocab_size", None),
        }

    return _save(
        out,
        "teacher",
        teacher,
        weights,
        tokenizer,
        label_names,
        cfg=cfg,
        max_len=max_len,
        metrics=metrics,
        history=history,
        extra=extra,
    )


def save_student(
    out: str | Path,
    student: StudentModel,
    tokenizer: PreTrainedTokenizerBase,
    label_names: list[str],
    *,
    cfg: Config | None = None,
    max_len: int = 32,
    metrics: dict[str, Any] | None = None,
    history: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a student folder atomically; ``student.config`` must rebuild the architecture.

    Raises:
        UserError: the folder could not be written (``out`` is then as it was before).
    """

    def weights(tmp: Path) -> dict[str, Any]:
        st_save_model(student, str(tmp / WEIGHTS_FILE))
        return dict(student.config)

    return _save(
        out,
        "student",
        student,
        weights,
        tokenizer,
        label_names,
        cfg=cfg,
        max_len=max_len,
        metrics=metrics,
        history=history,
        extra=extra,
    )


def sentence_width(model: nn.Module) -> int | None:
    """Width H of the model's sentence vector (``ClassifierOutput.hidden``), None without one
    (e.g. an ONNX export, whose graph returns logits only)."""
    if isinstance(model, TeacherModel | StudentModel):
        return model.hidden_size
    return None


def folder_format(meta: dict[str, Any]) -> str:
    """How a folder's model is stored: ``"onnx"`` for an ONNX export, else ``"torch"``
    (teacher and student folders, and int8 PyTorch exports)."""
    if meta.get("format") == "onnx" or meta.get("kind") == "onnx":
        return "onnx"
    return "torch"


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ``textdistill.json`` of a model folder.

    Raises:
        UserError: ``path`` is missing, not a model folder, or its metadata is unreadable or
            from a newer format.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: model folder not found")
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise UserError(
            f"{path}: not a textdistill model folder (no {META_FILE}); "
            "train one with `textdistill teacher train` or `textdistill distill`"
        )
    try:
        meta = read_json(meta_file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{meta_file}: unreadable ({err}); save the model again") from None
    if not isinstance(meta, dict) or meta.get("kind") not in MODEL_KINDS:
        kinds = ", ".join(MODEL_KINDS)
        raise UserError(f"{meta_file}: not textdistill model metadata (kind is none of {kinds})")
    version = meta.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"{path}: folder format {version!r} is newer than this textdistill supports "
            f"({FORMAT_VERSION}); upgrade textdistill"
        )
    return meta


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a teacher or student folder for inference (eval mode).

    ``meta["fingerprint"]`` of the result is the fingerprint of the files as they are now;
    if they changed since the folder was saved, a warning says so.

    Raises:
        UserError: not a model folder, or its files are missing or damaged.
    """
    path = Path(path)
    meta = read_meta(path)
    if meta["kind"] == "ensemble":
        raise UserError(
            f"{path} is an ensemble (no weights of its own): load it with "
            "textdistill.load, or use its members"
        )
    try:
        model, label_names, tokenizer = _load_parts(path, meta)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as err:
        # safetensors and transformers signal damaged or missing files with all of these.
        raise UserError(f"{path}: cannot load the {meta['kind']} ({err})") from None
    current = folder_fingerprint(path)
    if meta.get("fingerprint") not in (None, current):
        log.warning(
            "%s: the model files changed since the folder was saved; using fingerprint %s",
            path,
            current,
        )
    meta["fingerprint"] = current
    model.to(device).eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        label_names=label_names,
        meta=meta,
        path=path,
        max_len=int(meta.get("max_len", 32)),
    )


def _load_parts(
    path: Path, meta: dict[str, Any]
) -> tuple[nn.Module, list[str], PreTrainedTokenizerBase]:
    label_names: list[str] = read_json(path / "labels.json")
    tokenizer = load_tokenizer(path)
    model: nn.Module
    if meta["kind"] == "teacher":
        with quiet_transformers():
            hf, info = AutoModelForSequenceClassification.from_pretrained(
                path, output_loading_info=True
            )
        # A saved teacher holds every weight; anything freshly initialised means damage.
        absent = sorted(info.get("missing_keys", ())) + sorted(info.get("mismatched_keys", ()))
        if absent:
            raise ValueError(f"weights missing from {WEIGHTS_FILE}: {', '.join(map(str, absent))}")
        model = TeacherModel(hf)
    else:
        model = build_student_from_config(meta["architecture"])
        st_load_model(model, str(path / WEIGHTS_FILE), strict=True)
    return model, label_names, tokenizer
