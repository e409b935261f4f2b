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


# ----------------------------------------------------------------------------- mask selectors (the mask engine's)
_RIGL = "Rigging the Lottery: Making All Tickets Winners (https://arxiv.org/abs/1911.11134)"
_SET = (
    "Scalable training of artificial neural networks with adaptive sparse connectivity inspired by network "
    "science (https://arxiv.org/abs/1707.04780)"
)
_NM = "Accelerating Sparse Deep Neural Networks (https://arxiv.org/abs/2104.08378)"

__all__ += [
    "cosine_update_fraction",
    "erk_densities",
    "nm_masks",
    "prune_and_grow",
    "random_masks",
    "structured_masks",
]


def _rows(weight: Tensor) -> Tensor:
    """``weight`` as ``[rows, cols]``: output channels/features by everything else (a 1-d tensor is one row)."""
    return weight.reshape(1, -1) if weight.dim() < 2 else weight.reshape(weight.shape[0], -1)


@register("function", "sparsity", paper=_NM, module="litmix.functional.sparsity")
def nm_masks(weights: Mapping[str, Tensor], n: int = 2, m: int = 4) -> dict[str, Tensor]:
    """N:M masks: in every group of ``m`` consecutive weights of a row keep the ``n`` largest ``|w|``.

    Rows are output features/channels (``weight.reshape(out, -1)``), so for an ``nn.Linear`` the groups run along
    the input dimension: the layout of NVIDIA's 2:4 sparse tensor cores (``to_sparse_semi_structured``). Ties are
    broken by position (stable sort). Pass scores instead of weights to rank by something else than ``|w|``.

    Args:
        weights: name -> weight (or score) tensor with at least 2 dimensions.
        n: weights kept per group, in [0, ``m``].
        m: group size (>= 1); must divide every row's length.

    Returns:
        name -> bool mask of the weight's shape (``True`` = kept), sparsity exactly ``1 - n / m``.

    Raises:
        ValueError: for ``n`` outside [0, ``m``] or an ``m`` that does not divide a row's length (naming the tensor).

    Example:
        >>> w = torch.tensor([[0.1, -3.0, 0.2, 2.0, 5.0, 0.0, -0.1, 0.3]])
        >>> nm_masks({"w": w})["w"].int().tolist()
        [[0, 1, 0, 1, 1, 0, 0, 1]]
    """
    if isinstance(n, bool) or isinstance(m, bool) or not isinstance(n, int) or not isinstance(m, int):
        raise TypeError(f"nm_masks(n={n!r}, m={m!r}): n and m must be int")
    if m < 1 or not 0 <= n <= m:
        raise ValueError(f"nm_masks(n={n}, m={m}): need m >= 1 and 0 <= n <= m")
    out: dict[str, Tensor] = {}
    for name, w in weights.items():
        rows = _rows(w.detach())
        if rows.shape[1] % m:
            raise ValueError(
                f"nm_masks(m={m}): {name!r} has rows of {rows.shape[1]} weights (shape {tuple(w.shape)}), which "
                f"groups of m={m} do not divide"
            )
        groups = rows.abs().reshape(-1, m)
        order = torch.sort(groups, dim=1, descending=True, stable=True).indices[:, :n]
        keep = torch.zeros(groups.shape, dtype=torch.bool, device=w.device)
        keep.scatter_(1, order, True)
        out[name] = keep.view(w.shape)
    return out


