"""Self-describing model folders, for teachers and students alike.

A folder holds everything needed to use the model without the training set-up:

- weights: ``model.safetensors`` (teacher: the Hugging Face ``save_pretrained`` layout with
  its ``config.json``; student: the student's state dict)
- the tokenizer files, ``labels.json`` (class names in id order)
- ``textdistill.json``: kind, architecture, max length, resolved config, dev metrics,
  parameter count, size on disk, fingerprints, library version
- ``config.yaml``: the resolved configuration, ``metrics.jsonl``: the training history

Folders are built in a temporary sibling and renamed into place (:func:`io.atomic_dir`): a
failed save (full disk, kill) leaves no partial folder and keeps an earlier version intact,
and one that fails for lack of space or permission says so in one message
(:class:`~textdistill.core.errors.WriteError`).

**Fingerprint.** ``textdistill.json`` records the sha256 of every file that decides
predictions (:func:`model_files`: weights, model config, tokenizer files, ``labels.json``)
and a fingerprint over them, the architecture and ``max_len``. Loading checks the files
against it: a folder whose weights, tokenizer or labels were changed in place is an error
naming the changed files (``allow_modified`` / ``--allow-modified`` /
``TEXTDISTILL_ALLOW_MODIFIED=1`` accept it with a warning, under the new fingerprint), so it
is never taken for the model it used to be, by a user or by the soft-target cache. Folders
saved before these checks (``fingerprint_version`` 1) are checked by their old fingerprint
(weights, ``config.json`` and architecture), which their caches are keyed by.

**Loading checks.** Whatever the flag says, a folder that cannot predict correctly is a
:class:`~textdistill.core.errors.UserError` naming the file: a missing ``tokenizer.json``
(transformers would fall back to a tokenizer that maps every character to ``[UNK]``), a
tokenizer with more tokens than the model has embeddings, a label list that is not one
distinct name per class, a ``max_len`` outside what the model takes, weights that hold NaN
or infinity, and pickled weights (``pytorch_model.bin``), which are refused, never loaded.
"""

from __future__ import annotations

import datetime as _dt
import logging
import pickle
import shutil
from collections.abc import Callable
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
from textdistill.core.errors import RESUME_HINT, UserError
from textdistill.core.folder import (  # noqa: F401 - the folder format, re-exported here
    ALLOW_MODIFIED_ENV,
    FINGERPRINT_VERSION,
    FORMAT_VERSION,
    LABELS_FILE,
    MAX_LEN_LIMIT,
    META_FILE,
    MODEL_KINDS,
    TOKENIZER_FILE,
    TOKENIZER_FILES,
    WEIGHT_PATTERNS,
    WEIGHTS_FILE,
    allow_modified_default,
    building,
    check_fingerprint,
    check_folder,
    check_vocab_fits,
    file_hashes,
    folder_fingerprint,
    folder_format,
    model_files,
    read_meta,
    set_allow_modified,
    size_on_disk_mb,
    weight_files,
    write_meta,
)
from textdistill.core.io import write_json
from textdistill.data.tokenization import load_tokenizer
from textdistill.models.students import StudentModel, build_student_from_config
from textdistill.models.teacher import TeacherModel, quiet_transformers

log = logging.getLogger(__name__)

PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")


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
    with building(out, f"{kind} folder", hint=RESUME_HINT) as tmp:
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


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    allow_modified: bool | None = None,
) -> LoadedModel:
    """Load a teacher or student folder for inference (eval mode).

    ``meta["fingerprint"]`` of the result is the fingerprint of the files as they are now.
    ``allow_modified``: accept files changed since the folder was saved, with a warning
    (default: the ``TEXTDISTILL_ALLOW_MODIFIED`` environment variable; see the module
    docstring for every check).

    Raises:
        UserError: not a model folder, its files are missing, damaged or changed, or they
            do not fit together (tokenizer, labels, max_len, weights).
    """
    path = Path(path)
    meta = read_meta(path)
    if meta["kind"] == "ensemble":
        raise UserError(
            f"{path} is an ensemble (no weights of its own): load it with "
            "textdistill.load, or use its members"
        )
    label_names, max_len = check_folder(path, meta)
    check_weights_file(path, meta)
    meta["fingerprint"] = check_fingerprint(path, meta, allow_modified=allow_modified)
    try:
        model, tokenizer = _load_parts(path, meta)
    except UserError:
        raise
    except pickle.UnpicklingError as err:
        raise UserError(f"{path}: refused to unpickle a weights file ({err})") from None
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as err:
        # safetensors and transformers signal damaged or missing files with all of these.
        raise UserError(f"{path}: cannot load the {meta['kind']} ({err})") from None
    check_fits(path, model, tokenizer, label_names, max_len)
    check_finite(path, model)
    model.to(device).eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        label_names=label_names,
        meta=meta,
        path=path,
        max_len=max_len,
    )


