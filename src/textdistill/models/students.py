"""Student models: a bidirectional LSTM and a TextCNN, both padding-exact and ONNX-exportable.

Both follow the shared contract ``forward(input_ids (B, T), attention_mask (B, T)) ->
ClassifierOutput(logits (B, C), hidden (B, H))`` with right padding, and expose
``hidden_size`` (width of the sentence vector) and ``config`` (a JSON-serialisable dict that
:func:`build_student_from_config` turns back into the same architecture).

**Padding.** A row's output must not depend on how far its batch was padded. The reference
student read ``lstm_out[:, -1, :]`` of a right-padded batch, i.e. the state after the
padding; here padding can never reach the sentence vector (tests pin this to 1e-5).

**BiLSTM design.** Each layer is two unidirectional ``nn.LSTM`` modules. The forward one
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
their longest row is small. Measured on a 2-core CPU (B=64, T<=32, forward+backward) both
presets ran within run-to-run noise of a packed ``nn.LSTM`` with the same weights ("small"
63-76 ms vs 73-163 ms per step, "seed" 1.8-2.2 s vs 1.7-2.0 s), since packing adds its own
sort/scatter work; on GPU each direction is still one cuDNN call per layer (not measured).
Both exporters (``dynamo=False`` at opset 17, and ``dynamo=True``) give ONNX graphs with
dynamic batch and sequence axes that match PyTorch on mixed-length padded batches.

**TextCNN design** (Kim, 2014): ``Conv1d`` per filter width, ReLU, max over time. Padding
embeddings are zeroed and the time axis is always right-padded by ``max(filter_sizes) - 1``
zeros, so every text - even one shorter than the widest filter - has windows. A window is
valid iff it *starts* on a real token; invalid windows are set to ``-inf`` before the max.
A valid window therefore sees the text followed by zeros, whatever the batch padding.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textdistill.errors import UserError
from textdistill.models.output import ClassifierOutput

__all__ = [
    "BILSTM_PRESETS",
    "STUDENTS",
    "TEXTCNN_PRESETS",
    "BiLSTMStudent",
    "StudentSpecError",
    "TextCNNStudent",
    "build_student",
    "build_student_from_config",
    "init_embeddings_from_teacher",
]

logger = logging.getLogger(__name__)


class StudentSpecError(UserError, ValueError):
    """Unknown student architecture, preset or option (a user error and a ValueError)."""


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


class BiLSTMStudent(nn.Module):
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
        _check_positive(
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


class TextCNNStudent(nn.Module):
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
        _check_positive(
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


def _check_positive(**values: int) -> None:
    bad = [f"{name}={value}" for name, value in values.items() if value < 1]
    if bad:
        raise StudentSpecError(f"student sizes must be >= 1, got {', '.join(bad)}")


BILSTM_PRESETS: dict[str, dict[str, Any]] = {
    "small": {"embed_dim": 128, "hidden_dim": 256, "layers": 1, "dropout": 0.1},
    # The reference student: 4 bidirectional layers of 512, ~27.5 M parameters with a
    # 21,128-token vocabulary and 10 classes.
    "seed": {"embed_dim": 256, "hidden_dim": 512, "layers": 4, "dropout": 0.3},
}
TEXTCNN_PRESETS: dict[str, dict[str, Any]] = {
    "default": {"embed_dim": 128, "num_filters": 256, "filter_sizes": [2, 3, 4], "dropout": 0.5},
}

STUDENTS: dict[str, tuple[type[nn.Module], dict[str, dict[str, Any]]]] = {
    "bilstm": (BiLSTMStudent, BILSTM_PRESETS),
    "textcnn": (TextCNNStudent, TEXTCNN_PRESETS),
}
"""Architecture name -> (class, presets)."""

_FIXED_ARGS = ("vocab_size", "num_labels", "pad_id")


def _arch(arch: str) -> tuple[type[nn.Module], dict[str, dict[str, Any]]]:
    if arch not in STUDENTS:
        raise StudentSpecError(
            f"unknown student architecture '{arch}'; valid: {', '.join(STUDENTS)}"
        )
    return STUDENTS[arch]


def _options(cls: type[nn.Module]) -> list[str]:
    """The architecture options a user may set (constructor args minus the fixed ones)."""
    params = inspect.signature(cls.__init__).parameters
    return [name for name in params if name != "self" and name not in _FIXED_ARGS]


def build_student(
    arch: str,
    preset: str,
    vocab_size: int,
    num_labels: int,
    pad_id: int = 0,
    **overrides: Any,
) -> nn.Module:
    """Build a student from an architecture name, a preset and optional overrides.

    Overrides whose value is ``None`` are ignored (unset config fields).

    Raises:
        StudentSpecError: unknown ``arch`` or ``preset``, or an override that does not
            apply to ``arch`` (e.g. ``num_filters`` for ``bilstm``). It is a ``ValueError``.
    """
    cls, presets = _arch(arch)
    if preset not in presets:
        raise StudentSpecError(
            f"unknown preset '{preset}' for student '{arch}'; valid: {', '.join(presets)}"
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    options = _options(cls)
    unknown = sorted(set(given) - set(options))
    if unknown:
        raise StudentSpecError(
            f"option(s) {', '.join(unknown)} do not apply to student '{arch}'; "
            f"its options: {', '.join(options)}"
        )
    kwargs = {**presets[preset], **given}
    return cls(vocab_size=vocab_size, num_labels=num_labels, pad_id=pad_id, **kwargs)


def build_student_from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a student (fresh weights) from its ``config`` dict, e.g. read from JSON."""
    spec = dict(config)
    if "arch" not in spec:
        raise StudentSpecError(f"student config has no 'arch' key: {spec}")
    cls, _ = _arch(spec.pop("arch"))
    allowed = set(_options(cls)) | set(_FIXED_ARGS)
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise StudentSpecError(
            f"student config has unknown key(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(allowed))}"
        )
    return cls(**spec)


