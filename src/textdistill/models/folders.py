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

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import pickle
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
from textdistill.core.errors import RESUME_HINT, UserError
from textdistill.core.io import (
    as_write_error,
    atomic_dir,
    dir_size_bytes,
    file_sha256,
    read_json,
    repair_interrupted,
    write_error,
    write_json,
)
from textdistill.data.tokenization import load_tokenizer
from textdistill.models.students import StudentModel, build_student_from_config
from textdistill.models.teacher import TeacherModel, quiet_transformers

log = logging.getLogger(__name__)

META_FILE = "textdistill.json"
WEIGHTS_FILE = "model.safetensors"
LABELS_FILE = "labels.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_FILES = (
    TOKENIZER_FILE,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
)
"""What ``save_pretrained`` of a fast tokenizer may write; all of it can change the ids."""
FORMAT_VERSION = 1
FINGERPRINT_VERSION = 2
"""1: weights, ``config.json``, ``model.onnx`` and architecture. 2: every file of
:func:`model_files` (their hashes are stored), architecture and ``max_len``."""
ALLOW_MODIFIED_ENV = "TEXTDISTILL_ALLOW_MODIFIED"
"""Set to 1 to load folders whose files changed since they were saved (with a warning)."""
PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt")
MAX_LEN_LIMIT = 8192
"""A ``max_len`` above this is damage, not a setting (BERT-style models take 512)."""
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


def model_files(path: str | Path) -> list[Path]:
    """The files of a folder whose content decides its predictions, sorted by name: weights
    (:func:`weight_files`), the model config, the tokenizer files and ``labels.json``."""
    folder = Path(path)
    named = (LABELS_FILE, "config.json", "model.safetensors.index.json", *TOKENIZER_FILES)
    found = {f for f in weight_files(folder)} | {folder / n for n in named}
    return sorted((f for f in found if f.is_file()), key=lambda f: f.name)


def file_hashes(path: str | Path) -> dict[str, str]:
    """``{file name: sha256}`` of :func:`model_files`."""
    return {f.name: file_sha256(f) for f in model_files(path)}


