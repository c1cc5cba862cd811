"""The model folder format without torch: metadata, fingerprints and the loading checks.

What every loader shares, PyTorch (:mod:`textdistill.models.folders`) and the torch-free
runtime (:mod:`textdistill.runtime`) alike: reading ``textdistill.json``, the files that
decide predictions and their fingerprint, the check that they did not change since the
folder was saved (``allow_modified``), the label list, ``max_len`` and the tokenizer file.
Standard library only, like the rest of ``core``.

**Fingerprint.** ``textdistill.json`` records the sha256 of every file that decides
predictions (:func:`model_files`: weights, model config, tokenizer files, ``labels.json``)
and a fingerprint over them, the architecture and ``max_len``. A folder whose files changed
in place is an error naming them (``allow_modified`` / ``textdistill --allow-modified`` /
``TEXTDISTILL_ALLOW_MODIFIED=1`` accept it with a warning, under the new fingerprint), so it
is never taken for the model it used to be, by a user or by the soft-target cache. Folders
saved before these checks (``fingerprint_version`` 1) are checked by their old fingerprint
(weights, ``config.json`` and architecture), which their caches are keyed by.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from textdistill.core.errors import UserError
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


MAX_LEN_LIMIT = 8192
"""A ``max_len`` above this is damage, not a setting (BERT-style models take 512)."""
MODEL_KINDS = ("teacher", "student", "ensemble")
"""What ``textdistill.json`` may say a folder is (an ensemble holds no weights of its own)."""


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


def check_vocab_fits(path: Path, tokens: int, rows: int | None) -> None:
    """Raise a :class:`UserError` when a tokenizer of ``tokens`` tokens has ids that the
    model's ``rows`` embedding rows lack (``rows`` None: unknown, nothing to check)."""
    if rows is not None and tokens > rows:
        raise UserError(
            f"{path / TOKENIZER_FILE}: the tokenizer has {tokens} tokens but the model's "
            f"embeddings have {rows} rows: it is not this model's tokenizer"
        )
