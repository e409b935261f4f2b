"""AdaNPC's non-parametric classifier: a memory of L2-normalised features and labels, k-nearest cosine vote."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from litmix.registry import register
from litmix.validation import check_float, check_int

__all__ = ["NonParametricHead"]

_PAPER = "AdaNPC: Exploring Non-Parametric Classifier for Test-Time Adaptation (https://arxiv.org/abs/2304.12566)"


@register("layer", "distillation", paper=_PAPER, module="litmix.layers")
class NonParametricHead(nn.Module):
    """k-nearest-neighbour classifier over a growing memory of features (AdaNPC's non-parametric head).

    Zhang et al., "AdaNPC: Exploring Non-Parametric Classifier for Test-Time Adaptation", ICML 2023,
    https://arxiv.org/abs/2304.12566 (reference code: yfzhang114/AdaNPC ``domainbed/adapt_algorithms.py``). The
    memory holds L2-normalised features (buffer ``memory``, ``N x in_features``) and their labels (``labels``).
    A query's score for class ``c`` is ``sum_j w_j [y_j = c]`` over its ``k`` most cosine-similar memory entries,
    ``w = softmax(sim / temperature)``: the rows are vote shares summing to 1 (the reference adds ``1e-5`` and
    clamps at 1 before its softmax; we keep the shares, so that a confidence threshold reads them directly).
    :meth:`add` appends entries (test samples with their pseudo-labels, in AdaNPC).

    Args:
        in_features: feature size, >= 1.
        num_classes: number of classes, >= 2.
        k: neighbours per query, >= 1 (fewer while the memory is smaller; paper default 100, 10 on small data).
        temperature: softmax temperature of the neighbour weights, > 0 (paper: 0.1).
        max_memory: keep at most this many entries (oldest dropped first), >= 1, or ``None`` for no limit.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value out of range (``k < 1``, ``temperature <= 0`` ...), naming it; in :meth:`add` and
            :meth:`forward`, features whose size is not ``in_features``, labels outside ``[0, num_classes)`` or
            of another length, and a query on an empty memory, before any compute.

    Example:
        >>> head = NonParametricHead(in_features=2, num_classes=2, k=2)
        >>> head.add(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), torch.tensor([0, 0, 1]))
        3
        >>> head(torch.tensor([[1.0, 0.05], [0.1, 1.0]])).argmax(-1).tolist()
        [0, 1]
        >>> len(head)
        3
    """

    memory: Tensor
    labels: Tensor

    def __init__(
        self, in_features: int, num_classes: int, k: int = 10, temperature: float = 0.1, max_memory: int | None = None
    ) -> None:
        owner = type(self).__name__
        self.in_features = check_int(owner, "in_features", in_features, low=1)
        self.num_classes = check_int(owner, "num_classes", num_classes, low=2)
        self.k = check_int(owner, "k", k, low=1)
        self.temperature = check_float(owner, "temperature", temperature, low=0.0, low_open=True)
        self.max_memory = check_int(owner, "max_memory", max_memory, low=1, allow_none=True)
        super().__init__()
        self.register_buffer("memory", torch.zeros(0, self.in_features))
        self.register_buffer("labels", torch.zeros(0, dtype=torch.long))

    def __len__(self) -> int:
        """Number of memory entries."""
        return int(self.labels.shape[0])

    def _check_features(self, x: Tensor, where: str) -> None:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}(in_features={self.in_features}).{where}: got features of shape "
                f"{tuple(x.shape)}; expected (batch, {self.in_features})"
            )

    @torch.no_grad()
    def add(self, features: Tensor, labels: Tensor) -> int:
        """Append L2-normalised ``features`` with integer ``labels``; returns the memory size."""
        self._check_features(features, "add")
        if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(
                f"{type(self).__name__}.add: labels of shape {tuple(labels.shape)} do not match "
                f"{features.shape[0]} features"
            )
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"{type(self).__name__}(num_classes={self.num_classes}).add: labels must be in "
                f"[0, {self.num_classes}), got [{int(labels.min())}, {int(labels.max())}]"
            )
        feats = nn.functional.normalize(features.detach().float(), dim=1).to(self.memory.device)
        self.memory = torch.cat([self.memory, feats])
        self.labels = torch.cat([self.labels, labels.detach().long().to(self.labels.device)])
        if self.max_memory is not None and len(self) > self.max_memory:
            self.memory, self.labels = self.memory[-self.max_memory :], self.labels[-self.max_memory :]
        return len(self)

    @torch.no_grad()
    def forward(self, features: Tensor) -> Tensor:
        """Vote shares ``(batch, num_classes)`` of the ``k`` nearest memory entries (rows sum to 1)."""
        self._check_features(features, "forward")
        if len(self) == 0:
            raise ValueError(f"{type(self).__name__}: the memory is empty; add() labelled features first")
        q = nn.functional.normalize(features.float(), dim=1).to(self.memory.device)
        sim = q @ self.memory.T
        top, idx = sim.topk(min(self.k, len(self)), dim=1)
        weights = torch.softmax(top / self.temperature, dim=1)
        onehot = nn.functional.one_hot(self.labels[idx], self.num_classes).to(weights.dtype)
        return (weights.unsqueeze(-1) * onehot).sum(1)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Take the checkpoint's memory size (the memory grows)."""
        for name in ("memory", "labels"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
