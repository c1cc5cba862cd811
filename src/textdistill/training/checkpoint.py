"""Resumable training checkpoints: weights, optimizer, schedule, RNG and loop counters.

A checkpoint is one folder (``<work_dir>/checkpoint``)::

    state.json          loop counters, best metric, patience, history, run fingerprint
                        (stage, rows, settings, and the caller's identity of the run: hashes
                        of the data, the configuration, the teacher)
    weights.safetensors current weights; keys ``model.<name>`` and ``extra.<i>.<name>``
    best.safetensors    best weights so far (same key layout), absent before the first eval
    optimizer.pt        optimizer state_dict
    scheduler.pt        LR scheduler state_dict
    processes.pt        per-process RNG states and unlogged loss tallies, in rank order

Everything is loaded with ``torch.load(weights_only=True)`` or safetensors, so opening a
checkpoint never unpickles arbitrary objects: RNG states are stored as tensors and plain
numbers, not as the tuples/arrays Python and NumPy hand out.

Anything else (a pickle where tensors belong, a garbage or truncated file, a ``state.json``
that is not the expected JSON object) is refused with a :class:`UserError` that says so.

The folder is written into a temporary sibling and renamed into place (``io.atomic_dir``), with
``state.json`` written last; a kill while saving leaves the previous checkpoint intact. If the
kill lands between the two renames of the swap, :func:`find_checkpoint` falls back to the
parked previous folder. A write that fails (full disk, no permission, read-only file system)
leaves nothing behind and becomes one :class:`UserError` saying so and how to resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pickle
import random
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from textdistill.core.errors import UserError
from textdistill.core.io import atomic_dir, read_json, texts_sha256, write_json

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
FORMAT_VERSION = 2
"""2: the fingerprint holds the run's identity (data, configuration, teacher hashes)."""

STATE_FILE = "state.json"
WEIGHTS_FILE = "weights.safetensors"
BEST_FILE = "best.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
PROCESSES_FILE = "processes.pt"


@dataclass
class RunState:
    """Loop counters and bookkeeping that a resumed run must continue from."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """Current epoch (0-based); equals the epoch budget once training is complete."""
    batch_in_epoch: int = 0
    """Micro-batches of the current epoch already consumed (per process)."""
    best_metric: float | None = None
    best_step: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0
    """Evaluations since the last improvement (early-stopping patience counter)."""
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RunState:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})


@dataclass
class Checkpoint:
    """A checkpoint read back from disk (tensors on CPU)."""

    path: Path
    state: RunState
    fingerprint: dict[str, Any]
    weights: dict[str, Tensor]
    best_weights: dict[str, Tensor] | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    processes: list[dict[str, Any]]


# --------------------------------------------------------------------------- weights


def snapshot_weights(model: nn.Module, extras: Sequence[nn.Module] = ()) -> dict[str, Tensor]:
    """Copy the weights of ``model`` and ``extras`` to CPU under ``model.``/``extra.<i>.`` keys.

    Every entry is an independent copy, so tied parameters (e.g. MLM decoder and word
    embeddings) become two equal tensors: safetensors refuses shared storage, and loading
    both keys back into the tied parameter is harmless.
    """
    out: dict[str, Tensor] = {}
    for prefix, module in _prefixed(model, extras):
        for name, tensor in module.state_dict().items():
            out[prefix + name] = tensor.detach().to("cpu", copy=True).contiguous()
    return out


def load_weights(
    model: nn.Module, extras: Sequence[nn.Module], weights: Mapping[str, Tensor]
) -> None:
    """Load a :func:`snapshot_weights` dict back (strict: every key must match)."""
    for prefix, module in _prefixed(model, extras):
        part = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        module.load_state_dict(part, strict=True)


def _prefixed(model: nn.Module, extras: Sequence[nn.Module]) -> list[tuple[str, nn.Module]]:
    return [("model.", model), *((f"extra.{i}.", m) for i, m in enumerate(extras))]


# ------------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA RNG states, ``weights_only``-safe."""
    version, internal, gauss_next = random.getstate()
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"].tolist()), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npy["keys"].numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without disturbing any global RNG (evaluation must not shift training)."""
    saved = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(saved)


# --------------------------------------------------------------------------- folders


