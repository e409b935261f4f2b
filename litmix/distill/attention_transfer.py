"""Attention transfer (Zagoruyko & Komodakis) as a DistillationModule term."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from litmix.distill.base import DistillTerm
from litmix.functional.distill_losses import attention_transfer_loss
from litmix.registry import register
from litmix.validation import check_float


@register(
    "loss",
    "distillation",
    paper="Paying More Attention to Attention (https://arxiv.org/abs/1612.03928)",
    module="litmix.distill",
)
class AttentionTransferTerm(DistillTerm):
    """Attention transfer: match the normalised spatial attention maps ``mean_c |f|^p`` of student and teacher.

    Paper: "Paying More Attention to Attention: Improving the Performance of Convolutional Neural Networks via
    Attention Transfer", Zagoruyko and Komodakis (https://arxiv.org/abs/1612.03928). Works on ``[B, C, H, W]``
    maps (channel counts may differ; spatial sizes that differ are average-pooled to the smaller) and on
    ``[B, L, D]`` token features (the map is over tokens). No projector. The paper's weight is ``β = 1000``
    (over the sum of ``β/2`` per map); ours multiplies the mean squared difference.

    Spec: ``{"kind": "at", "student": "layer2", "teacher": "layer3", "weight": 100.0}``.

    Takes :class:`~litmix.distill.base.DistillTerm`'s ``student``, ``teacher``, ``weight``, ``teacher_index``
    (``None``: the first teacher) and ``name`` (default ``"at"``), and:

    Args:
        p: exponent of the attention map, a finite number > 0 (the paper uses 2).

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value outside its range; in ``forward``, maps that cannot be matched.

    Example:
        >>> import torch
        >>> f = torch.randn(2, 4, 5, 5)
        >>> AttentionTransferTerm()(f, [torch.cat([f, f], 1)]).item() < 1e-6
        True
    """

    kind: ClassVar[str] = "at"

    def __init__(self, *args: Any, p: float = 2.0, **common: Any) -> None:
        super().__init__(*args, **common)
        self.p = check_float(type(self).__name__, "p", p, low=0.0, low_open=True)

    def spec(self) -> dict[str, Any]:
        """Constructor arguments and ``kind``."""
        return {**super().spec(), "p": self.p}

    def forward(self, student: Tensor, teachers: list[Tensor], mask: Tensor | None = None) -> Tensor:
        """The attention-transfer loss against the (first) teacher read."""
        with self.named_errors():
            return attention_transfer_loss(student, teachers[0], p=self.p)
