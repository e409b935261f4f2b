"""KD³ on plain tensors: instance selection, knowledge memorisation and MixDistribution.

Paper: "Distribution Shift Matters for Knowledge Distillation with Webly Collected Images" (KD³, "Knowledge
Distillation between Different Distributions"), Tang, Chen, Niu, Sugiyama and Gong, ICCV 2023
(https://arxiv.org/abs/2307.11469). No reference code was found; the formulas follow the paper's description
(the catalogue marks D5 [paper]):

* :func:`combined_confidence` / :func:`select_instances`: **dynamic instance selection**: a web sample is kept
  when the *combined* prediction ``w·softmax(teacher) + (1 - w)·softmax(student)`` is confident; ``w`` moves from
  the teacher towards an equal vote as the student learns (:func:`teacher_weight_at`);
* :func:`selected_kd_loss`: Hinton KD averaged over the selected rows only;
* :func:`weighted_feature_loss` and :func:`classifier_alignment_loss`: **knowledge memorisation**: the
  confidence-weighted penultimate features of the student (projected to the teacher's width) are aligned with
  the teacher's, and the student's classifier with the teacher's classifier seen through the projector;
* :func:`mix_distribution`: **MixDistribution**: per-instance feature means and standard deviations are mixed
  across samples (a perturbed view with a new distribution); the student's embeddings of the original and the
  perturbed view are aligned by an instance-level contrastive loss
  (:func:`litmix.functional.distill_losses.info_nce_loss`).

Every loss is computed in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from litmix.functional.distillation import kd_loss

__all__ = [
    "classifier_alignment_loss",
    "combined_confidence",
    "mix_distribution",
    "select_instances",
    "selected_kd_loss",
    "teacher_weight_at",
    "weighted_feature_loss",
]


def _check_unit(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name}={value!r} must be a number in [0, 1]")
    return float(value)


def combined_confidence(student_logits: Tensor, teacher_logits: Tensor, teacher_weight: float = 0.5) -> Tensor:
    """Per-row confidence (top probability) of ``w·softmax(teacher) + (1 - w)·softmax(student)``.

    Args:
        student_logits: ``[N, C]`` student logits (read without gradient).
        teacher_logits: ``[N, C]`` teacher logits.
        teacher_weight: ``w`` in [0, 1].

    Raises:
        ValueError: for logits of different shapes or a weight outside [0, 1].

    Example:
        >>> s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[10.0, -10.0]])
        >>> combined_confidence(s, t, 1.0).round(decimals=3).tolist(), combined_confidence(s, t, 0.5).tolist()
        ([1.0], [0.75])
    """
    w = _check_unit("combined_confidence(teacher_weight)", teacher_weight)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"combined_confidence: student {tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)} "
            "logits differ"
        )
    with torch.no_grad():
        p = w * teacher_logits.float().softmax(-1) + (1.0 - w) * student_logits.detach().float().softmax(-1)
        return p.max(-1).values


def select_instances(
    student_logits: Tensor,
    teacher_logits: Tensor,
    threshold: float,
    teacher_weight: float = 0.5,
    min_keep: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """KD³'s dynamic instance selection: keep the rows whose combined confidence is at least ``threshold``.

    Args:
        student_logits: ``[N, C]`` student logits.
        teacher_logits: ``[N, C]`` teacher logits.
        threshold: confidence threshold in [0, 1] (0 keeps every row).
        teacher_weight: weight of the teacher in the combined prediction, in [0, 1].
        min_keep: keep at least this share of the rows (the most confident ones), in [0, 1], so that a batch of
            hard samples still trains.

    Returns:
        ``(mask, confidence)``: a boolean ``[N]`` mask and the ``[N]`` combined confidences.

    Raises:
        ValueError: for a threshold, weight or share outside [0, 1], or logits of different shapes.

    Example:
        >>> t = torch.tensor([[9.0, 0.0], [0.2, 0.0], [0.0, 5.0]])
        >>> mask, conf = select_instances(t, t, threshold=0.9)
        >>> mask.tolist()
        [True, False, True]
        >>> select_instances(t, t, threshold=1.0, min_keep=0.3)[0].tolist()
        [True, False, False]
    """
    threshold = _check_unit("select_instances(threshold)", threshold)
    min_keep = _check_unit("select_instances(min_keep)", min_keep)
    conf = combined_confidence(student_logits, teacher_logits, teacher_weight)
    mask = conf >= threshold
    need = math.ceil(min_keep * conf.numel())
    if need and int(mask.sum()) < need:
        mask = torch.zeros_like(mask)
        mask[conf.topk(need).indices] = True
    return mask, conf


def teacher_weight_at(progress: float, start: float = 1.0, end: float = 0.5) -> float:
    """The teacher's weight in the combined prediction at training ``progress`` in [0, 1] (linear ``start → end``).

    Early on the student's predictions are noise, so the teacher decides alone; as the student learns its vote
    counts more ("dynamic" selection).

    Raises:
        ValueError: for a progress, start or end outside [0, 1].

    Example:
        >>> teacher_weight_at(0.0), teacher_weight_at(0.5), teacher_weight_at(1.0)
        (1.0, 0.75, 0.5)
    """
    p = _check_unit("teacher_weight_at(progress)", progress)
    a = _check_unit("teacher_weight_at(start)", start)
    b = _check_unit("teacher_weight_at(end)", end)
    return a + (b - a) * p


def selected_kd_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """``T² · KL(teacher ‖ student)`` averaged over the rows where ``mask`` is true (0, with a graph, if none).

    Raises:
        ValueError: for shapes that differ, a mask that is not ``[N]`` or a temperature that is not a finite
            number > 0.

    Example:
        >>> s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> selected_kd_loss(s, t, torch.tensor([True, False]), 1.0).item()
        0.0
        >>> selected_kd_loss(s, t, torch.tensor([False, True]), 1.0).item() > 0
        True
    """
    if mask.shape != student_logits.shape[:1]:
        raise ValueError(
            f"selected_kd_loss: mask {tuple(mask.shape)} must be [N] for logits {tuple(student_logits.shape)}"
        )
    rows = kd_loss(student_logits, teacher_logits, temperature=temperature, reduction="none")
    keep = mask.to(rows.dtype)
    return (rows * keep).sum() / keep.sum().clamp(min=1.0)


def weighted_feature_loss(student: Tensor, teacher: Tensor, weights: Tensor) -> Tensor:
    """Weighted mean squared error of features: ``Σ_i w_i · mean_j (s_ij - t_ij)² / Σ_i w_i`` (0 if every w is 0).

    ``student`` is the student feature already projected to the teacher's width; ``weights`` (``[N]``, >= 0) are
    the samples' confidences (0 for unselected samples).

    Raises:
        ValueError: for features of different shapes or weights that are not ``[N]``.

    Example:
        >>> s, t = torch.zeros(2, 3), torch.tensor([[1.0, 1.0, 1.0], [3.0, 3.0, 3.0]])
        >>> weighted_feature_loss(s, t, torch.tensor([1.0, 0.0])).item()
        1.0
        >>> weighted_feature_loss(s, t, torch.tensor([1.0, 1.0])).item()
        5.0
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"weighted_feature_loss: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} features "
            "differ; project the student feature to the teacher's width"
        )
    if weights.shape != student.shape[:1]:
        raise ValueError(f"weighted_feature_loss: weights {tuple(weights.shape)} must be [N] = [{student.shape[0]}]")
    per_row = (student.float() - teacher.float()).pow(2).flatten(1).mean(1)
    w = weights.detach().float()
    return (per_row * w).sum() / w.sum().clamp(min=1e-12)


