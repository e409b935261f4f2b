"""CRD-style contrastive distillation (InfoNCE with in-batch negatives) as a DistillationModule term."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from litmix.distill.base import ProjectedTerm
from litmix.distill.projector import FeatureProjector
from litmix.functional.distill_losses import info_nce_loss
from litmix.registry import register
from litmix.validation import check_float, check_int


def _pooled(feature: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> mean over H, W; ``[B, L, D]`` -> mean over L; ``[B, D]`` unchanged."""
    if feature.dim() == 4:
        return feature.float().mean((2, 3))
    if feature.dim() == 3:
        return feature.float().mean(1)
    return feature.float().flatten(1)


@register(
    "loss",
    "distillation",
    paper="Contrastive Representation Distillation (https://arxiv.org/abs/1910.10699)",
    module="litmix.distill",
)
class ContrastiveTerm(ProjectedTerm):
    """CRD-style contrastive distillation: InfoNCE between projected student and teacher embeddings.

    Paper: "Contrastive Representation Distillation", Tian, Krishnan and Isola (https://arxiv.org/abs/1910.10699).
    As in CRD, both features are pooled (``[B, C, H, W]`` over space, ``[B, L, D]`` over tokens) and mapped by
    learned linear heads (:class:`~litmix.distill.FeatureProjector`, trained with the student) to ``embed_dim``
    and L2-normalised. **Deviation:** the negatives are the other samples of the batch
    (:func:`~litmix.functional.distill_losses.info_nce_loss`), not CRD's memory bank of 16,384 negatives with
    its NCE estimator, so no dataset indices are needed; under DDP each rank contrasts within its own batch.

    Spec: ``{"kind": "crd", "student": "net.1", "teacher": "4", "embed_dim": 32, "temperature": 0.1}``.

    Takes :class:`~litmix.distill.base.ProjectedTerm`'s ``student`` (the penultimate feature in CRD),
    ``teacher``, ``weight`` (CRD: 0.8), ``teacher_index`` (``None``: the first teacher), ``name`` (default
    ``"crd"``), ``student_dim`` and ``teacher_dim``, and:

    Args:
        embed_dim: embedding width, >= 1 (CRD: 128).
        temperature: InfoNCE temperature, a finite number > 0 (CRD: 0.07).

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value outside its range; at binding, a width that cannot be read.

    Example:
        >>> import torch
        >>> term = ContrastiveTerm(embed_dim=4)
        >>> term.bind(8, 16)
        >>> term(torch.randn(5, 8), [torch.randn(5, 16)]).shape
        torch.Size([])
    """

    kind: ClassVar[str] = "crd"

    def __init__(self, *args: Any, embed_dim: int = 32, temperature: float = 0.1, **common: Any) -> None:
        super().__init__(*args, **common)
        owner = type(self).__name__
        self.embed_dim = check_int(owner, "embed_dim", embed_dim, low=1, high=1 << 16)
        self.temperature = check_float(owner, "temperature", temperature, low=0.0, low_open=True)
        self.student_head: FeatureProjector | None = None
        self.teacher_head: FeatureProjector | None = None

    def spec(self) -> dict[str, Any]:
        """Constructor arguments and ``kind``."""
        return {**super().spec(), "embed_dim": self.embed_dim, "temperature": self.temperature}

    def bind(self, student_width: int | None, teacher_width: int | None) -> None:
        """Create the two embedding heads."""
        s, t = self.required_widths(student_width, teacher_width)
        self.student_head = FeatureProjector(s, self.embed_dim)
        self.teacher_head = FeatureProjector(t, self.embed_dim)

    def forward(self, student: Tensor, teachers: list[Tensor], mask: Tensor | None = None) -> Tensor:
        """InfoNCE of the projected, pooled features against the (first) teacher read."""
        if self.student_head is None or self.teacher_head is None:
            raise RuntimeError(f"{type(self).__name__}: call bind(student_width, teacher_width) before forward")
        with self.named_errors():
            z_s = self.student_head(_pooled(student))
            z_t = self.teacher_head(_pooled(teachers[0]).detach())
        return info_nce_loss(z_s, z_t, temperature=self.temperature)
