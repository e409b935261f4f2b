"""Flag Aggregator (Almasi et al., ICLR 2024): Byzantine-robust gradient aggregation via the flag median.

Pure tensors; the DDP communication hook lives in :mod:`litmix.callbacks.flag_aggregation`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from litmix.registry import register
from litmix.validation import check_float, check_int, check_type

__all__ = ["flag_aggregate"]

_PAPER = (
    "Flag Aggregator: Scalable Distributed Training under Failures and Augmented Losses using Convex Optimization "
    "(https://arxiv.org/abs/2302.05865)"
)


def _psd_sqrt(w: Tensor) -> Tensor:
    """A symmetric square root ``L`` with ``L @ L.T == w`` for a symmetric PSD ``w``."""
    vals, vecs = torch.linalg.eigh(w)
    return vecs * vals.clamp_min(0).sqrt()


def _flag_subspace(gram: Tensor, weights: Tensor, pairs: Tensor | None, pair_weights: Tensor | None, m: int) -> Tensor:
    """Coefficients ``B`` (p x m) of the weighted flag mean ``Y = X.T @ B`` of the unit gradients ``X``.

    The weighted flag mean maximizes ``sum_k w_k ||Y.T a_k||^2`` over orthonormal ``Y``; every ``a_k`` (a
    gradient or a difference of two) is ``C_k @ X``, so ``sum_k w_k a_k a_k.T = X.T @ W @ X`` with the p x p
    matrix ``W = C.T diag(w) C``. With ``W = L L.T`` the eigenvectors of ``L.T @ gram @ L`` give ``Y`` without
    forming any n x n or n x m matrix.
    """
    w_mat = torch.diag(weights)
    if pairs is not None and pair_weights is not None:
        w_mat = w_mat + pairs.T @ (pair_weights[:, None] * pairs)
    root = _psd_sqrt(w_mat)
    vals, vecs = torch.linalg.eigh(root.T @ gram @ root)  # ascending
    vals, vecs = vals.flip(0)[:m], vecs.flip(1)[:, :m]
    keep = vals > vals[0].clamp_min(0) * 1e-10
    inv = torch.where(keep, vals.clamp_min(torch.finfo(vals.dtype).tiny).rsqrt(), torch.zeros_like(vals))
    return (root @ vecs) * inv  # Y = X.T @ B has orthonormal columns (zero columns where rank < m)


def _flag_aggregate(
    gradients: Tensor, subspace_dim: int, iterations: int, lam: float, eps: float, rescale: bool
) -> tuple[Tensor, Tensor]:
    """:func:`flag_aggregate` without argument checks; also returns each worker's explained share."""
    p = gradients.shape[0]
    # two passes over the (p, n) gradients: the Gram matrix (in their dtype) and the final combination
    raw = (gradients @ gradients.T).to(torch.float64)
    device = raw.device
    norms = torch.diagonal(raw).clamp_min(0).sqrt()
    inv_norms = torch.where(norms > 0, 1.0 / norms.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(norms))
    gram = raw * inv_norms[:, None] * inv_norms[None, :]  # unit-gradient Gram matrix K = X X.T
    m = min(subspace_dim, p)
    pairs = pair_weights = pair_sq = None
    if lam > 0 and p > 1:
        i, j = torch.triu_indices(p, p, offset=1)
        pairs = torch.zeros(i.numel(), p, dtype=torch.float64, device=device)
        arange = torch.arange(i.numel(), device=device)
        pairs[arange, i.to(device)] = 1.0
        pairs[arange, j.to(device)] = -1.0
        pair_sq = (pairs @ gram * pairs).sum(1).clamp_min(0)  # ||x_i - x_j||^2
        # sum over ordered pairs i != j, scaled lam / (p (p - 1)): each unordered pair counts twice
        pair_weights = torch.full_like(pair_sq, 2 * lam / (p * (p - 1)))
    weights = torch.ones(p, dtype=torch.float64, device=device)  # first iterate: the flag mean
    coef = _flag_subspace(gram, weights, pairs, pair_weights, m)
    for _ in range(iterations):
        proj = coef.T @ gram  # Y.T x_i, column i (m x p)
        sin_sq = (torch.diagonal(gram) - (proj * proj).sum(0)).clamp_min(0)
        weights = (sin_sq + eps).rsqrt()  # IRLS weight of sqrt(sin^2): 1 / sqrt(sin^2 + eps)
        if pairs is not None and pair_sq is not None:
            pproj = proj @ pairs.T
            residual = (pair_sq - (pproj * pproj).sum(0)).clamp_min(0)
            pair_weights = (residual + eps).rsqrt() * (2 * lam / (p * (p - 1)))
        coef = _flag_subspace(gram, weights, pairs, pair_weights, m)
    proj = coef.T @ gram
    explained = (proj * proj).sum(0)  # ||Y.T x_i||^2 in [0, 1]
    combo = coef @ proj.sum(1) / p  # (1/p) sum_i Y Y.T x_i = X.T @ combo
    scale = norms.median() if rescale else torch.ones((), dtype=torch.float64, device=device)
    mix = (combo * inv_norms * scale).to(gradients.dtype)
    return mix @ gradients, explained.to(gradients.dtype)


