"""Weighted mean of per-sample values, de-duplicated by sample index (DDP-padding safe)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from litmix.metrics._dedup import first_occurrence


class IndexedMean(Metric):
    """``sum(value) / sum(weight)`` over distinct sample indices.

    Per-sample rows are kept in ``"cat"`` states with their index, so items repeated by the evaluation
    ``DistributedSampler`` (which pads the last batch) are counted once, as on one process. Used for
    accuracy (``value`` = correct count, ``weight`` = count: 1 per image, answer tokens per sequence)
    and mean losses.

    Example:
        >>> m = IndexedMean()
        >>> m.update(torch.tensor([1.0, 0.0]), torch.tensor([0, 1]))
        >>> m.update(torch.tensor([1.0]), torch.tensor([0]))        # index 0 again: ignored
        >>> m.compute()
        tensor(0.5000)
        >>> m.reset(); m.update(torch.tensor([3.0, 1.0]), torch.tensor([0, 1]), weight=torch.tensor([4.0, 1.0]))
        >>> m.compute()
        tensor(0.8000)
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    values: list[Tensor]
    weights: list[Tensor]
    indices: list[Tensor]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("weights", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")

    def update(self, value: Tensor, index: Tensor, weight: Tensor | None = None) -> None:
        """Add per-sample ``value`` (and ``weight``, default 1) for the samples ``index``."""
        value = value.detach().reshape(-1).double()
        self.values.append(value)
        self.weights.append(torch.ones_like(value) if weight is None else weight.detach().reshape(-1).double())
        self.indices.append(index.detach().reshape(-1).long().to(value.device))

    def compute(self) -> Tensor:
        """The weighted mean over distinct indices (NaN when empty)."""
        values, weights, indices = (dim_zero_cat(s) for s in (self.values, self.weights, self.indices))
        keep = first_occurrence(indices)
        total = weights[keep].sum()
        if total == 0:
            return torch.tensor(float("nan"), device=values.device)
        return (values[keep].sum() / total).float()