def _principal_scores(matrix: Tensor, k: int) -> Tensor:
    """Scores of the rows of ``matrix`` (V, H) on its top ``k`` principal axes -> (V, k).

    Eigen-decomposes the (H, H) covariance in float64 (exact and cheap for H <= a few
    thousand); each axis's sign is fixed so that its largest loading is positive, making
    the result deterministic.
    """
    x = matrix.detach().to(torch.float64)
    x = x - x.mean(dim=0, keepdim=True)  # (V, H)
    _, vectors = torch.linalg.eigh(x.T @ x)  # ascending eigenvalues; vectors (H, H)
    axes = vectors[:, -k:].flip(-1)  # (H, k), largest variance first
    signs = torch.sign(axes.gather(0, axes.abs().argmax(dim=0, keepdim=True)))  # (1, k)
    return x @ (axes * signs)  # (V, k)


def init_embeddings_from_teacher(
    student: nn.Module, teacher_embeddings: Tensor, std: float | None = None
) -> None:
    """Initialise ``student.embedding`` with a PCA projection of the teacher's embeddings.

    Each token's teacher vector (row of ``teacher_embeddings``, shape (V, Ht)) is centred and
    projected on the top ``embed_dim`` principal axes; the projection is rescaled to an overall
    standard deviation ``std`` (default: the student's current embedding std, so the
    architecture's intended input scale is kept) while the relative variances of the axes -
    the structure PCA preserves - are kept. If ``embed_dim > Ht`` only ``Ht`` axes exist and
    the remaining columns keep their random initialisation. The padding row is zeroed.

    Raises:
        ValueError: the student has no ``embedding`` or the vocabulary sizes differ (the
            student and teacher must share one tokenizer).
    """
    embedding = getattr(student, "embedding", None)
    if not isinstance(embedding, nn.Embedding):
        raise ValueError("the student has no `embedding` (nn.Embedding) to initialise")
    vocab, dim = embedding.weight.shape
    if teacher_embeddings.ndim != 2 or teacher_embeddings.shape[0] != vocab:
        raise ValueError(
            f"teacher embeddings have shape {tuple(teacher_embeddings.shape)} but the student "
            f"vocabulary has {vocab} tokens; the teacher and student must share a tokenizer"
        )
    k = min(dim, teacher_embeddings.shape[1])
    if k < dim:
        logger.warning(
            "student embed_dim %d exceeds the teacher width %d; the last %d embedding "
            "dimensions keep their random initialisation",
            dim,
            k,
            dim - k,
        )
    weight = embedding.weight
    target_std = float(weight.detach().std()) if std is None else std
    scores = _principal_scores(teacher_embeddings, k)  # (V, k)
    scores = scores * (target_std / scores.std().clamp(min=1e-12))
    with torch.no_grad():
        weight[:, :k] = scores.to(dtype=weight.dtype, device=weight.device)
        if embedding.padding_idx is not None:
            weight[embedding.padding_idx] = 0.0
