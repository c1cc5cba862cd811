"""Distillation losses: small pure functions plus :func:`distillation_loss`, which combines them.

Notation: ``B`` rows, ``C`` classes, ``z_s`` / ``z_t`` student / teacher logits (B, C),
``h_s`` (B, Hs) / ``h_t`` (B, Ht) student / teacher sentence vectors, ``y`` (B,) labels with
``-1`` for a row without a gold label, ``T`` the softmax temperature.

Modes (``distill.mode``; each is a :class:`ModeSpec` in :data:`MODES`: its loss and what it
needs from the pipeline):

=========  ===============================================================================
``none``   ``ce(z_s, y_gold)`` - plain supervised training, no teacher.
``hard``   ``ce(z_s, argmax z_t)`` on every row (the teacher labels unlabeled rows too).
``soft``   ``alpha * kd_kl(z_s, z_t, T) + (1 - alpha) * ce(z_s, target)``; ``target`` is
           ``argmax z_t`` (``hard_target="teacher"``, every row) or the gold label
           (``hard_target="gold"``, rows without one are skipped by ``ce`` while ``kd_kl``
           still uses every row).
``hidden`` ``soft + beta * hidden_mse(h_s, h_t, W)`` (or ``hidden_cosine``); the projection
           ``W`` (:func:`make_projection`) is trained together with the student.
``layers`` ``soft + beta * layer_mse(S, T, mask)``: a transformer student's hidden states
           (embeddings and each layer) against the teacher's at the layers it was built
           from (TinyBERT), the teacher run live (its states are not cached).
=========  ===============================================================================

Teacher tensors are treated as constants: :func:`distillation_loss` detaches them, so no
gradient ever reaches an online teacher.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from textdistill.models.output import ClassifierOutput

__all__ = [
    "HARD_TARGETS",
    "HIDDEN_LOSSES",
    "MODES",
    "LossOptions",
    "LossOutput",
    "ModeSpec",
    "ce",
    "distillation_loss",
    "hidden_cosine",
    "hidden_mse",
    "kd_kl",
    "layer_mse",
    "make_projection",
    "mode_spec",
    "temperature_at",
]

HARD_TARGETS = ("teacher", "gold")
HIDDEN_LOSSES = ("mse", "cosine")


def ce(z_s: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy over the labelled rows.

    ``ce = -(1/|L|) * sum_{i in L} log softmax(z_s[i])[y[i]]`` with ``L = {i : y[i] >= 0}``.

    Args:
        z_s: student logits, (B, C).
        y: labels, (B,) long; ``-1`` marks a row without a label, which is skipped.

    Returns:
        A scalar. With no labelled row it is ``0`` but still attached to the graph, so
        ``backward()`` works (and yields zero gradients) instead of producing NaN.
    """
    # Sum-then-divide instead of reduction="mean": the mean over zero rows is NaN, and a
    # clamp on the count avoids a data-dependent branch (and a device sync).
    total = F.cross_entropy(z_s.float(), y, ignore_index=-1, reduction="sum")
    count = (y >= 0).sum().clamp(min=1)
    return total / count


def kd_kl(z_s: Tensor, z_t: Tensor, T: float) -> Tensor:
    """Temperature-scaled knowledge-distillation loss (Hinton et al., 2015).

    ``kd = T^2 * (1/B) * sum_i sum_c p_t[i,c] * (log p_t[i,c] - log p_s[i,c])`` with
    ``p_t = softmax(z_t / T)`` and ``p_s = softmax(z_s / T)``, i.e.
    ``T^2 * KL(p_t || p_s)`` summed over classes and averaged over rows ("batchmean", the
    true KL per example; a mean over all B*C elements would shrink it by a factor C).
    The ``T^2`` factor keeps the gradient magnitude independent of ``T``.

    Args:
        z_s: student logits, (B, C).
        z_t: teacher logits, (B, C); not detached here (see :func:`distillation_loss`).
        T: temperature, > 0.

    Returns:
        A scalar.
    """
    log_p_s = F.log_softmax(z_s.float() / T, dim=-1)  # (B, C)
    log_p_t = F.log_softmax(z_t.float() / T, dim=-1)  # (B, C)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")
    return kl * (T * T)


