"""Loss functions pinned against values computed by hand (pure Python ``math``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from textdistill.distill.losses import (
    MODES,
    LossOutput,
    ce,
    distillation_loss,
    hidden_cosine,
    hidden_mse,
    kd_kl,
    make_projection,
    temperature_at,
)
from textdistill.models.output import ClassifierOutput

LN2, LN3 = math.log(2.0), math.log(3.0)


def _ce_row(logits: list[float], label: int) -> float:
    """-log softmax(logits)[label] = log(sum_j e^z_j) - z_label."""
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


def _kl_row(z_s: list[float], z_t: list[float], T: float) -> float:
    """sum_c p_t,c * (log p_t,c - log p_s,c) at temperature T, written out with math."""
    ns = sum(math.exp(v / T) for v in z_s)
    nt = sum(math.exp(v / T) for v in z_t)
    p_s = [math.exp(v / T) / ns for v in z_s]
    p_t = [math.exp(v / T) / nt for v in z_t]
    return sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s, strict=True))


# Fixtures used across the mode tests: 2 rows, 3 classes.
Z_S = [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]
Z_T = [[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]]  # teacher argmax: [1, 0]


def _out(z_s: list[list[float]] = Z_S, hidden: torch.Tensor | None = None) -> ClassifierOutput:
    return ClassifierOutput(logits=torch.tensor(z_s, requires_grad=True), hidden=hidden)


def _batch(labels: list[int], z_t: list[list[float]] | None = Z_T) -> dict[str, torch.Tensor]:
    batch = {"labels": torch.tensor(labels)}
    if z_t is not None:
        batch["teacher_logits"] = torch.tensor(z_t)
    return batch


# ---------------------------------------------------------------- ce


def test_ce_mean_over_rows() -> None:
    # row 0: uniform logits -> log 3; row 1: log(e + e^2 + e^3) - 3
    expected = (LN3 + math.log(math.e + math.e**2 + math.e**3) - 3.0) / 2
    got = ce(torch.tensor(Z_S), torch.tensor([1, 2]))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_ce_skips_unlabelled_rows() -> None:
    # Only row 1 counts, and the mean is over the one labelled row (not divided by 2).
    expected = math.log(math.e + math.e**2 + math.e**3) - 3.0
    got = ce(torch.tensor(Z_S), torch.tensor([-1, 2]))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_ce_all_unlabelled_is_zero_with_grad() -> None:
    z = torch.tensor(Z_S, requires_grad=True)
    got = ce(z, torch.tensor([-1, -1]))
    assert got.item() == 0.0
    assert not torch.isnan(got)
    got.backward()
    assert z.grad is not None
    assert torch.equal(z.grad, torch.zeros_like(z))


# ---------------------------------------------------------------- kd_kl


def test_kd_kl_batchmean_not_elementwise_mean() -> None:
    # Row 0: teacher p_t = (1/6, 2/6, 3/6) against a uniform student:
    #   KL = 1/6 ln(3/6) + 2/6 ln(6/6) + 3/6 ln(9/6) = (-ln 2 + 3 ln 3 - 3 ln 2) / 6.
    # Row 1: identical distributions -> 0. Batchmean divides the sum by B = 2 (not B*C = 6).
    z_t = [[0.0, LN2, LN3], [5.0, 1.0, 0.0]]
    z_s = [[0.0, 0.0, 0.0], [5.0, 1.0, 0.0]]
    kl_row0 = (3 * LN3 - 4 * LN2) / 6
    got = kd_kl(torch.tensor(z_s), torch.tensor(z_t), T=1.0)
    assert got.item() == pytest.approx(kl_row0 / 2, rel=1e-6)
    assert kl_row0 == pytest.approx(_kl_row(z_s[0], z_t[0], 1.0))


def test_kd_kl_temperature_squared() -> None:
    # At T = 2, z = 2 ln(p) gives softmax(z / 2) = p exactly:
    #   p_t = (1/6, 2/6, 3/6), p_s = (3/6, 2/6, 1/6)
    #   KL = 1/6 ln(1/3) + 2/6 ln 1 + 3/6 ln 3 = ln(3) / 3
    # Row 1 is identical in both -> 0. kd = T^2 * (ln(3)/3 + 0) / 2 = (2/3) ln 3.
    z_t = [[2 * math.log(v) for v in (1.0, 2.0, 3.0)], [0.0, 0.0, 0.0]]
    z_s = [[2 * math.log(v) for v in (3.0, 2.0, 1.0)], [0.0, 0.0, 0.0]]
    got = kd_kl(torch.tensor(z_s), torch.tensor(z_t), T=2.0)
    assert got.item() == pytest.approx(2 / 3 * LN3, rel=1e-6)
    assert _kl_row(z_s[0], z_t[0], 2.0) == pytest.approx(LN3 / 3)


def test_kd_kl_zero_when_equal() -> None:
    z = torch.tensor(Z_T)
    assert kd_kl(z, z.clone(), T=3.0).item() == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------- hidden


def _fixed_projection() -> nn.Linear:
    proj = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    return proj


def test_hidden_mse_hand_computed() -> None:
    # W h_s = [[1, 2, 3], [0, 1, 1]]; h_t = [[1, 1, 1], [0, 0, 0]]
    # squared errors: 0 + 1 + 4 + 0 + 1 + 1 = 7 over 6 elements.
    h_s = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    h_t = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert hidden_mse(h_s, h_t, _fixed_projection()).item() == pytest.approx(7 / 6, rel=1e-6)


def test_hidden_cosine_hand_computed() -> None:
    # row 0: cos([1,2,3], [1,1,1]) = 6 / (sqrt(14) sqrt(3)); row 1: cos([0,1,1], [0,1,0]) = 1/sqrt 2
    h_s = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    h_t = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    cos0 = 6 / (math.sqrt(14) * math.sqrt(3))
    cos1 = 1 / math.sqrt(2)
    expected = ((1 - cos0) + (1 - cos1)) / 2
    got = hidden_cosine(h_s, h_t, _fixed_projection())
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_hidden_cosine_ignores_scale() -> None:
    h_s = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    h_t = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, 1.0]]) * 7.5  # parallel to W h_s
    assert hidden_cosine(h_s, h_t, _fixed_projection()).item() == pytest.approx(0.0, abs=1e-6)


def test_hidden_projection_shape_mismatch() -> None:
    with pytest.raises(ValueError, match=r"make_projection"):
        hidden_mse(torch.zeros(2, 2), torch.zeros(2, 4), _fixed_projection())


def test_make_projection_shapes() -> None:
    proj = make_projection(16, 32)
    assert proj(torch.zeros(5, 16)).shape == (5, 32)


# ---------------------------------------------------------------- distillation_loss


def test_mode_none_is_gold_ce() -> None:
    res = distillation_loss(_out(), _batch([1, -1], z_t=None), mode="none", T=2, alpha=0.5, beta=1)
    assert isinstance(res, LossOutput)
    assert res.loss.item() == pytest.approx(LN3, rel=1e-6)  # only row 0 (uniform) is labelled
    assert set(res.terms) == {"ce", "loss"}
    assert res.terms["loss"] == pytest.approx(LN3, rel=1e-6)


def test_mode_hard_uses_teacher_argmax_on_all_rows() -> None:
    # No gold labels at all; teacher argmax = [1, 0] labels both rows.
    expected = (_ce_row(Z_S[0], 1) + _ce_row(Z_S[1], 0)) / 2
    assert expected == pytest.approx((LN3 + math.log(1 + math.e + math.e**2)) / 2)
    res = distillation_loss(_out(), _batch([-1, -1]), mode="hard", T=2, alpha=0.5, beta=1)
    assert res.loss.item() == pytest.approx(expected, rel=1e-6)
    assert set(res.terms) == {"ce", "loss"}


def test_mode_soft_teacher_target() -> None:
    T, alpha = 2.0, 0.3
    kd = T * T * (_kl_row(Z_S[0], Z_T[0], T) + _kl_row(Z_S[1], Z_T[1], T)) / 2
    ce_t = (_ce_row(Z_S[0], 1) + _ce_row(Z_S[1], 0)) / 2
    res = distillation_loss(_out(), _batch([-1, -1]), mode="soft", T=T, alpha=alpha, beta=1)
    assert res.loss.item() == pytest.approx(alpha * kd + (1 - alpha) * ce_t, rel=1e-6)
    # terms are the unweighted components, plus the weighted total
    assert res.terms["kd"] == pytest.approx(kd, rel=1e-6)
    assert res.terms["ce"] == pytest.approx(ce_t, rel=1e-6)
    assert res.terms["loss"] == pytest.approx(res.loss.item(), rel=1e-6)


def test_mode_soft_gold_target_skips_unlabelled_rows_for_ce_only() -> None:
    # Gold label only on row 1 (class 2, which the teacher disagrees with); kd uses both rows.
    T, alpha = 1.5, 0.6
    kd = T * T * (_kl_row(Z_S[0], Z_T[0], T) + _kl_row(Z_S[1], Z_T[1], T)) / 2
    ce_gold = _ce_row(Z_S[1], 2)  # divided by one labelled row
    res = distillation_loss(
        _out(), _batch([-1, 2]), mode="soft", T=T, alpha=alpha, beta=1, hard_target="gold"
    )
    assert res.terms["kd"] == pytest.approx(kd, rel=1e-6)
    assert res.terms["ce"] == pytest.approx(ce_gold, rel=1e-6)
    assert res.loss.item() == pytest.approx(alpha * kd + (1 - alpha) * ce_gold, rel=1e-6)


def test_mode_soft_gold_target_all_unlabelled_is_pure_kd() -> None:
    T, alpha = 2.0, 0.7
    kd = T * T * (_kl_row(Z_S[0], Z_T[0], T) + _kl_row(Z_S[1], Z_T[1], T)) / 2
    res = distillation_loss(
        _out(), _batch([-1, -1]), mode="soft", T=T, alpha=alpha, beta=1, hard_target="gold"
    )
    assert res.terms["ce"] == 0.0
    assert res.loss.item() == pytest.approx(alpha * kd, rel=1e-6)


@pytest.mark.parametrize("hidden_loss", ["mse", "cosine"])
def test_mode_hidden_adds_beta_term_and_trains_projection(hidden_loss: str) -> None:
    T, alpha, beta = 2.0, 0.5, 3.0
    h_s = torch.tensor([[1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    h_t = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    proj = _fixed_projection()
    batch = {**_batch([0, -1]), "teacher_hidden": h_t}
    res = distillation_loss(
        _out(hidden=h_s),
        batch,
        mode="hidden",
        T=T,
        alpha=alpha,
        beta=beta,
        hidden_loss=hidden_loss,
        proj=proj,
    )
    if hidden_loss == "mse":
        # W h_s = [[1,2,3],[0,1,1]]; errors 0,1,4 / 0,0,1 -> 6 / 6
        hidden = 6 / 6
    else:
        hidden = ((1 - 6 / (math.sqrt(14) * math.sqrt(3))) + (1 - 1 / math.sqrt(2))) / 2
    kd = T * T * (_kl_row(Z_S[0], Z_T[0], T) + _kl_row(Z_S[1], Z_T[1], T)) / 2
    ce_t = (_ce_row(Z_S[0], 1) + _ce_row(Z_S[1], 0)) / 2
    assert set(res.terms) == {"kd", "ce", "hidden", "loss"}
    assert res.terms["hidden"] == pytest.approx(hidden, rel=1e-6)
    expected = alpha * kd + (1 - alpha) * ce_t + beta * hidden
    assert res.loss.item() == pytest.approx(expected, rel=1e-6)
    res.loss.backward()
    assert proj.weight.grad is not None
    assert proj.weight.grad.abs().sum() > 0
    assert h_s.grad is not None
    assert h_s.grad.abs().sum() > 0


def test_teacher_tensors_receive_no_gradient() -> None:
    z_t = torch.tensor(Z_T, requires_grad=True)
    h_t = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], requires_grad=True)
    out = _out(hidden=torch.ones(2, 2, requires_grad=True))
    batch = {"labels": torch.tensor([0, 1]), "teacher_logits": z_t, "teacher_hidden": h_t}
    res = distillation_loss(
        out, batch, mode="hidden", T=2, alpha=0.5, beta=1, proj=_fixed_projection()
    )
    res.loss.backward()
    assert z_t.grad is None
    assert h_t.grad is None
    assert out.logits.grad is not None


def test_alpha_one_is_pure_kd_but_ce_still_logged() -> None:
    res = distillation_loss(_out(), _batch([-1, -1]), mode="soft", T=1, alpha=1.0, beta=0)
    assert res.loss.item() == pytest.approx(res.terms["kd"], rel=1e-6)
    assert res.terms["ce"] > 0


# ---------------------------------------------------------------- errors


def test_unknown_mode_lists_valid_modes() -> None:
    with pytest.raises(ValueError, match=r"unknown distillation mode 'softer'") as err:
        distillation_loss(_out(), _batch([0, 1]), mode="softer", T=1, alpha=0.5, beta=1)
    for mode in MODES:
        assert mode in str(err.value)


def test_unknown_hard_target_and_hidden_loss() -> None:
    with pytest.raises(ValueError, match=r"hard_target 'silver'.*teacher, gold"):
        distillation_loss(
            _out(), _batch([0, 1]), mode="soft", T=1, alpha=0.5, beta=1, hard_target="silver"
        )
    with pytest.raises(ValueError, match=r"hidden_loss 'l1'.*mse, cosine"):
        distillation_loss(
            _out(), _batch([0, 1]), mode="soft", T=1, alpha=0.5, beta=1, hidden_loss="l1"
        )


@pytest.mark.parametrize("mode", ["hard", "soft", "hidden"])
def test_missing_teacher_logits(mode: str) -> None:
    with pytest.raises(ValueError, match=rf"mode '{mode}' needs batch\['teacher_logits'\]"):
        distillation_loss(_out(), _batch([0, 1], z_t=None), mode=mode, T=1, alpha=0.5, beta=1)


def test_teacher_student_class_mismatch() -> None:
    with pytest.raises(ValueError, match=r"share the label set"):
        distillation_loss(
            _out(), _batch([0, 1], z_t=[[0.0, 1.0], [1.0, 0.0]]), mode="soft", T=1, alpha=1, beta=1
        )


def test_hidden_mode_requirements() -> None:
    def run(out: ClassifierOutput, batch: dict[str, torch.Tensor], proj: nn.Module | None) -> None:
        distillation_loss(out, batch, mode="hidden", T=1.0, alpha=0.5, beta=1.0, proj=proj)

    with_hidden = {**_batch([0, 1]), "teacher_hidden": torch.zeros(2, 3)}
    with pytest.raises(ValueError, match=r"needs batch\['teacher_hidden'\]"):
        run(_out(hidden=torch.zeros(2, 2)), _batch([0, 1]), _fixed_projection())
    with pytest.raises(ValueError, match=r"student that returns `hidden`"):
        run(_out(), with_hidden, _fixed_projection())
    with pytest.raises(ValueError, match=r"needs `proj`"):
        run(_out(hidden=torch.zeros(2, 2)), with_hidden, None)


# ---------------------------------------------------------------- temperature


def test_temperature_constant() -> None:
    assert temperature_at(0.0, 4.0, None) == 4.0
    assert temperature_at(0.7, 4.0, None) == 4.0


def test_temperature_linear_schedule() -> None:
    assert temperature_at(0.0, 4.0, 1.0) == pytest.approx(4.0)
    assert temperature_at(0.5, 4.0, 1.0) == pytest.approx(2.5)
    assert temperature_at(0.25, 4.0, 1.0) == pytest.approx(3.25)
    assert temperature_at(1.0, 4.0, 1.0) == pytest.approx(1.0)
    # progress outside [0, 1] is clamped instead of extrapolating to T <= 0
    assert temperature_at(2.0, 4.0, 1.0) == pytest.approx(1.0)
    assert temperature_at(-1.0, 4.0, 1.0) == pytest.approx(4.0)
