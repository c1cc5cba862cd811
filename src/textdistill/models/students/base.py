"""The student contract: what every student architecture provides.

Every student follows the shared contract ``forward(input_ids (B, T), attention_mask (B, T)) ->
ClassifierOutput(logits (B, C), hidden (B, H))`` with right padding, and expose
``hidden_size`` (width of the sentence vector) and ``config`` (a JSON-serialisable dict that
:func:`build_student_from_config` turns back into the same architecture).

**Padding.** A row's output must not depend on how far its batch was padded. The reference
student read ``lstm_out[:, -1, :]`` of a right-padded batch, i.e. the state after the
padding; here padding can never reach the sentence vector (tests pin this to 1e-5).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from textdistill.core.errors import UserError
from textdistill.models.output import ClassifierOutput


class StudentModel(nn.Module):
    """Base of every student: an ``nn.Module`` with the attributes the pipeline relies on.

    ``hidden_size``: width H of ``ClassifierOutput.hidden`` (the sentence vector that mode
    ``hidden`` matches to the teacher's); ``config``: JSON-ready constructor arguments plus
    ``arch``, from which :func:`~textdistill.models.students.build_student_from_config`
    rebuilds the architecture; ``embedding``: the token embedding (initialised from the
    teacher's with ``student.init_embeddings: teacher``). Subclasses set all three in
    ``__init__`` and implement ``forward``.
    """

    hidden_size: int
    config: dict[str, Any]
    embedding: nn.Embedding

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> ClassifierOutput:
        raise NotImplementedError


class StudentSpecError(UserError, ValueError):
    """Unknown student architecture, preset or option (a user error and a ValueError)."""


def check_positive(**values: int) -> None:
    bad = [f"{name}={value}" for name, value in values.items() if value < 1]
    if bad:
        raise StudentSpecError(f"student sizes must be >= 1, got {', '.join(bad)}")
