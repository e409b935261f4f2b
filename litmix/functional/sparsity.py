"""Pure-tensor sparsity algorithms: pruning schedules, magnitude masks, optimizer-state masking, reports.

Used by :class:`litmix.callbacks.GradualPruning` (gradual magnitude pruning, Zhu & Gupta, "To prune, or not to
prune: exploring the efficacy of pruning for model compression", https://arxiv.org/abs/1710.01878).

Masks are boolean tensors (``True`` = kept) stored as persistent buffers named ``<param>_mask`` on the module
owning the parameter (``net.0.weight`` -> buffer ``net.0.weight_mask``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "MASK_SUFFIX",
    "cubic_sparsity",
    "default_parameter_names",
    "find_masks",
    "magnitude_masks",
    "mask_optimizer_state",
    "remove_masks",
    "sparsity_report",
]

MASK_SUFFIX = "_mask"
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def cubic_sparsity(step: int, start_step: int, end_step: int, initial: float, final: float) -> float:
    """Zhu & Gupta's cubic schedule ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3``.

    Clamped: ``initial`` before ``start_step`` and ``final`` from ``end_step`` on. Sparsities are absolute
    fractions of pruned weights, never "prune x % of what remains".

    Args:
        step: the optimizer step ``t``.
        start_step: ``t0``.
        end_step: ``t1`` (> ``start_step``).
        initial: ``s_i`` in [0, 1).
        final: ``s_f`` in [0, 1).

    Raises:
        ValueError: if ``end_step <= start_step``.

    Example:
        >>> [round(cubic_sparsity(t, 0, 100, 0.0, 0.9), 4) for t in (-5, 0, 25, 50, 100, 200)]
        [0.0, 0.0, 0.5203, 0.7875, 0.9, 0.9]
    """
    if end_step <= start_step:
        raise ValueError(f"cubic_sparsity: end_step ({end_step}) must be > start_step ({start_step})")
    if step <= start_step:
        return float(initial)
    if step >= end_step:
        return float(final)
    progress = (step - start_step) / (end_step - start_step)
    return float(final + (initial - final) * (1.0 - progress) ** 3)


def magnitude_masks(
    weights: Mapping[str, Tensor],
    sparsity: float,
    scope: Literal["global", "layer"] = "global",
    masks: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Unstructured magnitude masks pruning exactly ``round(sparsity * n)`` weights.

    ``scope="global"`` ranks ``|w|`` over all tensors together (``n`` = total count), ``"layer"`` ranks each
    tensor on its own (``n`` = its count). Ties are broken deterministically: a stable sort over the tensors
    flattened in the order of ``weights``, so every rank and every run gets the same mask. Coordinates already
    pruned in ``masks`` are ranked first, so masks only grow as the sparsity rises.

    Args:
        weights: name -> weight tensor (any shape).
        sparsity: fraction to prune, in [0, 1].
        scope: ``"global"`` or ``"layer"``.
        masks: optional previous masks (``True`` = kept); their pruned coordinates stay pruned when the
            count allows.

    Returns:
        name -> bool mask of the weight's shape and device (``True`` = kept).

    Raises:
        ValueError: for a sparsity outside [0, 1] or an unknown scope.

    Example:
        >>> w = {"a": torch.tensor([[0.1, -2.0], [3.0, 0.2]]), "b": torch.tensor([0.05, -0.3, 4.0, 1.0])}
        >>> m = magnitude_masks(w, 0.5, "global")
        >>> m["a"].tolist(), m["b"].tolist()
        ([[False, True], [True, False]], [False, False, True, True])
        >>> [int((~v).sum()) for v in magnitude_masks(w, 0.5, "layer").values()]
        [2, 2]
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"magnitude_masks: sparsity must be in [0, 1], got {sparsity}")
    if scope not in ("global", "layer"):
        raise ValueError(f"magnitude_masks: scope must be 'global' or 'layer', got {scope!r}")
    scores = {}
    for name, w in weights.items():
        s = w.detach().abs().flatten().double()
        if masks is not None and name in masks:
            s = s.masked_fill(~masks[name].flatten().to(s.device), -1.0)
        scores[name] = s
    groups = [list(weights)] if scope == "global" else [[n] for n in weights]
    out: dict[str, Tensor] = {}
    for names in groups:
        flat = torch.cat([scores[n].cpu() for n in names]) if names else torch.zeros(0)
        k = round(sparsity * flat.numel())
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        if k > 0:
            order = torch.argsort(flat, stable=True)
            keep[order[:k]] = False
        offset = 0
        for n in names:
            w = weights[n]
            out[n] = keep[offset : offset + w.numel()].view(w.shape).to(w.device)
            offset += w.numel()
    return out


SECOND_MOMENTS: tuple[str, ...] = ("exp_avg_sq", "max_exp_avg_sq")


def mask_optimizer_state(
    optimizer: torch.optim.Optimizer, param: Tensor, mask: Tensor, skip: tuple[str, ...] = ()
) -> int:
    """Zero every optimizer-state tensor of ``param``'s shape at the pruned coordinates (``~mask``).

    Covers ``exp_avg``/``exp_avg_sq`` (Adam, AdamW), ``momentum_buffer`` (SGD) and any other per-coordinate
    state; otherwise momentum revives pruned weights. Scalars such as ``step`` are left alone.

    Args:
        optimizer: any ``torch.optim.Optimizer``.
        param: the parameter.
        mask: bool tensor of ``param``'s shape (``True`` = kept).
        skip: state keys left alone (e.g. :data:`SECOND_MOMENTS`).

    Returns:
        The number of state tensors masked (0 before the first step).

    Example:
        >>> p = nn.Parameter(torch.ones(3))
        >>> opt = torch.optim.Adam([p], lr=0.1)
        >>> p.grad = torch.ones(3); opt.step()
        >>> mask_optimizer_state(opt, p, torch.tensor([True, False, True]))
        2
        >>> opt.state[p]["exp_avg"].tolist()
        [0.10000000149011612, 0.0, 0.10000000149011612]
    """
    count = 0
    for key, value in optimizer.state.get(param, {}).items():
        if key not in skip and isinstance(value, Tensor) and value.shape == param.shape:
            value.masked_fill_(~mask.to(value.device), 0)
            count += 1
    return count


def default_parameter_names(module: nn.Module) -> list[str]:
    """Names (as in ``named_parameters``) of the ``weight`` of every ``nn.Linear`` and ``nn.Conv{1,2,3}d``.

    Example:
        >>> default_parameter_names(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Conv1d(1, 1, 2)))
        ['0.weight', '2.weight']
    """
    names = []
    for path, sub in module.named_modules():
        if isinstance(sub, PRUNABLE_TYPES) and isinstance(getattr(sub, "weight", None), nn.Parameter):
            names.append(f"{path}.weight" if path else "weight")
    return names


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (module.get_submodule(path) if path else module), leaf


def find_masks(module: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Parameter name -> (owning module, leaf name) for every parameter that has a ``<leaf>_mask`` buffer.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> lin.register_buffer("weight_mask", torch.ones(2, 2, dtype=torch.bool))
        >>> list(find_masks(nn.Sequential(lin)))
        ['0.weight']
    """
    found = {}
    for path, sub in module.named_modules():
        for leaf, _ in sub.named_parameters(recurse=False):
            buf = sub._buffers.get(leaf + MASK_SUFFIX)
            if buf is not None and buf.dtype == torch.bool:
                found[f"{path}.{leaf}" if path else leaf] = (sub, leaf)
    return found


