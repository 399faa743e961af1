r"""DCCA total correlation of two views and its loss (SEW and CM-StEW alignment; Andrew et al., 2013).

Definition (docs/methods/sew.md#dcca). With ``H_s``, ``H_w`` the ``n`` valid rows of the two views, centred
per column,

    Sigma_s  = H_s^T H_s / (n-1) + r1 I,   Sigma_w = H_w^T H_w / (n-1) + r2 I,   Sigma_sw = H_s^T H_w / (n-1),
    T        = Sigma_s^{-1/2} Sigma_sw Sigma_w^{-1/2},
    corr     = sum of the top-k singular values of T  (all of them, the trace norm, when k is None),
    loss     = -corr.

Numerical approach, and why it is exact:

* **Whitening by Cholesky factors, not inverse square roots.** With ``Sigma = L L^T``, ``W = L^{-1}``
  satisfies ``W^T W = Sigma^{-1}``, so ``W = Q Sigma^{-1/2}`` with ``Q = W Sigma^{1/2}`` orthogonal.
  Hence ``T_chol = L_s^{-1} Sigma_sw L_w^{-T} = Q_s T Q_w^T`` has exactly the singular values of T. Only a
  Cholesky factorisation and triangular solves are needed; ``eigh`` (whose backward divides by eigenvalue
  gaps, which are exactly zero whenever n <= d or columns are duplicated) is never used.
* **float64 for everything that decides the value**: the covariances, factorisations and the SVD; the
  result is cast back to the input dtype. The cross-covariance must be float64: float32 rounding of
  ``H_s^T H_w`` puts noise of order ``eps32 * sqrt(n) * |H|^2`` into the directions the data do not span,
  whitening amplifies it by ``1/r``, and the trace norm adds up the spurious singular values this creates
  (measured: relative errors of 3e-3 to 3e-2 on rank-deficient or n < d batches with a float32 Gram
  matrix, 1e-8 in float64). The auto-covariances must be too, because the ridge is absolute: with
  activations of scale s the float32 noise ``~eps32 * sqrt(n) * s^2`` reaches ``r`` for s of a few tens,
  and ``Sigma + r I`` then stops being reliably positive definite.
* **Singular values only, with their gradient written out.** For a singular value, ``d sigma_i = u_i^T dT
  v_i``; for the sum of the top k, ``dcorr/dT = U_k V_k^T``. This is what ``torch.linalg.svdvals``
  backpropagates (``svd_backward`` in torch/csrc/autograd/FunctionsManual.cpp: "Optimisation for svdvals:
  gA = U @ diag(gS) @ Vh"; documented as "the gradients of svdvals() are always numerically stable"). It
  involves no ``1/(sigma_i^2 - sigma_j^2)`` terms, so repeated singular values (identical views; the many
  zero singular values when n <= d) are harmless: where sigma is not differentiable (ties at the k-th value,
  zero singular values of the trace norm) the result is a bounded subgradient of the convex function
  ``T -> ||T||_*``. Chaining through the whitening (see :class:`_DCCACorrelation`) gives the classical
  closed form of Andrew et al. in Cholesky coordinates, which needs only triangular solves with
  ``L >= sqrt(r) I``: every quantity in the backward is bounded by ``1/r``, so gradients are finite for any
  finite input.
* **Cost.** The backward is written by hand (instead of autograd through the float64 graph) so that the
  large ``n x d`` products run in the input precision (float32 for float32 inputs), so that a frozen view
  costs nothing, and so that top-k losses use rank-k factors. It is checked against
  ``torch.autograd.gradcheck`` and against autograd through the same maths in the tests. It is
  once-differentiable (no double backward). See benchmarks/bench_dcca.py for timings.

Rows: ``[B, T, d]`` sequences with a ``[B, T]`` bool mask (padded steps are excluded and get zero gradient)
or plain ``[n, d]`` rows (optionally with an ``[n]`` mask). With fewer than 2 valid rows the covariances
carry no information and the correlation is 0 (with a zero gradient) rather than NaN.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["DCCALoss", "dcca_correlation", "dcca_loss"]

_F64 = torch.float64


def _solve_lower_t(lower: Tensor, rhs: Tensor) -> Tensor:
    """``L^{-T} rhs`` for lower-triangular ``L``."""
    return torch.linalg.solve_triangular(lower.mT, rhs, upper=True)


def _svd(t: Tensor, values_only: bool = False) -> tuple[Tensor, ...]:
    """Thin SVD ``(U, S, Vh)``, or ``(S,)`` with ``values_only``, of a finite float64 matrix, that does not give up.

    LAPACK's divide-and-conquer driver (gesdd, torch's CPU default) can report non-convergence on matrices
    with clusters of nearly repeated singular values, which DCCA meets when n < d (many values near 0 and
    k values near 1). The QR-iteration driver (gesvd) is slower but converges on those, so it is the
    fallback. (Non-finite input is refused before this point.)
    """
    try:
        return (torch.linalg.svdvals(t),) if values_only else torch.linalg.svd(t, full_matrices=False)
    except torch.linalg.LinAlgError:
        import scipy.linalg

        out = scipy.linalg.svd(
            t.detach().cpu().numpy(), full_matrices=False, compute_uv=not values_only, lapack_driver="gesvd"
        )
        return tuple(torch.from_numpy(m).to(t.device) for m in ((out,) if values_only else out))


class _DCCACorrelation(torch.autograd.Function):
    r"""Sum of the top-k singular values of the whitened cross-covariance, with a closed-form backward.

    With ``P = L_s^{-T} U_k``, ``Q = L_w^{-T} V_k`` (``T = U S V^T``), the gradients of ``corr`` are

        dcorr/dSigma_sw = P Q^T,   dcorr/dSigma_s = -1/2 P S_k P^T,   dcorr/dSigma_w = -1/2 Q S_k Q^T

    (from ``dsigma_i = u_i^T dT v_i`` and ``dT = -L_s^{-1} dL_s T`` with ``L_s^{-1} dSigma_s L_s^{-T} =
    X + X^T``, ``X = L_s^{-1} dL_s``; the same for w). Through ``Sigma = H^T H / c`` this gives, with the
    canonical variates ``Z_s = H_s P`` and ``Z_w = H_w Q``,

        dcorr/dH_s = (Z_w - Z_s S_k) P^T / c,      dcorr/dH_w = (Z_s - Z_w S_k) Q^T / c,

    and the centring needs no correction since these have zero column means. When k is close to d and
    only one view needs a gradient, the equivalent dense form ``2 H_s dSigma_s + H_w dSigma_sw^T`` (and
    likewise for w) is cheaper; both are implemented.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, x_s: Tensor, x_w: Tensor, valid: Tensor | None, k: int | None, r1: float, r2: float
    ) -> Tensor:
        out_dtype = torch.promote_types(x_s.dtype, x_w.dtype)
        a, b, c = _centred_float64(x_s, x_w, valid)
        sigma_s = a.mT @ a / c
        sigma_s.diagonal().add_(r1)
        sigma_w = b.mT @ b / c
        sigma_w.diagonal().add_(r2)
        sigma_sw = a.mT @ b / c
        if not (torch.isfinite(sigma_s).all() and torch.isfinite(sigma_w).all() and torch.isfinite(sigma_sw).all()):
            raise FloatingPointError("non-finite latents reached the DCCA loss: training diverged")
        # Sigma >= r I > 0 and finite, so the factorisation can only fail for astronomically large inputs.
        l_s = torch.linalg.cholesky(sigma_s)
        l_w = torch.linalg.cholesky(sigma_w)
        t = torch.linalg.solve_triangular(l_s, sigma_sw, upper=False)  # L_s^{-1} Sigma_sw
        t = torch.linalg.solve_triangular(l_w.mT, t, upper=True, left=False)  # ... L_w^{-T}
        kk = min(t.shape) if k is None else k
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]  # type: ignore[attr-defined]
        if needs_grad:
            u, s, vh = _svd(t)
        else:
            (s,) = _svd(t, values_only=True)
        corr = s[:kk].sum()
        if needs_grad:
            # The n x d products of the backward run in the input precision (at least float32).
            grad_dtype = torch.promote_types(out_dtype, torch.float32)
            ctx.save_for_backward(a.to(grad_dtype), b.to(grad_dtype), l_s, l_w, u[:, :kk], s[:kk], vh[:kk])
            ctx.c = c  # type: ignore[attr-defined]
            ctx.in_dtypes = (x_s.dtype, x_w.dtype)  # type: ignore[attr-defined]
        return corr.to(out_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        a, b, l_s, l_w, u, s, vh = ctx.saved_tensors
        need_s, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        scale = grad_out.to(_F64) / ctx.c
        p = _solve_lower_t(l_s, u)  # d_s x k
        q = _solve_lower_t(l_w, vh.mT)  # d_w x k
        n_needed = int(need_s) + int(need_w)
        kk, d_s, d_w = s.shape[0], a.shape[1], b.shape[1]
        dt = a.dtype
        g_s = g_w = None
        # Flops of the n-row products: rank-k form (2 + n_needed) * k * d, dense form 2 * n_needed * d^2.
        # On a tie the dense form wins: it needs no n x k temporaries or elementwise passes.
        if (2 + n_needed) * kk * max(d_s, d_w) < n_needed * (d_s + d_w) * max(d_s, d_w):
            z_s = a @ (p * scale).to(dt)  # scaled canonical variates
            z_w = b @ (q * scale).to(dt)
            s_dt = s.to(dt)
            if need_s:
                g_s = (z_w - z_s * s_dt) @ p.mT.to(dt)
            if need_w:
                g_w = (z_s - z_w * s_dt) @ q.mT.to(dt)
        else:
            d_sw = (p @ q.mT * scale).to(dt)
            if need_s:
                d_ss = (-(p * s) @ p.mT * scale).to(dt)  # 2 * dcorr/dSigma_s, times scale
                g_s = (a @ d_ss).addmm_(b, d_sw.mT)
            if need_w:
                d_ww = (-(q * s) @ q.mT * scale).to(dt)
                g_w = (b @ d_ww).addmm_(a, d_sw)
        in_s, in_w = ctx.in_dtypes
        return (
            None if g_s is None else g_s.to(in_s),
            None if g_w is None else g_w.to(in_w),
            None,
            None,
            None,
            None,
        )


def _centred_float64(x_s: Tensor, x_w: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor | float]:
    """Columns centred over valid rows, in float64, with padded rows set to exactly 0; and ``max(n-1, 1)``."""
    if valid is None:
        # copy=True: the in-place centring must never write into a float64 input.
        a, b = x_s.to(_F64, copy=True), x_w.to(_F64, copy=True)
        n = a.shape[0]
        a.sub_(a.sum(0) / max(n, 1))
        b.sub_(b.sum(0) / max(n, 1))
        return a, b, float(max(n - 1, 1))
    a, b = x_s.to(_F64), x_w.to(_F64)
    v = valid.unsqueeze(-1)
    zero = torch.zeros((), dtype=_F64, device=a.device)
    # torch.where (not multiplication by the mask) so that NaN/Inf in padded rows cannot leak in.
    a, b = torch.where(v, a, zero), torch.where(v, b, zero)
    n = valid.sum().to(_F64)  # a tensor: no host synchronisation on GPUs
    a = torch.where(v, a - a.sum(0) / n.clamp(min=1), zero)
    b = torch.where(v, b - b.sum(0) / n.clamp(min=1), zero)
    return a, b, (n - 1).clamp(min=1)


def _as_rows(h: Tensor, name: str) -> Tensor:
    if not h.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {h.dtype}")
    if h.dim() not in (2, 3):
        raise ValueError(f"{name} must be [n, d] rows or a [B, T, d] sequence, got shape {tuple(h.shape)}")
    return h.reshape(-1, h.shape[-1])


def dcca_correlation(
    h_s: Tensor,
    h_w: Tensor,
    mask: Tensor | None = None,
    *,
    k: int | None = None,
    r1: float = 1e-3,
    r2: float = 1e-3,
) -> Tensor:
    """DCCA total correlation of two views (see the module docstring for the definition and numerics).

    Args:
        h_s: stronger view, ``[B, T, d_s]`` or ``[n, d_s]``.
        h_w: weaker view, same leading shape as ``h_s``, ``[..., d_w]``.
        mask: bool, ``h_s.shape[:-1]``, True on valid steps; None = all valid.
        k: number of top singular values summed; None = all ``min(d_s, d_w)`` (trace norm, CM-StEW).
            SEW uses k = 10.
        r1, r2: ridge added to the two auto-covariances (> 0).

    Returns:
        0-dim tensor in the promoted input dtype; in ``[0, k]`` (up to the ridge shrinkage).
    """
    if h_s.shape[:-1] != h_w.shape[:-1]:
        raise ValueError(f"views disagree on rows: {tuple(h_s.shape)} vs {tuple(h_w.shape)}")
    x_s, x_w = _as_rows(h_s, "h_s"), _as_rows(h_w, "h_w")
    valid = None
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = valid step), got {mask.dtype}")
        if mask.shape != h_s.shape[:-1]:
            raise ValueError(f"mask shape {tuple(mask.shape)} != view step shape {tuple(h_s.shape[:-1])}")
        valid = mask.reshape(-1)
    _check_hyper(k, r1, r2, x_s.shape[1], x_w.shape[1])
    return _DCCACorrelation.apply(x_s, x_w, valid, k, float(r1), float(r2))