def make_projection(student_dim: int, teacher_dim: int) -> nn.Linear:
    """The projection ``W`` that maps a student sentence vector into the teacher's space.

    It belongs to the loss, not to the student: the training loop optimises it alongside
    the student and it is discarded afterwards. Affine (``W h + b``) because the teacher's
    pooled vectors are not centred.
    """
    return nn.Linear(student_dim, teacher_dim)


def _project(h_s: Tensor, h_t: Tensor, proj: nn.Module) -> Tensor:
    projected = proj(h_s).float()  # (B, Ht)
    if projected.shape != h_t.shape:
        raise ValueError(
            f"projected student hidden has shape {tuple(projected.shape)} but the teacher "
            f"hidden has shape {tuple(h_t.shape)}; build the projection with "
            "make_projection(student.hidden_size, teacher_hidden_size)"
        )
    return projected


def hidden_mse(h_s: Tensor, h_t: Tensor, proj: nn.Module) -> Tensor:
    """``mean over all B*Ht elements of (W h_s - h_t)^2``.

    Args:
        h_s: student sentence vectors, (B, Hs).
        h_t: teacher sentence vectors, (B, Ht).
        proj: module mapping (B, Hs) -> (B, Ht), e.g. :func:`make_projection`.
    """
    return F.mse_loss(_project(h_s, h_t, proj), h_t.float())


def hidden_cosine(h_s: Tensor, h_t: Tensor, proj: nn.Module) -> Tensor:
    """``(1/B) * sum_i (1 - cos(W h_s[i], h_t[i]))``: matches direction, ignores scale.

    Shapes as in :func:`hidden_mse`.
    """
    cos = F.cosine_similarity(_project(h_s, h_t, proj), h_t.float(), dim=-1)  # (B,)
    return (1.0 - cos).mean()


def layer_mse(states_s: Sequence[Tensor], states_t: Tensor, mask: Tensor) -> Tensor:
    """Layer-wise hidden-state MSE over real tokens (TinyBERT's hidden and embedding loss).

    ``(1/L) * sum_l [ sum_{b,t} m[b,t] * ||S_l[b,t] - T_l[b,t]||^2 / (H * sum_{b,t} m[b,t]) ]``
    with ``S_l`` the student's l-th state, ``T_l`` the teacher state it is matched to and
    ``m`` the attention mask: the mean squared error per element, padding left out, averaged
    over the L matched states.

    Args:
        states_s: L student states, (B, T, H) each (embedding output first).
        states_t: the matched teacher states, (L, B, T, H).
        mask: attention mask, (B, T); 1 for real tokens.
    """
    if len(states_s) != states_t.shape[0]:
        raise ValueError(
            f"{len(states_s)} student states but {states_t.shape[0]} teacher states to match"
        )
    s = torch.stack([h.float() for h in states_s])  # (L, B, T, H)
    if s.shape != states_t.shape:
        raise ValueError(
            f"student states {tuple(s.shape)} and teacher states {tuple(states_t.shape)} "
            "differ; the student must have the teacher's width"
        )
    m = mask.to(s.dtype)[None, :, :, None]  # (1, B, T, 1)
    per_layer = (((s - states_t.float()) ** 2) * m).sum(dim=(1, 2, 3))  # (L,)
    count = m.sum() * s.shape[-1]
    return (per_layer / count.clamp(min=1)).mean()


_HIDDEN_FNS = {"mse": hidden_mse, "cosine": hidden_cosine}


@dataclass
class LossOutput:
    """``loss``: the scalar to backpropagate.

    ``terms``: plain floats for logging: each component *before* weighting (``"kd"``,
    ``"ce"``, ``"hidden"`` as applicable) and the weighted total under ``"loss"``.
    """

    loss: Tensor
    terms: dict[str, float]


def _combine(weighted: Mapping[str, tuple[float, Tensor]]) -> LossOutput:
    parts = [w * t for w, t in weighted.values()]
    loss = parts[0]
    for part in parts[1:]:
        loss = loss + part
    # One host transfer for all terms rather than one .item() (device sync) per term.
    values = torch.stack([t.detach().float() for _, t in weighted.values()] + [loss.detach()])
    numbers = values.tolist()
    terms = dict(zip([*weighted, "loss"], numbers, strict=True))
    return LossOutput(loss=loss, terms=terms)


