"""PA&DA: jointly sampling paths and data by their gradient norms (the math; callback and plugin use it).

Lu et al., "PA&DA: Jointly Sampling PAth and DAta for Consistent NAS", https://arxiv.org/abs/2302.14772. Both
distributions mix an importance share with the uniform distribution, ``p = tau * share + (1 - tau) * uniform``,
with ``tau`` ramping from 0 to 1 over training (:func:`pada_tau`, the one definition used by
:class:`litmix.callbacks.PADASampling` and :class:`litmix.plugins.NB201SupernetModule`).
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torch import Tensor

from litmix.nas.schedules import training_progress
from litmix.validation import check_choice, check_float

PADA_SEMANTICS = ("paper", "reference")

__all__ = [
    "pada_data_probs",
    "pada_importance_weights",
    "pada_op_probs",
    "pada_reference_importance",
    "pada_tau",
    "softmax_ce_grad_norm",
]


def softmax_ce_grad_norm(logits: Tensor, target: Tensor) -> Tensor:
    """Per-sample ``||softmax(z_i) - onehot(y_i)||_2``: the norm of ``dCE/dz`` (PA&DA's data importance).

    Example:
        >>> softmax_ce_grad_norm(torch.tensor([[10.0, -10.0], [0.0, 0.0]]), torch.tensor([0, 0])).round(decimals=3)
        tensor([0.0000, 0.7070])
    """
    p = torch.softmax(logits.detach().float(), dim=-1)
    p[torch.arange(len(target)), target] -= 1.0
    return p.norm(dim=-1)


def pada_data_probs(importance: Tensor, tau: float) -> Tensor:
    """PA&DA data distribution ``p_i = tau * g_i / sum(g) + (1 - tau) / N``.

    Args:
        importance: ``[N]`` non-negative per-sample importances (epoch-averaged gradient norms).
        tau: mixing weight in ``[0, 1]``; PA&DA ramps it as ``epoch / epochs``.

    Raises:
        ValueError: for ``tau`` outside ``[0, 1]`` or negative importances.

    Example:
        >>> pada_data_probs(torch.tensor([1.0, 3.0]), 0.5)
        tensor([0.3750, 0.6250])
        >>> pada_data_probs(torch.zeros(4), 1.0)
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"pada_data_probs(tau={tau}): tau must be in [0, 1]")
    if bool((importance < 0).any()):
        raise ValueError("pada_data_probs: importances must be non-negative")
    g = importance.double()
    n = g.numel()
    uniform = torch.full_like(g, 1.0 / n)
    total = g.sum()
    if total <= 0:
        return uniform.to(importance.dtype)
    return (tau * g / total + (1.0 - tau) * uniform).to(importance.dtype)


def pada_importance_weights(probs: Tensor) -> Tensor:
    """Importance weights ``w_i = 1 / (N p_i)`` that make the loss of samples drawn from ``p`` unbiased.

    ``E_{i ~ p}[w_i l_i] = (1/N) sum_i l_i``: the mean loss over the data set, as with uniform sampling (the
    estimator the paper's variance analysis is about). Uniform ``p`` gives weights 1.

    Raises:
        ValueError: for a non-positive probability (PA&DA's mixture with ``tau < 1`` never has one).

    Example:
        >>> pada_importance_weights(torch.tensor([0.125, 0.125, 0.5, 0.25]))
        tensor([2.0000, 2.0000, 0.5000, 1.0000])
    """
    if bool((probs <= 0).any()):
        raise ValueError("pada_importance_weights: every probability must be > 0 (tau = 1 leaves some at 0)")
    return 1.0 / (probs.numel() * probs)


def pada_reference_importance(positions: Tensor, norms: Tensor, n: int) -> Tensor:
    """Per-sample importance of one epoch as the reference ``train_panda_201.py`` computes it.

    Samples are visited in draw order; a sample's first norm is stored, every later draw of it replaces the value
    by the mean of the stored value and the new norm (a pairwise running average, which weights late draws
    more than a plain mean), and samples not drawn in the epoch get importance 0 (the reference also treats a
    stored 0 as "not seen yet").

    Args:
        positions: ``[M]`` dataset positions in the order they were drawn.
        norms: ``[M]`` their gradient norms.
        n: data set size.

    Example:
        >>> pada_reference_importance(torch.tensor([0, 2, 0, 0]), torch.tensor([1.0, 5.0, 3.0, 6.0]), 4)
        tensor([4., 0., 5., 0.], dtype=torch.float64)
    """
    out = torch.zeros(n, dtype=torch.float64)
    for pos, g in zip(positions.tolist(), norms.double().tolist(), strict=True):
        out[pos] = g if out[pos] == 0 else (float(out[pos]) + g) / 2.0
    return out


