"""Distillation losses on plain tensors, shared by the distillation callback and module.

:class:`~litmix.callbacks.KnowledgeDistillation` and :class:`~litmix.plugins.DistillationModule` use these
functions (one implementation, no copies):

* :class:`KDRowsFunction` / :func:`kd_rows`: Hinton's ``T² · KL`` on ``[N, C]`` rows with a hand-written backward
  (the fast path of :func:`litmix.functional.distillation.kd_loss`, which handles masks and ``[B, L, V]``);
* :func:`fitnet_loss`: FitNets hint loss (mean squared error of the projected student feature to the teacher's);
* :func:`attention_map` / :func:`attention_transfer_loss`: Zagoruyko & Komodakis attention transfer;
* :func:`rkd_distance_loss` / :func:`rkd_angle_loss`: Park et al.'s relational KD;
* :func:`info_nce_loss`: the contrastive (CRD-style) objective with in-batch negatives.

Every loss is computed in float32 (teachers may run in bf16/fp16).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "KDRowsFunction",
    "attention_map",
    "attention_transfer_loss",
    "fitnet_loss",
    "info_nce_loss",
    "kd_rows",
    "rkd_angle_loss",
    "rkd_distance_loss",
]


class KDRowsFunction(torch.autograd.Function):
    """``T² · KL(softmax(t / T) ‖ softmax(s / T))`` (batchmean) of ``[N, C]`` rows with a hand-written backward.

    The same value and gradient as :func:`litmix.functional.distillation.kd_loss` with fewer kernels and one
    autograd node: this runs every training step, and on small models per-kernel overhead is its whole cost.
    Once differentiable (no double backward). Inputs: student logits ``[N, C]``, teacher **log-probabilities**
    at temperature ``T`` ``[N, C]``, and ``T``.

    Example:
        >>> s = torch.tensor([[2.0, 0.0, -1.0]], requires_grad=True)
        >>> t = torch.log_softmax(torch.tensor([[0.0, 2.0, -1.0]]), -1)
        >>> round(KDRowsFunction.apply(s, t, 1.0).item(), 4)
        1.4592
    """

    @staticmethod
    def forward(ctx: Any, student: Tensor, teacher_logp: Tensor, temperature: float) -> Tensor:
        """The loss value (float32 scalar)."""
        s = student.float()
        log_p_s = torch.log_softmax(s / temperature, dim=-1)
        p_t = teacher_logp.exp()
        scale = temperature * temperature / s.shape[0]
        value = torch.dot(p_t.reshape(-1), (teacher_logp - log_p_s).reshape(-1)) * scale
        ctx.save_for_backward(log_p_s, p_t)
        ctx.grad_scale = scale / temperature
        ctx.student_dtype = student.dtype
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        """``(softmax(s / T) - p_t) · T / N`` times the incoming gradient."""
        log_p_s, p_t = ctx.saved_tensors
        # softmax(s / T) - p_t, times dL/dvalue * T / N; a host scalar on the CPU saves a kernel (no sync there)
        factor = grad.item() * ctx.grad_scale if grad.device.type == "cpu" else grad * ctx.grad_scale
        grad_student = torch.sub(log_p_s.exp(), p_t).mul_(factor)
        return grad_student.to(ctx.student_dtype), None, None


def kd_rows(student: Tensor, teacher_logp: Tensor, temperature: float) -> Tensor:
    """:class:`KDRowsFunction` on ``[N, C]`` rows, outside autocast (the loss is always float32).

    Args:
        student: ``[N, C]`` student logits.
        teacher_logp: ``[N, C]`` teacher log-probabilities at ``temperature``.
        temperature: ``T > 0``.

    Raises:
        ValueError: for a temperature that is not a finite number > 0 or shapes that differ.

    Example:
        >>> s = torch.randn(4, 3)
        >>> kd_rows(s, torch.log_softmax(s / 2.0, -1), 2.0).abs().item() < 1e-6
        True
    """
    if not 0 < temperature < math.inf:
        raise ValueError(f"kd_rows(temperature={temperature}): temperature must be a finite number > 0")
    if student.shape != teacher_logp.shape or student.dim() != 2:
        raise ValueError(
            f"kd_rows: student {tuple(student.shape)} and teacher {tuple(teacher_logp.shape)} must be equal [N, C]"
        )
    if torch.is_autocast_enabled(student.device.type):
        with torch.autocast(student.device.type, enabled=False):
            return KDRowsFunction.apply(student, teacher_logp.float(), temperature)  # type: ignore[no-any-return]
    return KDRowsFunction.apply(student, teacher_logp.float(), temperature)  # type: ignore[no-any-return]


def fitnet_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """FitNets hint loss: mean squared error between the (projected) student feature and the teacher's.

    Paper: "FitNets: Hints for Thin Deep Nets", Romero et al. (https://arxiv.org/abs/1412.6550).

    Raises:
        ValueError: for shapes that differ (project the student feature first).

    Example:
        >>> fitnet_loss(torch.ones(2, 3), torch.zeros(2, 3)).item()
        1.0
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"fitnet_loss: student feature {tuple(student.shape)} and teacher feature {tuple(teacher.shape)} differ; "
            "project the student feature to the teacher's width"
        )
    return F.mse_loss(student.float(), teacher.float())


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    """Zagoruyko & Komodakis spatial attention: ``normalize(mean_c |f|^p)`` flattened per sample.

    ``[B, C, H, W]`` maps give ``[B, H·W]`` (mean over channels); ``[B, L, D]`` token features give ``[B, L]``
    (mean over the feature dimension).

    Raises:
        ValueError: for a feature that is neither 3-D nor 4-D.

    Example:
        >>> attention_map(torch.ones(2, 4, 3, 3)).shape
        torch.Size([2, 9])
    """
    f = feature.float()
    if f.dim() == 4:
        a = f.abs().pow(p).mean(1)
    elif f.dim() == 3:
        a = f.abs().pow(p).mean(-1)
    else:
        raise ValueError(f"attention_map: needs [B, C, H, W] or [B, L, D] features, got shape {tuple(feature.shape)}")
    return F.normalize(a.reshape(a.shape[0], -1), dim=1)


