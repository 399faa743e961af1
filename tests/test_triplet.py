"""EmoBed's crossmodal batch-hard triplet loss and the label-to-class helpers (EmoBed spec 1.2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stew.objectives import crossmodal_triplet_loss, labels_to_classes, quantile_edges

FORMS = ("difference", "hinge", "softplus")
GARBAGE = (float("nan"), float("inf"), -1e30, 1e30)


def _reference(emb_a, emb_b, labels_a, labels_b, mask_a, mask_b, form: str, margin: float = 0.2) -> float:
    """Brute-force python loops over the valid rows of the double batch."""
    rows, labels = [], []
    for emb, lab, mask in ((emb_a, labels_a, mask_a), (emb_b, labels_b, mask_b)):
        for b in range(emb.shape[0]):
            for t in range(emb.shape[1]):
                if mask is None or bool(mask[b, t]):
                    rows.append([float(v) for v in emb[b, t]])
                    labels.append(int(lab[b, t]))
    terms = []
    for i, (xi, yi) in enumerate(zip(rows, labels, strict=True)):
        d_pos, d_neg = None, None
        for j, (xj, yj) in enumerate(zip(rows, labels, strict=True)):
            d = math.sqrt(sum((u - v) ** 2 for u, v in zip(xi, xj, strict=True)))
            if yj == yi and j != i:
                d_pos = d if d_pos is None else max(d_pos, d)
            elif yj != yi:
                d_neg = d if d_neg is None else min(d_neg, d)
        if d_pos is None or d_neg is None:
            continue
        diff = d_pos - d_neg
        if form == "difference":
            terms.append(diff)
        elif form == "hinge":
            terms.append(max(0.0, diff + margin))
        else:
            terms.append(math.log1p(math.exp(diff)))
    return sum(terms) / len(terms) if terms else 0.0


def _example(seed: int, b: int = 2, t: int = 5, e: int = 3, n_classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    emb_a = torch.randn(b, t, e, generator=g, dtype=torch.float64)
    emb_b = torch.randn(b + 1, t - 1, e, generator=g, dtype=torch.float64)  # unpaired shapes
    labels_a = torch.randint(0, n_classes, (b, t), generator=g)
    labels_b = torch.randint(0, n_classes, (b + 1, t - 1), generator=g)
    mask_a = torch.rand(b, t, generator=g) < 0.7
    mask_b = torch.rand(b + 1, t - 1, generator=g) < 0.7
    mask_a[0, 0] = mask_b[0, 0] = True
    return emb_a, emb_b, labels_a, labels_b, mask_a, mask_b


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force_reference(form: str, seed: int) -> None:
    args = _example(seed)
    loss = crossmodal_triplet_loss(*args, form=form, margin=0.3)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(_reference(*args, form=form, margin=0.3), rel=1e-9, abs=1e-9)
    # Without masks every row counts.
    emb_a, emb_b, labels_a, labels_b, _, _ = args
    loss_all = crossmodal_triplet_loss(emb_a, emb_b, labels_a, labels_b, None, None, form=form, margin=0.3)
    ref_all = _reference(emb_a, emb_b, labels_a, labels_b, None, None, form=form, margin=0.3)
    assert loss_all.item() == pytest.approx(ref_all, rel=1e-9, abs=1e-9)


def test_flat_inputs_match_sequence_inputs() -> None:
    emb_a, emb_b, labels_a, labels_b, mask_a, mask_b = _example(3)
    seq = crossmodal_triplet_loss(emb_a, emb_b, labels_a, labels_b, mask_a, mask_b)
    flat = crossmodal_triplet_loss(
        emb_a.reshape(-1, 3), emb_b.reshape(-1, 3), labels_a.reshape(-1), labels_b.reshape(-1),
        mask_a.reshape(-1), mask_b.reshape(-1),
    )
    assert flat.item() == pytest.approx(seq.item(), rel=1e-12)


def test_hardest_positive_and_negative_come_from_both_modalities() -> None:
    # 1-D embeddings on a line. a: 0 (c0), 1 (c0), 5 (c1); b: 4 (c0), 10 (c1).
    # a0: positives a1 at 1, b0 at 4 -> hardest is b0 (other modality); negatives a2 at 5, b1 at 10 -> 5.
    # a1: pos max(1, 3) = 3 (b0); neg min(4, 9) = 4.      a2: pos b1 at 5 (only in b); neg min(5, 4, 1) = 1 (b0).
    # b0: pos max(4, 3) = 4 (a0); neg min(1, 6) = 1 (a2). b1: pos a2 at 5; neg min(10, 9, 6) = 6 (b0).
    emb_a = torch.tensor([[[0.0], [1.0], [5.0]]], dtype=torch.float64, requires_grad=True)
    emb_b = torch.tensor([[[4.0], [10.0]]], dtype=torch.float64, requires_grad=True)
    labels_a, labels_b = torch.tensor([[0, 0, 1]]), torch.tensor([[0, 1]])
    diffs = [4 - 5, 3 - 4, 5 - 1, 4 - 1, 5 - 6]
    diff = crossmodal_triplet_loss(emb_a, emb_b, labels_a, labels_b, None, None, form="difference")
    assert diff.item() == pytest.approx(sum(diffs) / 5)
    hinge = crossmodal_triplet_loss(emb_a, emb_b, labels_a, labels_b, None, None, form="hinge", margin=0.2)
    assert hinge.item() == pytest.approx(sum(max(0.0, d + 0.2) for d in diffs) / 5)
    # Within-modality candidates only would give a different value (a0: 1 - 5, a1: 1 - 4, the others skipped).
    assert diff.item() != pytest.approx((-4 - 3) / 2)
    # Gradients of the difference form (mean over 5 anchors). a1 = 1 is only its own anchor (pos b0 = 4 and neg
    # a2 = 5 both above it): d/dx (|x - 4| - |x - 5|) = 0. a0 = 0 as its own anchor: likewise 0; as b0's hardest
    # positive (cross-modal): d/dx |4 - x| = -1, so its gradient is -1/5.
    diff.backward()
    assert emb_a.grad[0, 1, 0].item() == pytest.approx(0.0)
    # a0: own anchor d/dx(|x-4| - |x-5|) = 0; b0's hardest positive: d/dx |4-x| = -1 -> total -1/5.
    assert emb_a.grad[0, 0, 0].item() == pytest.approx(-0.2)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("garbage", GARBAGE)
def test_padded_rows_reach_neither_value_nor_gradient(form: str, garbage: float) -> None:
    emb_a, emb_b, labels_a, labels_b, mask_a, mask_b = _example(4)
    clean = crossmodal_triplet_loss(emb_a, emb_b, labels_a, labels_b, mask_a, mask_b, form=form)
    dirty_a, dirty_b = emb_a.clone(), emb_b.clone()
    dirty_a[~mask_a] = garbage
    dirty_b[~mask_b] = garbage
    dirty_a.requires_grad_(True)
    dirty_b.requires_grad_(True)
    bad_labels_a = torch.where(mask_a, labels_a, torch.full_like(labels_a, -100))
    loss = crossmodal_triplet_loss(dirty_a, dirty_b, bad_labels_a, labels_b, mask_a, mask_b, form=form)
    assert loss.item() == pytest.approx(clean.item(), rel=1e-12)
    loss.backward()
    for grad, mask in ((dirty_a.grad, mask_a), (dirty_b.grad, mask_b)):
        assert torch.isfinite(grad).all()
        assert (grad[~mask] == 0).all()
        assert grad[mask].abs().sum() > 0


def test_anchors_without_positive_or_negative_are_skipped() -> None:
    # Only modality a is valid; class 2 at x = 7 is a singleton (no positive) and is skipped as an anchor,
    # but still serves as a negative. a0: pos a1 (2), neg min(3, 7) = 3 -> -1. a1: pos 2, neg min(1, 5) = 1 -> 1.
    # a2 (class 1): no positive -> skipped. a3 (class 2): no positive -> skipped.
    emb_a = torch.tensor([[[0.0], [2.0], [3.0], [7.0]]], dtype=torch.float64)
    labels_a = torch.tensor([[0, 0, 1, 2]])
    emb_b = torch.full((1, 2, 1), float("nan"), dtype=torch.float64)
    mask_b = torch.zeros(1, 2, dtype=torch.bool)
    loss = crossmodal_triplet_loss(emb_a, emb_b, labels_a, torch.zeros(1, 2, dtype=torch.long), None, mask_b,
                                   form="difference")
    assert loss.item() == pytest.approx((-1 + 1) / 2)
    hinge = crossmodal_triplet_loss(emb_a, emb_b, labels_a, torch.zeros(1, 2, dtype=torch.long), None, mask_b,
                                    form="hinge", margin=0.5)
    assert hinge.item() == pytest.approx((0.0 + 1.5) / 2)  # mean over the 2 kept anchors, not over 4


@pytest.mark.parametrize("form", FORMS)
def test_single_class_batch_gives_connected_zero(form: str) -> None:
    g = torch.Generator().manual_seed(5)
    emb_a = torch.randn(2, 4, 3, generator=g, requires_grad=True)
    emb_b = torch.randn(2, 4, 3, generator=g, requires_grad=True)
    ones = torch.ones(2, 4, dtype=torch.long)
    loss = crossmodal_triplet_loss(emb_a, emb_b, ones, ones, None, None, form=form)
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert torch.equal(emb_a.grad, torch.zeros_like(emb_a))
    assert torch.equal(emb_b.grad, torch.zeros_like(emb_b))


def test_no_valid_row_gives_connected_zero() -> None:
    emb_a = torch.full((2, 3, 4), float("nan"), requires_grad=True)
    emb_b = torch.full((1, 3, 4), float("inf"), requires_grad=True)
    none_a, none_b = torch.zeros(2, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.bool)
    loss = crossmodal_triplet_loss(emb_a, emb_b, torch.zeros(2, 3, dtype=torch.long),
                                   torch.zeros(1, 3, dtype=torch.long), none_a, none_b)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(emb_a.grad, torch.zeros_like(emb_a))
    assert torch.equal(emb_b.grad, torch.zeros_like(emb_b))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_duplicate_embeddings_give_finite_gradients(form: str, dtype: torch.dtype) -> None:
    # Every row identical (all distances 0), and a second case with duplicates inside and across classes.
    same = torch.ones(2, 3, 4, dtype=dtype) * 0.7
    g = torch.Generator().manual_seed(6)
    base = torch.randn(3, 4, generator=g).to(dtype)
    dup = base[torch.tensor([0, 0, 1, 1, 2, 2])].reshape(2, 3, 4)
    labels = torch.tensor([[0, 1, 0], [1, 0, 1]])
    for emb in (same, dup):
        emb_a = emb.clone().requires_grad_(True)
        emb_b = emb.clone().requires_grad_(True)
        loss = crossmodal_triplet_loss(emb_a, emb_b, labels, labels, None, None, form=form)
        assert torch.isfinite(loss)
        loss.backward()
        assert torch.isfinite(emb_a.grad).all() and torch.isfinite(emb_b.grad).all()
    # All distances 0: D+ = D- = 0 (up to the 1e-6 floor) -> hinge = margin, softplus = log 2.
    expected = {"difference": 0.0, "hinge": 0.2, "softplus": math.log(2.0)}[form]
    loss = crossmodal_triplet_loss(same, same, labels, labels, None, None, form=form)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_max_rows_subsampling_is_deterministic_and_caps_rows() -> None:
    g = torch.Generator().manual_seed(7)
    emb_a = torch.randn(4, 10, 3, generator=g, dtype=torch.float64)
    emb_b = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)  # 8 rows < max_rows: never subsampled
    labels_a = torch.arange(40).reshape(4, 10) % 2
    labels_b = torch.arange(8).reshape(2, 4) % 2
    kwargs = {"form": "difference", "max_rows": 12}

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = emb_a.clone().requires_grad_(True)
        loss = crossmodal_triplet_loss(x, emb_b, labels_a, labels_b, None, None, **kwargs,
                                       generator=torch.Generator().manual_seed(seed))
        loss.backward()
        return loss.detach(), x.grad

    loss1, grad1 = run(0)
    loss2, grad2 = run(0)
    assert torch.equal(loss1, loss2) and torch.equal(grad1, grad2)
    loss3, _ = run(1)
    assert loss3.item() != loss1.item()
    # The rows that got a gradient are exactly the kept subset: with the difference form every kept anchor
    # has a nonzero gradient, a row left out has none.
    used = grad1.abs().sum(-1) > 0
    assert int(used.sum()) == 12
    # The loss over the subset equals the loss with no cap restricted (by the mask) to those same rows.
    restricted = crossmodal_triplet_loss(emb_a, emb_b, labels_a, labels_b, used, None,
                                         form="difference", max_rows=None)
    assert restricted.item() == pytest.approx(loss1.item(), rel=1e-12)
    # Without a cap all 40 rows count.
    x = emb_a.clone().requires_grad_(True)
    crossmodal_triplet_loss(x, emb_b, labels_a, labels_b, None, None, form="difference", max_rows=None).backward()
    assert int((x.grad.abs().sum(-1) > 0).sum()) == 40


def test_sgd_step_lowers_hinge_loss() -> None:
    g = torch.Generator().manual_seed(8)
    emb_a = torch.randn(3, 6, 4, generator=g, requires_grad=True)
    emb_b = torch.randn(3, 6, 4, generator=g, requires_grad=True)
    labels_a = torch.randint(0, 2, (3, 6), generator=g)
    labels_b = torch.randint(0, 2, (3, 6), generator=g)
    losses = []
    for _ in range(5):
        loss = crossmodal_triplet_loss(emb_a, emb_b, labels_a, labels_b, None, None, form="hinge", margin=0.2)
        losses.append(loss.item())
        emb_a.grad = emb_b.grad = None
        loss.backward()
        with torch.no_grad():
            emb_a -= 0.05 * emb_a.grad
            emb_b -= 0.05 * emb_b.grad
    assert losses[0] > 0
    assert losses[1] < losses[0]
    assert losses[-1] < losses[0]


def test_labels_must_be_integer_and_shapes_checked() -> None:
    emb = torch.randn(2, 3, 4)
    labels = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(TypeError):
        crossmodal_triplet_loss(emb, emb, labels.float(), labels, None, None)
    with pytest.raises(ValueError):
        crossmodal_triplet_loss(emb, emb, labels[:, :2], labels, None, None)
    with pytest.raises(ValueError):
        crossmodal_triplet_loss(emb, emb, labels, labels, None, None, form="cosine")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        crossmodal_triplet_loss(emb, emb, labels, labels, torch.ones(2, 3), None)


def test_labels_to_classes_sign() -> None:
    y = torch.tensor([[-1.0, 0.0, 0.5, -0.1]])
    expected = torch.tensor([[0, 1, 1, 0]])
    assert torch.equal(labels_to_classes(y), expected)
    assert torch.equal(labels_to_classes(y.unsqueeze(-1)), expected)  # [B, T, 1]
    assert labels_to_classes(y).dtype == torch.long
    # Two columns: mixed radix, column 0 most significant (id = 2 * c0 + c1).
    y2 = torch.tensor([[[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]])
    assert torch.equal(labels_to_classes(y2), torch.tensor([[0, 1, 2, 3]]))


def test_quantile_edges_and_classes() -> None:
    y_train = np.arange(100, dtype=np.float64)
    edges = quantile_edges(y_train, 4)
    assert edges.dtype == torch.float32
    assert torch.allclose(edges, torch.tensor([24.75, 49.5, 74.25]))
    # Tensor input with NaN padding gives the same edges.
    padded = torch.cat([torch.arange(100, dtype=torch.float32), torch.full((7,), float("nan"))])
    assert torch.allclose(quantile_edges(padded, 4), edges)
    y = torch.tensor([[-5.0, 24.0, 25.0, 49.5, 60.0, 99.0]])
    assert torch.equal(labels_to_classes(y, "quantile", edges), torch.tensor([[0, 0, 1, 2, 2, 3]]))
    # Quantile bins at edge 0 reproduce the sign scheme (a value equal to an edge goes up).
    z = torch.tensor([[-2.0, 0.0, 3.0]])
    assert torch.equal(labels_to_classes(z, "quantile", torch.tensor([0.0])), labels_to_classes(z, "sign"))
    # Per-column edges [k, n_bins - 1] and mixed radix with 4 bins per column: id = 4 * c0 + c1.
    per_col = torch.stack([edges, torch.tensor([-1.0, 0.0, 1.0])])
    y2 = torch.tensor([[[30.0, -2.0], [80.0, 0.5]]])
    assert torch.equal(labels_to_classes(y2, "quantile", per_col), torch.tensor([[4 * 1 + 0, 4 * 3 + 2]]))
    # Bins balance the training labels.
    counts = torch.bincount(labels_to_classes(torch.arange(100.0), "quantile", edges))
    assert counts.tolist() == [25, 25, 25, 25]
    with pytest.raises(ValueError):
        labels_to_classes(y, "quantile")
    with pytest.raises(ValueError):
        quantile_edges(y_train, 1)


def test_classes_feed_the_loss() -> None:
    g = torch.Generator().manual_seed(9)
    y_a, y_b = torch.randn(2, 5, 1, generator=g), torch.randn(2, 5, 1, generator=g)
    emb_a, emb_b = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    c_a, c_b = labels_to_classes(y_a), labels_to_classes(y_b)
    assert c_a.shape == (2, 5)
    loss = crossmodal_triplet_loss(emb_a, emb_b, c_a, c_b, None, None)
    assert torch.isfinite(loss) and loss.item() >= 0
