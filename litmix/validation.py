"""Argument checks shared by every litmix constructor.

Every public constructor validates its arguments with these helpers *before any compute*, so a bad value
fails at once with an error that names the class, the argument, the value and what is allowed:

* a value of the wrong type raises :class:`TypeError`;
* a value of the right type outside the allowed set raises :class:`ValueError`.

``bool`` is never accepted where a number is expected (``True`` is an ``int`` in Python), and floats must be
finite unless ``finite=False``.

Example:
    >>> check_float("KnowledgeDistillation", "temperature", 4, low=0.0, low_open=True)
    4.0
    >>> check_float("KnowledgeDistillation", "temperature", float("inf"), low=0.0, low_open=True)
    Traceback (most recent call last):
    ...
    ValueError: KnowledgeDistillation(temperature=inf): temperature must be a finite number > 0.0
    >>> check_int("DigitsDataModule", "batch_size", 2.5, low=1)
    Traceback (most recent call last):
    ...
    TypeError: DigitsDataModule(batch_size=2.5): batch_size must be an int >= 1, got float
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MissingPathError",
    "check_bool",
    "check_choice",
    "check_float",
    "check_int",
    "check_path",
    "check_str",
    "check_str_list",
    "check_type",
]


class MissingPathError(FileNotFoundError, ValueError):
    """A path argument that does not exist: both a ``FileNotFoundError`` and a ``ValueError``."""


def _where(owner: str, name: str, value: Any) -> str:
    return f"{owner}({name}={value!r})"


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return " and ".join(parts)


def _must_be(owner: str, name: str, value: Any, desc: str) -> str:
    return f"{_where(owner, name, value)}: {name} must be {desc}"


def _check_number(owner: str, name: str, value: Any, kind: type, desc: str, allow_none: bool) -> Any:
    """``value`` when it is a ``kind`` (``numbers.Integral`` / ``numbers.Real``; bools refused), else TypeError."""
    if isinstance(value, bool) or not isinstance(value, kind):
        extra = " or None" if allow_none else ""
        raise TypeError(f"{_must_be(owner, name, value, desc)}{extra}, got {type(value).__name__}")
    return value


def check_type(owner: str, name: str, value: Any, types: type | tuple[type, ...], *, allow_none: bool = False) -> Any:
    """Raise ``TypeError`` unless ``value`` is an instance of ``types`` (or ``None`` when allowed).

    Example:
        >>> check_type("M", "model", 3, str)
        Traceback (most recent call last):
        ...
        TypeError: M(model=3): model must be str, got int
    """
    if value is None and allow_none:
        return value
    if not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        if allow_none:
            names += " or None"
        raise TypeError(f"{_where(owner, name, value)}: {name} must be {names}, got {type(value).__name__}")
    return value


def check_bool(owner: str, name: str, value: Any) -> bool:
    """Raise ``TypeError`` unless ``value`` is a ``bool``."""
    if not isinstance(value, bool):
        raise TypeError(f"{_where(owner, name, value)}: {name} must be True or False, got {type(value).__name__}")
    return value


def check_str(owner: str, name: str, value: Any, *, allow_none: bool = False, allow_empty: bool = True) -> Any:
    """Raise ``TypeError`` unless ``value`` is a ``str`` and ``ValueError`` for an empty one when not allowed."""
    check_type(owner, name, value, str, allow_none=allow_none)
    if value is not None and not allow_empty and not value.strip():
        raise ValueError(f"{_where(owner, name, value)}: {name} must be a non-empty string")
    return value


def check_str_list(owner: str, name: str, value: Any, *, what: str = "strings") -> list[str] | None:
    """``None``, or a non-empty list/tuple of non-empty strings (returned as a new ``list``).

    ``what`` says what the strings are in the error (``"layer names"``, ``"parameter names"``).

    Raises:
        TypeError: for anything but ``None`` or a list/tuple of ``str``.
        ValueError: for an empty list or an empty (blank) string in it.

    Example:
        >>> check_str_list("M", "layer_names", ("net.0", "net.2")), check_str_list("M", "layer_names", None)
        (['net.0', 'net.2'], None)
        >>> check_str_list("M", "layer_names", [], what="layer names")
        Traceback (most recent call last):
        ...
        ValueError: M(layer_names=[]): layer_names must be a non-empty list of layer names or None
        >>> check_str_list("M", "layer_names", "net.0")
        Traceback (most recent call last):
        ...
        TypeError: M(layer_names='net.0'): layer_names must be list or tuple or None, got str
    """
    if value is None:
        return None
    check_type(owner, name, value, (list, tuple), allow_none=True)
    if not value:
        raise ValueError(f"{_where(owner, name, value)}: {name} must be a non-empty list of {what} or None")
    for item in value:
        check_str(owner, name, item, allow_empty=False)
    return list(value)


def check_int(
    owner: str,
    name: str,
    value: Any,
    *,
    low: int | None = None,
    high: int | None = None,
    allow_none: bool = False,
) -> Any:
    """An integer in ``[low, high]`` (either bound optional).

    Example:
        >>> check_int("M", "epochs", 0, low=1)
        Traceback (most recent call last):
        ...
        ValueError: M(epochs=0): epochs must be an int >= 1
    """
    if value is None and allow_none:
        return None
    desc = f"an int {_range(low, high, False, False)}".rstrip()
    value = int(_check_number(owner, name, value, numbers.Integral, desc, allow_none))
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(_must_be(owner, name, value, desc))
    return value


def check_float(
    owner: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    finite: bool = True,
    allow_none: bool = False,
) -> Any:
    """A real number (ints accepted, bools refused) in the given interval, finite unless ``finite=False``.

    Example:
        >>> check_float("GradualPruning", "sparsity", 1.0, low=0.0, high=1.0, high_open=True)
        Traceback (most recent call last):
        ...
        ValueError: GradualPruning(sparsity=1.0): sparsity must be a finite number >= 0.0 and < 1.0
        >>> check_float("M", "beta", "0.1")
        Traceback (most recent call last):
        ...
        TypeError: M(beta='0.1'): beta must be a finite number, got str
    """
    if value is None and allow_none:
        return None
    bounds = _range(low, high, low_open, high_open)
    desc = f"{'a finite' if finite else 'a'} number {bounds}".rstrip()
    value = float(_check_number(owner, name, value, numbers.Real, desc, allow_none))
    if (
        math.isnan(value)
        or (finite and math.isinf(value))
        or (low is not None and (value < low or (low_open and value == low)))
        or (high is not None and (value > high or (high_open and value == high)))
    ):
        raise ValueError(_must_be(owner, name, value, desc))
    return value


def check_choice(owner: str, name: str, value: Any, choices: Collection[Any] | Sequence[Any]) -> Any:
    """``value`` must be one of ``choices`` (``TypeError`` if its type differs from every choice's).

    Example:
        >>> check_choice("M", "mode", "globl", ("global", "layer"))
        Traceback (most recent call last):
        ...
        ValueError: M(mode='globl'): mode must be one of ('global', 'layer')
    """
    shown = tuple(choices)
    if not any(isinstance(value, type(c)) for c in shown):
        raise TypeError(f"{_where(owner, name, value)}: {name} must be one of {shown}, got {type(value).__name__}")
    if value not in shown:
        raise ValueError(f"{_where(owner, name, value)}: {name} must be one of {shown}")
    return value


def check_path(owner: str, name: str, value: Any, *, must_exist: bool = True, allow_none: bool = False) -> Path | None:
    """A filesystem path (``str`` or ``os.PathLike``); ``FileNotFoundError`` naming the argument if missing.

    Example:
        >>> check_path("KD", "teacher", "/no/such.pt")
        Traceback (most recent call last):
        ...
        litmix.validation.MissingPathError: KD(teacher='/no/such.pt'): teacher: no such file or directory
    """
    if value is None and allow_none:
        return None
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{_where(owner, name, value)}: {name} must be a path, got {type(value).__name__}")
    if not str(value).strip():
        raise ValueError(f"{_where(owner, name, value)}: {name} must be a non-empty path")
    try:
        path = Path(value).expanduser()
    except RuntimeError as err:  # "~user" for an unknown user
        raise ValueError(f"{_where(owner, name, value)}: {name}: cannot expand the home folder ({err})") from err
    if must_exist and not path.exists():
        raise MissingPathError(f"{_where(owner, name, str(value))}: {name}: no such file or directory")
    return path
