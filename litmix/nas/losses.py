"""Ranking losses as ``nn.Module``s for training architecture-performance predictors."""

from __future__ import annotations

from torch import Tensor, nn

from litmix.functional.rank_losses import diff_kendall_tau

__all__ = ["DiffKendallLoss"]


class DiffKendallLoss(nn.Module):
    """Negative differentiable Kendall τ: ``loss = −τ_α(pred, target)`` (paper form, range [−1, 1]).

    From "DiffKendall: A Novel Approach for Few-Shot Learning with Differentiable Kendall's Rank Correlation"
    (Zheng et al., https://arxiv.org/abs/2307.15317), as used by ParZC to train proxy predictors:
    ``τ_α(x, y) = (1/N₀) Σ_{i<j} tanh(α(x_i − x_j))·tanh(α(y_i − y_j))`` with ``N₀ = N(N−1)/2``. PicoNAS'
    implementation reports twice this value (ordered pairs); see :func:`litmix.functional.rank_losses.diff_kendall_tau`.

    Args:
        alpha: steepness (> 0). Large α approaches the true Kendall τ but gives vanishing gradients; ParZC-style
            training uses α ≈ 0.5–2 on z-scored values.
        standardize: z-score predictions and targets inside the loss (recommended, α is scale dependent).

    Raises:
        ValueError: for ``alpha <= 0``.

    Example:
        >>> import torch
        >>> loss = DiffKendallLoss(alpha=500.0)
        >>> round(float(loss(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([30.0, 10.0, 20.0]))), 4)
        -1.0
    """

    def __init__(self, alpha: float = 1.0, standardize: bool = True) -> None:
        super().__init__()
        if not isinstance(alpha, int | float) or not alpha > 0:
            raise ValueError(f"DiffKendallLoss(alpha={alpha!r}): alpha must be a number > 0")
        self.alpha = float(alpha)
        self.standardize = bool(standardize)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """``−τ_α(pred, target)`` (a scalar)."""
        return -diff_kendall_tau(pred, target, alpha=self.alpha, standardize=self.standardize)

    def extra_repr(self) -> str:
        """Show α."""
        return f"alpha={self.alpha}, standardize={self.standardize}"
