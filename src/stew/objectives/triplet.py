"""EmoBed's crossmodal batch-hard triplet loss (docs/methods/emobed.md#triplet-loss) and the label-to-class
helpers it needs.

The valid embeddings of both modalities of a mini-batch go into ONE double-sized batch ``{e_A; e_V}`` and the
full pairwise Euclidean distance matrix ``D`` is computed. For every anchor ``e`` (of either modality) the
hardest positive ``e+`` is the embedding with the same class at maximum distance and the hardest negative
``e-`` the embedding with a different class at minimum distance; candidates come from both modalities (intra-
and inter-modal), and an anchor is never its own positive.

Per-anchor term (``form``):

* ``"difference"``: ``D+ - D-``, exactly the paper's L_T. It has no margin and no hinge, so it is unbounded
  below: the network can lower it forever by spreading the classes apart (and scaling the embedding up), which
  only inflates the embedding norm once the classes are separated.
* ``"hinge"`` (default, ``margin=0.2``): ``max(0, D+ - D- + margin)``, the standard batch-hard triplet loss
  of Hermans, Beyer and Leibe (2017, "In defense of the triplet loss"). It stops pushing once every anchor's
  hardest negative is ``margin`` farther than its hardest positive, so the loss is bounded below by 0.
* ``"softplus"``: ``log(1 + exp(D+ - D-))``, the smooth "soft margin" variant of the same paper.

``margin`` is used by ``"hinge"`` only.

Anchors without a positive or without a negative in the batch are skipped (the paper is silent). Reduction:
the MEAN over the kept anchors. The paper sums; the mean keeps the scale of the loss (hence the meaning of its
weight beta) independent of the batch size and of how many steps are padded. With no anchor kept the loss is an exact 0
that is still connected to the inputs, so ``backward()`` works and gives zero gradients.

Masks follow the stew convention (see ``stew.objectives.masked``): ``[B, T]`` bool, True = valid step.
Padded rows are removed by boolean indexing before any arithmetic, so whatever they hold (NaN, Inf, garbage
labels) reaches neither the value nor the gradient; the gradient at padded rows is exactly 0. Because the
size of the double batch depends on the data, this loss synchronises a GPU with the host (unlike the masked
losses). The distance matrix is quadratic in the number of rows, so each modality is capped at ``max_rows``
valid rows, drawn at random (``torch.randperm`` with ``generator``) when there are more.

Distances use the Gram form ``|x|^2 + |y|^2 - 2 x.y`` on mean-centred rows (centring does not change any
distance but reduces cancellation) and ``sqrt(clamp(sq, min=1e-12))``: sqrt has an infinite derivative at 0,
and the clamp makes the gradient at zero distance (duplicate embeddings, the diagonal) finite. The arithmetic
runs in at least float32, and the loss is returned in that dtype.

Regression labels must be turned into classes first (``labels_to_classes``): by default high vs low
(``y >= 0``, the paper's visualisations), or quantile bins with edges from the training labels
(``quantile_edges``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TripletForm", "crossmodal_triplet_loss", "labels_to_classes", "quantile_edges"]

TripletForm = Literal["difference", "hinge", "softplus"]
_FORMS = ("difference", "hinge", "softplus")
_MIN_SQ_DIST = 1e-12  # squared-distance floor: keeps d sqrt / d sq finite at zero distance


def _valid_rows(emb: Tensor, labels: Tensor, mask: Tensor | None, name: str) -> tuple[Tensor, Tensor]:
    """Valid rows of ``emb [..., E]`` as ``[n, E]`` and their labels ``[n]`` (boolean indexing: padded rows
    get an exactly zero gradient and never reach the arithmetic)."""
    if emb.dim() < 2:
        raise ValueError(f"emb_{name} must be [B, T, E] or [N, E], got shape {tuple(emb.shape)}")
    if labels.shape != emb.shape[:-1]:
        raise ValueError(
            f"labels_{name} shape {tuple(labels.shape)} does not match the step dimensions {tuple(emb.shape[:-1])}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels_{name} must hold integer class ids (see labels_to_classes), got {labels.dtype}")
    if mask is None:
        return emb.reshape(-1, emb.shape[-1]), labels.reshape(-1)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask_{name} must be a bool tensor (True = valid step), got {mask.dtype}")
    if mask.shape != labels.shape:
        raise ValueError(
            f"mask_{name} shape {tuple(mask.shape)} does not match the step dimensions {tuple(labels.shape)}"
        )
    return emb[mask], labels[mask]


def _subsample(
    rows: Tensor, labels: Tensor, max_rows: int | None, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """At most ``max_rows`` rows, a random subset (kept in their original order) when there are more."""
    n = rows.shape[0]
    if max_rows is None or n <= max_rows:
        return rows, labels
    perm_device = generator.device if generator is not None else torch.device("cpu")
    idx = torch.randperm(n, generator=generator, device=perm_device)[:max_rows]
    idx = torch.sort(idx).values.to(rows.device)
    return rows[idx], labels[idx]


def _pairwise_distances(x: Tensor) -> Tensor:
    """Euclidean distance matrix ``[n, n]`` of the rows of ``x [n, E]``, with a finite gradient everywhere."""
    x = x - x.mean(dim=0, keepdim=True).detach()  # distances are translation invariant; centring cuts cancellation
    sq_norm = x.square().sum(dim=1)
    sq = sq_norm.unsqueeze(1) + sq_norm.unsqueeze(0) - 2.0 * (x @ x.T)
    return sq.clamp(min=_MIN_SQ_DIST).sqrt()


def crossmodal_triplet_loss(
    emb_a: Tensor,
    emb_b: Tensor,
    labels_a: Tensor,
    labels_b: Tensor,
    mask_a: Tensor | None,
    mask_b: Tensor | None,
    *,
    form: TripletForm = "hinge",
    margin: float = 0.2,
    max_rows: int | None = 512,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Crossmodal batch-hard triplet loss over the double batch ``{e_a; e_b}`` (docs/methods/emobed.md#triplet-loss);
    a scalar.

    ``emb_a``/``emb_b``: ``[B, T, E]`` (or ``[N, E]``) embeddings of the two modalities, same ``E``; the two
    modalities may have different ``B``/``T`` (unpaired batches). ``labels_a``/``labels_b``: integer class ids
    with the step shape ``[B, T]`` (or ``[N]``). ``mask_a``/``mask_b``: bool, True = valid step, or None (all
    valid). ``form``: ``"hinge"`` (default), ``"softplus"`` or ``"difference"`` (see the module docstring);
    ``margin`` is used by ``"hinge"`` only. ``max_rows``: cap on the valid rows taken from EACH modality
    (random subset drawn with ``generator``); None = all rows. Mean over the anchors that have both a
    positive and a negative; 0 (with a gradient of 0) when there is none.
    """
    if form not in _FORMS:
        raise ValueError(f"form must be one of {_FORMS}, got {form!r}")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be a positive integer or None, got {max_rows}")
    if emb_a.shape[-1] != emb_b.shape[-1]:
        raise ValueError(f"embedding sizes differ: {emb_a.shape[-1]} (a) vs {emb_b.shape[-1]} (b)")
    rows_a, lab_a = _valid_rows(emb_a, labels_a, mask_a, "a")
    rows_b, lab_b = _valid_rows(emb_b, labels_b, mask_b, "b")
    rows_a, lab_a = _subsample(rows_a, lab_a, max_rows, generator)
    rows_b, lab_b = _subsample(rows_b, lab_b, max_rows, generator)

    work_dtype = torch.promote_types(torch.promote_types(emb_a.dtype, emb_b.dtype), torch.float32)
    x = torch.cat([rows_a.to(work_dtype), rows_b.to(work_dtype)])
    y = torch.cat([lab_a.long(), lab_b.long().to(lab_a.device)])
    n = x.shape[0]
    if n == 0:  # no valid row at all: an exact zero, still connected to the inputs
        return x.sum() * 0.0

    dist = _pairwise_distances(x)
    same = y.unsqueeze(1) == y.unsqueeze(0)
    is_pos = same & ~torch.eye(n, dtype=torch.bool, device=x.device)  # an anchor is not its own positive
    is_neg = ~same
    has_pos = is_pos.any(dim=1)
    has_neg = is_neg.any(dim=1)
    keep = has_pos & has_neg

    zero = torch.zeros((), dtype=dist.dtype, device=dist.device)
    inf = torch.full((), float("inf"), dtype=dist.dtype, device=dist.device)
    # Non-candidates are filled before the reduction, and anchors without a candidate are replaced by 0 before
    # any further arithmetic, so the infinite filler never reaches an operation (or a backward) as a value.
    d_pos = torch.where(has_pos, torch.where(is_pos, dist, zero).amax(dim=1), zero)
    d_neg = torch.where(has_neg, torch.where(is_neg, dist, inf).amin(dim=1), zero)
    diff = d_pos - d_neg
    if form == "hinge":
        term = F.relu(diff + margin)
    elif form == "softplus":
        term = F.softplus(diff)
    else:
        term = diff
    # A tensor count (no .item()); clamp makes "no anchor kept" give an exact, connected 0.
    return torch.where(keep, term, zero).sum() / keep.sum().clamp(min=1).to(term.dtype)


