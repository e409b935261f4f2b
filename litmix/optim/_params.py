"""The ``params`` argument every litmix optimizer takes, checked once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import Tensor


def param_list(owner: str, params: Iterable[Tensor] | Iterable[dict[str, Any]]) -> list[Any]:
    """``params`` as a non-empty list of tensors or parameter-group dicts.

    Raises:
        TypeError: for one tensor (not wrapped in a list) or something that is not iterable.
        ValueError: for an empty iterable.

    Example:
        >>> import torch
        >>> len(param_list("Opt", torch.nn.Linear(2, 2).parameters()))
        2
    """
    if isinstance(params, Tensor):
        raise TypeError(
            f"{owner}(params=<Tensor>): params must be an iterable of tensors or parameter-group dicts, "
            "not one tensor (wrap it in a list)"
        )
    try:
        out: list[Any] = list(params)
    except TypeError:
        raise TypeError(
            f"{owner}(params={params!r}): params must be an iterable of tensors or parameter-group dicts"
        ) from None
    if not out:
        raise ValueError(f"{owner}(params=[]): params is empty; pass the module's parameters")
    return out
