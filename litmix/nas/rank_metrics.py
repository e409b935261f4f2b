"""Rank-correlation and top-K metrics for judging architecture scores against ground truth.

Kendall τ (tau-b) and Spearman ρ come from torchmetrics (``kendall_rank_corrcoef``, ``spearman_corrcoef``);
precision@K and best-rank@K follow NASLib's ``naslib/utils/zerocost.py`` / RoBoT's ``search_nb201.py``:

* ``precision_at_k``: ``|top-K by score ∩ top-K by truth| / K`` (RoBoT's "precision@T");
* ``best_rank_at_k``: the best (smallest, 1-based) ground-truth rank among the top-K architectures by score,
  i.e. how good the best architecture you would find is if you trained the proxy's K favourites ("BR@K").

Every function takes two 1-D sequences (scores, truth), "higher is better" for both, and drops positions where
either value is not finite (a proxy's NaN must not silently turn into a rank).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.regression import kendall_rank_corrcoef, pearson_corrcoef, spearman_corrcoef

from litmix.registry import register
from litmix.validation import check_int

__all__ = ["best_rank_at_k", "kendall_tau", "pearson_r", "precision_at_k", "rank_report", "spearman_rho"]

ArrayLike = Sequence[float] | Tensor
PROTOCOL = "Zero-Cost Proxies for Lightweight NAS (https://arxiv.org/abs/2101.08134), evaluation protocol"


def _pair(scores: ArrayLike, truth: ArrayLike) -> tuple[Tensor, Tensor]:
    x = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(truth, dtype=torch.float64).flatten()
    if x.shape != y.shape:
        raise ValueError(f"scores and truth must have the same length, got {x.numel()} and {y.numel()}")
    keep = torch.isfinite(x) & torch.isfinite(y)
    return x[keep], y[keep]


def _correlation(scores: ArrayLike, truth: ArrayLike, corrcoef: Callable[[Tensor, Tensor], Any]) -> float:
    """``corrcoef`` of the finite pairs; NaN for fewer than 2."""
    x, y = _pair(scores, truth)
    if x.numel() < 2:
        return math.nan
    return float(corrcoef(x, y))


@register("function", "proxy", paper=PROTOCOL, module="litmix.nas")
def kendall_tau(scores: ArrayLike, truth: ArrayLike) -> float:
    """Kendall τ-b (ties handled as scipy's default) via torchmetrics; NaN for fewer than 2 finite pairs.

    Raises:
        ValueError: if the inputs differ in length.

    Example:
        >>> round(kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]), 4)
        0.6667
    """
    return _correlation(scores, truth, kendall_rank_corrcoef)


@register("function", "proxy", paper=PROTOCOL, module="litmix.nas")
def spearman_rho(scores: ArrayLike, truth: ArrayLike) -> float:
    """Spearman ρ (average ranks for ties) via torchmetrics; NaN for fewer than 2 finite pairs.

    Raises:
        ValueError: if the inputs differ in length.

    Example:
        >>> round(spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]), 3)
        0.8
    """
    return _correlation(scores, truth, spearman_corrcoef)


@register("function", "proxy", paper=PROTOCOL, module="litmix.nas")
def pearson_r(scores: ArrayLike, truth: ArrayLike) -> float:
    """Pearson r via torchmetrics (signed; NASLib reports ``abs``); NaN for fewer than 2 finite pairs.

    Raises:
        ValueError: if the inputs differ in length.

    Example:
        >>> round(pearson_r([1, 2, 3], [2, 4, 6]), 6)
        1.0
    """
    return _correlation(scores, truth, pearson_corrcoef)


def _check_k(owner: str, k: int, n: int) -> int:
    return min(check_int(owner, "k", k, low=1), n)


@register("function", "proxy", paper=PROTOCOL, module="litmix.nas")
def precision_at_k(scores: ArrayLike, truth: ArrayLike, k: int) -> float:
    """Fraction of the top-``k`` architectures by score that are also in the top-``k`` by truth.

    Ties are broken by position (stable sort), so a constant score picks the first ``k`` items.

    Raises:
        TypeError: for a non-integer ``k``.
        ValueError: for ``k < 1`` or inputs of different length.

    Example:
        >>> precision_at_k([0.9, 0.8, 0.1, 0.2], [10, 1, 9, 2], k=2)
        0.5
    """
    x, y = _pair(scores, truth)
    k = _check_k("precision_at_k", k, x.numel())
    if k == 0:
        return math.nan
    top_x = set(torch.argsort(-x, stable=True)[:k].tolist())
    top_y = set(torch.argsort(-y, stable=True)[:k].tolist())
    return len(top_x & top_y) / k


@register("function", "proxy", paper=PROTOCOL, module="litmix.nas")
def best_rank_at_k(scores: ArrayLike, truth: ArrayLike, k: int) -> int:
    """Best 1-based ground-truth rank among the top-``k`` architectures by score (1 = the true best was picked).

    Tied truths share the best (smallest) rank of their group.

    Raises:
        TypeError: for a non-integer ``k``.
        ValueError: for ``k < 1`` or inputs of different length.

    Example:
        >>> best_rank_at_k([0.9, 0.8, 0.1, 0.2], [10, 1, 9, 2], k=1)
        1
        >>> best_rank_at_k([0.1, 0.8, 0.9, 0.2], [10, 1, 9, 2], k=2)
        2
    """
    x, y = _pair(scores, truth)
    k = _check_k("best_rank_at_k", k, x.numel())
    if k == 0:
        return 0
    picked = torch.argsort(-x, stable=True)[:k]
    best_truth = y[picked].max()
    return int((y > best_truth).sum()) + 1


@register("function", "proxy", paper=PROTOCOL, module="litmix.nas")
def rank_report(scores: ArrayLike, truth: ArrayLike, ks: Sequence[int] = (10, 50)) -> dict[str, float]:
    """All metrics at once: ``kendall``, ``spearman``, ``pearson``, ``p@K`` and ``br@K`` for each K, and ``n``.

    Raises:
        ValueError: for inputs of different length or a bad K.

    Example:
        >>> r = rank_report([0.9, 0.8, 0.1, 0.2], [10, 1, 9, 2], ks=[1])
        >>> r["p@1"], r["br@1"], r["n"]
        (1.0, 1.0, 4.0)
    """
    x, y = _pair(scores, truth)
    out = {"kendall": kendall_tau(x, y), "spearman": spearman_rho(x, y), "pearson": pearson_r(x, y)}
    for k in ks:
        out[f"p@{k}"] = precision_at_k(x, y, k)
        out[f"br@{k}"] = float(best_rank_at_k(x, y, k))
    out["n"] = float(x.numel())
    return out
