"""BiLSTM student.

Each layer is two unidirectional ``nn.LSTM`` modules. The forward one
runs on the padded batch and is read at position ``len - 1``, so it has seen exactly the
real tokens. The backward one runs on a *per-row reversal*: the first ``len`` tokens of
each row are reversed in place (an index gather, padding stays at the end), so the real
tokens come first and its state after them is the backward final state. Its outputs are
gathered back to the original positions (the reversal is its own inverse) and concatenated
with the forward outputs to feed the next layer. The sentence vector is
``[h_fwd_final ; h_bwd_final]`` of the last layer (width ``2 * hidden_dim``) - exactly the
``h_n`` a packed ``nn.LSTM(bidirectional=True)`` returns (a test checks this against
``pack_padded_sequence`` with shared weights). Final states were chosen over pooling
because they are the reference student's intent (its last state) and are cheap.

Why not ``pack_padded_sequence``: packed sequences do not survive ``torch.onnx.export``
and ``torch.jit.trace``, so a packed model would need a second, export-only code path that
must be kept numerically equal to the training path. With per-row reversal there is one
path, free of data-dependent Python control flow, used for training, inference and export.
The cost is computing the padded time steps, which for title-length batches padded to
their longest row is small, since packing adds its own sort/scatter work.
Both exporters (``dynamo=False`` at opset 17, and ``dynamo=True``) give ONNX graphs with
dynamic batch and sequence axes that match PyTorch on mixed-length padded batches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from textdistill.models.output import ClassifierOutput
from textdistill.models.students.base import StudentModel, check_positive


def _reverse_index(attention_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row reversal of the real tokens, and the row lengths.

    Returns ``rev`` (B, T) with ``rev[b, t] = len_b - 1 - t`` for ``t < len_b`` and ``t``
    otherwise (padding stays put), and ``lengths`` (B,) clamped to >= 1 so that an all-padding
    row still indexes position 0. Built only from tensor ops so tracing keeps B and T dynamic.
    """
    lengths = attention_mask.long().sum(dim=1).clamp(min=1)  # (B,)
    pos = torch.cumsum(torch.ones_like(attention_mask, dtype=torch.long), dim=1) - 1  # (B, T)
    last = (lengths - 1).unsqueeze(1)  # (B, 1)
    rev = torch.where(pos <= last, last - pos, pos)  # (B, T)
    return rev, lengths


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    """``out[b, t] = x[b, index[b, t]]`` for x (B, T, H) and index (B, T') -> (B, T', H)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class _BiLSTMLayer(nn.Module):
    """One bidirectional layer as two unidirectional LSTMs with per-row reversal."""

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fwd = nn.LSTM(input_dim, hidden_dim, batch_first=True)
        self.bwd = nn.LSTM(input_dim, hidden_dim, batch_first=True)

    def forward(self, x: Tensor, rev: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, D), rev (B, T) -> forward and backward outputs, each (B, T, H).

        Both are aligned to the original positions: ``bwd[b, t]`` summarises tokens
        ``t .. len_b - 1`` of row b. Values at padding positions are meaningless.
        """
        fwd, _ = self.fwd(x)  # (B, T, H)
        bwd_reversed, _ = self.bwd(_gather_time(x, rev))  # (B, T, H), reversed order
        bwd = _gather_time(bwd_reversed, rev)  # (B, T, H), original order
        return fwd, bwd


class BiLSTMStudent(StudentModel):
    """Embedding -> multi-layer BiLSTM -> final states ``[fwd; bwd]`` -> dropout -> linear.

    Args:
        vocab_size: rows of the embedding (the shared tokenizer's vocabulary).
        num_labels: classes C.
        embed_dim: embedding width.
        hidden_dim: LSTM width *per direction*; the sentence vector is ``2 * hidden_dim``.
        layers: stacked bidirectional layers.
        dropout: applied between layers and to the sentence vector before the classifier.
        pad_id: padding token id (its embedding row is zero and receives no gradient).
    """

    def __init__(
        self,
        vocab_size: int,
        num_labels: int,
        embed_dim: int = 128,
        hidden_dim: int = 256,
        layers: int = 1,
        dropout: float = 0.1,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        check_positive(
            vocab_size=vocab_size,
            num_labels=num_labels,
            embed_dim=embed_dim,
            hidden_dim=hidden_dim,
            layers=layers,
        )
        self.config: dict[str, Any] = {
            "arch": "bilstm",
            "vocab_size": vocab_size,
            "num_labels": num_labels,
            "embed_dim": embed_dim,
            "hidden_dim": hidden_dim,
            "layers": layers,
            "dropout": dropout,
            "pad_id": pad_id,
        }
        self.hidden_size = 2 * hidden_dim
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.layers = nn.ModuleList(
            _BiLSTMLayer(embed_dim if i == 0 else 2 * hidden_dim, hidden_dim) for i in range(layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.hidden_size, num_labels)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> ClassifierOutput:
        rev, lengths = _reverse_index(attention_mask)  # (B, T), (B,)
        x = self.embedding(input_ids)  # (B, T, E)
        fwd = bwd = x  # replaced by the first layer; layers >= 1 is checked in __init__
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = self.dropout(x)
            fwd, bwd = layer(x, rev)  # (B, T, H) each
            x = torch.cat([fwd, bwd], dim=-1)  # (B, T, 2H)
        last = (lengths - 1).unsqueeze(1)  # (B, 1)
        h_fwd = _gather_time(fwd, last).squeeze(1)  # (B, H): state after the last real token
        h_bwd = bwd[:, 0]  # (B, H): backward state after reading back to the first token
        hidden = torch.cat([h_fwd, h_bwd], dim=-1)  # (B, 2H)
        logits = self.classifier(self.dropout(hidden))  # (B, C)
        return ClassifierOutput(logits=logits, hidden=hidden)


BILSTM_PRESETS: dict[str, dict[str, Any]] = {
    "small": {"embed_dim": 128, "hidden_dim": 256, "layers": 1, "dropout": 0.1},
    # The reference student: 4 bidirectional layers of 512, ~27.5 M parameters with a
    # 21,128-token vocabulary and 10 classes.
    "seed": {"embed_dim": 256, "hidden_dim": 512, "layers": 4, "dropout": 0.3},
}
