"""Deep Regression Unlearning on plain tensors: attention maps, the blindspot loss, Gaussian amnesiac targets.

Tarun et al., "Deep Regression Unlearning", ICML 2023 (https://arxiv.org/abs/2210.08196); reference code
ayushkumartarun/deep-regression-unlearning (``unlearn.py``: ``attention``, ``attention_diff``, ``forget_loss``).

- **Blindspot unlearning**: a *blindspot* model ``M_b`` trained briefly on the retain data only (it never saw
  the forget set) pulls the unlearned model ``M`` on forget inputs: ``L1(M(x_f), M_b(x_f)) + beta * sum_l
  mean((A(a_l^M(x_f)) - A(a_l^b(x_f)))^2)`` with ``A`` the attention map of a layer's activations; the retain
  inputs keep their L1 label loss. The two terms are weighted by the forget share of the data.
- **Gaussian amnesiac** baseline: the forget targets are replaced by draws from a Gaussian with the mean and
  standard deviation of the training targets, and the model is fine-tuned on retain plus noisy forget data.

The LightningModule shell is :class:`litmix.plugins.RegressionUnlearningModule`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from litmix.registry import register

__all__ = ["attention_distance", "attention_map", "blindspot_loss", "gaussian_amnesiac_targets", "regression_loss"]

_PAPER = "Deep Regression Unlearning (https://arxiv.org/abs/2210.08196)"


def attention_map(activations: Tensor) -> Tensor:
    """Attention map of a layer's activations, ``[B, *]`` -> ``[B, K]``, each row of unit L2 norm.

    Convolutional ``[B, C, H, W]`` (any ``ndim > 2``): ``normalize(mean_c(a^2).flatten())`` (attention transfer,
    as the reference code); dense ``[B, D]``: ``normalize(a^2)`` (a channel mean would collapse to one number).

    Raises:
        ValueError: for activations with fewer than 2 dimensions.

    Example:
        >>> attention_map(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
        tensor([[0.4903, 0.8716],
                [0.0000, 1.0000]])
    """
    if activations.dim() < 2:
        raise ValueError(
            f"attention_map: activations must be [B, ...] with 2 or more dims, got {tuple(activations.shape)}"
        )
    squared = activations.float().pow(2)
    if squared.dim() > 2:
        squared = squared.mean(1)
    return F.normalize(squared.reshape(squared.shape[0], -1), dim=1)


def attention_distance(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared difference of the attention maps of two activations of one layer (a scalar).

    Raises:
        ValueError: for activations of different shapes.

    Example:
        >>> a = torch.tensor([[3.0, 4.0]])
        >>> float(attention_distance(a, a)), round(float(attention_distance(a, torch.tensor([[4.0, 3.0]]))), 4)
        (0.0, 0.1454)
    """
    if a.shape != b.shape:
        raise ValueError(f"attention_distance: activation shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (attention_map(a) - attention_map(b)).pow(2).mean()


def regression_loss(preds: Tensor, targets: Tensor, loss: Literal["l1", "mse"] = "l1") -> Tensor:
    """Mean L1 (the paper's loss) or squared error of flattened predictions and targets.

    Raises:
        ValueError: for an unknown ``loss`` or different numbers of predictions and targets.

    Example:
        >>> regression_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([2.0, 2.0])), regression_loss(
        ...     torch.tensor([1.0, 3.0]), torch.tensor([2.0, 5.0]), "mse")
        (tensor(1.), tensor(2.5000))
    """
    if loss not in ("l1", "mse"):
        raise ValueError(f"regression_loss(loss={loss!r}): loss must be 'l1' or 'mse'")
    p, t = preds.reshape(-1).float(), targets.reshape(-1).float()
    if p.numel() != t.numel():
        raise ValueError(f"regression_loss: {p.numel()} predictions but {t.numel()} targets")
    return F.l1_loss(p, t) if loss == "l1" else F.mse_loss(p, t)


@register("loss", "unlearning", paper=_PAPER)
def blindspot_loss(
    forget_preds: Tensor,
    blindspot_preds: Tensor,
    forget_activations: Sequence[Tensor],
    blindspot_activations: Sequence[Tensor],
    retain_preds: Tensor | None = None,
    retain_targets: Tensor | None = None,
    forget_share: float = 0.5,
    beta: float = 50.0,
    loss: Literal["l1", "mse"] = "l1",
) -> Tensor:
    """Blindspot unlearning loss of Deep Regression Unlearning (Tarun et al., https://arxiv.org/abs/2210.08196).

    ``forget_share * [L(M(x_f), M_b(x_f)) + beta * sum_l attention_distance(a_l^M(x_f), a_l^b(x_f))]
    + (1 - forget_share) * L(M(x_r), y_r)``, ``L`` the mean L1 (or squared) error; the blindspot model's outputs
    and activations are constants (pass them detached). Without retain predictions only the forget term is
    returned (times ``forget_share``).

    Args:
        forget_preds: the unlearned model's predictions on forget inputs.
        blindspot_preds: the blindspot model's predictions on the same inputs.
        forget_activations: the unlearned model's activations of the attracted layers on forget inputs.
        blindspot_activations: the blindspot model's activations of the same layers.
        retain_preds: the unlearned model's predictions on retain inputs, or None.
        retain_targets: their targets (required with ``retain_preds``).
        forget_share: weight of the forget term in ``[0, 1]`` (the paper: the forget share of the batch).
        beta: weight of the activation attraction (the reference code's ``AT_beta``, 50), finite and >= 0.
        loss: ``"l1"`` (the paper) or ``"mse"``.

    Raises:
        ValueError: ``forget_share`` outside ``[0, 1]``, a negative or non-finite ``beta``, different numbers of
            activation tensors, ``retain_preds`` without ``retain_targets``, or mismatched shapes.

    Example:
        >>> f, b = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
        >>> acts = [torch.tensor([[1.0, 0.0], [0.0, 1.0]])]
        >>> blindspot_loss(f, b, acts, acts, torch.tensor([1.0]), torch.tensor([3.0]), forget_share=0.25)
        tensor(1.8750)
    """
    if not (0.0 <= forget_share <= 1.0):
        raise ValueError(f"blindspot_loss(forget_share={forget_share}): forget_share must be in [0, 1]")
    if not (beta >= 0.0 and math.isfinite(beta)):
        raise ValueError(f"blindspot_loss(beta={beta}): beta must be a finite number >= 0")
    if len(forget_activations) != len(blindspot_activations):
        raise ValueError(
            f"blindspot_loss: {len(forget_activations)} forget activations but {len(blindspot_activations)} "
            "blindspot activations; give one per attracted layer for both models"
        )
    forget_term = regression_loss(forget_preds, blindspot_preds, loss)
    if beta > 0:
        for mine, blind in zip(forget_activations, blindspot_activations, strict=True):
            forget_term = forget_term + beta * attention_distance(mine, blind)
    total = forget_share * forget_term
    if retain_preds is not None:
        if retain_targets is None:
            raise ValueError("blindspot_loss: retain_preds were given without retain_targets")
        total = total + (1.0 - forget_share) * regression_loss(retain_preds, retain_targets, loss)
    return total


@register("function", "unlearning", paper=_PAPER)
def gaussian_amnesiac_targets(index: Tensor, mean: float, std: float, seed: int = 0) -> Tensor:
    """Gaussian amnesiac targets of forget items: ``N(mean, std^2)`` draws, a fixed function of ``(seed, index)``.

    The baseline of Deep Regression Unlearning (https://arxiv.org/abs/2210.08196) replaces every forget target by
    a draw from a Gaussian with the training targets' mean and standard deviation. Each item's draw depends only
    on ``seed`` and its index, so it is the same in every epoch, on every DDP rank and after a resume.

    Args:
        index: integer forget indices ``[B]``.
        mean: mean of the training targets (finite).
        std: their standard deviation (finite, >= 0).
        seed: seed of the draws (>= 0).

    Raises:
        ValueError: a non-finite ``mean`` or ``std``, a negative ``std`` or ``seed``, or a non-integer ``index``.

    Example:
        >>> a = gaussian_amnesiac_targets(torch.tensor([0, 1, 2]), mean=10.0, std=2.0, seed=0)
        >>> b = gaussian_amnesiac_targets(torch.tensor([2, 0]), mean=10.0, std=2.0, seed=0)
        >>> torch.equal(a[[2, 0]], b), a.dtype
        (True, torch.float32)
    """
    if not (math.isfinite(mean) and math.isfinite(std) and std >= 0):
        raise ValueError(f"gaussian_amnesiac_targets(mean={mean}, std={std}): mean and std must be finite, std >= 0")
    if seed < 0:
        raise ValueError(f"gaussian_amnesiac_targets(seed={seed}): seed must be >= 0")
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ValueError(f"gaussian_amnesiac_targets: index must hold integers, got {index.dtype}")
    flat = index.reshape(-1).long().cpu()
    size = int(flat.max()) + 1 if flat.numel() else 0
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(size, generator=gen, dtype=torch.float64)
    return (mean + std * noise[flat]).float().reshape(index.shape).to(index.device)