def classifier_alignment_loss(
    student_weight: Tensor,
    student_bias: Tensor | None,
    teacher_weight: Tensor,
    teacher_bias: Tensor | None,
    projector_weight: Tensor,
    projector_bias: Tensor | None = None,
) -> Tensor:
    """Align the student's linear classifier with the teacher's classifier seen through the feature projector.

    With the projector ``P(f) = A f + c`` mapping student features to the teacher's width, the teacher's
    classifier ``W_t, b_t`` applied to ``P(f)`` is the linear map ``(W_t A) f + (W_t c + b_t)``; the student's
    ``W_s, b_s`` are pulled towards it (mean squared error), so the two networks share one decision rule on
    aligned features. The teacher's parameters are constants.

    Args:
        student_weight: ``[C, d_s]``.
        student_bias: ``[C]`` or ``None``.
        teacher_weight: ``[C, d_t]``.
        teacher_bias: ``[C]`` or ``None``.
        projector_weight: ``A``, ``[d_t, d_s]``.
        projector_bias: ``c``, ``[d_t]`` or ``None``.

    Raises:
        ValueError: for shapes that do not chain (naming them).

    Example:
        >>> a = torch.eye(3)
        >>> w = torch.randn(4, 3)
        >>> classifier_alignment_loss(w, None, w, None, a).item()
        0.0
    """
    if (
        student_weight.dim() != 2
        or teacher_weight.dim() != 2
        or projector_weight.shape != (teacher_weight.shape[1], student_weight.shape[1])
        or student_weight.shape[0] != teacher_weight.shape[0]
    ):
        raise ValueError(
            f"classifier_alignment_loss: student classifier {tuple(student_weight.shape)}, teacher classifier "
            f"{tuple(teacher_weight.shape)} and projector {tuple(projector_weight.shape)} do not chain "
            "([C, d_s], [C, d_t], [d_t, d_s])"
        )
    w_t = teacher_weight.detach().float()
    target_w = w_t @ projector_weight.float()
    loss = F.mse_loss(student_weight.float(), target_w)
    if student_bias is not None:
        target_b = teacher_bias.detach().float() if teacher_bias is not None else torch.zeros_like(student_bias.float())
        if projector_bias is not None:
            target_b = target_b + w_t @ projector_bias.float()
        loss = loss + F.mse_loss(student_bias.float(), target_b)
    return loss