def folder_fingerprint(
    path: str | Path,
    meta: dict[str, Any] | None = None,
    *,
    version: int = FINGERPRINT_VERSION,
    hashes: dict[str, str] | None = None,
) -> str:
    """Hash of what makes two folders the same model (see :data:`FINGERPRINT_VERSION`).

    ``meta``: the folder's metadata (read from its ``textdistill.json`` when None);
    ``hashes``: :func:`file_hashes` of the folder when already computed.
    """
    path = Path(path)
    if meta is None:
        meta_file = path / META_FILE
        meta = read_json(meta_file) if meta_file.is_file() else {}
    architecture = meta.get("architecture") or {}
    if not isinstance(architecture, dict):
        architecture = {"invalid": repr(architecture)}
    if version == 1:
        h = hashlib.sha256()
        for name in (WEIGHTS_FILE, "config.json", "model.onnx"):
            f = path / name
            if f.is_file():
                h.update(name.encode())
                h.update(file_sha256(f).encode())
        if (path / META_FILE).is_file():
            h.update(repr(sorted(architecture.items())).encode())
        return h.hexdigest()[:32]
    payload = {
        "version": version,
        "files": hashes if hashes is not None else file_hashes(path),
        "architecture": architecture,
        "max_len": meta.get("max_len"),
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


_allow_modified_override: bool | None = None


def set_allow_modified(value: bool | None) -> None:
    """Override :func:`allow_modified_default` for this process (None: back to the
    environment); the CLI's ``--allow-modified`` sets it on every invocation."""
    global _allow_modified_override
    _allow_modified_override = value


def allow_modified_default() -> bool:
    """Whether loads accept changed files: :func:`set_allow_modified`, else
    ``TEXTDISTILL_ALLOW_MODIFIED`` as a flag (``1``, ``true``, ``yes``)."""
    if _allow_modified_override is not None:
        return _allow_modified_override
    return os.environ.get(ALLOW_MODIFIED_ENV, "").strip().lower() in ("1", "true", "yes")


def check_fingerprint(
    path: str | Path, meta: dict[str, Any], *, allow_modified: bool | None = None
) -> str:
    """The folder's fingerprint as its files are now, after checking it against the saved one.

    Raises:
        UserError: the files changed since the folder was saved (naming them), unless
            ``allow_modified`` (default: :func:`allow_modified_default`), which warns instead.
    """
    path = Path(path)
    saved = meta.get("fingerprint")
    version = meta.get("fingerprint_version", 1)
    if version not in (1, FINGERPRINT_VERSION):
        raise UserError(f"{path / META_FILE}: unknown fingerprint_version {version!r}")
    hashes = file_hashes(path) if version == FINGERPRINT_VERSION else None
    current = folder_fingerprint(path, meta, version=version, hashes=hashes)
    if saved is None or saved == current:
        return current
    changed = _changed_files(meta.get("files"), hashes)
    if allow_modified if allow_modified is not None else allow_modified_default():
        log.warning(
            "%s: the model files changed since the folder was saved (%s); using it as it is "
            "(fingerprint %s)",
            path,
            changed,
            current,
        )
        return current
    raise UserError(
        f"{path}: the model files changed since the folder was saved ({changed}), so it is "
        "not the model its textdistill.json describes; restore the files or save the model "
        f"again (to use it as it is: textdistill --allow-modified COMMAND, or "
        f"{ALLOW_MODIFIED_ENV}=1)"
    )


def _changed_files(saved: Any, now: dict[str, str] | None) -> str:
    if not isinstance(saved, dict) or now is None:
        return "weights, model config or architecture"
    parts = [f"{n} changed" for n in sorted(saved) if n in now and now[n] != saved[n]]
    parts += [f"{n} missing" for n in sorted(saved) if n not in now]
    parts += [f"{n} added" for n in sorted(now) if n not in saved]
    return ", ".join(parts) or "textdistill.json changed"


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
    with the ``files`` hashes and ``fingerprint`` (:func:`folder_fingerprint`) and the
    folder's ``size_mb`` (counting that file) added; returns it."""
    hashes = file_hashes(folder)
    meta["fingerprint_version"] = FINGERPRINT_VERSION
    meta["files"] = hashes
    meta["fingerprint"] = folder_fingerprint(folder, meta, hashes=hashes)
    write_json(folder / META_FILE, meta)
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
def building(out: str | Path, what: str, *, hint: str = "") -> Iterator[Path]:
    """:func:`atomic_dir` whose write errors (full disk, no permission, read-only; also those
    that safetensors and tokenizers report as plain exceptions) become one
    :class:`~textdistill.core.errors.WriteError` saying what was kept."""
    out = Path(out)
    existed = out.exists()
    try:
        with atomic_dir(out) as tmp:
            yield tmp
    except Exception as err:
        if isinstance(err, UserError) or not (isinstance(err, OSError) or as_write_error(err)):
            raise
        kept = "the previous version is unchanged" if existed else "nothing was written"
        raise write_error(f"the {what} {out}", err, kept=kept, hint=hint) from err


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
    repair_interrupted(path)
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


def check_folder(path: Path, meta: dict[str, Any]) -> tuple[list[str], int]:
    """The folder's class names and ``max_len`` after checking that they, and its tokenizer
    file, are usable: ``labels.json`` one distinct name per class (``num_labels``), an
    integer ``max_len`` in ``[2, MAX_LEN_LIMIT]``, a ``tokenizer.json``.

    Raises:
        UserError: naming the file at fault.
    """
    labels_file = path / LABELS_FILE
    try:
        names = read_json(labels_file)
    except FileNotFoundError:
        raise UserError(f"{labels_file}: missing (the class names); save the model again") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{labels_file}: unreadable ({err}); save the model again") from None
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise UserError(f"{labels_file}: expected a JSON list of class names")
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise UserError(f"{labels_file}: class names must be distinct, repeated: {doubled}")
    expected = meta.get("num_labels")
    if expected is not None and expected != len(names):
        raise UserError(
            f"{labels_file}: {len(names)} class names, but the model has {expected} classes "
            f"({META_FILE} num_labels)"
        )
    max_len = meta.get("max_len", 32)
    if (
        isinstance(max_len, bool)
        or not isinstance(max_len, int)
        or not 2 <= max_len <= MAX_LEN_LIMIT
    ):
        raise UserError(
            f"{path / META_FILE}: max_len must be an integer from 2 to {MAX_LEN_LIMIT} "
            f"(tokens per text), got {max_len!r}"
        )
    if not (path / TOKENIZER_FILE).is_file():
        raise UserError(
            f"{path / TOKENIZER_FILE}: missing; without it the tokenizer would map every "
            "character to [UNK]. Restore the file or save the model again"
        )
    return names, max_len


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


def check_tokenizer_fits(path: Path, tokenizer: PreTrainedTokenizerBase, rows: int | None) -> None:
    """Raise a :class:`UserError` when the tokenizer has ids the embeddings lack."""
    if rows is not None and len(tokenizer) > rows:
        raise UserError(
            f"{path / TOKENIZER_FILE}: the tokenizer has {len(tokenizer)} tokens but the model's "
            f"embeddings have {rows} rows: it is not this model's tokenizer"
        )


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
    check_tokenizer_fits(path, tokenizer, embedding_rows(model))
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
