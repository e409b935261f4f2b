"""Pure-tensor sparsity algorithms: pruning schedules, magnitude masks, optimizer-state masking, reports.

Used by :class:`litmix.callbacks.GradualPruning` (gradual magnitude pruning, Zhu & Gupta, "To prune, or not to
prune: exploring the efficacy of pruning for model compression", https://arxiv.org/abs/1710.01878).

Masks are boolean tensors (``True`` = kept, one byte per weight) held as *non-persistent* buffers named
``<param>_mask`` on the module owning the parameter (``net.0.weight`` -> buffer ``net.0.weight_mask``): they move
with the module between devices but stay out of its ``state_dict``, so a pruned model's checkpoint loads strictly
into its own class. :func:`pack_mask` / :func:`unpack_mask` store them at one bit per weight in checkpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from litmix.registry import register

_ZHU_GUPTA = "To prune, or not to prune (https://arxiv.org/abs/1710.01878)"

__all__ = [
    "EXACT_OPTIMIZERS",
    "MASK_SUFFIX",
    "PRUNABLE_CLASS_NAMES",
    "PRUNABLE_TYPES",
    "SECOND_MOMENTS",
    "ParameterSelection",
    "canonical_parameter_names",
    "cubic_sparsity",
    "default_parameter_names",
    "default_parameter_selection",
    "find_masks",
    "is_prunable_layer",
    "keeps_pruned_weights_zero",
    "magnitude_masks",
    "mask_optimizer_state",
    "pack_mask",
    "remove_masks",
    "reset_optimizer_state",
    "sparsity_report",
    "unpack_mask",
]

MASK_SUFFIX = "_mask"
#: torch layer types whose ``weight`` the default selection prunes (``nn.Conv*`` includes transposed convolutions).
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear)
#: Ecosystem layers that are not subclasses of :data:`PRUNABLE_TYPES` (matched by qualified class name anywhere in
#: the MRO, so nothing is imported): Hugging Face's GPT-2 style ``Conv1D``, PyG's ``Linear`` (inside ``GCNConv`` and
#: most PyG convolutions) and timm's ``CondConv2d``. timm's other layers (``Linear``, ``StdConv2d``,
#: ``Conv2dSame``, ``ScaledStdConv2d``, ...) subclass ``nn.Linear``/``nn.Conv2d`` and are covered by type.
PRUNABLE_CLASS_NAMES: frozenset[str] = frozenset(
    {
        "transformers.pytorch_utils.Conv1D",
        "torch_geometric.nn.dense.linear.Linear",
        "timm.layers.cond_conv2d.CondConv2d",
    }
)


@register("function", "sparsity", paper=_ZHU_GUPTA, module="litmix.functional")
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


@register("function", "sparsity", paper=_ZHU_GUPTA, module="litmix.functional")
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
    # scores in float32 (float64 only for float64 weights): |w| is exact in the weights' own precision
    dtype = torch.float64 if any(w.dtype == torch.float64 for w in weights.values()) else torch.float32
    scores = {}
    for name, w in weights.items():
        s = w.detach().flatten().to(dtype=dtype, copy=True).abs_()
        if masks is not None and name in masks:
            s.masked_fill_(~masks[name].flatten().to(s.device), -1.0)
        scores[name] = s
    groups = [list(weights)] if scope == "global" else [[n] for n in weights]
    out: dict[str, Tensor] = {}
    for names in groups:
        flat = torch.cat([scores.pop(n).cpu() for n in names]) if names else torch.zeros(0)
        k = round(sparsity * flat.numel())
        keep = torch.ones(flat.numel(), dtype=torch.bool)
        if k > 0:
            # the k smallest scores, ties at the threshold broken by position (the order of a stable sort), in
            # O(n) with no n-sized index tensor: kthvalue finds the threshold, then the first tied positions
            threshold = flat.kthvalue(k).values
            below = flat < threshold
            keep.logical_not_().logical_or_(below).logical_not_()  # keep = ~below, in place
            need = k - int(below.sum())
            del below
            if need > 0:
                tied = torch.nonzero(flat == threshold).view(-1)[:need]
                keep[tied] = False
        offset = 0
        for n in names:
            w = weights[n]
            out[n] = keep[offset : offset + w.numel()].view(w.shape).to(w.device, copy=True)
            offset += w.numel()
    return out


#: Per-coordinate optimizer states that only scale a coordinate's update (Adam's ``exp_avg_sq``, Adagrad's ``sum``,
#: RMSprop's and Adadelta's ``square_avg``/``acc_delta``, Adamax's ``exp_inf``): when the gradient and the first
#: moment of a coordinate are zero its update is exactly zero whatever these hold, so they are never zeroed at
#: pruning time (zeroing them makes ``sqrt`` slow on some CPUs and changes nothing).
SECOND_MOMENTS: tuple[str, ...] = ("exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg", "acc_delta", "exp_inf")

#: ``torch.optim`` classes (exact types: a subclass may change ``step``) for which a coordinate whose gradient and
#: first-moment/momentum state are zero gets an exactly zero update, whatever its second moments, weight decay
#: (coupled or decoupled: the decay of a zero weight is zero), Nesterov, ``maximize``, AMSGrad and the
#: ``foreach``/``fused`` implementations. Masking the gradients once per step then keeps pruned weights at exactly 0.
EXACT_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.Adamax,
    torch.optim.Adagrad,
    torch.optim.RMSprop,
    torch.optim.Adadelta,
)


def keeps_pruned_weights_zero(optimizer: Any) -> bool:
    """Whether ``optimizer`` is one of :data:`EXACT_OPTIMIZERS` (by exact type), so masked gradients suffice.

    Example:
        >>> p = nn.Parameter(torch.ones(2))
        >>> keeps_pruned_weights_zero(torch.optim.AdamW([p])), keeps_pruned_weights_zero(torch.optim.LBFGS([p]))
        (True, False)
    """
    return type(optimizer) in EXACT_OPTIMIZERS


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
    pruned: Tensor | None = None
    for key, value in optimizer.state.get(param, {}).items():
        if key not in skip and isinstance(value, Tensor) and value.shape == param.shape:
            if pruned is None:
                pruned = ~mask.to(value.device)
            value.masked_fill_(pruned, 0)
            count += 1
    return count


def reset_optimizer_state(optimizer: torch.optim.Optimizer, param: Tensor, coords: Tensor) -> int:
    """Fresh optimizer state at ``coords`` (bool, ``param``'s shape): every per-coordinate state tensor zeroed there.

    For weights that are regrown (dynamic sparse training): zero is the state a fresh ``torch.optim`` optimizer
    starts from (moments, momentum buffers, Adagrad's ``sum`` with the default ``initial_accumulator_value=0``).

    Returns:
        The number of state tensors reset.

    Example:
        >>> p = nn.Parameter(torch.ones(2))
        >>> opt = torch.optim.Adam([p], lr=0.1)
        >>> p.grad = torch.ones(2); opt.step()
        >>> reset_optimizer_state(opt, p, torch.tensor([False, True]))
        2
        >>> opt.state[p]["exp_avg_sq"].tolist()
        [0.0010000000474974513, 0.0]
    """
    count = 0
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            value.masked_fill_(coords.to(value.device), 0)
            count += 1
    return count


def pack_mask(mask: Tensor) -> bytes:
    """A bool mask at one bit per element (row-major), for checkpoints.

    Example:
        >>> m = torch.tensor([[True, False, True], [False, False, True]])
        >>> torch.equal(unpack_mask(pack_mask(m), (2, 3)), m), len(pack_mask(torch.ones(100, dtype=torch.bool)))
        (True, 13)
    """
    return bytes(np.packbits(mask.detach().to("cpu", torch.bool).numpy().reshape(-1)).tobytes())


def unpack_mask(bits: bytes, shape: Iterable[int]) -> Tensor:
    """Inverse of :func:`pack_mask`: a CPU bool tensor of ``shape``.

    Raises:
        ValueError: if ``bits`` is too short for ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(bits) * 8 < numel:
        raise ValueError(f"unpack_mask: {len(bits)} bytes cannot hold a mask of shape {shape}")
    flat = np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=numel).astype(bool)
    return torch.from_numpy(flat).view(shape)


def is_prunable_layer(module: nn.Module) -> bool:
    """Whether the default selection prunes ``module.weight``.

    True for a :data:`PRUNABLE_TYPES` instance or a layer named in :data:`PRUNABLE_CLASS_NAMES`, with an initialised
    ``weight`` parameter of at least two dimensions.

    Example:
        >>> [is_prunable_layer(m) for m in (nn.Linear(2, 3), nn.Embedding(5, 2), nn.LayerNorm(3))]
        [True, False, False]
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter) or isinstance(weight, nn.parameter.UninitializedParameter):
        return False
    if weight.dim() < 2:
        return False
    if isinstance(module, PRUNABLE_TYPES):
        return True
    return any(f"{c.__module__}.{c.__qualname__}" in PRUNABLE_CLASS_NAMES for c in type(module).__mro__)


def canonical_parameter_names(module: nn.Module) -> dict[str, str]:
    """Every name of every parameter (tied/shared ones under each alias) -> its canonical name.

    The canonical name is the one ``module.named_parameters()`` reports (the first alias); a shared parameter appears
    there once.

    Example:
        >>> emb, head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
        >>> head.weight = emb.weight  # tied
        >>> canonical_parameter_names(nn.ModuleDict({"emb": emb, "head": head}))
        {'emb.weight': 'emb.weight', 'head.weight': 'emb.weight'}
    """
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        out[name] = first.setdefault(id(p), name)
    return out


class ParameterSelection(NamedTuple):
    """The default selection: canonical parameter names and the aliases left out (name -> reason)."""

    names: list[str]
    excluded: dict[str, str]


def default_parameter_selection(module: nn.Module) -> ParameterSelection:
    """The weights the default selection prunes, each once, and the shared weights it leaves out.

    Selected: the ``weight`` of every layer for which :func:`is_prunable_layer` holds (``nn.Linear``, ``nn.Conv*``,
    ``nn.Bilinear``, HF ``Conv1D``, PyG ``Linear``, timm layers). Not selected: embeddings, norms, biases and other
    parameters. A weight shared by several layers (tied weights) is pruned once, under its canonical name, if every
    layer holding it is prunable; a weight tied to a layer that is not (the usual language-model ``lm_head`` tied to
    the input ``Embedding``) is left dense: pruning it would prune the embedding table.

    Example:
        >>> emb, head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
        >>> head.weight = emb.weight
        >>> net = nn.ModuleDict({"emb": emb, "mid": nn.Linear(3, 3), "head": head})
        >>> selection = default_parameter_selection(net)
        >>> selection.names
        ['mid.weight']
        >>> selection.excluded
        {'head.weight': 'tied to emb.weight, which is not a prunable layer (Embedding)'}
    """
    holders: dict[int, list[tuple[str, nn.Module]]] = {}
    for path, sub in module.named_modules(remove_duplicate=False):
        for leaf, p in sub.named_parameters(recurse=False):
            holders.setdefault(id(p), []).append((f"{path}.{leaf}" if path else leaf, sub))
    canonical = canonical_parameter_names(module)
    names: list[str] = []
    excluded: dict[str, str] = {}
    for path, sub in module.named_modules(remove_duplicate=False):
        if not is_prunable_layer(sub):
            continue
        alias = f"{path}.weight" if path else "weight"
        name = canonical.get(alias)
        if name is None or name in names or alias in excluded:
            continue
        others = [(n, m) for n, m in holders[id(sub.weight)] if not (is_prunable_layer(m) and n.endswith("weight"))]
        if others:
            n, m = others[0]
            excluded[alias] = f"tied to {n}, which is not a prunable layer ({type(m).__name__})"
            continue
        names.append(name)
    return ParameterSelection(names, excluded)


def default_parameter_names(module: nn.Module) -> list[str]:
    """Canonical names of the weights :func:`default_parameter_selection` prunes.

    Example:
        >>> default_parameter_names(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Conv1d(1, 1, 2)))
        ['0.weight', '2.weight']
    """
    return default_parameter_selection(module).names


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

    The weights keep their zeros and the module loses its ``*_mask`` buffers (non-persistent ones, as
    :class:`~litmix.callbacks.GradualPruning` registers, are not in the ``state_dict`` anyway; persistent ones from
    older litmix versions are, and leave it here, so the ``state_dict`` loads into a plain copy of the architecture).

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