@register("function", "sparsity", paper=_ZHU_GUPTA, module="litmix.functional.sparsity")
def structured_masks(
    weights: Mapping[str, Tensor], sparsity: float, scope: Literal["global", "layer"] = "layer"
) -> dict[str, Tensor]:
    """Structured masks removing whole output channels/rows (dim 0) with the smallest L2 norm.

    ``scope="layer"`` removes ``round(sparsity * rows)`` rows of each tensor; ``"global"`` ranks the rows of all
    tensors together by their root-mean-square (so rows of different lengths compare) and removes that fraction of
    all rows. Ties are broken by position.

    Args:
        weights: name -> weight tensor (``[out, ...]``).
        sparsity: fraction of rows to remove, in [0, 1].
        scope: ``"global"`` or ``"layer"``.

    Returns:
        name -> bool mask of the weight's shape where each row is all kept or all pruned.

    Raises:
        ValueError: for a sparsity outside [0, 1] or an unknown scope.

    Example:
        >>> w = torch.tensor([[1.0, 1.0], [0.1, 0.0], [3.0, -2.0], [0.0, 0.5]])
        >>> structured_masks({"w": w}, 0.5)["w"].all(dim=1).tolist()
        [True, False, True, False]
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"structured_masks: sparsity must be in [0, 1], got {sparsity}")
    if scope not in ("global", "layer"):
        raise ValueError(f"structured_masks: scope must be 'global' or 'layer', got {scope!r}")
    scores = {name: _rows(w.detach()).float().pow(2).mean(dim=1).sqrt() for name, w in weights.items()}
    rows = magnitude_masks(scores, sparsity, scope)
    return {name: rows[name].view(-1, *([1] * (w.dim() - 1))).expand(w.shape).clone() for name, w in weights.items()}


@register("function", "sparsity", paper=_RIGL, module="litmix.functional.sparsity")
def erk_densities(shapes: Mapping[str, Iterable[int]], density: float) -> dict[str, float]:
    """Erdős–Rényi–Kernel layer densities with the overall density ``density`` (RigL, Evci et al. 2020).

    A layer's density is ``eps * sum(shape) / prod(shape)`` (``(n_in + n_out + k_h + k_w) / (n_in n_out k_h k_w)``
    for a convolution, ``(n_in + n_out) / (n_in n_out)`` for a linear layer), with ``eps`` chosen so that the kept
    weights add up to ``density`` of all; layers that would exceed 1 are made dense and ``eps`` is solved again (the
    reference implementation's loop).

    Args:
        shapes: name -> parameter shape.
        density: overall fraction of kept weights, in (0, 1].

    Returns:
        name -> density in (0, 1]; ``sum(d * numel) == density * total`` up to rounding.

    Raises:
        ValueError: for a density outside (0, 1] or no shapes.

    Example:
        >>> d = erk_densities({"a": (784, 300), "b": (300, 100), "c": (100, 10)}, 0.1)
        >>> [round(v, 3) for v in d.values()], round((d["a"] * 235200 + d["b"] * 30000 + d["c"] * 1000) / 266200, 4)
        ([0.08, 0.23, 1.0], 0.1)
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"erk_densities: density must be in (0, 1], got {density}")
    dims = {name: [int(s) for s in shape] for name, shape in shapes.items()}
    if not dims:
        raise ValueError("erk_densities: no shapes given")
    numel = {name: float(np.prod(s)) for name, s in dims.items()}
    raw = {name: sum(s) / numel[name] for name, s in dims.items()}
    dense: set[str] = set()
    while True:
        rhs = sum(numel[k] * density - (numel[k] if k in dense else 0.0) for k in dims)
        divisor = sum(raw[k] * numel[k] for k in dims if k not in dense)
        if divisor <= 0:
            break
        eps = rhs / divisor
        over = [k for k in dims if k not in dense and eps * raw[k] > 1.0]
        if not over:
            break
        dense.add(max(over, key=lambda k: raw[k]))
    return {k: 1.0 if k in dense else min(1.0, eps * raw[k]) for k in dims}