def check_weights_file(path: Path, meta: dict[str, Any]) -> None:
    """Refuse pickled weights and name a missing ``model.safetensors``.

    Raises:
        UserError: no safetensors weights (a pickled ``.bin``/``.pt`` is refused, never
            unpickled: loading a pickle runs whatever code it holds).
    """
    if (path / WEIGHTS_FILE).is_file() or (path / "model.safetensors.index.json").is_file():
        return
    pickled = sorted(f.name for pattern in PICKLED_WEIGHTS for f in path.glob(pattern))
    if pickled:
        raise UserError(
            f"{path}: refused to load {', '.join(pickled)}: pickled weights are never loaded "
            "(unpickling runs code). Convert them to safetensors, e.g. load the model in "
            "transformers and save_pretrained(..., safe_serialization=True)"
        )
    raise UserError(f"{path / WEIGHTS_FILE}: missing; save the model again")


def embedding_rows(model: nn.Module) -> int | None:
    """Rows of the model's token embedding (the vocabulary it accepts), None if unknown."""
    if isinstance(model, StudentModel):
        return int(model.embedding.num_embeddings)
    if isinstance(model, TeacherModel):
        embeddings = model.hf.get_input_embeddings()
        if isinstance(embeddings, nn.Embedding):
            return int(embeddings.num_embeddings)
    return None


def check_fits(
    path: Path,
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    label_names: list[str],
    max_len: int,
) -> None:
    """Tokenizer, classes and ``max_len`` against the loaded model.

    Raises:
        UserError: naming the file that does not fit the weights.
    """
    check_vocab_fits(path, len(tokenizer), embedding_rows(model))
    classes: int | None = None
    if isinstance(model, StudentModel):
        classes = int(model.config.get("num_labels", len(label_names)))
    elif isinstance(model, TeacherModel):
        classes = int(getattr(model.hf.config, "num_labels", len(label_names)))
        positions = getattr(model.hf.config, "max_position_embeddings", None)
        if positions is not None and max_len > positions:
            raise UserError(
                f"{path / META_FILE}: max_len {max_len} exceeds the model's {positions} positions"
            )
    if classes is not None and classes != len(label_names):
        raise UserError(
            f"{path / LABELS_FILE}: {len(label_names)} class names, but the weights have "
            f"{classes} classes"
        )


def check_finite(path: Path, model: nn.Module) -> None:
    """Raise a :class:`UserError` when a weight holds NaN or infinity (damaged weights would
    otherwise predict NaN, or one class, for every text)."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"{path}: weight {name!r} holds NaN or infinite values: the weights are "
                "damaged; train or save the model again"
            )


def _load_parts(path: Path, meta: dict[str, Any]) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    tokenizer = load_tokenizer(path)
    model: nn.Module
    if meta["kind"] == "teacher":
        with quiet_transformers():
            hf, info = AutoModelForSequenceClassification.from_pretrained(
                path, output_loading_info=True, use_safetensors=True
            )
        # A saved teacher holds every weight; anything freshly initialised means damage.
        absent = sorted(info.get("missing_keys", ())) + sorted(info.get("mismatched_keys", ()))
        if absent:
            raise ValueError(f"weights missing from {WEIGHTS_FILE}: {', '.join(map(str, absent))}")
        model = TeacherModel(hf)
    else:
        architecture = meta.get("architecture")
        if not isinstance(architecture, dict):
            raise UserError(f"{path / META_FILE}: no architecture; save the model again")
        model = build_student_from_config(architecture)
        st_load_model(model, str(path / WEIGHTS_FILE), strict=True)
    return model, tokenizer
