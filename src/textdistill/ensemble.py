"""Ensemble folders: several trained models that classify together.

``textdistill ensemble --teacher A --teacher B --out E`` writes a folder that holds no
weights, only ``textdistill.json`` (``kind: "ensemble"``) and ``labels.json``: the member
folders (relative to the ensemble folder, so a run folder can be moved as a whole), their
fingerprints, the weights and the combine rule. ``load(E)`` gives an
:class:`EnsembleClassifier`, so ``evaluate``, ``compare``, ``predict`` and ``serve`` work on
an ensemble like on any model, and ``distill --teacher E`` distils from it exactly as from
``--teacher A --teacher B`` with the same weights (one soft-target cache for both).

The ensemble's output is :func:`textdistill.cache.combine_ensemble` of its members' logits:
the very soft targets a student distilled from it learns, so "student vs ensemble" compares
like with like.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textdistill import __version__
from textdistill.cache import check_ensemble_options, combine_ensemble
from textdistill.config import Config, apply_overrides
from textdistill.efficiency import size_on_disk_mb
from textdistill.errors import UserError
from textdistill.folders import FORMAT_VERSION, META_FILE, read_meta
from textdistill.io import atomic_dir, read_json, write_json
from textdistill.predict import Classifier, load

ENSEMBLE_KIND = "ensemble"


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
    with atomic_dir(out) as tmp:
        write_json(tmp / "labels.json", label_names)
        write_json(
            tmp / META_FILE,
            {
                "format_version": FORMAT_VERSION,
                "kind": ENSEMBLE_KIND,
                # Relative paths: moving the run folder that holds members and ensemble
                # together keeps it loadable.
                "members": [os.path.relpath(p, out.resolve()) for p in paths],
                "member_fingerprints": fingerprints,
                "weights": w,
                "combine": combine,
                "num_labels": len(label_names),
                "num_parameters": n_params,
                "size_mb": round(sizes, 3),
                "fingerprint": ensemble_fingerprint(fingerprints, w, combine),
                "textdistill_version": __version__,
            },
        )
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


def expand_teachers(cfg: Config) -> Config:
    """``cfg`` with an ensemble folder in ``distill.teachers`` replaced by its members, and
    ``distill.teacher_weights`` / ``distill.ensemble`` taken from the folder.

    The result is the same config as listing the members by hand, so both share one
    soft-target cache.

    Raises:
        UserError: an ensemble folder next to other teachers, or together with
            ``distill.teacher_weights`` (the folder carries its own).
    """
    teachers = cfg.distill.teachers
    if not any(is_ensemble(t) for t in teachers):
        return cfg
    if len(teachers) > 1:
        raise UserError(
            "an ensemble folder must be the only --teacher; to combine it with other "
            "models, list all the members as teachers (or make a new ensemble)"
        )
    if cfg.distill.teacher_weights is not None:
        raise UserError(f"{teachers[0]} is an ensemble with its own weights; drop --teacher-weight")
    spec = read_ensemble(teachers[0])
    return apply_overrides(
        cfg,
        {
            "distill.teachers": [str(m) for m in spec.members],
            "distill.teacher_weights": spec.weights,
            "distill.ensemble": spec.combine,
        },
    )


class EnsembleClassifier(Classifier):
    """Several loaded models whose logits are combined by
    :func:`~textdistill.cache.combine_ensemble`.

    Its "logits" are the combined log-probabilities (softmax gives the ensemble's
    distribution). ``encode`` tokenizes once per member (members may use different
    tokenizers and lengths); ``forward_batch`` runs every member, so the measured latency is
    the members' summed.
    """

    def __init__(self, path: Path, meta: dict[str, Any], spec: EnsembleSpec) -> None:
        self.members = [load(m) for m in spec.members]
        self.weights = spec.weights
        self.combine = spec.combine
        self.label_names = list(self.members[0].label_names)
        self.path = path
        self.max_len = max(m.max_len for m in self.members)
        self._meta = meta

    @classmethod
    def from_folder(cls, path: str | Path) -> EnsembleClassifier:
        folder = Path(path)
        return cls(folder, read_meta(folder), read_ensemble(folder))

    @property
    def kind(self) -> str:
        return ENSEMBLE_KIND

    @property
    def meta(self) -> dict[str, Any]:
        return self._meta

    def size_mb(self) -> float:
        return float(sum(m.size_mb() for m in self.members))

    def encode(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Each member's ``input_ids``/``attention_mask``, keyed ``"<member>.<name>"``."""
        out: dict[str, torch.Tensor] = {}
        for i, member in enumerate(self.members):
            for key, value in member.encode(texts).items():
                out[f"{i}.{key}"] = value
        return out

    @torch.inference_mode()
    def forward_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Combined log-probabilities (B, C) of the members' logits."""
        member_logits = []
        for i, member in enumerate(self.members):
            prefix = f"{i}."
            own = {k[len(prefix) :]: v for k, v in batch.items() if k.startswith(prefix)}
            member_logits.append(member.forward_batch(own).cpu().numpy())
        return torch.from_numpy(combine_ensemble(member_logits, self.weights, self.combine))
