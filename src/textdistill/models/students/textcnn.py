"""TextCNN student (Kim, 2014): ``Conv1d`` per filter width, ReLU, max over time. Padding
embeddings are zeroed and the time axis is always right-padded by ``max(filter_sizes) - 1``
zeros, so every text - even one shorter than the widest filter - has windows. A window is
valid iff it *starts* on a real token; invalid windows are set to ``-inf`` before the max.
A valid window therefore sees the text followed by zeros, whatever the batch padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textdistill.models.output import ClassifierOutput
from textdistill.models.students.base import StudentModel, StudentSpecError, check_positive


class TextCNNStudent(StudentModel):
    """Kim (2014) TextCNN: embedding -> Conv1d per width -> ReLU -> masked max -> linear.

    Args:
        vocab_size: rows of the embedding (the shared tokenizer's vocabulary).
        num_labels: classes C.
        embed_dim: embedding width.
        num_filters: output channels per filter width.
        filter_sizes: window widths; the sentence vector is ``num_filters * len(filter_sizes)``.
        dropout: applied to the sentence vector before the classifier.
        pad_id: padding token id.
    """

    def __init__(
        self,
        vocab_size: int,
        num_labels: int,
        embed_dim: int = 128,
        num_filters: int = 256,
        filter_sizes: Sequence[int] = (2, 3, 4),
        dropout: float = 0.5,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        sizes = [int(k) for k in filter_sizes]
        if not sizes or min(sizes) < 1:
            raise StudentSpecError(
                f"filter_sizes must be a non-empty list of positive widths, got {list(sizes)}"
            )
        check_positive(
            vocab_size=vocab_size,
            num_labels=num_labels,
            embed_dim=embed_dim,
            num_filters=num_filters,
        )
        self.config: dict[str, Any] = {
            "arch": "textcnn",
            "vocab_size": vocab_size,
            "num_labels": num_labels,
            "embed_dim": embed_dim,
            "num_filters": num_filters,
            "filter_sizes": sizes,
            "dropout": dropout,
            "pad_id": pad_id,
        }
        self.filter_sizes = tuple(sizes)
        self.max_width = max(sizes)
        self.hidden_size = num_filters * len(sizes)
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, num_filters, k) for k in sizes)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.hidden_size, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> ClassifierOutput:
        mask = attention_mask.long()  # (B, T)
        # Zero padding embeddings explicitly: the pad row may be non-zero after a
        # teacher-embedding init, and windows that run past the text must see zeros.
        x = self.embedding(input_ids) * mask.unsqueeze(-1).to(self.embedding.weight.dtype)
        x = F.pad(x.transpose(1, 2), (0, self.max_width - 1))  # (B, E, T + Kmax - 1)
        pooled = []
        for width, conv in zip(self.filter_sizes, self.convs, strict=True):
            feats = F.relu(conv(x))  # (B, F, T + Kmax - width)
            # Window i is valid iff it starts on a real token; the static pad keeps the
            # mask as long as the conv output without reading shapes at run time.
            valid = F.pad(mask, (0, self.max_width - width)) > 0  # (B, T + Kmax - width)
            feats = feats.masked_fill(~valid.unsqueeze(1), float("-inf"))
            pooled.append(feats.max(dim=-1).values)  # (B, F)
        hidden = torch.cat(pooled, dim=-1)  # (B, F * len(filter_sizes))
        logits = self.classifier(self.dropout(hidden))  # (B, C)
        return ClassifierOutput(logits=logits, hidden=hidden)


TEXTCNN_PRESETS: dict[str, dict[str, Any]] = {
    "default": {"embed_dim": 128, "num_filters": 256, "filter_sizes": [2, 3, 4], "dropout": 0.5},
}