@register("function", "optimization", paper=_PAPER, module="litmix.functional.flag_aggregator")
def flag_aggregate(
    gradients: Tensor,
    subspace_dim: int = 1,
    iterations: int = 4,
    lam: float = 0.0,
    eps: float = 1e-8,
    rescale: bool = True,
) -> Tensor:
    """Aggregate ``p`` workers' gradients with the Flag Aggregator (flag median of their directions).

    Almasi et al., "Flag Aggregator: Scalable Distributed Training under Failures and Augmented Losses using
    Convex Optimization", ICLR 2024 (https://arxiv.org/abs/2302.05865). The gradients are normalized to unit
    vectors ``x_i`` (so a worker's scale cannot dominate) and an ``m``-dimensional subspace ``Y`` is fitted by
    IRLS to the flag-median objective ``sum_i sqrt(1 - ||Y.T x_i||^2)`` (the sine of the angle between ``x_i`` and
    ``Y``: an outlier costs its distance, not its squared distance) plus, for ``lam > 0``, the paper's pairwise
    term ``lam / (p (p-1)) * sum_{i != j} sqrt(||d_ij||^2 - ||Y.T d_ij||^2)`` over differences ``d_ij = x_i - x_j``.
    Every IRLS step is a weighted flag mean (top-``m`` eigenvectors of ``sum_k w_k a_k a_k.T``) with
    ``w_k = 1 / sqrt(residual_k + eps)``, computed on the ``p x p`` Gram matrix, so memory stays
    ``O(p n + p^2)``: no ``n x n`` or SVD of the ``n x p`` matrix is formed. The first iterate is the flag mean.

    The aggregate is the mean projection ``(1/p) sum_i Y Y.T x_i``, as in the authors' code; with
    ``rescale=True`` it is multiplied by the median gradient norm, so identical gradients aggregate to
    themselves and the step size matches plain averaging (the authors' code leaves the unit scale to the
    learning rate: ``rescale=False``, up to the factor ``p / m``). A worker whose direction lies outside the
    subspace contributes (almost) nothing; a worker sending a (scaled) negated gradient lies on the same line
    and only shrinks the step along the honest direction.

    Args:
        gradients: ``(p, n)`` tensor, one flattened gradient per worker (``p >= 1``), floating point.
        subspace_dim: ``m``, the subspace dimension, >= 1 (clipped to ``p``; the paper's default is 1).
        iterations: IRLS iterations after the flag-mean start, >= 0 (0 gives the flag mean).
        lam: weight of the pairwise term, a finite number >= 0 (0: the plain flag median).
        eps: IRLS smoothing of the weights, a finite number > 0.
        rescale: multiply the unit-scale aggregate by the median of the workers' gradient norms.

    Returns:
        The aggregated gradient, shape ``(n,)``, in the dtype of ``gradients``.

    Raises:
        TypeError: for a ``gradients`` that is not a floating-point tensor, or a wrongly typed option.
        ValueError: for ``gradients`` not of shape ``(p, n)`` with ``p >= 1``, non-finite gradients, or an option
            out of range, naming it.

    Example:
        >>> g = torch.tensor([[1.0, 0.0, 0.1], [1.0, 0.1, 0.0], [0.9, 0.0, 0.0], [0.0, -50.0, 50.0]])
        >>> g.mean(0)  # one corrupted worker dominates the average
        tensor([  0.7250, -12.4750,  12.5250])
        >>> flag_aggregate(g)  # the flag median keeps the honest direction at the honest scale
        tensor([0.7516, 0.0171, 0.0171])
        >>> same = torch.tensor([[3.0, 4.0]] * 3)
        >>> torch.allclose(flag_aggregate(same), same[0])
        True
    """
    owner = "flag_aggregate"
    check_type(owner, "gradients", gradients, Tensor)
    if not gradients.is_floating_point():
        raise TypeError(f"{owner}(gradients=...): gradients must be a floating-point tensor, got {gradients.dtype}")
    if gradients.dim() != 2 or gradients.shape[0] < 1:
        raise ValueError(
            f"{owner}(gradients=...): gradients must have shape (p, n) with p >= 1, got {tuple(gradients.shape)}"
        )
    subspace_dim = check_int(owner, "subspace_dim", subspace_dim, low=1)
    iterations = check_int(owner, "iterations", iterations, low=0)
    lam = check_float(owner, "lam", lam, low=0.0)
    eps = check_float(owner, "eps", eps, low=0.0, low_open=True)
    if not isinstance(rescale, bool):
        raise TypeError(f"{owner}(rescale={rescale!r}): rescale must be a bool, got {type(rescale).__name__}")
    if not bool(torch.isfinite(gradients).all()):
        raise ValueError(f"{owner}(gradients=...): gradients must be finite")
    return _flag_aggregate(gradients, subspace_dim, iterations, lam, eps, rescale)[0]
