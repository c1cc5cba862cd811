"""The teacher soft-target cache: run the teacher(s) once, reuse the logits every epoch.

Layout of a cache folder::

    logits.npy      (N, C) float32   teacher logits (ensemble: averaged log-probabilities)
    pooled.npy      (N, H) float16   pooled sentence vectors (optional)
    manifest.json   teacher fingerprints, tokenizer hashes, max length, data hash, rows

The arrays are written as memory-mapped ``.npy`` files batch by batch, so a transfer set
larger than RAM works, and read back memory-mapped. A reader compares the manifest it
expects with the stored one: any difference means the cache is stale and is rebuilt, never
silently used.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from textdistill.batching import length_sorted_batches
from textdistill.errors import UserError
from textdistill.folders import LoadedModel, load_model
from textdistill.io import atomic_dir, read_json, write_json
from textdistill.tokenization import Encoded, encode_cached, tokenizer_fingerprint

log = logging.getLogger(__name__)

CACHE_VERSION = 1
ENSEMBLE_MODES = ("logprob", "prob")


@dataclass
class SoftTargets:
    """Cached teacher outputs for every row of a transfer set, in transfer-set order."""

    logits: np.ndarray  # (N, C) float32
    pooled: np.ndarray | None  # (N, H) float16
    manifest: dict[str, Any]
    path: Path

    def __len__(self) -> int:
        return int(self.logits.shape[0])


def texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def expected_manifest(
    teachers: Sequence[LoadedModel],
    texts: Sequence[str],
    *,
    weights: Sequence[float] | None,
    ensemble: str,
    with_pooled: bool,
    data_files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything the cached values depend on; two equal manifests mean equal caches."""
    return {
        "version": CACHE_VERSION,
        "teachers": [
            {
                "path": str(t.path),
                "fingerprint": t.fingerprint,
                "tokenizer": tokenizer_fingerprint(t.tokenizer),
                "max_len": t.max_len,
            }
            for t in teachers
        ],
        "weights": list(weights) if weights is not None else None,
        "ensemble": ensemble if len(teachers) > 1 else "single",
        "pooled": with_pooled,
        "texts_sha256": texts_hash(texts),
        "data_files": data_files or {},
        "rows": len(texts),
    }


def _comparable(manifest: dict[str, Any]) -> dict[str, Any]:
    # The teacher's location may move; its fingerprint is what matters.
    out = dict(manifest)
    out["teachers"] = [{k: v for k, v in t.items() if k != "path"} for t in manifest["teachers"]]
    out.pop("data_files", None)
    out.pop("has_pooled", None)
    return out


