"""Ranking losses for training architecture-performance predictors (beside :mod:`litmix.nas.rank_metrics`).

Differentiable ranking objectives: DiffKendall (differentiable Kendall τ) and the pairwise logistic loss.

* :func:`diff_kendall_tau` (and :class:`DiffKendallLoss`, its negative as an ``nn.Module``) is the paper form
  of "DiffKendall" (Zheng et al., "DiffKendall: A Novel Approach for Few-Shot Learning with Differentiable
  Kendall's Rank Correlation", https://arxiv.org/abs/2307.15317), used by ParZC (Dong et al., "ParZC:
  Parametric Zero-Cost Proxies for Efficient NAS", https://arxiv.org/abs/2402.02105) to train proxy predictors:
  ``τ_α(x, y) = (1/N₀) Σ_{i<j} tanh(α(x_i − x_j))·tanh(α(y_i − y_j))``, ``N₀ = N(N−1)/2``. It tends to
  Kendall's τ-a as α → ∞. PicoNAS' ``diffkd.py`` sums over *ordered* pairs and uses ``σ(a) − σ(−a)``
  (= ``tanh(a/2)``), giving twice this value; we keep the paper's normalisation (range [−1, 1]).
  α is scale dependent: z-score or rank-transform the inputs (``standardize=True``).
* :func:`pairwise_rank_loss`: ParZC / PicoNAS pairwise loss, mean over i ≠ j of
  ``log(1 + exp(−(ŷ_i − ŷ_j)·sign(y_i − y_j)))`` (pairs with tied targets are skipped).

Both are O(N²) in memory; fine for N up to a few thousand.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from litmix.registry import register
from litmix.validation import check_bool, check_float

__all__ = ["DiffKendallLoss", "diff_kendall_tau", "pairwise_rank_loss", "zscore"]

DIFFKENDALL_PAPER = (
    "DiffKendall: A Novel Approach for Few-Shot Learning with Differentiable Kendall's Rank Correlation "
    "(https://arxiv.org/abs/2307.15317)"
)
PARZC_PAPER = "ParZC: Parametric Zero-Cost Proxies for Efficient NAS (https://arxiv.org/abs/2402.02105)"


def zscore(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``(x − mean) / std`` (population std), differentiable; a constant vector maps to zeros.

    Example:
        >>> zscore(torch.tensor([1.0, 2.0, 3.0]))
        tensor([-1.2247,  0.0000,  1.2247])
    """
    x = x.flatten()
    return (x - x.mean()) / x.std(unbiased=False).clamp_min(eps)


@register("function", "proxy", paper=DIFFKENDALL_PAPER, module="litmix.nas")
def diff_kendall_tau(x: Tensor, y: Tensor, alpha: float = 1.0, standardize: bool = True) -> Tensor:
    """Differentiable Kendall τ_α of two score vectors (paper form, range [−1, 1]).

    Args:
        x: predictions, shape ``(N,)`` (any shape is flattened).
        y: targets, same number of elements.
        alpha: steepness (> 0); τ_α → Kendall τ-a as α → ∞ (on z-scored data α ≈ 500 is within 0.01).
        standardize: z-score ``x`` and ``y`` first, so α does not depend on their scale.

    Returns:
        A scalar tensor (differentiable in ``x`` and ``y``); 0 for ``N < 2``.

    Raises:
        ValueError: for ``alpha <= 0`` or inputs of different size.

    Example:
        >>> x = torch.tensor([0.1, 0.4, 0.2, 0.9])
        >>> y = torch.tensor([1.0, 3.0, 2.0, 4.0])
        >>> round(float(diff_kendall_tau(x, y, alpha=500.0)), 4)  # all 6 pairs concordant
        1.0
        >>> round(float(diff_kendall_tau(x, -y, alpha=500.0)), 4)
        -1.0
    """
    check_float("diff_kendall_tau", "alpha", alpha, low=0.0, low_open=True)
    x = x.flatten()
    y = y.flatten().to(x.dtype)
    if x.numel() != y.numel():
        raise ValueError(f"diff_kendall_tau: x and y must have the same size, got {x.numel()} and {y.numel()}")
    n = x.numel()
    if n < 2:
        return x.sum() * 0.0
    if standardize:
        x, y = zscore(x), zscore(y)
    dx = torch.tanh(alpha * (x.unsqueeze(1) - x.unsqueeze(0)))
    dy = torch.tanh(alpha * (y.unsqueeze(1) - y.unsqueeze(0)))
    # the full matrix counts every unordered pair twice and the diagonal is 0
    return (dx * dy).sum() / (n * (n - 1))


