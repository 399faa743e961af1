"""DCCA total correlation (methods spec 5.4, 6.4): exactness, invariances, masking and gradient stability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_limits

from stew.objectives import DCCALoss, dcca_correlation, dcca_loss, flatten_valid

SETTINGS = settings(max_examples=25, deadline=None)


@pytest.fixture(autouse=True, scope="module")
def _single_threaded():
    """Many small linear-algebra calls alternate between torch (OpenMP) and numpy (OpenBLAS); on a busy
    2-core machine their spinning worker threads starve each other (100x slowdowns were observed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(threads)


def reference_correlation(h_s: np.ndarray, h_w: np.ndarray, k: int | None, r1: float = 1e-3, r2: float = 1e-3) -> float:
    """The spec's formula, literally, in float64 numpy: symmetric inverse square roots by eigh, then SVD."""
    h_s, h_w = np.asarray(h_s, np.float64), np.asarray(h_w, np.float64)
    n = h_s.shape[0]
    a, b = h_s - h_s.mean(0), h_w - h_w.mean(0)
    c = max(n - 1, 1)
    sigma_s = a.T @ a / c + r1 * np.eye(a.shape[1])
    sigma_w = b.T @ b / c + r2 * np.eye(b.shape[1])
    sigma_sw = a.T @ b / c

    def inv_sqrt(m: np.ndarray) -> np.ndarray:
        lam, vec = np.linalg.eigh(m)
        return (vec / np.sqrt(lam)) @ vec.T

    t = inv_sqrt(sigma_s) @ sigma_sw @ inv_sqrt(sigma_w)
    sv = np.linalg.svd(t, compute_uv=False)
    return float(sv.sum() if k is None else sv[:k].sum())


def naive_eigh_correlation(h_s: torch.Tensor, h_w: torch.Tensor, r1: float = 1e-3, r2: float = 1e-3) -> torch.Tensor:
    """The common public recipe: Sigma^{-1/2} from torch.linalg.eigh (float64), then the singular values of T.

    Its value is right; its gradient goes through eigh's backward, which divides by eigenvalue gaps.
    """
    h_s, h_w = h_s.double(), h_w.double()
    n = h_s.shape[0]
    a, b = h_s - h_s.mean(0), h_w - h_w.mean(0)
    sigma_s = a.T @ a / (n - 1) + r1 * torch.eye(a.shape[1], dtype=a.dtype)
    sigma_w = b.T @ b / (n - 1) + r2 * torch.eye(b.shape[1], dtype=a.dtype)
    sigma_sw = a.T @ b / (n - 1)

    def inv_sqrt(m: torch.Tensor) -> torch.Tensor:
        lam, vec = torch.linalg.eigh(m)
        return (vec * lam.clamp_min(1e-12).rsqrt()) @ vec.T

    return torch.linalg.svdvals(inv_sqrt(sigma_s) @ sigma_sw @ inv_sqrt(sigma_w)).sum()


def autograd_correlation(h_s: torch.Tensor, h_w: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Same maths as the library, but differentiated by autograd (cholesky, solve_triangular, svdvals)."""
    n = h_s.shape[0]
    a, b = h_s - h_s.mean(0), h_w - h_w.mean(0)
    sigma_s = a.T @ a / (n - 1) + 1e-3 * torch.eye(a.shape[1], dtype=a.dtype)
    sigma_w = b.T @ b / (n - 1) + 1e-3 * torch.eye(b.shape[1], dtype=a.dtype)
    l_s, l_w = torch.linalg.cholesky(sigma_s), torch.linalg.cholesky(sigma_w)
    t = torch.linalg.solve_triangular(l_s, a.T @ b / (n - 1), upper=False)
    t = torch.linalg.solve_triangular(l_w.T, t, upper=True, left=False)
    sv = torch.linalg.svdvals(t)
    return sv.sum() if k is None else sv[:k].sum()


def degenerate_batch(i: int, rng: np.random.Generator, n: int = 32, d: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Batch i of a family of degenerate cases (all have n <= d); even i also get duplicated columns."""
    kind = i % 8
    h_s, h_w = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    if kind == 1:  # zero (dead) columns in both views
        h_s[:, rng.choice(d, d // 4, replace=False)] = 0
        h_w[:, rng.choice(d, d // 4, replace=False)] = 0
    elif kind == 2:  # identical views: T is symmetric with repeated singular values
        h_w = h_s.copy()
    elif kind == 3:  # proportional views
        h_w = -2.5 * h_s
    elif kind == 4:  # rank-5 latents sharing their factors
        z = rng.standard_normal((n, 5))
        h_s, h_w = z @ rng.standard_normal((5, d)), z @ rng.standard_normal((5, d))
    elif kind == 5:  # a collapsed view: every row identical, so T = 0 and all singular values tie at 0
        h_s[:] = h_s[0]
    elif kind == 6:  # very few rows
        h_s, h_w = h_s[:3], h_w[:3]
    elif kind == 7:  # large activations
        h_s, h_w = 300 * h_s, 300 * h_w
    if i % 2 == 0:
        src, dst = rng.integers(0, d, size=d // 2), rng.choice(d, d // 2, replace=False)
        h_s[:, dst] = h_s[:, src]
        h_w[:, dst] = h_w[:, src]
    return h_s, h_w


def _grads(fn, h_s: np.ndarray, h_w: np.ndarray, dtype: torch.dtype = torch.float32):
    a = torch.tensor(h_s, dtype=dtype, requires_grad=True)
    b = torch.tensor(h_w, dtype=dtype, requires_grad=True)
    value = fn(a, b)
    value.backward()
    return value.detach(), a.grad, b.grad


def _finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# ----------------------------------------------------------------------------------------- value


@SETTINGS
@given(
    n=st.integers(2, 60),
    d_s=st.integers(1, 12),
    d_w=st.integers(1, 12),
    use_k=st.booleans(),
    k_frac=st.floats(0, 1),
    degeneracy=st.sampled_from(["none", "duplicate", "zero", "identical", "low_rank"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_value_matches_float64_reference(n, d_s, d_w, use_k, k_frac, degeneracy, seed) -> None:
    rng = np.random.default_rng(seed)
    h_s, h_w = rng.standard_normal((n, d_s)), rng.standard_normal((n, d_w))
    h_w[:, : min(d_s, d_w)] += 0.8 * h_s[:, : min(d_s, d_w)]
    if degeneracy == "duplicate" and d_s > 1:
        h_s[:, -1] = h_s[:, 0]
    elif degeneracy == "zero":
        h_s[:, 0] = 0
    elif degeneracy == "identical":
        h_w = h_s.copy()
    elif degeneracy == "low_rank":
        h_s = rng.standard_normal((n, 1)) @ rng.standard_normal((1, d_s))
    k = 1 + int(k_frac * (min(h_s.shape[1], h_w.shape[1]) - 1)) if use_k else None
    got = dcca_correlation(torch.tensor(h_s), torch.tensor(h_w), k=k).item()
    assert got == pytest.approx(reference_correlation(h_s, h_w, k), rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("k", [None, 10])
def test_value_matches_reference_on_degenerate_float32_batches(k: int | None) -> None:
    rng = np.random.default_rng(5)
    for i in range(16):
        h_s, h_w = (x.astype(np.float32) for x in degenerate_batch(i, rng))
        got = dcca_correlation(torch.from_numpy(h_s), torch.from_numpy(h_w), k=k)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(reference_correlation(h_s, h_w, k), rel=1e-4, abs=1e-6), f"batch {i}"


@SETTINGS
@given(d=st.integers(1, 8), seed=st.integers(0, 2**31 - 1), top=st.booleans())
def test_invertibly_related_views_reach_k(d: int, seed: int, top: bool) -> None:
    rng = np.random.default_rng(seed)
    h_s = rng.standard_normal((2000, d))
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = q * rng.uniform(0.5, 2.0, size=d)  # invertible, condition number <= 4
    h_w = h_s @ a + rng.standard_normal(d)
    k = max(1, d // 2) if top else None
    value = dcca_correlation(torch.tensor(h_s), torch.tensor(h_w), k=k, r1=1e-9, r2=1e-9).item()
    assert value == pytest.approx(k or d, rel=1e-6)
    # The default ridge shrinks each canonical correlation by about r / variance, no more.
    shrunk = dcca_correlation(torch.tensor(h_s), torch.tensor(h_w), k=k).item()
    assert (k or d) * (1 - 5e-3) < shrunk < (k or d)


def test_independent_views_give_small_values_that_shrink_with_more_rows() -> None:
    means = []
    for n in (100, 400, 1600, 6400):
        vals = []
        for seed in range(5):
            g = torch.Generator().manual_seed(seed)
            h_s = torch.randn(n, 5, generator=g, dtype=torch.float64)
            h_w = torch.randn(n, 5, generator=g, dtype=torch.float64)
            vals.append(dcca_correlation(h_s, h_w).item())
        means.append(float(np.mean(vals)))
    assert all(later < earlier for earlier, later in zip(means, means[1:], strict=False)), means
    assert means[-1] < means[0] / 4  # ~1/sqrt(n): 64x the rows, ~8x smaller
    assert means[-1] < 0.2  # out of a maximum of 5


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), d_s=st.integers(1, 10), d_w=st.integers(1, 10), use_k=st.booleans())
def test_invariance_to_linear_maps(seed: int, d_s: int, d_w: int, use_k: bool) -> None:
    rng = np.random.default_rng(seed)
    n = 400
    z = rng.standard_normal((n, 3))
    h_s = z @ rng.standard_normal((3, d_s)) + rng.standard_normal((n, d_s))
    h_w = z @ rng.standard_normal((3, d_w)) + rng.standard_normal((n, d_w))
    k = min(d_s, d_w, 2) if use_k else None

    def corr(x: np.ndarray, y: np.ndarray, r1: float = 1e-3, r2: float = 1e-3) -> float:
        return dcca_correlation(torch.tensor(x), torch.tensor(y), k=k, r1=r1, r2=r2).item()

    base = corr(h_s, h_w)
    q_s, _ = np.linalg.qr(rng.standard_normal((d_s, d_s)))
    q_w, _ = np.linalg.qr(rng.standard_normal((d_w, d_w)))
    # Exact with any ridge: rotations (r I is rotation invariant) and translations (centring).
    assert corr(h_s @ q_s + 3.0, h_w @ q_w - 1.0) == pytest.approx(base, rel=1e-9, abs=1e-12)
    # Exact when the ridge is scaled with the view: Sigma(c h) + c^2 r I = c^2 (Sigma(h) + r I).
    assert corr(7.0 * h_s, 0.2 * h_w, r1=49e-3, r2=0.04e-3) == pytest.approx(base, rel=1e-9, abs=1e-12)
    # Any well-conditioned invertible map, up to the (here negligible) ridge.
    a_s = q_s * rng.uniform(0.5, 2.0, size=d_s)
    a_w = rng.uniform(0.5, 2.0, size=d_w)[:, None] * q_w
    tiny = corr(h_s, h_w, 1e-10, 1e-10)
    assert corr(h_s @ a_s, h_w @ a_w, 1e-10, 1e-10) == pytest.approx(tiny, rel=1e-6, abs=1e-9)


# --------------------------------------------------------------------------------------- masking


@pytest.mark.parametrize("garbage", [0.0, 1e6, float("nan")])
@pytest.mark.parametrize("k", [None, 2])
def test_padded_steps_do_not_affect_value_or_receive_gradient(garbage: float, k: int | None) -> None:
    g = torch.Generator().manual_seed(3)
    h_s = torch.randn(4, 9, 5, generator=g, dtype=torch.float64)
    h_w = 0.5 * h_s[..., :3] + torch.randn(4, 9, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(4, 9, dtype=torch.bool)
    mask[1, 6:] = mask[3, 2:] = False
    expected = dcca_correlation(flatten_valid(h_s, mask), flatten_valid(h_w, mask), k=k)
    h_s, h_w = h_s.clone(), h_w.clone()
    h_s[~mask], h_w[~mask] = garbage, garbage
    h_s.requires_grad_(True)
    h_w.requires_grad_(True)
    value = dcca_correlation(h_s, h_w, mask, k=k)
    value.backward()
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    assert torch.count_nonzero(h_s.grad[~mask]) == 0 and torch.count_nonzero(h_w.grad[~mask]) == 0
    assert _finite(h_s.grad, h_w.grad)
    assert torch.count_nonzero(h_s.grad[mask]) > 0


@pytest.mark.parametrize("rows", [0, 1])
def test_fewer_than_two_valid_rows_give_zero(rows: int) -> None:
    h_s = torch.randn(2, 3, 4, requires_grad=True)
    h_w = torch.randn(2, 3, 4, requires_grad=True)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    mask[0, :rows] = True
    value = dcca_correlation(h_s, h_w, mask)
    value.backward()
    assert value.item() == 0.0
    assert torch.count_nonzero(h_s.grad) == 0 and torch.count_nonzero(h_w.grad) == 0
    assert dcca_correlation(h_s[0, :rows], h_w[0, :rows]).item() == 0.0


# ------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("d_w", [3, 4])
@pytest.mark.parametrize("k", [None, 1, 2, 3])
@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
def test_gradcheck(k: int | None, needs: tuple[bool, bool], d_w: int) -> None:
    # Both backward forms (rank-k factors and the dense form) are reached across these k / needs / d_w.
    g = torch.Generator().manual_seed(d_w)
    h_s = torch.randn(15, 4, generator=g, dtype=torch.float64)
    h_w = h_s @ torch.randn(4, d_w, generator=g, dtype=torch.float64)
    h_w = h_w + torch.randn(15, d_w, generator=g, dtype=torch.float64)
    h_s.requires_grad_(needs[0])
    h_w.requires_grad_(needs[1])
    assert torch.autograd.gradcheck(lambda a, b: dcca_correlation(a, b, k=k), (h_s, h_w))
    mask = torch.rand(3, 5, generator=g) < 0.7
    assert torch.autograd.gradcheck(
        lambda a, b: dcca_correlation(a.reshape(3, 5, 4), b.reshape(3, 5, d_w), mask, k=k), (h_s, h_w)
    )


@pytest.mark.parametrize("k", [None, 10])
def test_gradient_equals_autograd_of_the_same_maths_on_degenerate_batches(k: int | None) -> None:
    # Where the value is differentiable the gradient is unique, whatever the whitening; a collapsed view
    # (T = 0, kind 5) is excluded: there any U V^T is a valid subgradient of the trace norm.
    rng = np.random.default_rng(8)
    for i in range(16):
        h_s, h_w = degenerate_batch(i, rng)
        if i % 8 == 5:
            continue
        _, gs, gw = _grads(lambda a, b: dcca_correlation(a, b, k=k), h_s, h_w, torch.float64)
        _, rs, rw = _grads(lambda a, b: autograd_correlation(a, b, k), h_s, h_w, torch.float64)
        # Generic batches have gradients ~1e-5..1e-4; saturated ones (kinds 4, 6, 7: every canonical
        # correlation ~1) have gradients that are float64 round-off of cancelling terms, hence the atol.
        torch.testing.assert_close(gs, rs, rtol=1e-6, atol=1e-10, msg=f"batch {i}")
        torch.testing.assert_close(gw, rw, rtol=1e-6, atol=1e-10, msg=f"batch {i}")


def test_gradients_finite_on_1000_degenerate_batches_where_eigh_whitening_fails() -> None:
    """32 rows, latent 128 (n < d), half with duplicated columns, plus zero columns, identical or
    proportional views (repeated singular values), collapsed views, 3-row batches and large activations."""
    rng = np.random.default_rng(2024)
    ours_bad, naive_bad, naive_kinds = 0, 0, set()
    for i in range(1000):
        h_s, h_w = (x.astype(np.float32) for x in degenerate_batch(i, rng))
        k = None if i % 4 else 10
        value, gs, gw = _grads(lambda a, b, k=k: dcca_loss(a, b, k=k), h_s, h_w)
        ours_bad += not _finite(value, gs, gw)
        if i < 200:
            nv, ns, nw = _grads(naive_eigh_correlation, h_s, h_w)
            if not _finite(nv, ns, nw):
                naive_bad += 1
                naive_kinds.add(i % 8)
    assert ours_bad == 0
    # The problem is real: eigh-based whitening (even in float64, with a correct singular-value sum)
    # gives non-finite gradients on many of the same batches.
    assert naive_bad >= 20, naive_bad
    assert len(naive_kinds) >= 3, naive_kinds


def test_frozen_stronger_view_gets_no_gradient_and_weaker_view_the_same_one() -> None:
    g = torch.Generator().manual_seed(4)
    h_s = torch.randn(6, 10, 8, generator=g)
    h_w = (h_s[..., :6] + torch.randn(6, 10, 6, generator=g)).requires_grad_(True)
    mask = torch.rand(6, 10, generator=g) < 0.8
    dcca_loss(h_s, h_w, mask).backward()
    alone = h_w.grad.clone()
    h_w.grad = None
    both = h_s.clone().requires_grad_(True)
    dcca_loss(both, h_w, mask).backward()
    torch.testing.assert_close(alone, h_w.grad, rtol=1e-5, atol=1e-7)
    assert h_s.grad is None


# ------------------------------------------------------------------------------------------ API


def test_loss_module_dtypes_and_validation() -> None:
    g = torch.Generator().manual_seed(6)
    h_s, h_w = torch.randn(50, 4, generator=g), torch.randn(50, 3, generator=g)
    corr = dcca_correlation(h_s, h_w, k=2)
    assert corr.dtype == torch.float32 and corr.shape == ()
    h64 = h_s.double()
    assert dcca_correlation(h64, h_w.double()).dtype == torch.float64
    assert torch.equal(h64, h_s.double())  # centring works on a copy, never in place on the input
    row_mask = torch.arange(50) % 3 > 0  # plain [n, d] rows accept an [n] mask
    torch.testing.assert_close(dcca_correlation(h_s, h_w, row_mask), dcca_correlation(h_s[row_mask], h_w[row_mask]))
    assert dcca_loss(h_s, h_w, k=2).item() == -corr.item()
    module = DCCALoss(k=2, r1=1e-3, r2=1e-3)
    assert module(h_s, h_w).item() == -corr.item()
    assert "k=2" in repr(module)
    with pytest.raises(ValueError, match="exceeds"):
        dcca_correlation(h_s, h_w, k=4)
    for bad_k in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            dcca_correlation(h_s, h_w, k=bad_k)
    for bad_r in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError):
            dcca_correlation(h_s, h_w, r1=bad_r)
        with pytest.raises(ValueError):
            DCCALoss(r2=bad_r)
    with pytest.raises(ValueError):
        dcca_correlation(h_s, h_w[:40])
    with pytest.raises(ValueError):
        dcca_correlation(h_s[None, None], h_w[None, None])
    with pytest.raises(TypeError):
        dcca_correlation(h_s.reshape(5, 10, 4), h_w.reshape(5, 10, 3), torch.ones(5, 10))
    with pytest.raises(ValueError):
        dcca_correlation(h_s.reshape(5, 10, 4), h_w.reshape(5, 10, 3), torch.ones(10, 5, dtype=torch.bool))


def test_svd_non_convergence_falls_back_to_qr_iteration_with_the_same_value_and_gradient(monkeypatch) -> None:
    """LAPACK's gesdd can fail to converge on clustered singular values (seen in SEW training with 32 rows
    and a 128-d latent); the loss must then fall back to gesvd, not crash the run."""
    rng = np.random.default_rng(7)
    h_s = torch.tensor(rng.normal(size=(32, 128)), requires_grad=True)
    h_w = torch.tensor(rng.normal(size=(32, 128)), requires_grad=True)
    ref = dcca_loss(h_s, h_w, k=10)
    ref_gs, ref_gw = torch.autograd.grad(ref, (h_s, h_w))

    def failing_svd(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "svd", failing_svd)
    monkeypatch.setattr(torch.linalg, "svdvals", failing_svd)
    got = dcca_loss(h_s, h_w, k=10)
    gs, gw = torch.autograd.grad(got, (h_s, h_w))
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gs, ref_gs, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-8, atol=1e-10)
    with torch.no_grad():  # the values-only path uses the same fallback
        torch.testing.assert_close(dcca_loss(h_s, h_w, k=10), ref.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_latents_are_reported_as_divergence(bad: float) -> None:
    h_s = torch.randn(16, 4, dtype=torch.float64, requires_grad=True)
    h_w = torch.randn(16, 4, dtype=torch.float64)
    h_w[3, 1] = bad
    with pytest.raises(FloatingPointError, match="diverged"):
        dcca_loss(h_s, h_w)
