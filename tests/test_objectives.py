"""Masked losses over padded sequences and the correlation losses (methods spec 0.1-0.5, CER-MTL 2.4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.functional.regression import concordance_corrcoef, pearson_corrcoef

from stew.objectives import ccc_loss, flatten_valid, masked_bce, masked_ce, masked_mae, masked_mse, pcc_loss

SETTINGS = settings(max_examples=30, deadline=None)
GARBAGE = (float("nan"), float("inf"), -1e30, 1e6)


def _batch(seed: int, b: int, t: int, k: int, dtype: torch.dtype = torch.float64):
    """pred, target, mask [b, t]; the mask has at least one valid step."""
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(b, t, k, generator=g, dtype=dtype)
    target = torch.randn(b, t, k, generator=g, dtype=dtype)
    mask = torch.rand(b, t, generator=g) < 0.6
    mask[0, 0] = True
    return pred, target, mask


def _fill_padded(x: torch.Tensor, mask: torch.Tensor, value: float) -> torch.Tensor:
    x = x.detach().clone()
    x[~mask] = value
    return x


# Each masked loss with its reference on the valid rows; BCE takes logits and probability targets.
LOSSES = {
    "mse": (masked_mse, lambda p, t: F.mse_loss(p, t), lambda t: t),
    "mae": (masked_mae, lambda p, t: F.l1_loss(p, t), lambda t: t),
    "bce": (masked_bce, lambda p, t: F.binary_cross_entropy_with_logits(p, t), torch.sigmoid),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@SETTINGS
@given(b=st.integers(1, 4), t=st.integers(1, 6), k=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_masked_loss_matches_reference_on_valid_rows(name: str, b: int, t: int, k: int, seed: int) -> None:
    loss_fn, ref_fn, make_target = LOSSES[name]
    pred, target, mask = _batch(seed, b, t, k)
    target = make_target(target)
    pred.requires_grad_(True)
    value = loss_fn(pred, target, mask)
    value.backward()
    ref_pred = pred.detach().clone().requires_grad_(True)
    ref = ref_fn(ref_pred[mask], target[mask])
    ref.backward()
    torch.testing.assert_close(value, ref)
    torch.testing.assert_close(pred.grad, ref_pred.grad)
    assert torch.count_nonzero(pred.grad[~mask]) == 0


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("garbage", GARBAGE)
def test_masked_loss_ignores_padded_values(name: str, garbage: float) -> None:
    loss_fn, _, make_target = LOSSES[name]
    pred, target, mask = _batch(7, 3, 5, 2)
    target = make_target(target)
    assert (~mask).any()
    results = []
    for p, tg in ((pred, target), (_fill_padded(pred, mask, garbage), _fill_padded(target, mask, garbage))):
        p = p.clone().requires_grad_(True)
        value = loss_fn(p, tg, mask)
        value.backward()
        results.append((value.detach(), p.grad))
    (v0, g0), (v1, g1) = results
    assert torch.equal(v0, v1)  # bit-identical: padded steps never enter the arithmetic
    assert torch.equal(g0, g1)
    assert torch.count_nonzero(g1[~mask]) == 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_masked_loss_without_mask_is_plain_mean_and_all_padded_is_zero(name: str) -> None:
    loss_fn, ref_fn, make_target = LOSSES[name]
    pred, target, _ = _batch(3, 2, 4, 3)
    target = make_target(target)
    torch.testing.assert_close(loss_fn(pred, target, None), ref_fn(pred, target))
    p = pred.clone().requires_grad_(True)
    value = loss_fn(p, target, torch.zeros(2, 4, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0
    assert torch.count_nonzero(p.grad) == 0


def test_masked_bce_takes_logits_and_is_stable_when_saturated() -> None:
    logits = torch.tensor([[[-200.0], [200.0], [0.0]]], requires_grad=True)
    target = torch.tensor([[[1.0], [0.0], [1.0]]])
    mask = torch.tensor([[True, True, True]])
    value = masked_bce(logits, target, mask)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    # Each saturated wrong step costs |logit| nats; log(sigmoid(-200)) underflows to log(0) in float32.
    torch.testing.assert_close(value.item(), (200.0 + 200.0 + float(np.log(2.0))) / 3, rtol=1e-6, atol=0)
    assert torch.isinf(torch.log(torch.sigmoid(torch.tensor(-200.0))))


@SETTINGS
@given(b=st.integers(1, 4), t=st.integers(1, 6), c=st.integers(2, 5), seed=st.integers(0, 2**31 - 1))
def test_masked_ce_matches_reference_and_ignores_padded_targets(b: int, t: int, c: int, seed: int) -> None:
    logits, _, mask = _batch(seed, b, t, c)
    target = torch.randint(0, c, (b, t), generator=torch.Generator().manual_seed(seed))
    target[~mask] = -100  # an out-of-range padding value must not raise
    logits = _fill_padded(logits, mask, float("nan")).requires_grad_(True)
    value = masked_ce(logits, target, mask)
    value.backward()
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(ref_logits[mask], target[mask])
    ref.backward()
    torch.testing.assert_close(value, ref)
    torch.testing.assert_close(logits.grad[mask], ref_logits.grad[mask])
    assert torch.count_nonzero(logits.grad[~mask]) == 0


def test_flatten_valid_keeps_batch_time_order_and_blocks_gradient() -> None:
    x = torch.arange(2 * 3 * 2, dtype=torch.float64).reshape(2, 3, 2).requires_grad_(True)
    mask = torch.tensor([[True, False, True], [False, True, False]])
    rows = flatten_valid(x, mask)
    assert rows.tolist() == [[0.0, 1.0], [4.0, 5.0], [8.0, 9.0]]
    rows.sum().backward()
    assert x.grad[~mask].abs().sum() == 0 and (x.grad[mask] == 1).all()


def test_mask_is_validated() -> None:
    pred, target, mask = _batch(0, 2, 3, 1)
    with pytest.raises(TypeError):
        masked_mse(pred, target, mask.float())
    with pytest.raises(ValueError):
        masked_mse(pred, target, mask[:, :2])
    with pytest.raises(ValueError):
        masked_mae(pred, target[..., :0], mask)
    with pytest.raises(TypeError):
        masked_ce(pred, target[..., 0], mask)


# ----------------------------------------------------------------------------- correlation losses


def _np_ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's CCC with population moments (the AVEC script's convention)."""
    cov = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


