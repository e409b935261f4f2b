"""Knowledge-distillation losses on plain tensors.

Conventions (shared by every litmix distillation plugin):

* both distributions are handled as **log-probabilities** and compared with
  ``kl_div(log_p_student, log_p_teacher, log_target=True)``;
* logits are cast to **float32** before the softmax (teachers may run in bf16/fp16);
* the loss is multiplied by **T²** so that its gradient scale stays roughly independent of the temperature
  (Hinton et al., "Distilling the Knowledge in a Neural Network", https://arxiv.org/abs/1503.02531);
* logits with more than two dimensions (``[B, L, V]`` language-model logits) are flattened to rows
  ``[B * L, V]``; an optional boolean ``mask`` of shape ``[B, L]`` keeps the real tokens, and ``"batchmean"``
  then divides by the number of kept rows (tokens).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["kd_loss", "top1_agreement"]

Reduction = Literal["batchmean", "mean", "sum", "none"]
_REDUCTIONS = ("batchmean", "mean", "sum", "none")


def _rows(logits: Tensor, mask: Tensor | None) -> Tensor:
    """Flatten ``[..., C]`` to ``[N, C]`` and keep the rows where ``mask`` is true."""
    rows = logits.reshape(-1, logits.shape[-1])
    if mask is None:
        return rows
    if mask.shape != logits.shape[:-1]:
        raise ValueError(
            f"mask shape {tuple(mask.shape)} must equal the logits shape without its last dimension "
            f"{tuple(logits.shape[:-1])}"
        )
    return rows[mask.reshape(-1).bool()]


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 4.0,
    reduction: Reduction = "batchmean",
    mask: Tensor | None = None,
    teacher_is_logprob: bool = False,
) -> Tensor:
    """Hinton KD loss ``T² · KL(softmax(t / T) ‖ softmax(s / T))``.

    Paper: "Distilling the Knowledge in a Neural Network" (https://arxiv.org/abs/1503.02531).

    Args:
        student_logits: ``[..., C]`` student logits (gradients flow through them).
        teacher_logits: teacher logits of the same shape (or log-probabilities with
            ``teacher_is_logprob=True``, which are used as given, without the temperature).
        temperature: softmax temperature ``T > 0``.
        reduction: ``"batchmean"`` (sum / number of rows; the mathematically correct KL per sample),
            ``"mean"`` (sum / number of elements, i.e. ``batchmean / C``, as NVIDIA ModelOpt), ``"sum"``,
            or ``"none"`` (per-row KL with the shape of the leading dimensions; masked rows are 0).
        mask: optional boolean tensor with the leading shape of the logits (e.g. ``[B, L]`` for LM logits);
            only rows where it is true count.
        teacher_is_logprob: the teacher input already holds log-probabilities.

    Returns:
        The loss (a scalar unless ``reduction="none"``), in float32.

    Raises:
        ValueError: for a temperature that is not a finite number > 0, an unknown reduction or mismatched shapes.

    Example:
        >>> s = torch.tensor([[2.0, 0.0, -1.0]])
        >>> kd_loss(s, s).item()
        0.0
        >>> round(kd_loss(s, torch.tensor([[0.0, 2.0, -1.0]]), temperature=1.0).item(), 4)
        1.4592
        >>> lm_s, lm_t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
        >>> mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
        >>> kd_loss(lm_s, lm_t, mask=mask).shape
        torch.Size([])
    """
    if not 0 < temperature < math.inf:
        raise ValueError(f"kd_loss(temperature={temperature}): temperature must be a finite number > 0")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"kd_loss(reduction={reduction!r}): reduction must be one of {_REDUCTIONS}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"kd_loss: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )
    # Few kernels on purpose: this runs every training step of a distillation run.
    s = _rows(student_logits.float(), mask)
    t = _rows(teacher_logits.float(), mask)
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = t if teacher_is_logprob else F.log_softmax(t / temperature, dim=-1)
    scale = temperature * temperature
    if reduction == "none":
        per_row = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1) * scale
        if mask is None:
            return per_row.reshape(student_logits.shape[:-1])
        out = per_row.new_zeros(mask.numel())
        out[mask.reshape(-1).bool()] = per_row
        return out.reshape(mask.shape)
    rows = s.shape[0]
    if rows == 0:  # everything masked out
        return (student_logits.float().sum() * 0.0).reshape(())
    total = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True)
    if reduction == "batchmean":
        return total * (scale / rows)
    if reduction == "mean":
        return total * (scale / s.numel())
    return total * scale


def top1_agreement(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Share of rows where the student's and the teacher's arg-max class agree.

    Example:
        >>> top1_agreement(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 0.0], [2.0, 0.0]])).item()
        0.5
    """
    s = _rows(student_logits.detach(), mask)
    t = _rows(teacher_logits.detach(), mask)
    if s.shape[0] == 0:
        return s.new_zeros((), dtype=torch.float32)
    return (s.argmax(-1) == t.argmax(-1)).float().mean()