def sparsity_report(module: nn.Module, parameter_names: Iterable[str] | None = None) -> dict[str, float]:
    """Fraction of exact zeros per parameter and overall (key ``"global"``).

    Reports ``parameter_names`` when given, else every parameter with a mask buffer, else (no masks, e.g.
    after :func:`remove_masks`) the weights of :func:`default_parameter_names`.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight[0].zero_()
        >>> sparsity_report(net)
        {'0.weight': 0.5, '1.weight': 0.0, 'global': 0.4}
    """
    if parameter_names is None:
        names = list(find_masks(module)) or default_parameter_names(module)
    else:
        names = list(parameter_names)
    params = dict(module.named_parameters())
    report: dict[str, float] = {}
    zeros = total = 0
    for name in names:
        p = params[name].detach()
        z = int((p == 0).sum())
        report[name] = z / max(p.numel(), 1)
        zeros, total = zeros + z, total + p.numel()
    report["global"] = zeros / max(total, 1)
    return report


def remove_masks(module: nn.Module) -> list[str]:
    """Make pruning permanent: multiply each masked parameter by its mask and delete the mask buffers.

    The weights keep their zeros; the module's ``state_dict`` loses the ``*_mask`` keys, so it loads into a
    plain copy of the architecture.

    Returns:
        The names of the parameters whose masks were removed.

    Example:
        >>> lin = nn.Linear(2, 2)
        >>> lin.register_buffer("weight_mask", torch.tensor([[True, False], [False, True]]))
        >>> remove_masks(lin)
        ['weight']
        >>> "weight_mask" in lin.state_dict(), int((lin.weight == 0).sum())
        (False, 2)
    """
    found = find_masks(module)
    for owner, leaf in found.values():
        mask = owner._buffers.pop(leaf + MASK_SUFFIX)
        assert mask is not None
        with torch.no_grad():
            getattr(owner, leaf).masked_fill_(~mask.to(getattr(owner, leaf).device), 0)
    return list(found)
