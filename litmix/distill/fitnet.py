"""FitNets hint term: a learned projector maps the student feature to the teacher's width, then MSE."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from litmix.distill.base import ProjectedTerm
from litmix.distill.projector import FeatureProjector
from litmix.functional.distill_losses import fitnet_loss
from litmix.registry import register
from litmix.validation import check_bool


@register(
    "loss",
    "distillation",
    paper="FitNets: Hints for Thin Deep Nets (https://arxiv.org/abs/1412.6550)",
    module="litmix.distill",
)
class FitNetTerm(ProjectedTerm):
    """FitNets hint: ``MSE(projector(student feature), teacher feature)``.

    Paper: "FitNets: Hints for Thin Deep Nets", Romero et al. (https://arxiv.org/abs/1412.6550). The regressor
    is a :class:`~litmix.distill.FeatureProjector` (Linear on ``[..., D]``, 1x1 conv on ``[B, C, H, W]``) from
    the student width to the teacher width, created when the widths differ (or always with
    ``projector=True``), trained with the student. Widths are read from the modules
    (:func:`litmix.distill.base.infer_width`) unless ``student_dim``/``teacher_dim`` are given
    (:class:`~litmix.distill.base.ProjectedTerm`). Trained jointly with the other terms (not the paper's
    separate first stage).

    Spec: ``{"kind": "fitnet", "student": "layers.1", "teacher": "layers.3", "weight": 1.0}``.

    Takes :class:`~litmix.distill.base.ProjectedTerm`'s ``student``, ``teacher``, ``weight``,
    ``teacher_index`` (``None``: the first teacher), ``name`` (default ``"fitnet"``), ``student_dim`` and
    ``teacher_dim``, and:

    Args:
        projector: ``None`` = a projector when the widths differ; ``True`` always; ``False`` never.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value outside its range; at binding, widths that differ with ``projector=False``;
            in ``forward``, features that do not match.

    Example:
        >>> import torch
        >>> term = FitNetTerm(student="0", teacher="0")
        >>> term.bind(8, 32)
        >>> term(torch.randn(4, 8), [torch.randn(4, 32)]).shape
        torch.Size([])
    """

    kind: ClassVar[str] = "fitnet"

    def __init__(self, *args: Any, projector: bool | None = None, **common: Any) -> None:
        super().__init__(*args, **common)
        self.use_projector = None if projector is None else check_bool(type(self).__name__, "projector", projector)
        self.projector: FeatureProjector | None = None

    def spec(self) -> dict[str, Any]:
        """Constructor arguments and ``kind``."""
        return {**super().spec(), "projector": self.use_projector}

    def bind(self, student_width: int | None, teacher_width: int | None) -> None:
        """Create the projector when the widths differ (or when asked)."""
        s, t = self.widths(student_width, teacher_width)
        if self.use_projector is False:
            if s is not None and t is not None and s != t:
                raise ValueError(f"{self.where(projector=False)}: widths {s} and {t} differ; allow a projector")
            return
        if self.use_projector or s != t:
            self.projector = FeatureProjector(*self.required_widths(s, t))

    def forward(self, student: Tensor, teachers: list[Tensor], mask: Tensor | None = None) -> Tensor:
        """The hint loss against the (first) teacher read."""
        s = self.projector(student) if self.projector is not None else student
        with self.named_errors():
            return fitnet_loss(s, teachers[0])
