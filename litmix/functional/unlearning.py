"""Machine-unlearning losses on plain tensors: per-sample NLL, gradient ascent, NPO, retain terms.

Used by :class:`litmix.plugins.UnlearningModule`. Conventions follow open-unlearning: a language-model
sample's NLL is the **sum** of its answer-token NLLs (prompt positions labelled ``-100``, Hugging Face
shift: logits at position ``t`` predict the label at ``t + 1``); gradient ascent uses the token mean.

Papers: Negative Preference Optimization: Towards Balancing Catastrophic Collapse and Unlearning
(https://arxiv.org/abs/2404.05868); TOFU: A Task of Fictitious Unlearning for LLMs
(https://arxiv.org/abs/2401.06121).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from litmix.registry import register

__all__ = [
    "classifier_nll",
    "grad_ascent_loss",
    "kl_retain_loss",
    "npo_loss",
    "npo_weights",
    "retain_nll_loss",
    "sequence_correct",
    "sequence_nll",
]


def classifier_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-sample cross-entropy of a classifier, shape ``[B]``.

    Example:
        >>> classifier_nll(torch.zeros(2, 4), torch.tensor([0, 3]))
        tensor([1.3863, 1.3863])
    """
    return F.cross_entropy(logits.float(), targets, reduction="none")


def _shift(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    return logits[:, :-1, :], labels[:, 1:]


def sequence_nll(
    logits: Tensor,
    labels: Tensor,
    reduction: Literal["sum", "mean"] = "sum",
    ignore_index: int = -100,
) -> Tensor:
    """Per-sequence NLL of a causal LM with the Hugging Face shift, shape ``[B]``.

    Args:
        logits: ``[B, T, V]``; position ``t`` predicts ``labels[:, t + 1]``.
        labels: ``[B, T]`` token ids, ``ignore_index`` on prompt and padding positions.
        reduction: ``"sum"`` over the answer tokens (NPO) or ``"mean"`` per token (gradient ascent).
        ignore_index: label value excluded from the loss.

    Raises:
        ValueError: for an unknown ``reduction``.

    Example:
        >>> logits = torch.zeros(1, 4, 5)                   # uniform over 5 tokens
        >>> labels = torch.tensor([[-100, -100, 2, 3]])     # 2 answer tokens
        >>> sequence_nll(logits, labels), sequence_nll(logits, labels, "mean")
        (tensor([3.2189]), tensor([1.6094]))
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"sequence_nll(reduction={reduction!r}): reduction must be 'sum' or 'mean'")
    shift_logits, shift_labels = _shift(logits, labels)
    mask = shift_labels != ignore_index
    token_nll = F.cross_entropy(
        shift_logits.float().transpose(1, 2), shift_labels.masked_fill(~mask, 0), reduction="none"
    )
    total = (token_nll * mask).sum(-1)
    if reduction == "sum":
        return total
    return total / mask.sum(-1).clamp_min(1)


def sequence_correct(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """Per-sequence count of correctly predicted answer tokens (argmax, HF shift) and of answer tokens.

    Example:
        >>> logits = torch.zeros(1, 3, 4); logits[0, 0, 2] = 1.0; logits[0, 1, 0] = 1.0
        >>> sequence_correct(logits, torch.tensor([[-100, 2, 3]]))
        (tensor([1]), tensor([2]))
    """
    shift_logits, shift_labels = _shift(logits, labels)
    mask = shift_labels != ignore_index
    correct = (shift_logits.argmax(-1) == shift_labels) & mask
    return correct.sum(-1), mask.sum(-1)


def grad_ascent_loss(nll: Tensor) -> Tensor:
    """Gradient-ascent forget loss ``-mean(nll)`` (minimising it raises the forget NLL).

    Example:
        >>> grad_ascent_loss(torch.tensor([1.0, 3.0]))
        tensor(-2.)
    """
    return -nll.mean()


@register(
    "loss",
    "unlearning",
    paper="Negative Preference Optimization (https://arxiv.org/abs/2404.05868)",
    module="litmix.functional",
)
def npo_loss(nll: Tensor, ref_nll: Tensor, beta: float = 0.1) -> Tensor:
    """Negative Preference Optimization loss ``-(2/beta) * mean(logsigmoid(beta * (nll - ref_nll)))``.

    Equals ``(2/beta) * mean(log(1 + (pi_theta / pi_ref)^beta))``; ``(2/beta) log 2`` at the reference
    model; its gradient is gradient ascent on ``nll`` reweighted per sample by :func:`npo_weights`.

    Args:
        nll: per-sample NLL under the trained model (sequence sums for LMs), ``[B]``.
        ref_nll: the same under the frozen reference model (no gradient), ``[B]``.
        beta: inverse temperature (> 0); ``beta -> 0`` recovers gradient ascent.

    Raises:
        ValueError: for ``beta <= 0`` or mismatched shapes.

    Example:
        >>> nll = torch.tensor([2.0, 5.0])
        >>> npo_loss(nll, nll, beta=0.1)                    # 20 log 2
        tensor(13.8629)
    """
    if beta <= 0:
        raise ValueError(f"npo_loss(beta={beta}): beta must be > 0")
    if nll.shape != ref_nll.shape:
        raise ValueError(f"npo_loss: nll shape {tuple(nll.shape)} != ref_nll shape {tuple(ref_nll.shape)}")
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - ref_nll.detach())).mean()


def npo_weights(nll: Tensor, ref_nll: Tensor, beta: float = 0.1) -> Tensor:
    """NPO's per-sample weight on the gradient-ascent direction, ``2 sigmoid(beta (ref_nll - nll))`` in (0, 2).

    1 at the reference model, tending to 0 once a sample is forgotten.

    Example:
        >>> npo_weights(torch.tensor([1.0, 5.0]), torch.tensor([1.0, 1.0]), beta=1.0)
        tensor([1.0000, 0.0360])
    """
    return 2.0 * torch.sigmoid(beta * (ref_nll - nll))


def retain_nll_loss(nll: Tensor) -> Tensor:
    """Retain term ``mean(nll)`` (gradient descent on the retain set, "GradDiff" / NPO+RT).

    Example:
        >>> retain_nll_loss(torch.tensor([1.0, 3.0]))
        tensor(2.)
    """
    return nll.mean()


def kl_retain_loss(logits: Tensor, ref_logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Retain term ``KL(ref || theta)``, averaged over samples (classifier) or selected positions (LM).

    Args:
        logits: ``[B, C]`` or ``[B, T, V]`` logits of the trained model.
        ref_logits: the reference model's logits, same shape (no gradient).
        mask: optional ``[B, T]`` boolean mask of the positions to use (LM answer positions).

    Example:
        >>> x = torch.randn(3, 5)
        >>> float(kl_retain_loss(x, x)) == 0.0
        True
        >>> kl_retain_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 10.0]])).round(decimals=4)
        tensor(0.6926)
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    log_q = F.log_softmax(ref_logits.detach().float(), dim=-1)
    if mask is not None:
        log_p, log_q = log_p[mask], log_q[mask]
    else:
        log_p, log_q = log_p.reshape(-1, log_p.shape[-1]), log_q.reshape(-1, log_q.shape[-1])
    if log_p.shape[0] == 0:
        return logits.sum() * 0.0
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
