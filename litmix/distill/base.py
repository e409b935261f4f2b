"""The base classes of distillation loss terms, and the plumbing shared by the distillation plugins.

Terms: :class:`DistillTerm` (paths, weight, teacher, the error prefix, the composed constructor signature) and
:class:`ProjectedTerm` (terms with learned projectors: ``student_dim`` / ``teacher_dim`` and the width checks).
Plumbing: reading features and widths of modules (:func:`feature_tensor`, :func:`infer_width`), resolving and
hooking module paths (:func:`resolve_module`, :func:`capture_outputs`) and casting a teacher's inputs to its
dtype (:func:`cast_floating`, :func:`needs_cast`, :func:`floating_dtype`), used by
:class:`~litmix.plugins.DistillationModule` and :class:`~litmix.callbacks.KnowledgeDistillation`.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from litmix.validation import check_float, check_int, check_str, check_type

__all__ = [
    "DistillTerm",
    "ProjectedTerm",
    "capture_outputs",
    "cast_floating",
    "check_teachers",
    "feature_tensor",
    "feature_width",
    "floating_dtype",
    "infer_width",
    "needs_cast",
    "resolve_module",
]


def cast_floating(value: Any, dtype: torch.dtype) -> Any:
    """``value`` with its floating-point tensors (also inside tuples, lists and dicts) cast to ``dtype``.

    Example:
        >>> cast_floating((torch.zeros(1), {"ids": torch.ones(1, dtype=torch.long)}), torch.float16)[0].dtype
        torch.float16
    """
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, tuple | list):
        return type(value)(cast_floating(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: cast_floating(v, dtype) for k, v in value.items()}
    return value


def needs_cast(value: Any, dtype: torch.dtype) -> bool:
    """Whether :func:`cast_floating` would change ``value`` (a floating tensor of another dtype in it)."""
    if isinstance(value, Tensor):
        return value.is_floating_point() and value.dtype != dtype
    if isinstance(value, tuple | list):
        return any(needs_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return any(needs_cast(v, dtype) for v in value.values())
    return False


def floating_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of the module's first floating-point parameter or buffer (``None`` if it has none)."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def check_teachers(owner: str, argument: str, teachers: Any, number_single: bool = True) -> list[Any]:
    """One teacher (``nn.Module`` or path) or a non-empty list of them, as a list; each entry type-checked.

    Entries are named ``argument[i]`` (a single teacher too, unless ``number_single=False``).

    Raises:
        TypeError: for a teacher that is neither an ``nn.Module`` nor a path, naming it.
        ValueError: for an empty list.

    Example:
        >>> len(check_teachers("Owner", "teachers", [nn.Linear(2, 2), "teacher.pt"]))
        2
    """
    check_type(owner, argument, teachers, (nn.Module, str, os.PathLike, list, tuple))
    listed = list(teachers) if isinstance(teachers, list | tuple) else [teachers]
    if not listed:
        raise ValueError(f"{owner}({argument}=[]): give at least one teacher")
    for i, t in enumerate(listed):
        where = f"{argument}[{i}]" if number_single or len(listed) > 1 else argument
        check_type(owner, where, t, (nn.Module, str, os.PathLike))
    return listed


def _candidates(model: nn.Module, path: str, limit: int = 12) -> str:
    names = [n for n, _ in model.named_modules() if n]
    head = path.split(".")[0]
    close = [n for n in names if n.startswith(head)] or names
    shown = ", ".join(repr(n) for n in close[:limit])
    return f"{shown}{', ...' if len(close) > limit else ''}"


def resolve_module(model: nn.Module, path: str, owner: str, where: str) -> nn.Module:
    """``model.get_submodule(path)`` (``"."`` or ``""`` = the model itself).

    Raises:
        ValueError: naming ``owner(where=path)`` and the closest module names when ``path`` does not exist.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> type(resolve_module(net, "0", "Owner", "student")).__name__
        'Linear'
        >>> try:
        ...     resolve_module(net, "1", "Owner", "student")
        ... except ValueError as err:
        ...     print(err)
        Owner(student='1'): Sequential has no submodule '1'; candidates: '0' ('.' is the output)
    """
    if path in (".", ""):
        return model
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ValueError(
            f"{owner}({where}={path!r}): {type(model).__name__} has no submodule {path!r}; candidates: "
            f"{_candidates(model, path)} ('.' is the output)"
        ) from None


@contextlib.contextmanager
def capture_outputs(
    model: nn.Module, paths: list[str], store: dict[str, Any], on_rerun: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Forward hooks on ``model``'s submodules at ``paths`` (``"."`` skipped) storing their outputs in ``store``.

    A module that runs again in the same forward overwrites its output; ``on_rerun(path)`` is called first.

    Example:
        >>> net, store = nn.Sequential(nn.Linear(2, 3), nn.ReLU()), {}
        >>> with capture_outputs(net, [".", "0"], store):
        ...     _ = net(torch.zeros(1, 2))
        >>> list(store), store["0"].shape
        (['0'], torch.Size([1, 3]))
    """
    handles = []
    for path in paths:
        if path in (".", ""):
            continue

        def hook(module: nn.Module, args: Any, output: Any, path: str = path) -> None:
            if path in store and on_rerun is not None:
                on_rerun(path)
            store[path] = output

        handles.append(model.get_submodule(path).register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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


def _compose_signature(cls: type) -> None:
    """Give ``cls.__init__(*args, <own keyword arguments>, **common)`` the signature and annotations of the whole.

    The composed signature is the parent's (``student`` ... ``name`` and the parent's own keywords) followed by
    the subclass's own keyword-only arguments, so :func:`inspect.signature`, :func:`typing.get_type_hints`,
    :func:`~litmix.distill.build_term` and the constructor fuzz see every argument. A subclass whose ``__init__``
    spells out its whole signature (no ``**common``) is left as it is.
    """
    init = cls.__dict__.get("__init__")
    if init is None:
        return
    own = inspect.signature(init).parameters.values()
    if not any(p.kind is p.VAR_KEYWORD for p in own):
        return
    parent = next(c.__dict__["__init__"] for c in cls.__mro__[1:] if "__init__" in c.__dict__)
    inherited = inspect.signature(parent)
    params = [p for p in inherited.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    params += [p for p in own if p.kind is p.KEYWORD_ONLY]
    annotations = {**parent.__annotations__, **init.__annotations__}
    init.__signature__ = inherited.replace(parameters=params)
    init.__annotations__ = {k: v for k, v in annotations.items() if k == "return" or k in {p.name for p in params}}


class DistillTerm(nn.Module):
    """Base of the loss terms of :class:`~litmix.plugins.DistillationModule`: what to compare, and how.

    A term names a student and a teacher module path (``"."`` = the model's output), its ``weight`` in the total
    loss and the teacher it reads (``teacher_index``; ``None`` = all teachers for terms that aggregate them, such
    as KD, else the first). Subclasses set ``kind`` and implement :meth:`forward` on the captured features;
    terms with learned parts create them in :meth:`bind`, called once by the module (before any compute) with
    the widths. A subclass takes these five arguments through ``__init__(self, *args, <its own keyword
    arguments>, **common)`` and ``super().__init__(*args, **common)``: its signature (what
    :func:`inspect.signature`, :func:`~litmix.distill.build_term` and LightningCLI read) is composed from both.

    Args:
        student: module path in the student (``"."`` = its output).
        teacher: module path in the teacher(s) (``"."`` = the output).
        weight: weight of the term in the total loss, a finite number >= 0.
        teacher_index: which teacher (``0``-based) the term reads; ``None`` = every teacher (terms that
            aggregate teachers) or the first.
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

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _compose_signature(cls)

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

    def where(self, **extra: Any) -> str:
        """``Class(student=..., teacher=..., <extra>)``: the prefix of this term's error messages."""
        shown = "".join(f", {k}={v!r}" for k, v in extra.items())
        return f"{type(self).__name__}(student={self.student_path!r}, teacher={self.teacher_path!r}{shown})"

    @contextlib.contextmanager
    def named_errors(self) -> Iterator[None]:
        """Re-raise a ``ValueError`` of the loss maths prefixed with :meth:`where`."""
        try:
            yield
        except ValueError as err:
            raise ValueError(f"{self.where()}: {err}") from None

    def check_same_shapes(self, student: Tensor, teachers: list[Tensor]) -> None:
        """Refuse teacher logits whose shape is not the student's (naming both shapes)."""
        for t in teachers:
            if t.shape != student.shape:
                raise ValueError(
                    f"{self.where()}: teacher logits of shape {tuple(t.shape)} do not match student logits of shape "
                    f"{tuple(student.shape)}"
                )

    def forward(self, student: Tensor, teachers: list[Tensor], mask: Tensor | None = None) -> Tensor:
        """The unweighted term from the student feature and the features of the teachers read."""
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")


class ProjectedTerm(DistillTerm):
    """Base of the terms with learned projectors: the feature widths, read from the modules or given.

    Subclasses create their :class:`~litmix.distill.FeatureProjector` heads in :meth:`bind` from
    :meth:`widths`. Takes :class:`DistillTerm`'s arguments and:

    Args:
        student_dim: student feature width, in [1, 2**20] (``None``: read from the module).
        teacher_dim: teacher feature width, in [1, 2**20] (``None``: read from the module).

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a width outside its range; in :meth:`required_widths`, a width that cannot be read.

    Example:
        >>> ProjectedTerm(student_dim=8).required_widths(None, 32)
        (8, 32)
    """

    def __init__(
        self, *args: Any, student_dim: int | None = None, teacher_dim: int | None = None, **common: Any
    ) -> None:
        super().__init__(*args, **common)
        owner = type(self).__name__
        self.student_dim = check_int(owner, "student_dim", student_dim, low=1, high=1 << 20, allow_none=True)
        self.teacher_dim = check_int(owner, "teacher_dim", teacher_dim, low=1, high=1 << 20, allow_none=True)

    def spec(self) -> dict[str, Any]:
        """Constructor arguments and ``kind``."""
        return {**super().spec(), "student_dim": self.student_dim, "teacher_dim": self.teacher_dim}

    def widths(self, student_width: int | None, teacher_width: int | None) -> tuple[int | None, int | None]:
        """``(student, teacher)`` widths: ``student_dim`` / ``teacher_dim`` when given, else the modules'."""
        return self.student_dim or student_width, self.teacher_dim or teacher_width

    def required_widths(self, student_width: int | None, teacher_width: int | None) -> tuple[int, int]:
        """:meth:`widths`, both known.

        Raises:
            ValueError: for a width that is neither given nor read from the module, naming the argument to pass.
        """
        s, t = self.widths(student_width, teacher_width)
        if s is None or t is None:
            which = "student_dim" if s is None else "teacher_dim"
            raise ValueError(f"{self.where()}: cannot read the feature width from the module; pass {which}=")
        return s, t
