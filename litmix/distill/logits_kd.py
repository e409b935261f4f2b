"""Hinton logits KD as a DistillationModule term (the shared KD maths, one or several teachers)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from litmix.distill.base import DistillTerm
from litmix.functional.distill_losses import kd_rows
from litmix.functional.distillation import kd_loss
from litmix.registry import register
from litmix.validation import check_choice, check_float

AGGREGATES = ("mean_prob", "mean_logit")


def aggregate_teachers(teachers: list[Tensor], temperature: float, aggregate: str) -> Tensor:
    """Teacher log-probabilities at ``temperature`` (float32) from one or several teachers' logits.

    ``"mean_prob"`` averages the probabilities (MEAL V2's ensemble target), ``"mean_logit"`` the logits.

    Example:
        >>> t = [torch.tensor([[9.0, 0.0]]), torch.tensor([[0.0, 9.0]])]
        >>> aggregate_teachers(t, 1.0, "mean_prob").exp().round(decimals=3).tolist()
        [[0.5, 0.5]]
    """
    if len(teachers) == 1:
        return F.log_softmax(teachers[0].float() / temperature, dim=-1)
    if aggregate == "mean_logit":
        return F.log_softmax(torch.stack([t.float() for t in teachers]).mean(0) / temperature, dim=-1)
    logps = torch.stack([F.log_softmax(t.float() / temperature, dim=-1) for t in teachers])
    return torch.logsumexp(logps, dim=0) - math.log(len(teachers))


@register(
    "loss",
    "distillation",
    paper="Distilling the Knowledge in a Neural Network (https://arxiv.org/abs/1503.02531)",
    module="litmix.distill",
)
class LogitsKDTerm(DistillTerm):
    """Hinton KD: ``T² · KL(teacher ‖ student)`` of the tempered softmaxes (batchmean, float32).

    Paper: "Distilling the Knowledge in a Neural Network", Hinton, Vinyals and Dean
    (https://arxiv.org/abs/1503.02531). The maths is the one :class:`~litmix.callbacks.KnowledgeDistillation`
    uses (:func:`litmix.functional.distill_losses.kd_rows` for ``[N, C]`` logits,
    :func:`litmix.functional.distillation.kd_loss` for masked ``[B, L, V]`` logits, averaged over tokens).
    With several teachers the target is their aggregate (``"mean_prob"``, MEAL V2: the mean probability at
    ``T``; or ``"mean_logit"``). With ``T = 1`` the KL equals MEAL V2's soft cross-entropy minus the
    (constant) teacher entropy: the same gradients.

    Spec: ``{"kind": "kd", "temperature": 4.0, "weight": 0.9}`` (paths default to ``"."``, the outputs).

    Takes :class:`~litmix.distill.base.DistillTerm`'s ``student`` and ``teacher`` (paths of the logits),
    ``weight``, ``teacher_index`` (``None``: every teacher, aggregated) and ``name`` (default ``"kd"``), and:

    Args:
        temperature: softmax temperature, a finite number > 0.
        aggregate: ``"mean_prob"`` or ``"mean_logit"``; ``None`` takes the module's ``aggregate``.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value outside its range, naming it; in ``forward``, logits of different shapes.

    Example:
        >>> term = LogitsKDTerm(temperature=2.0)
        >>> s = torch.tensor([[2.0, 0.0, -1.0]])
        >>> term(s, [s]).item()
        0.0
    """

    kind: ClassVar[str] = "kd"
    reads_all_teachers: ClassVar[bool] = True

    def __init__(self, *args: Any, temperature: float = 4.0, aggregate: str | None = None, **common: Any) -> None:
        super().__init__(*args, **common)
        owner = type(self).__name__
        self.temperature = check_float(owner, "temperature", temperature, low=0.0, low_open=True)
        if aggregate is not None:
            check_choice(owner, "aggregate", aggregate, AGGREGATES)
        self.aggregate = aggregate

    def spec(self) -> dict[str, Any]:
        """Constructor arguments and ``kind``."""
        return {**super().spec(), "temperature": self.temperature, "aggregate": self.aggregate}

    def teacher_logprob(self, teachers: list[Tensor]) -> Tensor:
        """The (aggregated) teacher log-probabilities at this term's temperature."""
        return aggregate_teachers(teachers, self.temperature, self.aggregate or "mean_prob")

    def forward(self, student: Tensor, teachers: list[Tensor], mask: Tensor | None = None) -> Tensor:
        """The KD term; ``mask`` (``[B, L]``) keeps the real tokens of ``[B, L, V]`` logits."""
        self.check_same_shapes(student, teachers)
        target = self.teacher_logprob(teachers)
        if mask is None and student.dim() == 2:
            return kd_rows(student, target, self.temperature)
        return kd_loss(student, target, temperature=self.temperature, mask=mask, teacher_is_logprob=True)