def labels_to_classes(
    y: Tensor, scheme: Literal["sign", "quantile"] = "sign", edges: Tensor | None = None
) -> Tensor:
    """Integer class ids (int64) from continuous labels, for ``crossmodal_triplet_loss``.

    ``y``: ``[B, T]`` (or ``[N]``, or any shape without a column dimension), ``[B, T, 1]`` (the trailing
    size-1 dimension is dropped) or ``[B, T, k]`` with several target columns (only a 3-D ``y`` has a column
    dimension). With k > 1 columns the per-column classes are combined into one id in mixed radix, column 0
    most significant: ``id = (c_0 * r_1 + c_1) * r_2 + c_2 ...`` with ``r_j`` the number of classes of column
    ``j``, so two steps share a class only if they share the class of every column.

    ``scheme="sign"``: ``y >= 0`` -> 1 (high), else 0 (low). ``scheme="quantile"``: bin index
    ``torch.bucketize(y, edges, right=True)`` in ``0 .. len(edges)``; ``edges`` (from ``quantile_edges``) is
    1-D (shared by all columns) or ``[k, n_bins - 1]`` (one row per column). ``right=True`` puts a value equal
    to an edge in the upper bin, so ``edges=[0]`` reproduces the sign scheme. Padded steps get some class
    (NaN -> 0 for sign); the loss masks them out.
    """
    if y.dim() == 3 and y.shape[-1] == 1:
        y = y.squeeze(-1)
    columns = list(y.unbind(-1)) if y.dim() == 3 else [y]
    if scheme == "sign":
        if edges is not None:
            raise ValueError("edges are only used by scheme='quantile'")
        per_column = [((col >= 0).long(), 2) for col in columns]
    elif scheme == "quantile":
        if edges is None:
            raise ValueError("scheme='quantile' needs edges (see quantile_edges)")
        if edges.dim() == 1:
            column_edges = [edges] * len(columns)
        elif edges.dim() == 2 and edges.shape[0] == len(columns):
            column_edges = list(edges.unbind(0))
        else:
            raise ValueError(
                f"edges must be [n_bins - 1] or [k, n_bins - 1] with k = {len(columns)} columns, "
                f"got shape {tuple(edges.shape)}"
            )
        if edges.shape[-1] > 1 and not bool((edges[..., 1:] >= edges[..., :-1]).all()):
            raise ValueError("edges must be sorted in increasing order")
        per_column = []
        for col, e in zip(columns, column_edges, strict=True):
            dtype = torch.promote_types(col.dtype if col.is_floating_point() else torch.float32, e.dtype)
            e = e.to(device=col.device, dtype=dtype).contiguous()
            per_column.append((torch.bucketize(col.to(dtype).contiguous(), e, right=True), e.numel() + 1))
    else:
        raise ValueError(f"scheme must be 'sign' or 'quantile', got {scheme!r}")
    ids = torch.zeros_like(per_column[0][0])
    for cls, radix in per_column:
        ids = ids * radix + cls
    return ids


def quantile_edges(y_train: np.ndarray | Tensor, n_bins: int) -> Tensor:
    """Inner bin edges ``[n_bins - 1]`` (float32): the quantiles of the training labels at 1/n .. (n-1)/n.

    All values of ``y_train`` are pooled (flattened); non-finite values (e.g. NaN padding) are ignored. For
    per-column edges of a multi-target ``y`` call this once per column and ``torch.stack`` the results.
    """
    if n_bins < 2:
        raise ValueError(f"n_bins must be at least 2, got {n_bins}")
    if isinstance(y_train, Tensor):
        arr = y_train.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        arr = np.asarray(y_train, dtype=np.float64)
    arr = arr.ravel()
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        raise ValueError("y_train holds no finite label")
    levels = np.arange(1, n_bins) / n_bins
    return torch.as_tensor(np.quantile(arr, levels), dtype=torch.float32)