def attention_transfer_loss(student: Tensor, teacher: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer: mean squared difference of the normalised attention maps.

    Paper: "Paying More Attention to Attention", Zagoruyko and Komodakis (https://arxiv.org/abs/1612.03928).
    Channel counts may differ (maps average over channels). Spatial sizes that differ are matched by adaptive
    average pooling of the larger ``[B, C, H, W]`` map to the smaller one.

    Raises:
        ValueError: for maps that cannot be matched (different batch, token count or rank).

    Example:
        >>> f = torch.randn(2, 8, 4, 4)
        >>> attention_transfer_loss(f, torch.cat([f, f], 1)).abs().item() < 1e-6
        True
    """
    if student.dim() == 4 and teacher.dim() == 4 and student.shape[-2:] != teacher.shape[-2:]:
        size = min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1])
        student = F.adaptive_avg_pool2d(student.float(), size)
        teacher = F.adaptive_avg_pool2d(teacher.float(), size)
    a_s, a_t = attention_map(student, p), attention_map(teacher, p)
    if a_s.shape != a_t.shape:
        raise ValueError(
            f"attention_transfer_loss: attention maps {tuple(a_s.shape)} (student {tuple(student.shape)}) and "
            f"{tuple(a_t.shape)} (teacher {tuple(teacher.shape)}) differ"
        )
    return (a_s - a_t).pow(2).mean()


def _pdist(e: Tensor, eps: float = 1e-12) -> Tensor:
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(e.shape[0], device=e.device, dtype=e.dtype))


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD distance loss: smooth-L1 between pairwise distances, each normalised by its mean non-zero distance.

    Paper: "Relational Knowledge Distillation", Park et al. (https://arxiv.org/abs/1904.05068). Features are
    flattened per sample; widths may differ.

    Raises:
        ValueError: for batches of different sizes.

    Example:
        >>> e = torch.randn(5, 3)
        >>> rkd_distance_loss(e, 2 * e).abs().item() < 1e-5  # invariant to scale
        True
    """
    s, t = student.float().flatten(1), teacher.float().flatten(1)
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"rkd_distance_loss: batch sizes {s.shape[0]} and {t.shape[0]} differ")
    with torch.no_grad():
        t_d = _pdist(t)
        t_d = t_d / t_d[t_d > 0].mean().clamp(min=1e-12)
    s_d = _pdist(s)
    s_d = s_d / s_d[s_d > 0].mean().clamp(min=1e-12)
    return F.smooth_l1_loss(s_d, t_d)


def _angles(e: Tensor) -> Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD angle loss: smooth-L1 between the cosines of the angles of every triplet of samples.

    Paper: "Relational Knowledge Distillation", Park et al. (https://arxiv.org/abs/1904.05068). ``O(B³)`` memory
    in the batch size, as in the reference code.

    Raises:
        ValueError: for batches of different sizes.

    Example:
        >>> e = torch.randn(5, 3)
        >>> rkd_angle_loss(e, 3 * e + 1).abs().item() < 1e-5  # invariant to scale and shift
        True
    """
    s, t = student.float().flatten(1), teacher.float().flatten(1)
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"rkd_angle_loss: batch sizes {s.shape[0]} and {t.shape[0]} differ")
    with torch.no_grad():
        t_a = _angles(t)
    return F.smooth_l1_loss(_angles(s), t_a)


def info_nce_loss(student: Tensor, teacher: Tensor, temperature: float = 0.1) -> Tensor:
    """Contrastive distillation with in-batch negatives (InfoNCE on L2-normalised embeddings).

    Sample ``i``'s student embedding must pick its own teacher embedding among the batch's: cross-entropy of
    ``z_s @ z_tᵀ / τ`` with the diagonal as target. This is the CRD objective ("Contrastive Representation
    Distillation", Tian et al., https://arxiv.org/abs/1910.10699) with the batch as negatives instead of CRD's
    memory bank of 16,384 negatives and its NCE estimator.

    Raises:
        ValueError: for embeddings of different shapes or a temperature that is not a finite number > 0.

    Example:
        >>> z = torch.eye(4)
        >>> info_nce_loss(z, z, temperature=0.01).item() < 1e-6
        True
    """
    if not 0 < temperature < math.inf:
        raise ValueError(f"info_nce_loss(temperature={temperature}): temperature must be a finite number > 0")
    s, t = student.float().flatten(1), teacher.float().flatten(1)
    if s.shape != t.shape:
        raise ValueError(f"info_nce_loss: embeddings {tuple(s.shape)} and {tuple(t.shape)} differ")
    logits = F.normalize(s, dim=1) @ F.normalize(t, dim=1).t() / temperature
    return F.cross_entropy(logits, torch.arange(s.shape[0], device=s.device))
