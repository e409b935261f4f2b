"""MEAL V2's logit discriminator as a DistillationModule term (registered as kind ``"logit_disc"``)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litmix.distill.base import DistillTerm
from litmix.distill.logits_kd import aggregate_teachers
from litmix.distill.terms import TERM_KINDS
from litmix.registry import register
from litmix.validation import check_bool, check_float, check_int

__all__ = ["LogitDiscriminatorTerm"]


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; the gradient multiplied by ``-scale`` backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


@register(
    "loss",
    "distillation",
    paper=(
        "MEAL V2: Boosting Vanilla ResNet-50 to 80%+ Top-1 Accuracy on ImageNet without Tricks "
        "(https://arxiv.org/abs/2009.08453)"
    ),
)
class LogitDiscriminatorTerm(DistillTerm):
    """A small MLP discriminator telling student logits from (mean) teacher logits, as in MEAL V2.

    Paper: "MEAL V2: Boosting Vanilla ResNet-50 to 80%+ Top-1 Accuracy on ImageNet without Tricks", Shen and
    Savvides (https://arxiv.org/abs/2009.08453). The discriminator sees the student's log-probabilities (label 1)
    and the teachers' mean-probability log-probabilities (label 0; detached) and is trained with
    binary cross-entropy. Its parameters are the term's own, so :class:`~litmix.plugins.DistillationModule`
    optimises them with the student (group ``"distill_terms"``), one optimizer, as MEAL V2 does.

    ``adversarial=True`` (default): the student's input to the discriminator passes a gradient-reversal layer
    (scale ``reversal``), so the discriminator minimises the loss while the student maximises it (it learns to
    produce teacher-like logits). ``adversarial=False`` reproduces MEAL V2's reference code, which minimises the
    summed loss jointly (no reversal). Inputs are log-softmax normalised, so raw student logits and cached
    teacher log-probabilities (:meth:`~litmix.datamodules.TeacherCacheDataModule.as_teacher`) are comparable.
    Architecture: ``C -> hidden -> hidden // 4 -> 1`` with ReLUs (MEAL V2: 1000 -> 125 -> 15 -> 2 1x1 convs).
    :attr:`last_accuracy` holds the discriminator's accuracy on the last batch (a detached tensor).

    Registered as kind ``"logit_disc"`` of :func:`litmix.distill.build_term` when this module is imported (it is
    imported with :mod:`litmix.datamodules`); a term object can always be passed directly.

    Takes :class:`~litmix.distill.base.DistillTerm`'s ``student`` and ``teacher`` (paths of the logits),
    ``weight``, ``teacher_index`` (``None``: all teachers, averaged in probability) and ``name`` (default
    ``"logit_disc"``), and:

    Args:
        hidden: width of the discriminator's first hidden layer, >= 4.
        adversarial: reverse the gradient reaching the student.
        reversal: gradient-reversal scale, a finite number > 0.
        num_classes: the logits' width when it cannot be read from the student.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value outside its range, naming it; in ``bind``, an unknown width; in ``forward``,
            student and teacher logits of different shapes.

    Example:
        >>> term = LogitDiscriminatorTerm(hidden=8, num_classes=4)
        >>> term.bind(None, None)
        >>> s = torch.randn(6, 4, requires_grad=True)
        >>> loss = term(s, [torch.randn(6, 4)])
        >>> loss.backward()
        >>> loss.dim(), s.grad is not None, 0.0 <= float(term.last_accuracy) <= 1.0
        (0, True, True)
    """

    kind: ClassVar[str] = "logit_disc"
    reads_all_teachers: ClassVar[bool] = True

    def __init__(
        self,
        *args: Any,
        hidden: int = 64,
        adversarial: bool = True,
        reversal: float = 1.0,
        num_classes: int | None = None,
        **common: Any,
    ) -> None:
        super().__init__(*args, **common)
        owner = type(self).__name__
        self.hidden = check_int(owner, "hidden", hidden, low=4, high=1 << 16)
        self.adversarial = check_bool(owner, "adversarial", adversarial)
        self.reversal = check_float(owner, "reversal", reversal, low=0.0, low_open=True)
        self.num_classes = check_int(owner, "num_classes", num_classes, low=2, high=1 << 20, allow_none=True)
        self.discriminator: nn.Module | None = None
        self.last_accuracy: Tensor | None = None

    def bind(self, student_width: int | None, teacher_width: int | None) -> None:
        """Build the discriminator for ``num_classes`` (or the student's logit width)."""
        width = self.num_classes or student_width or teacher_width
        if width is None:
            raise ValueError(
                f"{type(self).__name__}: the logits' width cannot be read from the student; pass num_classes"
            )
        inner = max(2, self.hidden // 4)
        self.discriminator = nn.Sequential(
            nn.Linear(width, self.hidden), nn.ReLU(), nn.Linear(self.hidden, inner), nn.ReLU(), nn.Linear(inner, 1)
        )

    def spec(self) -> dict[str, Any]:
        """Constructor arguments and ``kind``."""
        return {
            **super().spec(),
            "hidden": self.hidden,
            "adversarial": self.adversarial,
            "reversal": self.reversal,
            "num_classes": self.num_classes,
        }

    def forward(self, student: Tensor, teachers: list[Tensor], mask: Tensor | None = None) -> Tensor:
        """The discriminator's BCE on student (label 1) and teacher (label 0) log-probabilities."""
        if self.discriminator is None:
            raise RuntimeError(f"{type(self).__name__}: call bind() first (DistillationModule does)")
        self.check_same_shapes(student, teachers)
        width = student.shape[-1]
        s = F.log_softmax(student.float(), dim=-1).reshape(-1, width)
        t = aggregate_teachers([x.detach() for x in teachers], 1.0, "mean_prob").reshape(-1, width)
        if mask is not None:
            keep = mask.reshape(-1).bool()
            s, t = s[keep], t[keep]
        if self.adversarial:
            s = _ReverseGradient.apply(s, self.reversal)
        d_s = self.discriminator(s).squeeze(-1)
        d_t = self.discriminator(t).squeeze(-1)
        loss = 0.5 * (
            F.binary_cross_entropy_with_logits(d_s, torch.ones_like(d_s))
            + F.binary_cross_entropy_with_logits(d_t, torch.zeros_like(d_t))
        )
        self.last_accuracy = 0.5 * ((d_s.detach() > 0).float().mean() + (d_t.detach() <= 0).float().mean())
        return loss


TERM_KINDS.setdefault(LogitDiscriminatorTerm.kind, LogitDiscriminatorTerm)
