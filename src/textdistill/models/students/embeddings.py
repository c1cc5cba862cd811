"""Student embeddings initialised from the teacher's (PCA of its word embeddings)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


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
    student: nn.Module,
    teacher_embeddings: Tensor,
    std: float | None = None,
    rows: Sequence[int] | None = None,
) -> None:
    """Initialise ``student.embedding`` with a PCA projection of the teacher's embeddings.

    Each token's teacher vector (row of ``teacher_embeddings``, shape (V, Ht)) is centred and
    projected on the top ``embed_dim`` principal axes; the projection is rescaled to an overall
    standard deviation ``std`` (default: the student's current embedding std, so the
    architecture's intended input scale is kept) while the relative variances of the axes -
    the structure PCA preserves - are kept. If ``embed_dim > Ht`` only ``Ht`` axes exist and
    the remaining columns keep their random initialisation. The padding row is zeroed.

    ``rows`` maps a student vocabulary of its own onto the teacher's: student token i takes
    teacher row ``rows[i]`` (its PCA scores over the teacher's whole vocabulary), and a
    token with ``-1`` (no such teacher token) keeps its random initialisation. Without
    ``rows`` the two share one tokenizer and row i is token i in both.

    Raises:
        ValueError: the student has no ``embedding``, the vocabulary sizes differ without
            ``rows``, or ``rows`` has the wrong length or an id outside the teacher's.
    """
    embedding = getattr(student, "embedding", None)
    if not isinstance(embedding, nn.Embedding):
        raise ValueError("the student has no `embedding` (nn.Embedding) to initialise")
    vocab, dim = embedding.weight.shape
    if teacher_embeddings.ndim != 2:
        raise ValueError(
            f"teacher embeddings must be (V, H), got {tuple(teacher_embeddings.shape)}"
        )
    if rows is not None:
        index = torch.as_tensor(list(rows), dtype=torch.long)
        too_big = index.numel() > 0 and int(index.max()) >= teacher_embeddings.shape[0]
        if index.shape != (vocab,) or too_big or bool((index < -1).any()):
            raise ValueError(
                f"rows must give one teacher id (or -1) for each of the {vocab} student tokens, "
                f"below the teacher's {teacher_embeddings.shape[0]}"
            )
    elif teacher_embeddings.shape[0] != vocab:
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
    scores = _principal_scores(teacher_embeddings, k)  # (Vt, k)
    scores = scores * (target_std / scores.std().clamp(min=1e-12))
    with torch.no_grad():
        if rows is None:
            weight[:, :k] = scores.to(dtype=weight.dtype, device=weight.device)
        else:
            found = index >= 0  # (V,)
            picked = scores[index[found]].to(dtype=weight.dtype, device=weight.device)
            weight[found.nonzero().squeeze(1), :k] = picked
            logger.info(
                "initialised %d of %d student tokens from the teacher's embeddings",
                int(found.sum()),
                vocab,
            )
        if embedding.padding_idx is not None:
            weight[embedding.padding_idx] = 0.0
