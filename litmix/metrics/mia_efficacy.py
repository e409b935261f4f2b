"""MIA-Efficacy (share of forget samples an entropy attacker calls non-members) as a torchmetrics ``Metric``."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from litmix.functional.unlearning_metrics import mia_efficacy
from litmix.metrics._indexed_rows import IndexedRows
from litmix.registry import register
from litmix.validation import check_choice

_SPLITS = ("retain", "test", "forget")


@register(
    "metric",
    "unlearning",
    paper="Model Sparsity Can Simplify Machine Unlearning (https://arxiv.org/abs/2304.04934)",
    module="litmix.metrics",
)
class MIAEfficacy(IndexedRows):
    """MIA-Efficacy: the share of forget samples a membership attacker classifies as non-members.

    The attacker is fit on retain (members) vs test (non-members) samples on a 1-D feature of the
    model's predictions, ``feature="entropy"`` (prediction entropy, as the paper's entropy attack) or ``"loss"``
    (cross-entropy), as the best balanced-accuracy threshold
    (:func:`~litmix.functional.unlearning_metrics.mia_efficacy`), then applied to the forget set. Higher = more
    forgotten (the paper reports it for the retrained model as the target). Rows are de-duplicated by
    ``(split, index)``.

    Args:
        feature: ``"entropy"`` or ``"loss"``.
        **kwargs: torchmetrics ``Metric`` options.

    Raises:
        TypeError: a non-string ``feature``.
        ValueError: an unknown ``feature``; in ``update``, an unknown split; in ``compute``, a split never seen.

    Example:
        >>> m = MIAEfficacy("loss")
        >>> sure, unsure = torch.tensor([[5.0, 0.0]]).repeat(3, 1), torch.tensor([[0.0, 0.0]]).repeat(3, 1)
        >>> y = torch.zeros(3, dtype=torch.long)
        >>> m.update(sure, y, torch.arange(3), "retain"); m.update(unsure, y, torch.arange(3), "test")
        >>> m.update(unsure[:2], y[:2], torch.arange(2), "forget")     # forget looks like test data
        >>> m.compute()
        tensor(1.)
    """

    higher_is_better = True

    def __init__(self, feature: Literal["entropy", "loss"] = "entropy", **kwargs: object) -> None:
        check_choice(type(self).__name__, "feature", feature, ("entropy", "loss"))
        super().__init__(**kwargs)
        self.feature = feature

    def update(self, logits: Tensor, labels: Tensor, index: Tensor, split: str) -> None:
        """Add classifier logits ``[B, C]`` of ``split`` (``"retain"``, ``"test"`` or ``"forget"``)."""
        if split not in _SPLITS:
            raise ValueError(f"{type(self).__name__}.update(split={split!r}): split must be one of {_SPLITS}")
        logp = torch.log_softmax(logits.detach().float(), dim=-1)
        if self.feature == "entropy":
            score = -(logp.exp() * logp).sum(-1)
        else:
            score = -logp.gather(-1, labels.reshape(-1, 1)).squeeze(-1)
        self._add(score, index, _SPLITS.index(split))

    def compute(self) -> Tensor:
        """The share of forget samples called non-members."""
        parts = [self.rows(g)[0].reshape(-1) for g in range(3)]
        for name, part in zip(_SPLITS, parts, strict=True):
            if part.numel() == 0:
                raise ValueError(f"{type(self).__name__}.compute: no {name} samples were given")
        return mia_efficacy(*parts)
