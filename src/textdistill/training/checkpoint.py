"""Resumable training checkpoints: weights, optimizer, schedule, RNG and loop counters.

A checkpoint is one folder (``<work_dir>/checkpoint``)::

    state.json          loop counters, best metric, patience, history, run fingerprint
    weights.safetensors current weights; keys ``model.<name>`` and ``extra.<i>.<name>``
    best.safetensors    best weights so far (same key layout), absent before the first eval
    optimizer.pt        optimizer state_dict
    scheduler.pt        LR scheduler state_dict
    processes.pt        per-process RNG states and unlogged loss tallies, in rank order

Everything is loaded with ``torch.load(weights_only=True)`` or safetensors, so opening a
checkpoint never unpickles arbitrary objects: RNG states are stored as tensors and plain
numbers, not as the tuples/arrays Python and NumPy hand out.

The folder is written into a temporary sibling and renamed into place (``io.atomic_dir``), with
``state.json`` written last; a kill while saving leaves the previous checkpoint intact. If the
kill lands between the two renames of the swap, :func:`find_checkpoint` falls back to the
parked previous folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from textdistill.core.io import atomic_dir, read_json, write_json

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
FORMAT_VERSION = 1

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
    """Read only ``state.json`` of a checkpoint: (counters, fingerprint)."""
    raw = read_json(path / STATE_FILE)
    return RunState.from_json(raw["state"]), raw["fingerprint"]


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
    with atomic_dir(target) as tmp:
        save_file(dict(weights), str(tmp / WEIGHTS_FILE))
        if reuse_best and previous_best.is_file():
            _link_or_copy(previous_best, tmp / BEST_FILE)
        elif best_weights is not None:
            save_file(dict(best_weights), str(tmp / BEST_FILE))
        torch.save(dict(optimizer), tmp / OPTIMIZER_FILE)
        torch.save(dict(scheduler), tmp / SCHEDULER_FILE)
        torch.save([dict(p) for p in processes], tmp / PROCESSES_FILE)
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
    return target


def load_checkpoint(path: Path) -> Checkpoint:
    """Read every part of a checkpoint; nothing is unpickled beyond tensors and plain data."""
    raw = read_json(path / STATE_FILE)
    if raw.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {raw.get('format')!r} is not supported")
    best = path / BEST_FILE
    return Checkpoint(
        path=path,
        state=RunState.from_json(raw["state"]),
        fingerprint=raw["fingerprint"],
        weights=load_file(str(path / WEIGHTS_FILE)),
        best_weights=load_file(str(best)) if best.is_file() else None,
        optimizer=torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True),
        scheduler=torch.load(path / SCHEDULER_FILE, map_location="cpu", weights_only=True),
        processes=torch.load(path / PROCESSES_FILE, map_location="cpu", weights_only=True),
    )


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