def mix_distribution(x: Tensor, perm: Tensor, lam: Tensor, eps: float = 1e-6) -> Tensor:
    """MixDistribution: re-normalise each sample with feature statistics mixed with another sample's.

    Per sample (and channel, for ``[N, C, ...]`` maps with spatial dimensions; over the last dimension for
    ``[N, D]`` and ``[N, L, D]`` features) the mean ``μ`` and standard deviation ``σ`` are replaced by
    ``λ·μ + (1 - λ)·μ[perm]`` and ``λ·σ + (1 - λ)·σ[perm]``: the content stays, the distribution changes. The
    statistics are detached (gradients flow through the normalised content).

    Args:
        x: ``[N, ...]`` features or inputs (at least 2-D).
        perm: ``[N]`` long tensor, the sample whose statistics each sample mixes in.
        lam: ``[N]`` mixing weights in [0, 1].
        eps: added to the variance.

    Raises:
        ValueError: for a 1-D input, or ``perm`` / ``lam`` that are not ``[N]``.

    Example:
        >>> x = torch.tensor([[0.0, 2.0], [10.0, 30.0]])
        >>> y = mix_distribution(x, torch.tensor([1, 0]), torch.tensor([0.0, 1.0]))
        >>> y.mean(1).tolist(), y[1].tolist() == x[1].tolist()
        ([20.0, 20.0], True)
    """
    if x.dim() < 2:
        raise ValueError(f"mix_distribution: needs [N, ...] inputs, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if perm.shape != (n,) or lam.shape != (n,):
        raise ValueError(f"mix_distribution: perm {tuple(perm.shape)} and lam {tuple(lam.shape)} must be [{n}]")
    dims = tuple(range(2, x.dim())) if x.dim() > 3 else (x.dim() - 1,)
    xf = x.float()
    mu = xf.mean(dims, keepdim=True).detach()
    sig = (xf.var(dims, keepdim=True, unbiased=False) + eps).sqrt().detach()
    shape = (n,) + (1,) * (x.dim() - 1)
    w = lam.float().reshape(shape)
    mu_mix = w * mu + (1 - w) * mu[perm]
    sig_mix = w * sig + (1 - w) * sig[perm]
    return ((xf - mu) / sig * sig_mix + mu_mix).to(x.dtype)
