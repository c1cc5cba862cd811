"""Ensemble backend: several loaded models whose logits are combined into one prediction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from textdistill.inference.classifier import Classifier, check_finite
from textdistill.models.ensemble import ENSEMBLE_KIND, EnsembleSpec, combine_ensemble


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
        """Combined log-probabilities (B, C) of the members' logits.

        Raises :class:`~textdistill.inference.classifier.ModelOutputError` naming the member
        whose outputs are not finite: the combined output would only say the ensemble's.
        """
        member_logits = []
        for i, member in enumerate(self.members):
            prefix = f"{i}."
            own = {k[len(prefix) :]: v for k, v in batch.items() if k.startswith(prefix)}
            logits = member.forward_batch(own).cpu()
            check_finite(torch.softmax(logits, dim=-1), member.path)
            member_logits.append(logits.numpy())
        return torch.from_numpy(combine_ensemble(member_logits, self.weights, self.combine))
