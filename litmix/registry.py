"""Registry of every litmix item, by kind and family: the single source of their metadata.

Callbacks, LightningModules ("plugin"), DataModules and the utilities, losses, metrics and functions the
README names register themselves with :func:`register` when their module is imported;
:func:`litmix.load_all` imports every subpackage so that the registry is complete. Kind, family and paper
live here only (never as class attributes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

Kind = Literal["callback", "plugin", "datamodule", "utility", "loss", "metric", "function", "optimizer", "layer"]
Family = Literal[
    "core", "distillation", "sparsity", "quantization", "proxy", "unlearning", "data", "nas", "graph", "optimization"
]

KINDS: tuple[str, ...] = (
    "callback",
    "plugin",
    "datamodule",
    "utility",
    "loss",
    "metric",
    "function",
    "optimizer",
    "layer",
)
#: Kinds that are Lightning objects, exported from ``litmix.callbacks`` / ``litmix.plugins`` / ``litmix.datamodules``.
LIGHTNING_KINDS: tuple[str, ...] = ("callback", "plugin", "datamodule")
FAMILIES: tuple[str, ...] = (
    "core",
    "distillation",
    "sparsity",
    "quantization",
    "proxy",
    "unlearning",
    "data",
    "nas",
    "graph",
    "optimization",
)


@dataclass(frozen=True)
class PluginInfo:
    """One registry entry.

    Attributes:
        name: the class or function name (the short name used by the CLI).
        kind: one of :data:`KINDS`: ``"callback"``, ``"plugin"`` (LightningModule), ``"datamodule"``,
            ``"utility"`` (a class used outside the Trainer), ``"loss"``, ``"metric"`` (torchmetrics),
            ``"function"`` (pure-tensor), ``"optimizer"`` or ``"layer"``.
        family: the method family, one of :data:`FAMILIES`.
        paper: title and link of the paper implemented ("" for infrastructure).
        cls: the registered class or function.
        module: the public module it is imported from.
    """

    name: str
    kind: str
    family: str
    paper: str
    cls: Any
    module: str = ""

    @property
    def import_path(self) -> str:
        """Public import path, e.g. ``litmix.callbacks.KnowledgeDistillation``."""
        if self.kind in LIGHTNING_KINDS:
            return f"litmix.{self.kind}s.{self.name}"
        return f"{self.module or self.cls.__module__}.{self.name}"


_REGISTRY: dict[str, PluginInfo] = {}
T = TypeVar("T")


def register(kind: Kind, family: Family, paper: str = "", module: str = "") -> Callable[[T], T]:
    """Decorator recording a class or function in the registry.

    Args:
        kind: one of :data:`KINDS`.
        family: one of :data:`FAMILIES`.
        paper: the paper implemented, as ``"Title (arXiv link)"``.
        module: the public module users import it from, when it differs from where it is defined
            (e.g. ``"litmix.nas"``); ignored for callbacks, plugins and datamodules.

    Raises:
        ValueError: for an unknown kind or family, or a name registered twice by a different class.

    Example:
        >>> @register("callback", "core")
        ... class _Doc:
        ...     pass
        >>> get_plugin("_Doc").family
        'core'
        >>> unregister("_Doc")
    """
    if kind not in KINDS:
        raise ValueError(f"register(kind={kind!r}): kind must be one of {KINDS}")
    if family not in FAMILIES:
        raise ValueError(f"register(family={family!r}): family must be one of {FAMILIES}")

    def decorator(cls: T) -> T:
        name: str = cls.__name__  # type: ignore[attr-defined]
        qualname: str = cls.__qualname__  # type: ignore[attr-defined]
        defined_in: str = cls.__module__
        old = _REGISTRY.get(name)
        if old is not None:
            if old.cls.__qualname__ != qualname:
                raise ValueError(f"register: plugin name {name!r} is already used by {old.cls!r}")
            # pytest's path-based doctest collection imports `callbacks/x.py` a second time as `callbacks.x`,
            # and `litmix/x.py` a second time under its own name: the registry keeps the first, canonical object.
            if old.cls.__module__.startswith("litmix.") and (
                not defined_in.startswith("litmix.") or old.cls.__module__ == defined_in
            ):
                return cls
        _REGISTRY[name] = PluginInfo(name=name, kind=kind, family=family, paper=paper, cls=cls, module=module)
        return cls

    return decorator


def unregister(name: str) -> None:
    """Remove a registry entry (for tests and extension authors)."""
    _REGISTRY.pop(name, None)


def get_plugin(name: str) -> PluginInfo:
    """Look a plugin up by its short name.

    Raises:
        KeyError: naming the unknown plugin and listing the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown plugin {name!r}; known plugins: {sorted(_REGISTRY)}") from None


def list_plugins(kind: str | None = None, family: str | None = None) -> list[PluginInfo]:
    """Registered plugins sorted by name, optionally filtered by kind and family.

    Call :func:`litmix.load_all` first (``litmix.list_plugins`` does) to import every subpackage.

    Raises:
        ValueError: for an unknown kind or family.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"list_plugins(kind={kind!r}): kind must be one of {KINDS} or None")
    if family is not None and family not in FAMILIES:
        raise ValueError(f"list_plugins(family={family!r}): family must be one of {FAMILIES} or None")
    return [
        info
        for _, info in sorted(_REGISTRY.items())
        if (kind is None or info.kind == kind) and (family is None or info.family == family)
    ]
