"""Attention-head importance and whole-head masks (pure tensors over the attention modules' weights).

A head is removed as a unit: its query, key and value rows of the input projection and its columns of the output
projection. Masking all of them makes the head's contribution exactly zero (zero queries and keys give uniform
attention over zero values, and the output projection ignores the head), so a model with masked heads computes
exactly what the model with those heads physically removed computes (:func:`litmix.sparsity.removal.shrink_model`).

Supported attention modules (found by :func:`find_attention`):

* ``torch.nn.MultiheadAttention`` (packed ``in_proj_weight`` ``[3E, E]`` or separate ``q/k/v_proj_weight``; the
  output projection ``out_proj``);
* Hugging Face GPT-2 style attention: a module with ``c_attn`` (``Conv1D``, weight ``[E, 3E]``: q, k, v columns),
  ``c_proj`` (``Conv1D``, weight ``[E, E]``: one row block per head), ``num_heads`` and ``head_dim``.

Head importance (Michel et al., "Are Sixteen Heads Really Better than One?", https://arxiv.org/abs/1905.10650,
showed that most heads can be removed; here the score is weight-based, as in magnitude channel pruning): the
root-mean-square of every weight the head owns (q/k/v rows with their biases, output-projection columns).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from litmix.functional.sparsity import magnitude_masks
from litmix.registry import register

__all__ = [
    "HeadSlice",
    "find_attention",
    "head_layout",
    "head_masks",
    "head_parameter_masks",
    "head_scores",
    "kept_heads",
]

_MICHEL = "Are Sixteen Heads Really Better than One? (https://arxiv.org/abs/1905.10650)"


class HeadSlice(NamedTuple):
    """One tensor a head owns a part of.

    ``param`` (name relative to the attention module), the dimension and the offset of head 0 along it (head ``h``
    owns ``[offset + h * head_dim, offset + (h + 1) * head_dim)``).
    """

    param: str
    dim: int
    offset: int


def _is_gpt2_attention(module: nn.Module) -> bool:
    c_attn, c_proj = getattr(module, "c_attn", None), getattr(module, "c_proj", None)
    if c_attn is None or c_proj is None or not hasattr(module, "num_heads") or not hasattr(module, "head_dim"):
        return False
    return all(
        isinstance(getattr(m, "weight", None), nn.Parameter) and type(m).__name__ == "Conv1D" for m in (c_attn, c_proj)
    )


def find_attention(module: nn.Module) -> dict[str, nn.Module]:
    """Every supported attention module in ``module`` (name -> module), in ``named_modules`` order.

    Example:
        >>> net = nn.ModuleDict({"attn": nn.MultiheadAttention(8, 2), "fc": nn.Linear(8, 8)})
        >>> list(find_attention(net))
        ['attn']
    """
    return {n: m for n, m in module.named_modules() if isinstance(m, nn.MultiheadAttention) or _is_gpt2_attention(m)}


def _layout(attn: nn.Module) -> tuple[int, int, list[HeadSlice]]:
    """``(num_heads, head_dim, slices)`` of one supported attention module."""
    if isinstance(attn, nn.MultiheadAttention):
        e = attn.embed_dim
        slices: list[HeadSlice] = []
        if attn.in_proj_weight is not None:
            slices += [HeadSlice("in_proj_weight", 0, k * e) for k in range(3)]
        else:
            slices += [HeadSlice(f"{p}_proj_weight", 0, 0) for p in ("q", "k", "v")]
        if attn.in_proj_bias is not None:
            slices += [HeadSlice("in_proj_bias", 0, k * e) for k in range(3)]
        slices.append(HeadSlice("out_proj.weight", 1, 0))
        return attn.num_heads, attn.head_dim, slices
    heads, dim = int(attn.num_heads), int(attn.head_dim)  # type: ignore[arg-type]
    e = heads * dim
    slices = [HeadSlice("c_attn.weight", 1, k * e) for k in range(3)]
    if getattr(attn.c_attn, "bias", None) is not None:
        slices += [HeadSlice("c_attn.bias", 0, k * e) for k in range(3)]
    slices.append(HeadSlice("c_proj.weight", 0, 0))
    return heads, dim, slices


def _head_view(tensor: Tensor, s: HeadSlice, heads: int, dim: int) -> Tensor:
    """``[heads, rest]`` view of the head-owned part of ``tensor`` described by ``s``."""
    part = tensor.narrow(s.dim, s.offset, heads * dim).movedim(s.dim, 0)
    return part.reshape(heads, -1)


@register("function", "sparsity", paper=_MICHEL, module="litmix.functional.head_importance")
def head_scores(module: nn.Module, names: list[str] | None = None) -> dict[str, Tensor]:
    """Per-head importance of each supported attention module: the RMS of the weights the head owns.

    Args:
        module: a model holding attention modules (see :func:`find_attention`).
        names: attention module names (default: all found).

    Returns:
        attention module name -> float tensor ``[num_heads]`` (0 for a fully masked head).

    Raises:
        ValueError: when ``module`` holds no supported attention module or a name is not one.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> attn = nn.MultiheadAttention(8, 2)
        >>> with torch.no_grad():
        ...     attn.out_proj.weight[:, :4] *= 10  # head 0's output columns
        >>> s = head_scores(nn.ModuleDict({"attn": attn}))["attn"]
        >>> s.shape, bool(s[0] > s[1])
        (torch.Size([2]), True)
    """
    found = _attention_or_raise(module, names, "head_scores")
    out: dict[str, Tensor] = {}
    for name, attn in found.items():
        heads, dim, slices = _layout(attn)
        params = dict(attn.named_parameters())
        total = torch.zeros(heads, dtype=torch.float64)
        count = 0
        for s in slices:
            part = _head_view(params[s.param].detach(), s, heads, dim).double()
            total += part.pow(2).sum(dim=1).cpu()
            count += part.shape[1]
        out[name] = (total / max(count, 1)).sqrt().float()
    return out


def _attention_or_raise(module: nn.Module, names: list[str] | None, owner: str) -> dict[str, nn.Module]:
    found = find_attention(module)
    if not found:
        raise ValueError(
            f"{owner}: {type(module).__name__} holds no supported attention module (torch nn.MultiheadAttention or "
            "a Hugging Face GPT-2 style attention with c_attn/c_proj Conv1D, num_heads and head_dim)"
        )
    if names is None:
        return found
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValueError(f"{owner}: {unknown} are not supported attention modules; found: {list(found)}")
    return {n: found[n] for n in names}


@register("function", "sparsity", paper=_MICHEL, module="litmix.functional.head_importance")
def head_masks(
    scores: Mapping[str, Tensor],
    sparsity: float,
    scope: Literal["global", "layer"] = "layer",
    keep: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Which heads to keep: the ``sparsity`` fraction of heads with the lowest scores is removed.

    ``scope="layer"`` removes ``round(sparsity * num_heads)`` heads of every attention module; ``"global"`` ranks all
    heads together. At least one head of every module is kept. Heads already removed (``keep`` False) stay removed:
    their score is treated as 0.

    Args:
        scores: attention module name -> ``[num_heads]`` scores (e.g. :func:`head_scores`, or random).
        sparsity: fraction of heads removed, in [0, 1).
        scope: ``"global"`` or ``"layer"``.
        keep: current head masks (name -> bool ``[num_heads]``), a floor.

    Returns:
        name -> bool ``[num_heads]`` (True = kept).

    Raises:
        ValueError: for a sparsity outside [0, 1) or an unknown scope.

    Example:
        >>> head_masks({"a": torch.tensor([0.3, 0.1, 0.2, 0.4])}, 0.5)["a"].tolist()
        [True, False, False, True]
    """
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"head_masks(sparsity={sparsity}): sparsity must be in [0, 1)")
    if scope not in ("global", "layer"):
        raise ValueError(f"head_masks(scope={scope!r}): scope must be 'global' or 'layer'")
    floored = {n: s.detach().float().abs() for n, s in scores.items()}
    out = magnitude_masks(floored, float(sparsity), scope, masks=keep)
    for n, m in out.items():  # never remove every head of a module
        if not bool(m.any()):
            m[int(torch.argmax(floored[n]))] = True
    return out