def _teacher_logits(batch: Mapping[str, Tensor], mode: str, z_s: Tensor) -> Tensor:
    z_t = batch.get("teacher_logits")
    if z_t is None:
        raise ValueError(
            f"distillation mode '{mode}' needs batch['teacher_logits']; attach a teacher "
            "cache to the transfer set (or use mode 'none')"
        )
    if z_t.shape != z_s.shape:
        raise ValueError(
            f"teacher logits have shape {tuple(z_t.shape)} but student logits "
            f"{tuple(z_s.shape)}; the teacher and student must share the label set"
        )
    return z_t.detach()


def _hidden_term(
    out: ClassifierOutput,
    batch: Mapping[str, Tensor],
    hidden_loss: str,
    proj: nn.Module | None,
) -> Tensor:
    h_t = batch.get("teacher_hidden")
    if h_t is None:
        raise ValueError(
            "distillation mode 'hidden' needs batch['teacher_hidden']; build the teacher "
            "cache with pooled vectors"
        )
    if out.hidden is None:
        raise ValueError("distillation mode 'hidden' needs a student that returns `hidden`")
    if proj is None:
        raise ValueError(
            "distillation mode 'hidden' needs `proj`: make_projection(student.hidden_size, "
            "teacher_hidden_size), optimised together with the student"
        )
    return _HIDDEN_FNS[hidden_loss](out.hidden, h_t.detach(), proj)


def _check_choice(name: str, value: str, valid: Mapping[str, object] | tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} '{value}'; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class LossOptions:
    """The knobs of the distillation losses (``distill`` config section)."""

    T: float = 2.0
    alpha: float = 0.7
    beta: float = 1.0
    hard_target: str = "teacher"
    hidden_loss: str = "mse"


LossFn = Callable[
    [ClassifierOutput, Mapping[str, Tensor], LossOptions, "nn.Module | None"], LossOutput
]
"""``(student output, batch, options, projection or None) -> LossOutput``."""


@dataclass(frozen=True)
class ModeSpec:
    """A distillation mode: its loss and what it needs from the rest of the pipeline.

    ``needs_teacher``: ``batch["teacher_logits"]`` (a soft-target cache); ``needs_pooled``:
    ``batch["teacher_hidden"]`` too (the cache keeps the teacher's pooled vectors);
    ``needs_projection``: a projection ``W`` from the student's sentence vector to the
    teacher's, trained with the student (:func:`make_projection`); ``needs_layers``:
    ``batch["teacher_layers"]`` (L, B, T, H), the teacher's states at the student's matched
    layers, computed live each batch, and the student's ``hidden_states``; ``uses_unlabeled``: the
    transfer set holds unlabeled and augmented texts (the teacher labels them).
    """

    description: str
    loss: LossFn
    needs_teacher: bool = True
    needs_pooled: bool = False
    needs_projection: bool = False
    needs_layers: bool = False

    @property
    def uses_unlabeled(self) -> bool:
        return self.needs_teacher


def _loss_none(
    out: ClassifierOutput, batch: Mapping[str, Tensor], o: LossOptions, proj: nn.Module | None
) -> LossOutput:
    return _combine({"ce": (1.0, ce(out.logits, batch["labels"]))})


def _loss_hard(
    out: ClassifierOutput, batch: Mapping[str, Tensor], o: LossOptions, proj: nn.Module | None
) -> LossOutput:
    z_t = _teacher_logits(batch, "hard", out.logits)  # (B, C)
    return _combine({"ce": (1.0, ce(out.logits, z_t.argmax(dim=-1)))})


def _soft_terms(
    out: ClassifierOutput, batch: Mapping[str, Tensor], o: LossOptions, mode: str
) -> dict[str, tuple[float, Tensor]]:
    z_s = out.logits  # (B, C)
    z_t = _teacher_logits(batch, mode, z_s)  # (B, C)
    target = z_t.argmax(dim=-1) if o.hard_target == "teacher" else batch["labels"]  # (B,)
    return {"kd": (o.alpha, kd_kl(z_s, z_t, o.T)), "ce": (1.0 - o.alpha, ce(z_s, target))}


def _loss_soft(
    out: ClassifierOutput, batch: Mapping[str, Tensor], o: LossOptions, proj: nn.Module | None
) -> LossOutput:
    return _combine(_soft_terms(out, batch, o, "soft"))