def dcca_loss(
    h_s: Tensor,
    h_w: Tensor,
    mask: Tensor | None = None,
    *,
    k: int | None = None,
    r1: float = 1e-3,
    r2: float = 1e-3,
) -> Tensor:
    """Alignment loss ``-corr`` (SEW's L_al, CM-StEW's L_a); arguments as :func:`dcca_correlation`."""
    return -dcca_correlation(h_s, h_w, mask, k=k, r1=r1, r2=r2)


def _check_hyper(k: int | None, r1: float, r2: float, d_s: int | None = None, d_w: int | None = None) -> None:
    if k is not None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int or None, got {k!r}")
        if d_s is not None and d_w is not None and k > min(d_s, d_w):
            raise ValueError(f"k={k} exceeds the number of singular values min({d_s}, {d_w})")
    for name, r in (("r1", r1), ("r2", r2)):
        if not (isinstance(r, int | float) and math.isfinite(r) and r > 0):
            raise ValueError(f"{name} must be a finite float > 0 (it makes the covariances invertible), got {r!r}")


class DCCALoss(nn.Module):
    """Module form of :func:`dcca_loss`: ``DCCALoss(k, r1, r2)(h_s, h_w, mask)``."""

    def __init__(self, k: int | None = None, r1: float = 1e-3, r2: float = 1e-3) -> None:
        super().__init__()
        _check_hyper(k, r1, r2)
        self.k, self.r1, self.r2 = k, float(r1), float(r2)

    def forward(self, h_s: Tensor, h_w: Tensor, mask: Tensor | None = None) -> Tensor:
        return dcca_loss(h_s, h_w, mask, k=self.k, r1=self.r1, r2=self.r2)

    def extra_repr(self) -> str:
        return f"k={self.k}, r1={self.r1}, r2={self.r2}"