def cache_key(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(repr(sorted(_comparable(manifest).items())).encode()).hexdigest()[:16]


def default_cache_root(teacher_path: Path) -> Path:
    """Next to the (first) teacher when writable, else the user cache folder."""
    if os.access(teacher_path, os.W_OK):
        return teacher_path / "soft_targets"
    from textdistill.tokenization import cache_home

    return cache_home() / "soft_targets"


@torch.inference_mode()
def run_teacher(
    teacher: LoadedModel,
    enc: Encoded,
    *,
    batch_size: int = 256,
    with_pooled: bool = True,
    progress: bool = True,
    logits_out: np.ndarray | None = None,
    pooled_out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (N, C) and pooled vectors (N, H) of one model over encoded rows, in row order.

    Rows are run in length-sorted batches (far less padding); results are scattered back
    to their original positions, directly into ``logits_out``/``pooled_out`` when given
    (e.g. memory-mapped arrays).
    """
    model = teacher.model
    device = next(model.parameters()).device
    n = len(enc)
    num_labels = len(teacher.label_names)
    logits = logits_out if logits_out is not None else np.zeros((n, num_labels), np.float32)
    pooled = pooled_out
    batches = length_sorted_batches(enc.lengths, batch_size)
    bar = tqdm(batches, desc=f"teacher {teacher.path.name}", disable=not progress, unit="batch")
    for idx in bar:
        rows = np.asarray(idx)
        width = int(enc.lengths[rows].max())
        ids = torch.from_numpy(enc.ids[rows, :width].astype(np.int64)).to(device)
        mask = (torch.arange(width)[None, :] < torch.from_numpy(enc.lengths[rows])[:, None]).long()
        out = model(input_ids=ids, attention_mask=mask.to(device))
        logits[rows] = out.logits.float().cpu().numpy()
        if with_pooled and out.hidden is not None:
            if pooled is None:
                pooled = np.zeros((n, out.hidden.shape[-1]), np.float16)
            pooled[rows] = out.hidden.float().cpu().numpy().astype(np.float16)
    return logits, pooled


def combine_ensemble(
    member_logits: Sequence[np.ndarray], weights: Sequence[float] | None, mode: str
) -> np.ndarray:
    """Ensemble soft targets from the members' logits, each (N, C).

    ``logprob``: weighted mean of log-softmax (a geometric mean of the distributions);
    ``prob``: log of the weighted mean of the softmax probabilities. Either result is used
    as the teacher's logits ``z_t`` (softmax is invariant to the per-row constant).
    """
    if mode not in ENSEMBLE_MODES:
        raise UserError(f"unknown ensemble mode {mode!r}; valid: {', '.join(ENSEMBLE_MODES)}")
    w = np.asarray(weights if weights is not None else [1.0] * len(member_logits), np.float64)
    if len(w) != len(member_logits) or (w < 0).any() or w.sum() <= 0:
        raise UserError("teacher weights must be non-negative, one per teacher, not all zero")
    w = w / w.sum()
    logps = [torch.log_softmax(torch.from_numpy(z).double(), dim=-1) for z in member_logits]
    if mode == "logprob":
        combined = sum(wi * lp for wi, lp in zip(w, logps, strict=True))
    else:
        combined = torch.log(sum(wi * lp.exp() for wi, lp in zip(w, logps, strict=True)))
    assert isinstance(combined, torch.Tensor)
    return combined.float().numpy()


def _load_existing(path: Path, expected: dict[str, Any]) -> SoftTargets | None:
    mf = path / "manifest.json"
    if not mf.is_file():
        return None
    stored = read_json(mf)
    if _comparable(stored) != _comparable(expected):
        log.info("soft-target cache at %s is stale; rebuilding", path)
        return None
    logits = np.load(path / "logits.npy", mmap_mode="r", allow_pickle=False)
    pooled_file = path / "pooled.npy"
    pooled = (
        np.load(pooled_file, mmap_mode="r", allow_pickle=False) if pooled_file.is_file() else None
    )
    if logits.shape[0] != expected["rows"]:
        return None
    return SoftTargets(logits=logits, pooled=pooled, manifest=stored, path=path)


def build_soft_targets(
    teacher_paths: Sequence[str | Path],
    texts: Sequence[str],
    *,
    cache_dir: str | Path | None = None,
    weights: Sequence[float] | None = None,
    ensemble: str = "logprob",
    with_pooled: bool = True,
    batch_size: int = 256,
    data_files: dict[str, str] | None = None,
    rebuild: bool = False,
    progress: bool = True,
    encode_cache_dir: Path | None = None,
) -> SoftTargets:
    """Return the teacher(s)' soft targets for ``texts``, from the cache when it is valid.

    With several teachers the cached logits are the ensemble's (see
    :func:`combine_ensemble`) and the pooled vectors are the first teacher's that has them.
    """
    if not teacher_paths:
        raise UserError("at least one teacher folder is needed")
    teachers = [load_model(p) for p in teacher_paths]
    names = teachers[0].label_names
    for t in teachers[1:]:
        if t.label_names != names:
            raise UserError(f"{t.path}: its labels differ from {teachers[0].path}'s")
    expected = expected_manifest(
        teachers,
        texts,
        weights=weights,
        ensemble=ensemble,
        with_pooled=with_pooled,
        data_files=data_files,
    )
    root = Path(cache_dir) if cache_dir is not None else default_cache_root(teachers[0].path)
    path = root / cache_key(expected)
    if not rebuild and (hit := _load_existing(path, expected)) is not None:
        log.info("using cached soft targets at %s", path)
        return hit
    with atomic_dir(path) as tmp:
        members = []
        pooled_mm: np.ndarray | None = None
        single = len(teachers) == 1
        for t in teachers:
            enc = encode_cached(t.tokenizer, texts, t.max_len, cache_dir=encode_cache_dir)
            logits_mm = (
                np.lib.format.open_memmap(
                    tmp / "logits.npy", "w+", np.float32, (len(texts), len(names))
                )
                if single
                else None
            )
            hidden_size = getattr(t.model, "hidden_size", None)
            want_pooled = with_pooled and pooled_mm is None and hidden_size is not None
            if want_pooled:
                pooled_mm = np.lib.format.open_memmap(
                    tmp / "pooled.npy", "w+", np.float16, (len(texts), int(hidden_size or 0))
                )
            logits, _ = run_teacher(
                t,
                enc,
                batch_size=batch_size,
                with_pooled=want_pooled,
                progress=progress,
                logits_out=logits_mm,
                pooled_out=pooled_mm if want_pooled else None,
            )
            members.append(logits)
            if isinstance(pooled_mm, np.memmap):
                pooled_mm.flush()
        if len(teachers) > 1:
            np.save(tmp / "logits.npy", combine_ensemble(members, weights, ensemble))
        elif isinstance(members[0], np.memmap):
            members[0].flush()
        manifest = dict(expected, has_pooled=pooled_mm is not None)
        write_json(tmp / "manifest.json", manifest)
    loaded = _load_existing(path, expected)
    assert loaded is not None
    log.info("cached soft targets for %d rows at %s", len(texts), path)
    return loaded
