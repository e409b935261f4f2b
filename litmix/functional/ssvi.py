"""Pure-tensor core of Sparse Subspace Variational Inference (SSVI): KL, removal/addition scores, support update.

Paper: "Training Bayesian Neural Networks with Sparse Subspace Variational Inference", Li, Miao, Qiu and Zhang,
ICLR 2024 (https://arxiv.org/abs/2402.11025).

A mean-field Gaussian posterior ``q(theta_i) = N(mu_i, sigma_i^2)`` lives on a fixed-size active set (the support,
a bool mask ``True`` = active); inactive coordinates are exactly 0 (``mu = 0, sigma = 0``). Training alternates ELBO
steps on ``(mu, sigma)`` over the support with support updates that remove the lowest-scored active coordinates
and add as many inactive ones. The Lightning shell is :class:`litmix.callbacks.SSVI`; the layer is
:class:`litmix.layers.SparseVariationalLinear`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from litmix.functional.sparsity import prune_and_grow
from litmix.registry import register

__all__ = [
    "ADDITION_CRITERIA",
    "PAPER",
    "REMOVAL_CRITERIA",
    "addition_scores",
    "folded_normal_moments",
    "gaussian_kl",
    "inverse_softplus",
    "removal_scores",
    "ssvi_support_update",
]

PAPER = (
    "Training Bayesian Neural Networks with Sparse Subspace Variational Inference (https://arxiv.org/abs/2402.11025)"
)

Removal = Literal["snr_abs", "snr", "mean", "abs_mean"]
Addition = Literal["gradient", "random"]
#: Removal criteria: ``"snr_abs"`` (signal-to-noise ratio of ``|theta|``, the paper's default ``SNR_mean_abs``),
#: ``"snr"`` (``|mu| / sigma``), ``"mean"`` (``|mu|``), ``"abs_mean"`` (``E|theta|``, the paper's ``E_mean_abs``).
REMOVAL_CRITERIA: tuple[str, ...] = ("snr_abs", "snr", "mean", "abs_mean")
#: Addition criteria: ``"gradient"`` (``|dL/dmu|``, dense) or ``"random"`` (uniform over the inactive coordinates).
ADDITION_CRITERIA: tuple[str, ...] = ("gradient", "random")

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@register("function", "sparsity", paper=PAPER, module="litmix.functional.ssvi")
def inverse_softplus(sigma: float | Tensor) -> Tensor:
    """``rho`` with ``softplus(rho) == sigma`` (``sigma > 0``): the layers store ``sigma = softplus(rho)``.

    Raises:
        ValueError: for a ``sigma`` that is not > 0 everywhere.

    Example:
        >>> rho = inverse_softplus(0.01)
        >>> round(float(torch.nn.functional.softplus(rho)), 6)
        0.01
    """
    s = torch.as_tensor(sigma, dtype=torch.float64)
    if not bool((s > 0).all()):
        raise ValueError(f"inverse_softplus: sigma must be > 0, got {sigma}")
    # log(expm1(s)) is exact for small s; for large s softplus is the identity
    return torch.where(s > 20, s, torch.log(torch.expm1(s.clamp(max=20))))


@register("function", "sparsity", paper=PAPER, module="litmix.functional.ssvi")
def gaussian_kl(mu: Tensor, sigma: Tensor, prior_std: float, mask: Tensor | None = None) -> Tensor:
    """``KL(N(mu, sigma^2) || N(0, prior_std^2))`` summed over the active coordinates (``mask``, default all).

    Per coordinate ``log(prior_std / sigma) + (sigma^2 + mu^2) / (2 prior_std^2) - 1/2``; inactive coordinates are
    the point mass at 0, outside the variational family's support, and contribute nothing (the paper's KL over the
    subspace). Differentiable in ``mu`` and ``sigma``.

    Args:
        mu: posterior means.
        sigma: posterior standard deviations (> 0 on the active coordinates; anything elsewhere).
        prior_std: the prior's standard deviation, > 0.
        mask: bool support of ``mu``'s shape (``True`` = active) or ``None`` for all.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: for ``prior_std <= 0`` or shapes that differ.

    Example:
        >>> mu, sigma = torch.tensor([0.0, 1.0, 5.0]), torch.tensor([1.0, 1.0, 0.1])
        >>> round(float(gaussian_kl(mu, sigma, 1.0)), 4)  # 0 + 0.5 + (2.3026 + 12.505 - 0.5), rounded
        14.8076
        >>> round(float(gaussian_kl(mu, sigma, 1.0, mask=torch.tensor([True, True, False]))), 4)
        0.5
    """
    if not prior_std > 0 or not math.isfinite(prior_std):
        raise ValueError(f"gaussian_kl: prior_std must be a finite number > 0, got {prior_std}")
    if mu.shape != sigma.shape or (mask is not None and mask.shape != mu.shape):
        raise ValueError(
            f"gaussian_kl: mu {tuple(mu.shape)}, sigma {tuple(sigma.shape)} and mask "
            f"{None if mask is None else tuple(mask.shape)} must have one shape"
        )
    var_ratio = (sigma / prior_std).square()
    if mask is not None:
        var_ratio = torch.where(mask, var_ratio, 1.0)  # log(1) = 0 and 1 - 1 = 0: no term where inactive
        mu = mu * mask
    kl = 0.5 * (var_ratio - torch.log(var_ratio) - 1.0) + 0.5 * mu.square() / (prior_std * prior_std)
    return kl.sum()


@register("function", "sparsity", paper=PAPER, module="litmix.functional.ssvi")
def folded_normal_moments(mu: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """``E|theta|`` and ``Var|theta|`` of ``theta ~ N(mu, sigma^2)`` (the folded normal), in float64.

    ``E|theta| = sigma sqrt(2/pi) exp(-mu^2 / 2 sigma^2) + mu (1 - 2 Phi(-mu / sigma))`` and
    ``Var|theta| = mu^2 + sigma^2 - (E|theta|)^2``, computed through ``r = |mu| / sigma`` (the variance as
    ``sigma^2 (1 + r^2 - g(r)^2)``, exact to float64 rounding; ``sigma^2`` itself from ``r > 8`` on, where the two
    agree to 1e-14).

    Raises:
        ValueError: for ``mu`` and ``sigma`` of different shapes.

    Example:
        >>> m, v = folded_normal_moments(torch.tensor([0.0, 3.0]), torch.tensor([1.0, 1.0]))
        >>> [round(x, 4) for x in m.tolist()], [round(x, 4) for x in v.tolist()]
        ([0.7979, 3.0008], [0.3634, 0.9954])
    """
    if mu.shape != sigma.shape:
        raise ValueError(f"folded_normal_moments: mu {tuple(mu.shape)} and sigma {tuple(sigma.shape)} differ in shape")
    mu64, sigma64 = mu.detach().double(), sigma.detach().double().clamp_min(1e-300)
    r = mu64.abs() / sigma64
    g = _SQRT_2_OVER_PI * torch.exp(-0.5 * r * r) + r * torch.erf(r / math.sqrt(2.0))
    h = torch.where(r > 8, torch.ones_like(r), (1.0 + r * r - g * g).clamp_min(0.0))
    return sigma64 * g, sigma64 * sigma64 * h


@register("function", "sparsity", paper=PAPER, module="litmix.functional.ssvi")
def removal_scores(mu: Tensor, sigma: Tensor, criterion: Removal = "snr_abs") -> Tensor:
    """Scores of the active coordinates: the lowest ones are removed from the support (float64).

    * ``"snr_abs"``: ``E|theta| / sqrt(Var|theta|)`` (the paper's ``SNR_mean_abs``, its default). It depends on
      ``|mu| / sigma`` only and increases with it, so it ranks coordinates as ``"snr"`` does (checked on a grid in
      the tests); it stays finite where ``sigma -> 0`` makes ``|mu| / sigma`` overflow.
    * ``"snr"``: ``|mu| / sigma``.
    * ``"mean"``: ``|mu|`` (RigL's magnitude criterion on the means).
    * ``"abs_mean"``: ``E|theta|`` (the paper's ``E_mean_abs``).

    Raises:
        ValueError: for an unknown criterion or shapes that differ.

    Example:
        >>> mu, sigma = torch.tensor([0.0, 0.5, 2.0]), torch.tensor([1.0, 0.1, 4.0])
        >>> [round(x, 3) for x in removal_scores(mu, sigma, "snr_abs").tolist()]
        [1.324, 5.0, 1.338]
        >>> removal_scores(mu, sigma, "mean").tolist()
        [0.0, 0.5, 2.0]
    """
    if criterion not in REMOVAL_CRITERIA:
        raise ValueError(f"removal_scores: criterion must be one of {REMOVAL_CRITERIA}, got {criterion!r}")
    if mu.shape != sigma.shape:
        raise ValueError(f"removal_scores: mu {tuple(mu.shape)} and sigma {tuple(sigma.shape)} differ in shape")
    if criterion == "mean":
        return mu.detach().double().abs()
    if criterion == "snr":
        return mu.detach().double().abs() / sigma.detach().double().clamp_min(1e-300)
    mean_abs, var_abs = folded_normal_moments(mu, sigma)
    if criterion == "abs_mean":
        return mean_abs
    r = mu.detach().double().abs() / sigma.detach().double().clamp_min(1e-300)
    return torch.where(r > 8, r, mean_abs / var_abs.clamp_min(1e-300).sqrt())


@register("function", "sparsity", paper=PAPER, module="litmix.functional.ssvi")
def addition_scores(
    grad: Tensor | None, criterion: Addition = "gradient", generator: torch.Generator | None = None
) -> Tensor | None:
    """Scores of the inactive coordinates: the highest ones are added (``None`` = uniformly random).

    ``"gradient"``: ``|dL/dmu|`` (the dense gradient of the means; ``None`` counts as zero, so ties break by
    position); ``"random"``: ``None``, which :func:`ssvi_support_update` turns into a uniform draw from
    ``generator``.

    Raises:
        ValueError: for an unknown criterion.

    Example:
        >>> addition_scores(torch.tensor([-3.0, 1.0]), "gradient").tolist()
        [3.0, 1.0]
        >>> addition_scores(torch.tensor([-3.0, 1.0]), "random") is None
        True
    """
    if criterion not in ADDITION_CRITERIA:
        raise ValueError(f"addition_scores: criterion must be one of {ADDITION_CRITERIA}, got {criterion!r}")
    if criterion == "random":
        return None
    if grad is None:
        raise ValueError("addition_scores: criterion 'gradient' needs the gradient of the means, got None")
    return grad.detach().abs().float()


@register("function", "sparsity", paper=PAPER, module="litmix.functional.ssvi")
def ssvi_support_update(
    mu: Tensor,
    rho: Tensor,
    mask: Tensor,
    fraction: float,
    removal: Removal = "snr_abs",
    grad: Tensor | None = None,
    addition: Addition = "gradient",
    generator: torch.Generator | None = None,
) -> Tensor:
    """One SSVI support update: remove ``round(fraction * |support|)`` active coordinates, add as many inactive ones.

    The removed coordinates have the lowest :func:`removal_scores` of ``(mu, softplus(rho))``; the added ones the
    highest :func:`addition_scores` (or a uniform draw). The support size never changes (it is exactly
    ``mask.sum()`` after every update). Added coordinates restart from ``mu = 0`` and the initial ``sigma`` (the
    caller sets them; the selection is done by :func:`litmix.functional.sparsity.prune_and_grow` on the scores).

    Args:
        mu: posterior means.
        rho: ``sigma = softplus(rho)``.
        mask: bool support (``True`` = active).
        fraction: fraction of the support to replace, in [0, 1].
        removal: removal criterion, one of :data:`REMOVAL_CRITERIA`.
        grad: dense gradient of the loss with respect to ``mu`` (``addition="gradient"``).
        addition: addition criterion, one of :data:`ADDITION_CRITERIA`.
        generator: CPU generator for ``addition="random"``.

    Returns:
        The new bool support.

    Raises:
        ValueError: for a fraction outside [0, 1], unknown criteria, a missing gradient or shapes that differ.

    Example:
        >>> mu = torch.tensor([0.0, 0.05, 1.0, 0.0, 0.0, 0.5])
        >>> rho = inverse_softplus(torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1, 0.5])).float()
        >>> mask = torch.tensor([False, True, True, False, False, True])
        >>> grad = torch.tensor([0.0, 0.0, 0.0, 9.0, 1.0, 0.0])
        >>> ssvi_support_update(mu, rho, mask, 1 / 3, "snr_abs", grad).tolist()  # |mu|/sigma 0.5, 10, 1: index 1 goes
        [False, False, True, True, False, True]
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"ssvi_support_update: fraction must be in [0, 1], got {fraction}")
    if mu.shape != rho.shape or mu.shape != mask.shape:
        raise ValueError(
            f"ssvi_support_update: mu {tuple(mu.shape)}, rho {tuple(rho.shape)} and mask {tuple(mask.shape)} must "
            "have one shape"
        )
    grow = addition_scores(grad, addition, generator)
    if grow is not None and grow.shape != mu.shape:
        raise ValueError(f"ssvi_support_update: grad {tuple(grow.shape)} and mu {tuple(mu.shape)} differ in shape")
    scores = removal_scores(mu, F.softplus(rho.detach()), removal)
    return prune_and_grow(scores, mask, fraction, grow, generator)
