"""The numbers behind the latent plots: linear CKA, pairing latents by step, and 2-D projections."""

from __future__ import annotations

import numpy as np


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment between paired rows of ``x`` [n, p] and ``y`` [n, q].

    1 for representations equal up to rotation and isotropic scaling, 0 for unrelated ones
    (Kornblith et al., 2019): ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F) on column-centred X and Y.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"linear_cka needs paired 2-D arrays, got {x.shape} and {y.shape}")
    x = x - x.mean(0)
    y = y - y.mean(0)
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(np.linalg.norm(y.T @ x) ** 2 / den) if den > 0 else float("nan")


def pair_latents(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``a['latent']`` and ``b['latent']`` at the same (validation sequence, step)."""
    if len(a["step"]) == len(b["step"]) and np.array_equal(a["sequence"], b["sequence"]) \
            and np.array_equal(a["step"], b["step"]):
        return a["latent"], b["latent"]
    index = {(int(s), int(t)): i for i, (s, t) in enumerate(zip(b["sequence"], b["step"], strict=True))}
    ia, ib = [], []
    for i, (s, t) in enumerate(zip(a["sequence"], a["step"], strict=True)):
        j = index.get((int(s), int(t)))
        if j is not None:
            ia.append(i)
            ib.append(j)
    return a["latent"][ia], b["latent"][ib]


def pca_2d(fit: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
    """``x`` (default ``fit``) on the first two principal axes of ``fit``; signs fixed, so deterministic."""
    mean = fit.mean(0)
    xc = fit - mean
    # Eigenvectors of the d x d scatter matrix: the principal axes, far cheaper than an SVD of [n, d].
    _, vecs = np.linalg.eigh(xc.T @ xc)
    vt = vecs[:, ::-1][:, :2].T
    vt = vt * np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])[:, None]
    z = ((fit if x is None else x) - mean) @ vt.T
    return z if z.shape[1] == 2 else np.pad(z, ((0, 0), (0, 2 - z.shape[1])))


def tsne_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """``x`` embedded in 2-D by t-SNE (PCA initialisation, perplexity capped for small sets)."""
    # Imported here: scikit-learn is slow to import and only --tsne needs it.
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(x)


def even_indices(n: int, k: int) -> np.ndarray:
    """At most ``k`` indices spread evenly over ``range(n)``, sorted and unique."""
    return np.unique(np.linspace(0, n - 1, min(n, k)).astype(int)) if n else np.zeros(0, int)
