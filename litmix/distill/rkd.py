"""Relational KD (distance + angle, Park et al.) as a DistillationModule term."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from litmix.distill.base import DistillTerm
from litmix.functional.distill_losses import rkd_angle_loss, rkd_distance_loss
from litmix.registry import register
from litmix.validation import check_float


@register(
    "loss",
    "distillation",
    paper="Relational Knowledge Distillation (https://arxiv.org/abs/1904.05068)",
    module="litmix.distill",
)
class RKDTerm(DistillTerm):
    """Relational KD: ``distance_weight · RKD-D + angle_weight · RKD-A`` on per-sample embeddings.

    Paper: "Relational Knowledge Distillation", Park, Kim, Lu and Cho (https://arxiv.org/abs/1904.05068).
    Features are flattened per sample; student and teacher widths may differ (no projector: the relations are
    width-free). The paper weights distance 25 and angle 50; the defaults keep that 1:2 ratio.

    Spec: ``{"kind": "rkd", "student": "net.1", "teacher": "4", "distance_weight": 1.0, "angle_weight": 2.0}``.

    Takes :class:`~litmix.distill.base.DistillTerm`'s ``student``, ``teacher``, ``weight``, ``teacher_index``
    (``None``: the first teacher) and ``name`` (default ``"rkd"``), and:

    Args:
        distance_weight: weight of the distance loss, a finite number >= 0.
        angle_weight: weight of the angle loss, a finite number >= 0.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value outside its range; in ``forward``, batches of different sizes.

    Example:
        >>> import torch
        >>> e = torch.randn(6, 4)
        >>> RKDTerm()(e, [torch.cat([e, e], 1)]).item() < 1e-5
        True
    """

    kind: ClassVar[str] = "rkd"

    def __init__(self, *args: Any, distance_weight: float = 1.0, angle_weight: float = 2.0, **common: Any) -> None:
        super().__init__(*args, **common)
        owner = type(self).__name__
        self.distance_weight = check_float(owner, "distance_weight", distance_weight, low=0.0)
        self.angle_weight = check_float(owner, "angle_weight", angle_weight, low=0.0)

    def spec(self) -> dict[str, Any]:
        """Constructor arguments and ``kind``."""
        return {**super().spec(), "distance_weight": self.distance_weight, "angle_weight": self.angle_weight}

    def forward(self, student: Tensor, teachers: list[Tensor], mask: Tensor | None = None) -> Tensor:
        """The weighted sum of the distance and angle losses against the (first) teacher read."""
        teacher = teachers[0]
        with self.named_errors():
            loss = self.distance_weight * rkd_distance_loss(student, teacher)
            if self.angle_weight:
                loss = loss + self.angle_weight * rkd_angle_loss(student, teacher)
        return loss
