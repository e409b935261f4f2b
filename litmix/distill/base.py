"""The base class of distillation loss terms, and the helpers that read features and widths of modules."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from litmix.validation import check_float, check_int, check_str

__all__ = ["DistillTerm", "feature_tensor", "feature_width", "infer_width"]


def feature_tensor(output: Any) -> Tensor | None:
    """The feature tensor of a module output: the tensor itself, the first tensor of a tuple/list/mapping.

    Hugging Face outputs are mappings: their first tensor is ``logits`` or ``last_hidden_state``.

    Example:
        >>> import torch
        >>> feature_tensor((torch.zeros(2, 3), None)).shape
        torch.Size([2, 3])
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        values: Any = output.values()
    elif isinstance(output, tuple | list):
        values = output
    else:
        values = [getattr(output, "logits", None), getattr(output, "last_hidden_state", None)]
    for value in values:
        if isinstance(value, Tensor):
            return value
    return None


def feature_width(feature: Tensor) -> int:
    """Channels of a ``[B, C, H, W]`` feature, else the size of the last dimension."""
    return int(feature.shape[1] if feature.dim() == 4 else feature.shape[-1])


def _own_width(module: nn.Module) -> int | None:
    for attr in ("out_features", "out_channels", "embedding_dim", "num_features", "num_channels", "nf"):
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, tuple) and shape:
        return int(shape[-1])
    return None


def infer_width(model: nn.Module, path: str) -> int | None:
    """The output width of ``model.get_submodule(path)`` read from its layers, without running it.

    The module's own width (``out_features``, ``out_channels``, ``embedding_dim``, ``num_features``,
    ``normalized_shape``, GPT-2's ``Conv1D.nf``), else that of its last layer that has one, else (for a
    parameter-free module such as ``nn.ReLU``) that of the nearest earlier sibling. ``None`` when none is found.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
        >>> infer_width(net, "1"), infer_width(net, "."), infer_width(net, "0")
        (6, 2, 6)
    """
    target = model if path in (".", "") else model.get_submodule(path)
    own = _own_width(target)
    if own is not None:
        return own
    for sub in reversed(list(target.modules())[1:]):
        own = _own_width(sub)
        if own is not None:
            return own
    if path in (".", ""):
        return None
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    names = [n for n, _ in parent.named_children()]
    if name not in names:
        return None
    for sibling in reversed(names[: names.index(name)]):
        width = infer_width(parent, sibling)
        if width is not None:
            return width
    return None


class DistillTerm(nn.Module):
    """Base of the loss terms of :class:`~litmix.plugins.DistillationModule`: what to compare, and how.

    A term names a student and a teacher module path (``"."`` = the model's output), its ``weight`` in the total
    loss and the teacher it reads (``teacher_index``; ``None`` = all teachers, for terms that aggregate them).
    Subclasses set ``kind`` and implement :meth:`forward` on the captured features; terms with learned
    projectors create them in :meth:`bind`, called once by the module (before any compute) with the widths.

    Args:
        student: module path in the student (``"."`` = its output).
        teacher: module path in the teacher(s) (``"."`` = the output).
        weight: weight of the term in the total loss, a finite number >= 0.
        teacher_index: which teacher (``0``-based) the term reads; ``None`` = every teacher.
        name: the logged name (default: the kind, numbered when a kind repeats).

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a negative or non-finite weight or a negative teacher index.

    Example:
        >>> DistillTerm(student="layers.1", weight=0.5).spec()["weight"]
        0.5
    """

    kind: ClassVar[str] = "term"
    #: ``True`` for terms that read logits (``"."``) and aggregate every teacher by default.
    reads_all_teachers: ClassVar[bool] = False

    def __init__(
        self,
        student: str = ".",
        teacher: str = ".",
        weight: float = 1.0,
        teacher_index: int | None = None,
        name: str | None = None,
    ) -> None:
        owner = type(self).__name__
        super().__init__()
        self.student_path = check_str(owner, "student", student, allow_empty=False).strip()
        self.teacher_path = check_str(owner, "teacher", teacher, allow_empty=False).strip()
        self.weight = check_float(owner, "weight", weight, low=0.0)
        self.teacher_index = check_int(owner, "teacher_index", teacher_index, low=0, allow_none=True)
        self.term_name = check_str(owner, "name", name, allow_none=True, allow_empty=False)
        #: the logged name (set by the module: ``name`` or the kind, numbered when a kind repeats)
        self.log_name: str = name or self.kind

    def teachers_read(self, n_teachers: int) -> list[int]:
        """Indices of the teachers this term reads."""
        if self.teacher_index is not None:
            return [self.teacher_index]
        return list(range(n_teachers)) if self.reads_all_teachers else [0]

    def bind(self, student_width: int | None, teacher_width: int | None) -> None:
        """Create learned parts (projectors) once the widths are known; nothing by default."""

    def spec(self) -> dict[str, Any]:
        """A JSON-friendly description (the constructor arguments and ``kind``)."""
        return {
            "kind": self.kind,
            "student": self.student_path,
            "teacher": self.teacher_path,
            "weight": self.weight,
            "teacher_index": self.teacher_index,
            "name": self.term_name,
        }

    def forward(self, student: Tensor, teachers: list[Tensor], mask: Tensor | None = None) -> Tensor:
        """The unweighted term from the student feature and the features of the teachers read."""
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")
