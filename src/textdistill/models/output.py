"""The one output type shared by the teacher wrapper and every student."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ClassifierOutput:
    """``logits``: (B, C). ``hidden``: (B, H) sentence vector (teacher: pooled [CLS]), or None.
    ``hidden_states``: for transformers, the embedding output then every layer's output,
    (B, T, H) each (what mode ``layers`` matches); None for the other students."""

    logits: torch.Tensor
    hidden: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
