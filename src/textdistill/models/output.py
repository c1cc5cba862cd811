"""The one output type shared by the teacher wrapper and every student."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ClassifierOutput:
    """``logits``: (B, C). ``hidden``: (B, H) sentence vector (teacher: pooled [CLS]), or None."""

    logits: torch.Tensor
    hidden: torch.Tensor | None = None
