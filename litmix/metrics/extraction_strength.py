"""Extraction strength of a causal LM on its answers (open-unlearning's definition), as a torchmetrics ``Metric``."""

from __future__ import annotations

import torch
from torch import Tensor

from litmix.functional.unlearning_metrics import extraction_strength
from litmix.metrics._indexed_rows import IndexedRows
from litmix.registry import register


@register(
    "metric",
    "unlearning",
    paper="Quantifying Memorization Across Neural Language Models (https://arxiv.org/abs/2202.07646)",
    module="litmix.metrics",
)
class ExtractionStrength(IndexedRows):
    """Mean extraction strength ``1 - k/|y|`` over items (open-unlearning's ``extraction_strength``).

    ``k`` = the shortest answer prefix after which greedy teacher-forced predictions reproduce the rest of the
    answer (:func:`~litmix.functional.unlearning_metrics.extraction_strength`; ``k = |y| - 1`` when no suffix
    matches, as upstream). 1 = the answer is extracted from the question alone; lower on the forget set = more
    forgotten. Rows are de-duplicated by index.

    Raises:
        ValueError: in ``update``, logits that are not ``[B, T, V]``.

    Example:
        >>> m = ExtractionStrength()
        >>> logits = torch.full((2, 4, 5), -1.0)
        >>> for t, tok in enumerate([2, 3, 4]): logits[:, t, tok] = 1.0
        >>> m.update(logits, torch.tensor([[-100, 2, 3, 4], [-100, 0, 3, 4]]), torch.tensor([0, 1]))
        >>> m.compute()                                 # (1 + 2/3) / 2
        tensor(0.8333, dtype=torch.float64)
    """

    def update(self, logits: Tensor, labels: Tensor, index: Tensor) -> None:
        """Add a batch of LM logits ``[B, T, V]`` and labels (``-100`` on prompt and padding)."""
        if logits.dim() != 3:
            raise ValueError(f"{type(self).__name__}.update: logits must be [B, T, V], got {tuple(logits.shape)}")
        self._add(extraction_strength(logits.detach(), labels), index, 0)

    def compute(self) -> Tensor:
        """Mean extraction strength over distinct items with answer tokens (NaN when none)."""
        values = self.rows(0)[0].reshape(-1)
        values = values[~torch.isnan(values)]
        if values.numel() == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return values.mean()