@register("function", "sparsity", paper=_SET, module="litmix.functional.sparsity")
def random_masks(
    shapes: Mapping[str, Iterable[int]], densities: Mapping[str, float], generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """Uniformly random masks keeping exactly ``round(density * numel)`` weights of each tensor (CPU bool tensors).

    Args:
        shapes: name -> shape.
        densities: name -> fraction kept, in [0, 1].
        generator: CPU random generator (seed it for reproducible masks).

    Raises:
        ValueError: for a density outside [0, 1] or a missing one (naming the tensor).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> m = random_masks({"w": (10, 10)}, {"w": 0.3}, g)
        >>> int(m["w"].sum()), tuple(m["w"].shape)
        (30, (10, 10))
    """
    out = {}
    for name, shape in shapes.items():
        shape = tuple(int(s) for s in shape)
        n = int(np.prod(shape)) if shape else 1
        d = densities.get(name)
        if d is None or not 0.0 <= float(d) <= 1.0:
            raise ValueError(f"random_masks: the density of {name!r} must be in [0, 1], got {d}")
        keep = torch.zeros(n, dtype=torch.bool)
        keep[torch.randperm(n, generator=generator)[: round(float(densities[name]) * n)]] = True
        out[name] = keep.view(shape)
    return out


@register("function", "sparsity", paper=_RIGL, module="litmix.functional.sparsity")
def cosine_update_fraction(step: int, end_step: int, zeta: float) -> float:
    """RigL's drop fraction ``zeta / 2 * (1 + cos(pi * step / end_step))``, 0 from ``end_step`` on.

    Args:
        step: the optimizer step.
        end_step: the step from which the masks stay fixed.
        zeta: the initial fraction, in [0, 1].

    Raises:
        ValueError: for ``zeta`` outside [0, 1].

    Example:
        >>> [round(cosine_update_fraction(t, 100, 0.3), 4) for t in (0, 50, 99, 100)]
        [0.3, 0.15, 0.0001, 0.0]
    """
    if not 0.0 <= zeta <= 1.0:
        raise ValueError(f"cosine_update_fraction: zeta must be in [0, 1], got {zeta}")
    if step >= end_step or end_step <= 0:
        return 0.0
    return float(zeta / 2.0 * (1.0 + np.cos(np.pi * max(step, 0) / end_step)))


@register("function", "sparsity", paper=_RIGL, module="litmix.functional.sparsity")
def prune_and_grow(
    weight: Tensor,
    mask: Tensor,
    fraction: float,
    grow_scores: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One dynamic-sparse-training update: drop the smallest ``|w|``, grow as many, keeping the count of kept weights.

    Drops ``k = round(fraction * kept)`` kept weights of smallest magnitude, then activates ``k`` of the inactive
    coordinates (those just dropped included, as in RigL's reference code): the largest ``grow_scores`` (RigL:
    ``|gradient|``) or, when ``grow_scores`` is ``None``, uniformly at random (SET) from ``generator``.

    Args:
        weight: the weight (any shape).
        mask: its bool mask (``True`` = kept).
        fraction: fraction of kept weights to replace, in [0, 1].
        grow_scores: scores of the weight's shape (higher grows first) or ``None`` for random growth.
        generator: random generator for SET (CPU).

    Returns:
        The new bool mask (same number of kept weights).

    Raises:
        ValueError: for a fraction outside [0, 1].

    Example:
        >>> w = torch.tensor([0.0, 3.0, 0.1, 0.0, 2.0, 0.0])
        >>> mask = w != 0
        >>> g = torch.tensor([0.0, 0.0, 0.0, 9.0, 0.0, 1.0])
        >>> prune_and_grow(w, mask, 1 / 3, g).tolist()
        [False, True, False, True, True, False]
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"prune_and_grow: fraction must be in [0, 1], got {fraction}")
    flat_mask = mask.reshape(-1).to(torch.bool)
    kept = int(flat_mask.sum())
    k = round(fraction * kept)  # after the drop numel - kept + k >= k candidates
    if k <= 0:
        return mask.clone()
    # one float copy of the tensor alive at a time (scores filled in place)
    score = weight.detach().reshape(-1).abs().float()
    score.masked_fill_(~flat_mask.to(score.device), float("inf"))
    drop = torch.topk(score, k, largest=False).indices
    del score
    after = flat_mask.clone()
    after[drop.to(after.device)] = False
    if grow_scores is None:
        grow = torch.rand(after.numel(), generator=generator).to(after.device)
    else:
        grow = grow_scores.detach().reshape(-1).abs().float().to(after.device)
    grow.masked_fill_(after, float("-inf"))
    chosen = torch.topk(grow, k, largest=True).indices
    del grow
    after[chosen] = True
    return after.view(mask.shape)