def _loss_hidden(
    out: ClassifierOutput, batch: Mapping[str, Tensor], o: LossOptions, proj: nn.Module | None
) -> LossOutput:
    weighted = _soft_terms(out, batch, o, "hidden")
    weighted["hidden"] = (o.beta, _hidden_term(out, batch, o.hidden_loss, proj))
    return _combine(weighted)


def _loss_layers(
    out: ClassifierOutput, batch: Mapping[str, Tensor], o: LossOptions, proj: nn.Module | None
) -> LossOutput:
    weighted = _soft_terms(out, batch, o, "layers")
    states_t = batch.get("teacher_layers")
    if states_t is None or out.hidden_states is None:
        raise ValueError(
            "distillation mode 'layers' needs the student's hidden_states (a transformer "
            "student) and batch['teacher_layers'] (the teacher run live)"
        )
    weighted["layers"] = (
        o.beta,
        layer_mse(out.hidden_states, states_t.detach(), batch["attention_mask"]),
    )
    return _combine(weighted)


MODES: dict[str, ModeSpec] = {
    "none": ModeSpec("cross-entropy on gold labels (no teacher)", _loss_none, needs_teacher=False),
    "hard": ModeSpec("cross-entropy on the teacher's argmax labels", _loss_hard),
    "soft": ModeSpec("alpha * KD(KL at temperature T) + (1 - alpha) * cross-entropy", _loss_soft),
    "hidden": ModeSpec(
        "soft + beta * sentence-vector matching through a trained projection",
        _loss_hidden,
        needs_pooled=True,
        needs_projection=True,
    ),
    "layers": ModeSpec(
        "soft + beta * layer-wise hidden-state MSE to the teacher (transformer students)",
        _loss_layers,
        needs_layers=True,
    ),
}
"""Distillation modes (``distill.mode``). A new mode is one entry: its loss and its needs."""


def mode_spec(mode: str) -> ModeSpec:
    """The spec of ``mode``; a :class:`ValueError` listing the valid modes otherwise."""
    _check_choice("distillation mode", mode, MODES)
    return MODES[mode]


def distillation_loss(
    out: ClassifierOutput,
    batch: Mapping[str, Tensor],
    *,
    mode: str,
    T: float,
    alpha: float,
    beta: float,
    hard_target: str = "teacher",
    hidden_loss: str = "mse",
    proj: nn.Module | None = None,
) -> LossOutput:
    """The training loss of one batch for a distillation ``mode`` (see the module docstring).

    Args:
        out: student output; ``logits`` (B, C), ``hidden`` (B, Hs) for mode ``hidden``.
        batch: ``labels`` (B,) long with ``-1`` for no gold label; ``teacher_logits`` (B, C)
            for every mode but ``none``; ``teacher_hidden`` (B, Ht) for mode ``hidden``.
        mode: one of :data:`MODES`.
        T: temperature of ``kd_kl``.
        alpha: weight of ``kd_kl``; ``1 - alpha`` weighs the cross-entropy (soft, hidden).
        beta: weight of the hidden term (mode ``hidden``).
        hard_target: ``teacher`` (argmax of the teacher, every row) or ``gold``.
        hidden_loss: ``mse`` or ``cosine``.
        proj: the projection ``W`` for mode ``hidden``.

    Raises:
        ValueError: unknown mode / option, or a tensor the mode needs is missing.
    """
    spec = mode_spec(mode)
    _check_choice("hard_target", hard_target, HARD_TARGETS)
    _check_choice("hidden_loss", hidden_loss, HIDDEN_LOSSES)
    options = LossOptions(
        T=T, alpha=alpha, beta=beta, hard_target=hard_target, hidden_loss=hidden_loss
    )
    return spec.loss(out, batch, options, proj)


def temperature_at(progress: float, T_start: float, T_end: float | None) -> float:
    """Temperature at a point of training: constant, or linear from ``T_start`` to ``T_end``.

    ``T(p) = T_start + (T_end - T_start) * p`` with ``p`` = fraction of training done,
    clamped to [0, 1]; ``T_end=None`` means constant ``T_start``.
    """
    if T_end is None:
        return T_start
    p = min(max(progress, 0.0), 1.0)
    return T_start + (T_end - T_start) * p