@register("function", "proxy", paper=PARZC_PAPER, module="litmix.nas")
def pairwise_rank_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Pairwise logistic ranking loss: mean over ordered pairs with ``y_i ≠ y_j`` of ``softplus(−Δŷ·sign(Δy))``.

    Args:
        pred: predicted scores ``(N,)``.
        target: ground truth ``(N,)``.

    Returns:
        A scalar tensor; 0 when all targets tie.

    Raises:
        ValueError: for inputs of different size.

    Example:
        >>> y = torch.tensor([1.0, 2.0, 3.0])
        >>> bool(pairwise_rank_loss(10 * y, y) < pairwise_rank_loss(-10 * y, y))
        True
    """
    pred, target = pred.flatten(), target.flatten().to(pred.dtype)
    if pred.numel() != target.numel():
        raise ValueError(f"pairwise_rank_loss: sizes differ, {pred.numel()} and {target.numel()}")
    sign = torch.sign(target.unsqueeze(0) - target.unsqueeze(1))
    diff = pred.unsqueeze(0) - pred.unsqueeze(1)
    mask = sign != 0
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return torch.nn.functional.softplus(-diff * sign)[mask].mean()


@register("loss", "proxy", paper=DIFFKENDALL_PAPER, module="litmix.nas")
class DiffKendallLoss(nn.Module):
    """Negative differentiable Kendall τ: ``loss = −τ_α(pred, target)`` (paper form, range [−1, 1]).

    From "DiffKendall: A Novel Approach for Few-Shot Learning with Differentiable Kendall's Rank Correlation"
    (Zheng et al., https://arxiv.org/abs/2307.15317), as used by ParZC to train proxy predictors:
    ``τ_α(x, y) = (1/N₀) Σ_{i<j} tanh(α(x_i − x_j))·tanh(α(y_i − y_j))`` with ``N₀ = N(N−1)/2``. PicoNAS'
    implementation reports twice this value (ordered pairs); see :func:`diff_kendall_tau`.

    Args:
        alpha: steepness (> 0). Large α approaches the true Kendall τ but gives vanishing gradients; ParZC-style
            training uses α ≈ 0.5–2 on z-scored values.
        standardize: z-score predictions and targets inside the loss (recommended, α is scale dependent).

    Raises:
        TypeError: for a non-number ``alpha`` or a non-bool ``standardize``.
        ValueError: for ``alpha <= 0`` or a non-finite ``alpha``.

    Example:
        >>> loss = DiffKendallLoss(alpha=500.0)
        >>> round(float(loss(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([30.0, 10.0, 20.0]))), 4)
        -1.0
    """

    def __init__(self, alpha: float = 1.0, standardize: bool = True) -> None:
        super().__init__()
        self.alpha = check_float("DiffKendallLoss", "alpha", alpha, low=0.0, low_open=True)
        self.standardize = check_bool("DiffKendallLoss", "standardize", standardize)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """``−τ_α(pred, target)`` (a scalar)."""
        return -diff_kendall_tau(pred, target, alpha=self.alpha, standardize=self.standardize)

    def extra_repr(self) -> str:
        """Show α."""
        return f"alpha={self.alpha}, standardize={self.standardize}"

    @classmethod
    def example(cls) -> DiffKendallLoss:
        """The steep instance of the class example.

        Example:
            >>> DiffKendallLoss.example()
            DiffKendallLoss(alpha=500.0, standardize=True)
        """
        return cls(alpha=500.0)
