"""TOFU truth ratio as a torchmetrics ``Metric`` (per-item values kept by index for forget quality and histograms)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from litmix.functional.unlearning_metrics import truth_ratio, truth_ratio_aggregate
from litmix.metrics._indexed_rows import IndexedRows
from litmix.registry import register
from litmix.validation import check_choice


@register(
    "metric",
    "unlearning",
    paper="TOFU: A Task of Fictitious Unlearning for LLMs (https://arxiv.org/abs/2401.06121)",
    module="litmix.metrics",
)
class TruthRatio(IndexedRows):
    """TOFU truth ratio ``tr = exp(avgNLL(paraphrased) - mean_k avgNLL(perturbed_k))`` and its aggregate.

    Length-normalised (per-token mean) NLLs of the paraphrased right answer and of the ``K`` perturbed wrong
    answers of each item; ``tr`` = probability of the wrong answers over the right one
    (:func:`~litmix.functional.unlearning_metrics.truth_ratio`). :meth:`compute` gives TOFU's aggregate:
    ``aggregate="forget"``: ``mean(min(tr, 1/tr))`` (1 = the model cannot tell right from wrong);
    ``"retain"``: ``mean(max(0, 1 - tr))`` (higher = prefers the right answer; a model-utility component).
    :meth:`values` returns the per-item ratios (de-duplicated by index, sorted), the input of
    :class:`~litmix.metrics.ForgetQuality`.

    Args:
        aggregate: ``"forget"`` or ``"retain"``.
        **kwargs: torchmetrics ``Metric`` options.

    Raises:
        ValueError: an unknown ``aggregate``; in ``update``, mismatched batch sizes.
        TypeError: a non-string ``aggregate``.

    Example:
        >>> tr = TruthRatio("forget")
        >>> tr.update(torch.tensor([1.0, 0.5]), torch.tensor([[1.0, 1.0], [2.5, 2.5]]), torch.tensor([0, 1]))
        >>> tr.values()                                 # exp(0), exp(-2)
        tensor([1.0000, 0.1353], dtype=torch.float64)
        >>> tr.compute()                                # mean(min(tr, 1/tr))
        tensor(0.5677, dtype=torch.float64)
    """

    higher_is_better = True

    def __init__(self, aggregate: Literal["forget", "retain"] = "forget", **kwargs: object) -> None:
        check_choice(type(self).__name__, "aggregate", aggregate, ("forget", "retain"))
        super().__init__(**kwargs)
        self.aggregate = aggregate

    def update(self, paraphrased_nll: Tensor, perturbed_nll: Tensor, index: Tensor) -> None:
        """Add items: ``[B]`` (or ``[B, P]``) paraphrased and ``[B, K]`` perturbed per-token mean NLLs."""
        self._add(truth_ratio(paraphrased_nll, perturbed_nll), index, 0)

    def update_ratios(self, ratios: Tensor, index: Tensor) -> None:
        """Add already computed per-item truth ratios."""
        self._add(ratios.reshape(-1), index, 0)

    def values(self) -> Tensor:
        """Per-item truth ratios, one per distinct index, sorted by index."""
        return self.rows(0)[0].reshape(-1)

    def compute(self) -> Tensor:
        """TOFU's aggregate of the truth ratios (NaN when empty)."""
        tr = self.values()
        if tr.numel() == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return truth_ratio_aggregate(tr, self.aggregate)