@SETTINGS
@given(b=st.integers(1, 4), t=st.integers(2, 8), k=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_ccc_and_pcc_match_references_over_valid_steps(b: int, t: int, k: int, seed: int) -> None:
    pred, target, mask = _batch(seed, b, t, k)
    mask[0, :2] = True  # at least two valid steps
    pred = pred + 0.5 * target  # some correlation
    p, y = pred[mask], target[mask]  # [n_valid, k]
    expected_ccc = 1 - np.mean([_np_ccc(p[:, j].numpy(), y[:, j].numpy()) for j in range(k)])
    torch.testing.assert_close(ccc_loss(pred, target, mask).item(), float(expected_ccc), rtol=1e-9, atol=1e-12)
    # torchmetrics' Pearson is scale-free, so its (n-1) convention does not matter.
    expected_pcc = 1 - pearson_corrcoef(p, y).mean() if k > 1 else 1 - pearson_corrcoef(p[:, 0], y[:, 0])
    torch.testing.assert_close(pcc_loss(pred, target, mask), expected_pcc.to(pred.dtype), rtol=1e-6, atol=1e-9)


def test_ccc_matches_torchmetrics_when_its_sample_variance_convention_cancels() -> None:
    # torchmetrics divides variances and covariance by n-1; the spec/AVEC use n. The two agree exactly when
    # the means coincide (every term scales alike), and only differ by O(1/n) otherwise.
    g = torch.Generator().manual_seed(0)
    y = torch.randn(500, 3, generator=g, dtype=torch.float64)
    p = 0.7 * y + 0.4 * torch.randn(500, 3, generator=g, dtype=torch.float64)
    p, y = p - p.mean(0), y - y.mean(0)
    torch.testing.assert_close(ccc_loss(p, y), 1 - concordance_corrcoef(p, y).mean())
    shifted = p + 0.3
    assert abs(ccc_loss(shifted, y).item() - (1 - concordance_corrcoef(shifted, y).mean().item())) < 5e-3


def test_perfect_and_anti_correlated_predictions() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.randn(4, 10, 2, generator=g)
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[2:, 7:] = False
    assert ccc_loss(y, y, mask).abs().item() < 1e-6
    assert pcc_loss(y, y, mask).abs().item() < 1e-6
    assert abs(pcc_loss(-y, y, mask).item() - 2.0) < 1e-6
    assert abs(pcc_loss(3 * y + 1, y, mask).item()) < 1e-6  # PCC ignores scale and offset...
    assert ccc_loss(3 * y + 1, y, mask).item() > 0.3  # ...CCC does not
    centred = y - y.mean(dim=(0, 1))
    assert abs(ccc_loss(-centred, centred).item() - 2.0) < 1e-6


@pytest.mark.parametrize("loss_fn", [ccc_loss, pcc_loss])
@pytest.mark.parametrize("case", ["constant_pred", "constant_both", "single_step", "no_valid_step", "tiny_variance"])
def test_correlation_losses_are_finite_in_degenerate_cases(loss_fn, case: str) -> None:
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(2, 5, 2, generator=g)
    target = torch.randn(2, 5, 2, generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    if case == "constant_pred":
        pred = torch.full_like(pred, 0.3)
    elif case == "constant_both":
        pred, target = torch.full_like(pred, 0.3), torch.full_like(target, 0.3)
    elif case == "single_step":
        mask[:] = False
        mask[1, 2] = True
    elif case == "no_valid_step":
        mask[:] = False
    elif case == "tiny_variance":
        pred = 0.5 + 1e-6 * pred
    pred.requires_grad_(True)
    value = loss_fn(pred, target, mask)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(pred.grad).all()
    assert 0.0 <= value.item() <= 2.0
    if case != "tiny_variance":  # no co-variation at all: correlation 0
        assert abs(value.item() - 1.0) < 1e-6


@pytest.mark.parametrize("loss_fn", [ccc_loss, pcc_loss])
@pytest.mark.parametrize("garbage", GARBAGE)
def test_correlation_losses_ignore_padded_steps(loss_fn, garbage: float) -> None:
    pred, target, mask = _batch(11, 3, 6, 2)
    results = []
    for p, tg in ((pred, target), (_fill_padded(pred, mask, garbage), _fill_padded(target, mask, garbage))):
        p = p.clone().requires_grad_(True)
        value = loss_fn(p, tg, mask)
        value.backward()
        results.append((value.detach(), p.grad))
    (v0, g0), (v1, g1) = results
    assert torch.equal(v0, v1) and torch.equal(g0, g1)
    assert torch.count_nonzero(g1[~mask]) == 0
    torch.testing.assert_close(v0, loss_fn(pred[mask], target[mask]))
