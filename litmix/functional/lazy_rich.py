"""Lazy-versus-rich training diagnostics: kernel alignment, kernel distance and weight movement (pure tensors).

Used by :class:`litmix.callbacks.LazyRichMonitor`; see Kumar et al., "Grokking as the transition from lazy to
rich training dynamics", ICLR 2024 (https://arxiv.org/abs/2310.06110).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["feature_gram", "kernel_alignment", "kernel_distance", "label_kernel", "weight_movement", "weight_norm"]


def feature_gram(features: Tensor) -> Tensor:
    """Gram matrix ``F F^T`` (float64) of per-sample features flattened to ``(n, -1)``.

    Example:
        >>> feature_gram(torch.tensor([[1.0, 0.0], [1.0, 1.0]])).tolist()
        [[1.0, 1.0], [1.0, 2.0]]
    """
    f = features.detach().reshape(len(features), -1).double()
    return f @ f.T


def label_kernel(labels: Tensor, num_classes: int | None = None) -> Tensor:
    """Target kernel ``Y Y^T`` (float64): one-hot ``Y`` for integer class labels, the values for float targets.

    For two classes this is, after centring, ``y y^T`` with ``y = +-1`` up to a factor.

    Example:
        >>> label_kernel(torch.tensor([0, 1, 0])).tolist()
        [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    """
    if labels.is_floating_point():
        y = labels.detach().reshape(len(labels), -1).double()
    else:
        classes = int(labels.max()) + 1 if num_classes is None else num_classes
        y = torch.nn.functional.one_hot(labels.detach().long().flatten(), classes).double()
    return y @ y.T


def _center(k: Tensor) -> Tensor:
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def kernel_alignment(k1: Tensor, k2: Tensor, centered: bool = True) -> float:
    """Kernel alignment ``<K1, K2>_F / (||K1||_F ||K2||_F)``; with ``centered`` both are double-centred first (CKA).

    0.0 when either (centred) kernel is zero.

    Example:
        >>> k = label_kernel(torch.tensor([0, 1, 0, 1]))
        >>> kernel_alignment(k, k), kernel_alignment(k, torch.eye(4), centered=False)
        (1.0, 0.7071067811865475)
    """
    a, b = k1.double(), k2.double()
    if centered:
        a, b = _center(a), _center(b)
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else 0.0


def kernel_distance(k0: Tensor, k1: Tensor, centered: bool = False) -> float:
    """Kernel distance ``1 - alignment(K0, K1)`` (Fort et al. 2020): 0 when the kernel has not moved.

    Example:
        >>> kernel_distance(torch.eye(2), 3 * torch.eye(2)), kernel_distance(torch.eye(2), torch.ones(2, 2))
        (0.0, 0.29289321881345254)
    """
    return 1.0 - kernel_alignment(k0, k1, centered=centered)


def weight_norm(weights: Mapping[str, Tensor]) -> float:
    """Euclidean norm of all tensors together (float64).

    Example:
        >>> weight_norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])})
        5.0
    """
    return float(torch.stack([w.detach().double().pow(2).sum() for w in weights.values()]).sum().sqrt())


def weight_movement(weights: Mapping[str, Tensor], init: Mapping[str, Tensor]) -> float:
    """Relative distance from the initialisation ``||W - W0|| / ||W0||`` over the names of ``init``.

    Example:
        >>> weight_movement({"a": torch.tensor([3.0, 4.0])}, {"a": torch.tensor([3.0, 0.0])})
        1.3333333333333333
    """
    diff = {k: weights[k].detach().double().cpu() - v.double() for k, v in init.items()}
    base = weight_norm(init)
    return weight_norm(diff) / base if base > 0 else 0.0