def find_checkpoint(work_dir: Path) -> Path | None:
    """The complete checkpoint folder in ``work_dir``, if any.

    ``atomic_dir`` parks the old folder as ``.checkpoint.old-<pid>`` for the instant between
    its two renames; a kill right then leaves only that one, which is still complete.
    """
    main = work_dir / CHECKPOINT_DIR
    if (main / STATE_FILE).is_file():
        return main
    parked = sorted(
        (p for p in work_dir.glob(f".{CHECKPOINT_DIR}.old-*") if (p / STATE_FILE).is_file()),
        key=lambda p: p.stat().st_mtime,
    )
    return parked[-1] if parked else None


def remove_checkpoints(work_dir: Path) -> None:
    """Delete the checkpoint folder and any leftovers of interrupted saves."""
    for path in [work_dir / CHECKPOINT_DIR, *work_dir.glob(f".{CHECKPOINT_DIR}.*")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def remove_stale_temporaries(work_dir: Path) -> None:
    """Remove temporary folders left by saves that were killed midway."""
    for path in work_dir.glob(f".{CHECKPOINT_DIR}.tmp-*"):
        shutil.rmtree(path, ignore_errors=True)


def read_state(path: Path) -> tuple[RunState, dict[str, Any]]:
    """Read only ``state.json`` of a checkpoint: (counters, fingerprint).

    Raises:
        UserError: ``state.json`` is not a checkpoint's JSON object.
    """
    raw = _read_state_file(path)
    return _parse_state(path, raw)


def _read_state_file(path: Path) -> dict[str, Any]:
    file = path / STATE_FILE
    try:
        raw = read_json(file)
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError included
        raise UserError(_refused(file, "JSON", err)) from None
    if not isinstance(raw, dict):
        raise UserError(_refused(file, "JSON", f"a JSON {type(raw).__name__}, not an object"))
    return raw


def _parse_state(path: Path, raw: Mapping[str, Any]) -> tuple[RunState, dict[str, Any]]:
    try:
        state, fingerprint = RunState.from_json(raw["state"]), raw["fingerprint"]
        if not isinstance(fingerprint, dict):
            raise TypeError("the fingerprint is not an object")
    except (KeyError, TypeError) as err:
        raise UserError(_refused(path / STATE_FILE, "JSON", f"missing or wrong {err}")) from None
    return state, fingerprint


def _refused(file: Path, kind: str, why: object) -> str:
    return (
        f"refused to resume: {file} is not a {kind} checkpoint file ({why}); nothing is "
        f"unpickled. Delete the checkpoint folder {file.parent} or run without --resume "
        "to start over."
    )


def labels_sha256(labels: Sequence[int] | np.ndarray) -> str:
    """A hash of a label column (as int64), for a run's identity."""
    return hashlib.sha256(np.asarray(labels, dtype="<i8").tobytes()).hexdigest()


def data_identity(
    splits: Mapping[str, tuple[Sequence[str], Sequence[int] | np.ndarray | None]],
) -> dict[str, str]:
    """Hashes of each split's texts and labels: ``{"<name> texts": ..., "<name> labels": ...}``.

    The split named ``""`` (the training rows) gives plain ``texts``/``labels`` keys, so a
    refusal reads "texts: same, labels: different". Labels ``None``: texts only.
    """
    out: dict[str, str] = {}
    for name, (texts, labels) in splits.items():
        prefix = f"{name} " if name else ""
        out[f"{prefix}texts"] = texts_sha256(texts)
        if labels is not None:
            out[f"{prefix}labels"] = labels_sha256(labels)
    return out


def save_checkpoint(
    work_dir: Path,
    *,
    state: RunState,
    fingerprint: Mapping[str, Any],
    weights: Mapping[str, Tensor],
    best_weights: Mapping[str, Tensor] | None,
    reuse_best: bool,
    optimizer: Mapping[str, Any],
    scheduler: Mapping[str, Any],
    processes: Sequence[Mapping[str, Any]],
) -> Path:
    """Write a checkpoint atomically; call on the main process only.

    ``reuse_best``: the best weights have not changed since this run's previous save, so the
    existing ``best.safetensors`` is hard-linked (or copied) instead of serialised again.
    """
    target = work_dir / CHECKPOINT_DIR
    previous_best = target / BEST_FILE
    try:
        with atomic_dir(target) as tmp:
            save_file(dict(weights), str(tmp / WEIGHTS_FILE))
            if reuse_best and previous_best.is_file():
                _link_or_copy(previous_best, tmp / BEST_FILE)
            elif best_weights is not None:
                save_file(dict(best_weights), str(tmp / BEST_FILE))
            _torch_save(dict(optimizer), tmp / OPTIMIZER_FILE)
            _torch_save(dict(scheduler), tmp / SCHEDULER_FILE)
            _torch_save([dict(p) for p in processes], tmp / PROCESSES_FILE)
            _fsync_files(tmp)
            # Last: its presence marks the folder as complete.
            write_json(
                tmp / STATE_FILE,
                {
                    "format": FORMAT_VERSION,
                    "fingerprint": dict(fingerprint),
                    "state": state.to_json(),
                },
            )
    except (OSError, SafetensorError) as err:
        # safetensors reports a full disk as SafetensorError("... No space left on device");
        # the torch files are written through Python file objects, so theirs are OSErrors.
        raise UserError(_write_failed(work_dir, state.step, err)) from None
    return target


def _torch_save(obj: Any, path: Path) -> None:
    # Through a Python file object: a failed write then raises the OSError (ENOSPC, EACCES)
    # itself, not a RuntimeError from torch's C++ zip writer.
    with open(path, "wb") as f:
        torch.save(obj, f)


def _write_failed(work_dir: Path, step: int, err: BaseException) -> str:
    previous = find_checkpoint(work_dir)
    kept = "there was no earlier checkpoint"
    if previous is not None:
        try:
            kept = f"the previous checkpoint (step {read_state(previous)[0].step}) is intact"
        except UserError:
            kept = "the previous checkpoint folder is as it was"
    return (
        f"could not write the training checkpoint of step {step} to {work_dir / CHECKPOINT_DIR}"
        f": {err}. Nothing of it was written ({kept}). Free disk space (or fix the folder's "
        "permissions) and run the same command again with --resume to continue."
    )


def load_checkpoint(path: Path) -> Checkpoint:
    """Read every part of a checkpoint; nothing is unpickled beyond tensors and plain data.

    Raises:
        UserError: a checkpoint of an older format, or a part that is not what it should be
            (garbage, truncated, a pickle of arbitrary objects); the message says which.
    """
    raw = _read_state_file(path)
    if raw.get("format") != FORMAT_VERSION:
        raise UserError(_old_format(path, raw.get("format")))
    state, fingerprint = _parse_state(path, raw)
    best = path / BEST_FILE
    return Checkpoint(
        path=path,
        state=state,
        fingerprint=fingerprint,
        weights=_load_tensors(path / WEIGHTS_FILE),
        best_weights=_load_tensors(best) if best.is_file() else None,
        optimizer=_load_torch(path / OPTIMIZER_FILE),
        scheduler=_load_torch(path / SCHEDULER_FILE),
        processes=_load_torch(path / PROCESSES_FILE),
    )


def _old_format(path: Path, found: object) -> str:
    if found == 1:
        # Refused rather than trusted: a format-1 checkpoint recorded only the row count, so
        # a resume after the data, settings or teacher changed would continue silently.
        return (
            f"{path}: this checkpoint was written by an older textdistill that did not record "
            "its training data, configuration and teacher, so resuming it cannot be checked. "
            "Run without --resume to start over (its checkpoints replace this one)."
        )
    return (
        f"{path}: checkpoint format {found!r} is not supported (this textdistill writes "
        f"{FORMAT_VERSION}); run without --resume to start over."
    )


def _load_tensors(file: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(file))
    except (OSError, SafetensorError) as err:
        raise UserError(_refused(file, "safetensors", err)) from None


def _load_torch(file: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # A foreign pickle makes torch warn about its protocol before refusing it; the
            # refusal below says all there is to say.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses any pickled object that is not a tensor or plain data. Its
        # message suggests weights_only=False, exactly what must not be done here: not shown.
        why = "it holds pickled objects other than tensors and plain data"
        raise UserError(_refused(file, "weights-only torch", why)) from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:  # truncated, not a zip
        raise UserError(_refused(file, "weights-only torch", err)) from None


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _fsync_files(folder: Path) -> None:
    # A process kill needs no fsync; a power loss right after the rename would otherwise
    # leave a complete-looking folder with empty files.
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
