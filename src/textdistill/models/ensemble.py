"""Ensemble folders: several trained models that classify together.

``textdistill ensemble --teacher A --teacher B --out E`` writes a folder that holds no
weights, only ``textdistill.json`` (``kind: "ensemble"``) and ``labels.json``: the member
folders (relative to the ensemble folder, so a run folder can be moved as a whole), their
fingerprints, the weights and the combine rule. ``load(E)`` gives an
:class:`~textdistill.inference.ensemble.EnsembleClassifier`, so ``evaluate``, ``compare``,
``predict`` and ``serve`` work on an ensemble like on any model, and ``distill --teacher E``
distils from it exactly as from ``--teacher A --teacher B`` with the same weights (one
soft-target cache for both).

The ensemble's output is :func:`combine_ensemble` of its members' logits: the very soft
targets a student distilled from it learns, so "student vs ensemble" compares like with like.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from textdistill.core.errors import UserError
from textdistill.core.io import read_json, write_json
from textdistill.models.folders import (
    META_FILE,
    building,
    folder_meta,
    read_meta,
    size_on_disk_mb,
)

ENSEMBLE_KIND = "ensemble"
ENSEMBLE_MODES = ("logprob", "prob")
"""How members' logits combine: mean log-probability or log of the mean probability."""


@dataclass(frozen=True)
class EnsembleSpec:
    """What an ensemble folder says: member folders (absolute), weights, combine rule."""

    members: list[Path]
    weights: list[float] | None
    combine: str


def is_ensemble(path: str | Path) -> bool:
    """Whether ``path`` is an ensemble folder (a folder without metadata is not)."""
    meta = Path(path) / META_FILE
    return meta.is_file() and read_json(meta).get("kind") == ENSEMBLE_KIND


def ensemble_fingerprint(
    fingerprints: Sequence[str], weights: Sequence[float] | None, combine: str
) -> str:
    """Hash of the members' fingerprints, weights and rule: equal means the same model."""
    blob = json.dumps([list(fingerprints), weights, combine])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def make_ensemble(
    members: Sequence[str | Path],
    out: str | Path,
    *,
    weights: Sequence[float] | None = None,
    combine: str = "logprob",
) -> Path:
    """Write an ensemble folder of ``members`` (model folders of the same classes) to ``out``.

    Members may be of any kind ``load`` accepts: teachers, students, exports. The folder is
    written atomically and replaces an earlier one at ``out``.

    Raises:
        UserError: fewer than two members, a member that is missing, itself an ensemble or
            of other classes, or invalid weights or rule.
    """
    out = Path(out)
    paths = [Path(m).resolve() for m in members]
    if len(paths) < 2:
        raise UserError(f"an ensemble needs at least two members, got {len(paths)}")
    check_ensemble_options(len(paths), weights, combine, member="member", rule="combine rule")
    label_names: list[str] | None = None
    fingerprints, n_params, sizes = [], 0, 0.0
    for p in paths:
        if is_ensemble(p):
            raise UserError(f"{p}: an ensemble cannot be a member; list its members instead")
        meta = read_meta(p)  # a clear error for a missing or foreign folder
        names = [str(n) for n in read_json(p / "labels.json")]
        if label_names is None:
            label_names = names
        elif names != label_names:
            raise UserError(
                f"{p}: its classes {names} differ from the first member's {label_names}"
            )
        fingerprints.append(str(meta.get("fingerprint", "")))
        n_params += int(meta.get("num_parameters") or 0)
        sizes += size_on_disk_mb(p)
    assert label_names is not None
    w = [float(x) for x in weights] if weights is not None else None
    if w is not None and len(set(w)) == 1:
        w = None  # equal weights are the default: one soft-target cache for both spellings
    with building(out, "ensemble folder") as tmp:
        write_json(tmp / "labels.json", label_names)
        fields = {
            # Relative paths: moving the run folder that holds members and ensemble together
            # keeps it loadable.
            "members": [os.path.relpath(p, out.resolve()) for p in paths],
            "member_fingerprints": fingerprints,
            "weights": w,
            "combine": combine,
            "num_labels": len(label_names),
            "num_parameters": n_params,
            "size_mb": round(sizes, 3),
            "fingerprint": ensemble_fingerprint(fingerprints, w, combine),
        }
        write_json(tmp / META_FILE, folder_meta(ENSEMBLE_KIND, fields))
    return out


def read_ensemble(path: str | Path) -> EnsembleSpec:
    """The members, weights and rule of an ensemble folder, checked against its members.

    Raises:
        UserError: not an ensemble folder, a member folder missing, or a member changed
            (retrained or replaced) since the ensemble was made.
    """
    folder = Path(path)
    if not is_ensemble(folder):
        raise UserError(f"{folder}: not an ensemble folder")
    meta = read_meta(folder)
    members = [(folder / m).resolve() for m in meta["members"]]
    for member, expected in zip(members, meta["member_fingerprints"], strict=True):
        if not member.is_dir():
            raise UserError(f"{folder}: member {member} is missing")
        found = str(read_meta(member).get("fingerprint", ""))
        if found != expected:
            raise UserError(
                f"{folder}: member {member} changed since the ensemble was made "
                f"(fingerprint {found}, expected {expected}); make the ensemble again"
            )
    return EnsembleSpec(members, meta.get("weights"), str(meta.get("combine", "logprob")))


def check_ensemble_options(
    n: int,
    weights: Sequence[float] | None,
    mode: str,
    *,
    member: str = "teacher",
    rule: str = "ensemble mode",
) -> None:
    """Raise a :class:`UserError` for an unknown combine ``mode`` or ``weights`` that are not
    ``n`` non-negative numbers with a positive sum (``member``/``rule`` name them)."""
    if mode not in ENSEMBLE_MODES:
        raise UserError(f"unknown {rule} {mode!r}; valid: {', '.join(ENSEMBLE_MODES)}")
    if weights is not None and (
        len(weights) != n or any(w < 0 for w in weights) or sum(weights) <= 0
    ):
        raise UserError(
            f"{member} weights must be non-negative, one per {member}, not all zero; "
            f"got {list(weights)}"
        )


def combine_ensemble(
    member_logits: Sequence[np.ndarray], weights: Sequence[float] | None, mode: str
) -> np.ndarray:
    """Ensemble soft targets from the members' logits, each (N, C).

    ``logprob``: weighted mean of log-softmax (a geometric mean of the distributions);
    ``prob``: log of the weighted mean of the softmax probabilities. Either result is used
    as the teacher's logits ``z_t`` (softmax is invariant to the per-row constant).
    """
    check_ensemble_options(len(member_logits), weights, mode)
    w = np.asarray(weights if weights is not None else [1.0] * len(member_logits), np.float64)
    w = w / w.sum()
    logps = [torch.log_softmax(torch.from_numpy(z).double(), dim=-1) for z in member_logits]
    if mode == "logprob":
        combined = sum(wi * lp for wi, lp in zip(w, logps, strict=True))
    else:
        combined = torch.log(sum(wi * lp.exp() for wi, lp in zip(w, logps, strict=True)))
    assert isinstance(combined, torch.Tensor)
    return combined.float().numpy()