def pada_op_probs(norm_sum: Tensor, counts: Tensor, tau: float) -> Tensor:
    """PA&DA path distribution per edge: ``p_o = tau * m_o / sum(m) + (1 - tau) / O``, ``m_o = norm_sum / count``.

    ``m_o`` is the mean gradient norm of operation ``o``'s weights over the times it was sampled (0 for
    parameter-free or never-sampled ops: their probability decays to 0 as ``tau -> 1``, a quirk of the paper).

    Args:
        norm_sum: ``[..., O]`` accumulated gradient norms.
        counts: ``[..., O]`` how often each op was sampled.
        tau: mixing weight in ``[0, 1]``.

    Raises:
        ValueError: for ``tau`` outside ``[0, 1]`` or mismatched shapes.

    Example:
        >>> pada_op_probs(torch.tensor([0.0, 4.0, 2.0]), torch.tensor([5.0, 2.0, 2.0]), 1.0)
        tensor([0.0000, 0.6667, 0.3333])
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"pada_op_probs(tau={tau}): tau must be in [0, 1]")
    if norm_sum.shape != counts.shape:
        raise ValueError(f"pada_op_probs: shapes differ, {tuple(norm_sum.shape)} vs {tuple(counts.shape)}")
    mean = torch.where(counts > 0, norm_sum / counts.clamp_min(1), torch.zeros_like(norm_sum)).double()
    num_ops = mean.shape[-1]
    total = mean.sum(-1, keepdim=True)
    share = torch.where(total > 0, mean / total.clamp_min(1e-30), torch.full_like(mean, 1.0 / num_ops))
    return (tau * share + (1.0 - tau) / num_ops).to(norm_sum.dtype)


def pada_tau(trainer: pl.Trainer, tau_max: float = 1.0, owner: str = "PA&DA", semantics: str = "paper") -> float:
    """PA&DA's mixing weight for the next epoch, called at the end of an epoch.

    ``semantics="paper"``: ``tau = min(tau_max, fraction of training done)``, the fraction being
    :func:`litmix.nas.schedules.training_progress` (``global_step / trainer.estimated_stepping_batches``, which
    equals ``(epoch + 1) / max_epochs`` in an epoch-limited run, and also ramps correctly in a
    ``max_steps``-limited one). ``semantics="reference"``: the reference ``train_panda_201.py`` sets
    ``tau = epoch / epochs`` at the start of an epoch and uses it at that epoch's end, i.e. one epoch earlier
    (``current_epoch / max_epochs``; in a run of unknown epoch count, the fraction done minus one epoch's
    optimizer steps). :class:`litmix.callbacks.PADASampling` (data) and
    :class:`litmix.plugins.NB201SupernetModule` (paths, paper semantics) both use this function.

    Args:
        trainer: the running Trainer.
        tau_max: cap of the ramp, in ``[0, 1]``.
        owner: name used in error messages.
        semantics: ``"paper"`` or ``"reference"``.

    Raises:
        ValueError: for ``tau_max`` outside ``[0, 1]``, an unknown ``semantics``, or when the run's length is
            unknown.

    Example:
        >>> from types import SimpleNamespace
        >>> pada_tau(SimpleNamespace(estimated_stepping_batches=8, global_step=4, max_epochs=2))
        0.5
        >>> pada_tau(SimpleNamespace(estimated_stepping_batches=8, global_step=8, max_epochs=2), tau_max=0.9)
        0.9
        >>> pada_tau(SimpleNamespace(current_epoch=1, max_epochs=4), semantics="reference")
        0.25
    """
    check_float(owner, "tau_max", tau_max, low=0.0, high=1.0)
    check_choice(owner, "semantics", semantics, PADA_SEMANTICS)
    if semantics == "paper":
        return min(float(tau_max), training_progress(trainer, owner, epoch_end=True))
    max_epochs = getattr(trainer, "max_epochs", None)
    if max_epochs is not None and max_epochs > 0:
        return min(float(tau_max), trainer.current_epoch / max_epochs)
    total = trainer.estimated_stepping_batches
    batches = trainer.num_training_batches
    if not (math.isfinite(total) and total > 0 and math.isfinite(batches)):
        training_progress(trainer, owner, epoch_end=True)  # raises: the run's length is unknown
    per_epoch = math.ceil(batches / max(1, trainer.accumulate_grad_batches))
    return min(float(tau_max), max(0.0, (trainer.global_step - per_epoch) / total))
