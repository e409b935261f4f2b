"""FitNets hint term: a learned projector maps the student feature to the teacher's width, then MSE."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from litmix.distill.base import DistillTerm
from litmix.distill.projector import FeatureProjector
from litmix.functional.distill_losses import fitnet_loss
from litmix.registry import register
from litmix.validation import check_bool, check_int


@register(
    "loss",
    "distillation",
    paper="FitNets: Hints for Thin Deep Nets (https://arxiv.org/abs/1412.6550)",
    module="litmix.distill",
)
class FitNetTerm(DistillTerm):
    """FitNets hint: ``MSE(projector(student feature), teacher feature)``.

    Paper: "FitNets: Hints for Thin Deep Nets", Romero et al. (https://arxiv.org/abs/1412.6550). The regressor
    is a :class:`~litmix.distill.FeatureProjector` (Linear on ``[..., D]``, 1x1 conv on ``[B, C, H, W]``) from
    the student width to the teacher width, created when the widths differ (or always with
    ``projector=True``), trained with the student. Widths are read from the modules
    (:func:`litmix.distill.base.infer_width`) unless ``student_dim``/``teacher_dim`` are given. Trained jointly
    with the other terms (not the paper's separate first stage).

    Spec: ``{"kind": "fitnet", "student": "layers.1", "teacher": "layers.3", "weight": 1.0}``.

    Args:
        student: student module path.
        teacher: teacher module path.
        weight: weight of the term, a finite number >= 0.
        teacher_index: which teacher (``None``: the first).
        name: logged name (default ``"fitnet"``).
        student_dim: student feature width (``None``: read from the module).
        teacher_dim: teacher feature width (``None``: read from the module).
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

    def __init__(
        self,
        student: str = ".",
        teacher: str = ".",
        weight: float = 1.0,
        teacher_index: int | None = None,
        name: str | None = None,
        student_dim: int | None = None,
        teacher_dim: int | None = None,
        projector: bool | None = None,
    ) -> None:
        super().__init__(student, teacher, weight, teacher_index, name)
        owner = type(self).__name__
        self.student_dim = check_int(owner, "student_dim", student_dim, low=1, allow_none=True)
        self.teacher_dim = check_int(owner, "teacher_dim", teacher_dim, low=1, allow_none=True)
        self.use_projector = None if projector is None else check_bool(owner, "projector", projector)
        self.projector: FeatureProjector | None = None

    def spec(self) -> dict[str, Any]:
        """Constructor arguments and ``kind``."""
        return {
            **super().spec(),
            "student_dim": self.student_dim,
            "teacher_dim": self.teacher_dim,
            "projector": self.use_projector,
        }

    def bind(self, student_width: int | None, teacher_width: int | None) -> None:
        """Create the projector when the widths differ (or when asked)."""
        s = self.student_dim or student_width
        t = self.teacher_dim or teacher_width
        wanted = self.use_projector
        if wanted is False:
            if s is not None and t is not None and s != t:
                raise ValueError(
                    f"{type(self).__name__}(student={self.student_path!r}, teacher={self.teacher_path!r}, "
                    f"projector=False): widths {s} and {t} differ; allow a projector"
                )
            return
        if wanted or s != t:
            if s is None or t is None:
                which = "student_dim" if s is None else "teacher_dim"
                raise ValueError(
                    f"{type(self).__name__}(student={self.student_path!r}, teacher={self.teacher_path!r}): cannot read "
                    f"the feature width from the module; pass {which}="
                )
            self.projector = FeatureProjector(s, t)

    def forward(self, student: Tensor, teachers: list[Tensor], mask: Tensor | None = None) -> Tensor:
        """The hint loss against the (first) teacher read."""
        s = self.projector(student) if self.projector is not None else student
        try:
            return fitnet_loss(s, teachers[0])
        except ValueError as err:
            raise ValueError(
                f"{type(self).__name__}(student={self.student_path!r}, teacher={self.teacher_path!r}): {err}"
            ) from None
