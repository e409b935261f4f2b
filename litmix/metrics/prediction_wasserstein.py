"""1-D Wasserstein distance between the unlearned and the retrained model's predictions (torchmetrics)."""

from __future__ import annotations

import torch
from torch import Tensor

from litmix.functional.unlearning_metrics import wasserstein_1d
from litmix.metrics._indexed_rows import IndexedRows
from litmix.metrics.forget_quality import _check_reference
from litmix.registry import register

_MODEL, _REFERENCE = 0, 1


@register(
    "metric",
    "unlearning",
    paper="Deep Regression Unlearning (https://arxiv.org/abs/2210.08196)",
    module="litmix.metrics",
)
class PredictionWasserstein(IndexedRows):
    """W1 distance between the unlearned model's and the retrained model's predictions on the forget set.

    Per forget item one prediction (a regression output, or e.g. the true-class probability of a classifier);
    the reference predictions come from ``reference_values`` or ``update(..., reference=True)``. 0 = the same
    distribution as retraining (Deep Regression Unlearning's metric). Equals
    ``scipy.stats.wasserstein_distance``; rows are de-duplicated by index.

    Args:
        reference_values: the retrained model's predictions (finite numbers), or None.
        **kwargs: torchmetrics ``Metric`` options.

    Raises:
        TypeError: ``reference_values`` not a list of numbers.
        ValueError: an empty or non-finite ``reference_values``.

    Example:
        >>> m = PredictionWasserstein(reference_values=[5.0, 6.0, 8.0])
        >>> m.update(torch.tensor([0.0, 1.0, 3.0]), torch.arange(3))
        >>> m.compute()
        tensor(5.)
    """

    higher_is_better = False

    def __init__(self, reference_values: list[float] | None = None, **kwargs: object) -> None:
        ref = _check_reference(type(self).__name__, reference_values)
        super().__init__(**kwargs)
        self.reference_values = ref

    def update(self, preds: Tensor, index: Tensor, reference: bool = False) -> None:
        """Add per-item predictions of the unlearned (or, ``reference=True``, the retrained) model."""
        self._add(preds.reshape(-1), index, _REFERENCE if reference else _MODEL)

    def compute(self) -> Tensor:
        """The W1 distance (NaN when either side is empty)."""
        model = self.rows(_MODEL)[0].reshape(-1)
        if self.reference_values is not None:
            ref = torch.tensor(self.reference_values, dtype=torch.float64)
        else:
            ref = self.rows(_REFERENCE)[0].reshape(-1)
        if model.numel() == 0 or ref.numel() == 0:
            return torch.tensor(float("nan"))
        return wasserstein_1d(model.cpu(), ref.cpu())