@register("function", "sparsity", paper=_MICHEL, module="litmix.functional.head_importance")
def head_parameter_masks(module: nn.Module, keep: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Expand head masks into parameter masks: q/k/v rows (and biases) and output-projection columns of each head.

    Args:
        module: the model holding the attention modules named in ``keep``.
        keep: attention module name -> bool ``[num_heads]`` (True = kept).

    Returns:
        full parameter name (as in ``module.named_parameters()``) -> bool mask of the parameter's shape.

    Raises:
        ValueError: for a name that is not a supported attention module or a mask of the wrong length.

    Example:
        >>> net = nn.ModuleDict({"attn": nn.MultiheadAttention(4, 2)})
        >>> masks = head_parameter_masks(net, {"attn": torch.tensor([True, False])})
        >>> sorted(masks)
        ['attn.in_proj_bias', 'attn.in_proj_weight', 'attn.out_proj.weight']
        >>> masks["attn.out_proj.weight"][0].tolist(), masks["attn.in_proj_bias"].tolist()
        ([True, True, False, False], [True, True, False, False, True, True, False, False, True, True, False, False])
    """
    found = _attention_or_raise(module, list(keep), "head_parameter_masks")
    out: dict[str, Tensor] = {}
    for name, attn in found.items():
        heads, dim, slices = _layout(attn)
        k = keep[name].to(torch.bool).flatten()
        if k.numel() != heads:
            raise ValueError(f"head_parameter_masks: {name!r} has {heads} heads, the mask {k.numel()} entries")
        params = dict(attn.named_parameters())
        for s in slices:
            full = f"{name}.{s.param}" if name else s.param
            p = params[s.param]
            mask = out.get(full)
            if mask is None:
                mask = out[full] = torch.ones(p.shape, dtype=torch.bool, device=p.device)
            idx = s.offset + torch.arange(heads * dim, device=p.device)
            per = k.to(p.device).repeat_interleave(dim)
            shape = [1] * p.dim()
            shape[s.dim] = -1
            sel = mask.index_select(s.dim, idx) & per.view(shape)
            mask.index_copy_(s.dim, idx, sel)
    return out


def head_layout(attn: nn.Module) -> tuple[int, int, list[HeadSlice]]:
    """``(num_heads, head_dim, slices)`` of a supported attention module (see :class:`HeadSlice`).

    Example:
        >>> head_layout(nn.MultiheadAttention(8, 2))[:2]
        (2, 4)
    """
    return _layout(attn)


def kept_heads(module: nn.Module, masks: Mapping[str, Tensor], names: list[str] | None = None) -> dict[str, Tensor]:
    """Which heads parameter ``masks`` keep: a head is removed when every weight it owns is masked.

    Args:
        module: the model holding the attention modules.
        masks: full parameter name -> bool mask (True = kept); parameters without a mask count as kept.
        names: attention module names (default: all found).

    Returns:
        attention module name -> bool ``[num_heads]`` (True = kept).

    Example:
        >>> net = nn.ModuleDict({"attn": nn.MultiheadAttention(4, 2)})
        >>> masks = head_parameter_masks(net, {"attn": torch.tensor([False, True])})
        >>> kept_heads(net, masks)["attn"].tolist()
        [False, True]
    """
    found = find_attention(module)
    out: dict[str, Tensor] = {}
    for name in names if names is not None else list(found):
        heads, dim, slices = _layout(found[name])
        removed = torch.ones(heads, dtype=torch.bool)
        for s in slices:
            m = masks.get(f"{name}.{s.param}" if name else s.param)
            if m is None:
                removed[:] = False
                break
            removed &= ~_head_view(m.cpu(), s, heads, dim).any(dim=1)
        out[name] = ~removed
    return out
