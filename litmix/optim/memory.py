"""How many bytes an optimizer's state holds, in total and per parameter element."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from litmix.registry import register

__all__ = ["memory_report"]


def _tensors(value: Any) -> list[Tensor]:
    """Every tensor inside a state entry (tensors, or lists/tuples/dicts of them)."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []


def _key(t: Tensor) -> tuple[int, int]:
    """Identifies a tensor's memory: (storage address, offset); meta tensors have none, so their id."""
    if t.device.type == "meta":
        return (id(t), 0)
    return (t.untyped_storage().data_ptr(), int(t.storage_offset()))


@register("function", "optimization", module="litmix.optim")
def memory_report(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Bytes of ``optimizer``'s state: in total, in per-tensor scalars, and per parameter element.

    Works for any ``torch.optim.Optimizer`` (it reads ``optimizer.state``, so call it after the first
    ``step()``: most optimizers create their state lazily). Tensors shared between entries are counted once.
    The keys of the returned dict:

    * ``"optimizer"``: the class name;
    * ``"params"``: parameter elements in the optimizer's groups (each parameter counted once);
    * ``"state_bytes"``: bytes of every tensor in the state;
    * ``"scalar_bytes"``: the part held in 0-dim tensors, e.g. Adam's per-tensor ``step`` counters;
    * ``"bytes_per_param"``: ``(state_bytes - scalar_bytes) / params``, the per-element cost that grows with
      the model: 8.0 for fp32 Adam/AdamW, 4.0 for Lion and SGD with momentum, 0.0 for plain SGD.

    Returns:
        The report, numbers ready for ``pl_module.log_dict`` (drop ``"optimizer"``) or a table.

    Raises:
        TypeError: if ``optimizer`` is not a ``torch.optim.Optimizer``.

    Example:
        >>> from litmix.optim import Lion
        >>> model = torch.nn.Linear(4, 2)  # 10 parameter elements
        >>> for opt in (torch.optim.AdamW(model.parameters()), Lion(model.parameters())):
        ...     model(torch.ones(1, 4)).sum().backward()
        ...     opt.step()
        ...     r = memory_report(opt)
        ...     print(r["optimizer"], r["params"], r["state_bytes"], r["scalar_bytes"], r["bytes_per_param"])
        AdamW 10 88 8 8.0
        Lion 10 40 0 4.0
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"memory_report(optimizer={type(optimizer).__name__}): optimizer must be a torch.optim.Optimizer"
        )
    seen_params: set[int] = set()
    params = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in seen_params:
                seen_params.add(id(p))
                params += p.numel()
    seen: set[tuple[int, int]] = set()  # (storage address, offset) of every tensor counted
    total = scalars = 0
    for entry in optimizer.state.values():
        for t in _tensors(entry):
            key = _key(t)
            if key in seen and t.numel() > 0:
                continue
            seen.add(key)
            size = t.numel() * t.element_size()
            total += size
            if t.dim() == 0:
                scalars += size
    return {
        "optimizer": type(optimizer).__name__,
        "params": params,
        "state_bytes": total,
        "scalar_bytes": scalars,
        "bytes_per_param": (total - scalars) / params if params else 0.0,
    }
