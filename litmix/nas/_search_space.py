"""Private: the shared checks of a search space given as ``{decision class: [values]}`` (AutoGNN, FlexiBERT)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def space_entries(
    owner: str, space: Any, default: Mapping[str, tuple[Any, ...]]
) -> tuple[dict[str, tuple[Any, ...]], list[tuple[str, tuple[Any, ...]]]]:
    """``(a copy of default, [(class, values)])`` of ``space`` (None: no entries), each value list a tuple.

    The caller checks the values of each entry and writes it into the copy.

    Raises:
        TypeError: when ``space`` is not a mapping or a value list is not a list (``owner(search_space=...)``).
        ValueError: for classes not in ``default`` or an empty value list.
    """
    out = dict(default)
    if space is None:
        return out, []
    if not isinstance(space, Mapping):
        raise TypeError(f"{owner}(search_space={space!r}): search_space must be a dict class -> list of values")
    unknown = [k for k in space if k not in default]
    if unknown:
        raise ValueError(
            f"{owner}(search_space={space!r}): search_space has unknown classes {unknown}; classes are {tuple(default)}"
        )
    entries = []
    for key, values in space.items():
        if isinstance(values, str) or not isinstance(values, Sequence):
            raise TypeError(f"{owner}(search_space={space!r}): search_space[{key!r}] must be a list of values")
        if not values:
            raise ValueError(f"{owner}(search_space={space!r}): search_space[{key!r}] is empty")
        entries.append((key, tuple(values)))
    return out, entries
