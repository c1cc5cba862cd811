"""Ensemble backend: several loaded models whose logits are combined into one prediction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from textdistill.models.ensemble import ENSEMBLE_KIND, EnsembleSpec, combine_ensemble
from textdistill.runtime.classifier import Batch, Classifier, check_finite, softmax


class EnsembleClassifier(Classifier):
    """Several loaded models whose logits are combined by
    :func:`~textdistill.models.ensemble.combine_ensemble`.

    Its "logits" are the combined log-probabilities (softmax gives the ensemble's
    distribution). ``encode`` tokenizes once per member (members may use different
    tokenizers and lengths); ``forward_batch`` runs every member, so the measured latency is
    the members' summed.
    """

    backend = "ensemble"

    def __init__(
        self, path: Path, meta: dict[str, Any], spec: EnsembleSpec, members: Sequence[Classifier]
    ) -> None:
        """``members``: the loaded member folders of ``spec``, in its order."""
        if len(members) != len(spec.members):
            raise ValueError(f"{len(members)} loaded members for {len(spec.members)} in spec")
        self.members = list(members)
        self.weights = spec.weights
        self.combine = spec.combine
        super().__init__(
            path=path,
            label_names=self.members[0].label_names,
            max_len=max(m.max_len for m in self.members),
            meta=meta,
        )

    @property
    def kind(self) -> str:
        return ENSEMBLE_KIND

    def prepare_for_serving(self) -> None:
        for member in self.members:
            member.prepare_for_serving()

    def set_threads(self, threads: int | None) -> None:
        for member in self.members:
            member.set_threads(threads)

    def size_mb(self) -> float:
        return float(sum(m.size_mb() for m in self.members))

    def encode(self, texts: Sequence[str]) -> Batch:
        """Each member's ``input_ids``/``attention_mask``, keyed ``"<member>.<name>"``."""
        out: Batch = {}
        for i, member in enumerate(self.members):
            for key, value in member.encode(texts).items():
                out[f"{i}.{key}"] = value
        return out

    @property
    def device(self) -> str:
        return self.members[0].device

    def forward_batch(self, batch: Batch) -> np.ndarray:
        """Combined log-probabilities (B, C) of the members' logits.

        Raises :class:`~textdistill.runtime.classifier.ModelOutputError` naming the member
        whose outputs are not finite: the combined output would only say the ensemble's.
        """
        member_logits = []
        for i, member in enumerate(self.members):
            prefix = f"{i}."
            own = {k[len(prefix) :]: v for k, v in batch.items() if k.startswith(prefix)}
            logits = member.forward_batch(own)
            check_finite(softmax(logits), member.path)
            member_logits.append(logits)
        return np.asarray(combine_ensemble(member_logits, self.weights, self.combine), np.float32)
