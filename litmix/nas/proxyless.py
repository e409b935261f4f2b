"""ProxylessNAS: two-path binary-gate sampling, the BinaryConnect architecture gradient and expected latency.

Cai, Zhu & Han, "ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware",
https://arxiv.org/abs/1812.00332. Used by :class:`litmix.plugins.ProxylessNASModule`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["binarized_alpha_grad", "expected_latency", "sample_two_paths"]


def sample_two_paths(
    probs: Tensor, generator: torch.Generator | None = None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """ProxylessNAS two-path sampling: per layer two distinct ops (without replacement), then the active one.

    The active op is drawn between the two with their probabilities renormalised (binary gate).

    Returns:
        ``(first, second, active)`` codes; ``active[l]`` is ``first[l]`` or ``second[l]``. A layer with a single
        candidate of non-zero probability gets it twice.

    Example:
        >>> a, b, act = sample_two_paths(torch.full((3, 4), 0.25), torch.Generator().manual_seed(0))
        >>> all(x != y for x, y in zip(a, b)), all(c in (x, y) for x, y, c in zip(a, b, act))
        (True, True)
    """
    p = probs.detach().double().cpu()
    p = p / p.sum(-1, keepdim=True)
    first, second, active = [], [], []
    for row in p:
        n = int((row > 0).sum())
        pair = torch.multinomial(row, 2 if n >= 2 else 1, replacement=False, generator=generator).tolist()
        if len(pair) == 1:
            pair = pair * 2
        sub = row[pair] / row[pair].sum()
        pick = pair[int(torch.multinomial(sub, 1, generator=generator))]
        first.append(pair[0])
        second.append(pair[1])
        active.append(pick)
    return tuple(first), tuple(second), tuple(active)


def binarized_alpha_grad(alpha: Tensor, candidates: Sequence[int], gate_grads: Tensor) -> Tensor:
    """ProxylessNAS BinaryConnect-style gradient of one layer's architecture logits.

    With the sampled candidates ``C`` (two in the two-path mode), ``p = softmax(alpha[C])`` and gate gradients
    ``dL/dg_j``: ``dL/dalpha_i = sum_j dL/dg_j * p_j * (delta_ij - p_i)`` for ``i in C``, 0 elsewhere.

    Args:
        alpha: ``[O]`` logits of the layer.
        candidates: the sampled op indices (distinct).
        gate_grads: ``[len(candidates)]`` gradients of the loss w.r.t. the binary gates.

    Raises:
        ValueError: when the lengths differ.

    Example:
        >>> g = binarized_alpha_grad(torch.zeros(3), [0, 2], torch.tensor([1.0, -1.0]))
        >>> g
        tensor([ 0.5000,  0.0000, -0.5000])
    """
    if len(candidates) != gate_grads.numel():
        raise ValueError(f"binarized_alpha_grad: {len(candidates)} candidates but {gate_grads.numel()} gate gradients")
    idx = torch.as_tensor(list(candidates), dtype=torch.long, device=alpha.device)
    p = torch.softmax(alpha.detach()[idx], dim=0)
    jac = torch.diag(p) - p[:, None] * p[None, :]  # jac[j, i] = p_j (delta_ij - p_i)
    grad = torch.zeros_like(alpha)
    grad[idx] = gate_grads.to(alpha.dtype) @ jac
    return grad


def expected_latency(alpha: Tensor, latency: Tensor) -> Tensor:
    """``E[LAT] = sum_layers sum_o softmax(alpha_l)_o * F(o)`` (differentiable in ``alpha``).

    Args:
        alpha: ``[L, O]`` architecture logits.
        latency: ``[O]`` (shared table) or ``[L, O]`` per-layer latencies.

    Example:
        >>> expected_latency(torch.zeros(2, 2), torch.tensor([0.0, 2.0]))
        tensor(2.)
    """
    return (torch.softmax(alpha, dim=-1) * latency.to(alpha)).sum()
