"""Structured removal: physically drop masked output channels and attention heads so the model shrinks.

Built on Torch-Pruning's dependency graph (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023,
https://arxiv.org/abs/2301.12900), an optional extra: ``pip install "litmix[pruning]"``. The graph traces the model
once on example inputs and groups every tensor a channel touches (the producing layer's rows and bias, the norm
layers after it, the consuming layers' columns, through residual additions and concatenations), so removing a
channel removes it everywhere at once.

* :func:`channel_groups` lists the removable channel groups of a model (one producing layer, at least one consuming
  layer, only supported layers inside) and the groups left out with the reason; :func:`channel_parameter_masks`
  turns "keep these channels" into parameter masks covering every tensor of each group, so a masked model computes
  exactly what the shrunk model computes.
* :func:`shrink_model` removes every fully masked output channel and attention head in place.

Supported layers: ``nn.Linear``, ``nn.Conv1d/2d/3d`` (``groups=1``), Hugging Face ``Conv1D`` (GPT-2; a Torch-Pruning
pruner for it is registered here), ``nn.BatchNorm*``, ``nn.LayerNorm``. Heads: Hugging Face GPT-2 style attention
(``c_attn``/``c_proj``); ``torch.nn.MultiheadAttention`` heads can be masked but not removed (its ``embed_dim`` is
both the input width and ``num_heads * head_dim``).
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from litmix.functional.head_importance import find_attention, kept_heads
from litmix.functional.sparsity import MASK_SUFFIX, find_masks, remove_masks
from litmix.registry import register

__all__ = [
    "ChannelGroup",
    "RemovalReport",
    "channel_groups",
    "channel_parameter_masks",
    "forward_time_ratio",
    "require_torch_pruning",
    "shrink_model",
]

_DEPGRAPH = "DepGraph: Towards Any Structural Pruning (https://arxiv.org/abs/2301.12900)"
EXTRA = 'pip install "litmix[pruning]"'


def require_torch_pruning(owner: str, argument: str) -> Any:
    """Import ``torch_pruning`` or raise an ``ImportError`` naming the caller, the argument and the extra.

    Example:
        >>> require_torch_pruning("shrink_model", "masks").__name__
        'torch_pruning'
    """
    try:
        import torch_pruning
    except ImportError as err:
        raise ImportError(
            f"{owner}({argument}): physical removal of channels and heads uses Torch-Pruning's dependency graph, "
            f"which is not installed; install the optional extra: {EXTRA}"
        ) from err
    return torch_pruning


@functools.cache
def _conv1d_pruner() -> Any:
    """A Torch-Pruning pruner for Hugging Face's ``Conv1D`` (weight ``[in, out]``), built on first use."""
    from torch_pruning.pruner.function import BasePruningFunc

    class Conv1DPruner(BasePruningFunc):  # type: ignore[misc]
        def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            keep = sorted(set(range(_weight(layer).shape[1])) - set(idxs))
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
            if layer.bias is not None:
                layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
            setattr(layer, "nf", len(keep))  # noqa: B010 - HF Conv1D's width attribute
            return layer

        def prune_in_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
            keep = sorted(set(range(_weight(layer).shape[0])) - set(idxs))
            layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
            if hasattr(layer, "nx"):
                setattr(layer, "nx", len(keep))  # noqa: B010
            return layer

        def get_out_channels(self, layer: nn.Module) -> int:
            return int(_weight(layer).shape[1])

        def get_in_channels(self, layer: nn.Module) -> int:
            return int(_weight(layer).shape[0])

    return Conv1DPruner()


def _weight(module: nn.Module) -> Tensor:
    weight = module.weight
    assert isinstance(weight, Tensor)
    return weight


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and isinstance(getattr(module, "weight", None), nn.Parameter)


def _root_types(module: nn.Module) -> list[type]:
    types: list[type] = [nn.Linear, nn.modules.conv._ConvNd]
    types += list({type(m) for m in module.modules() if _is_conv1d(m)})
    return types


def _param_dims(module: nn.Module, out: bool) -> list[tuple[str, int]] | None:
    """``(parameter leaf, dim)`` pairs a channel of ``module`` occupies (``out``: output side); None = unsupported."""
    if isinstance(module, nn.Linear):
        return [("weight", 0), ("bias", 0)] if out else [("weight", 1)]
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups != 1:
            return None
        if module.transposed:
            return [("weight", 1), ("bias", 0)] if out else [("weight", 0)]
        return [("weight", 0), ("bias", 0)] if out else [("weight", 1)]
    if _is_conv1d(module):
        return [("weight", 1), ("bias", 0)] if out else [("weight", 0)]
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm):
        if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
            return None
        return [("weight", 0), ("bias", 0)]
    if not any(True for _ in module.parameters(recurse=False)):
        return []  # Torch-Pruning's op nodes (add, reshape, split, ...) and parameter-free layers: nothing to mask
    return None


def _is_producer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear | nn.modules.conv._ConvNd) or _is_conv1d(module)


class ChannelGroup(NamedTuple):
    """A removable group of coupled channels, rooted at one producing layer.

    ``members``: ``(parameter name, dim, index)`` for every tensor the group's channels occupy, where
    ``index[c]`` is the position of root channel ``c`` along ``dim``.
    """

    root: str
    size: int
    members: list[tuple[str, int, Tensor]]


@contextmanager
def _tracing(model: nn.Module) -> Any:
    """Eval mode (no BatchNorm statistics update, no dropout), the RNG untouched, HF caches off."""
    was = {m: m.training for m in model.modules()}
    configs: list[Any] = [m.config for m in model.modules() if hasattr(getattr(m, "config", None), "use_cache")]
    caches = [c.use_cache for c in configs]
    with ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))
        stack.enter_context(torch.enable_grad())
        try:
            model.eval()
            for c in configs:
                c.use_cache = False
            yield
        finally:
            for m, t in was.items():
                m.training = t
            for c, u in zip(configs, caches, strict=True):
                c.use_cache = u


def _graph(model: nn.Module, example_inputs: Any, owner: str) -> Any:
    tp = require_torch_pruning(owner, "example_inputs")
    customized = {t: _conv1d_pruner() for t in _root_types(model)[2:]}
    with _tracing(model):
        try:
            return tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example_inputs,
                customized_pruners=customized or None,
                output_transform=_first_tensor,
            )
        except Exception as err:
            raise RuntimeError(
                f"{owner}: Torch-Pruning could not trace {type(model).__name__} on the example inputs ({err!r})"
            ) from err


def _first_tensor(out: Any) -> Any:
    """The model's output as something Torch-Pruning can trace (HF ``ModelOutput`` -> its logits)."""
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, Mapping):
        return next(v for v in out.values() if isinstance(v, Tensor))
    if isinstance(out, list | tuple):
        return next(v for v in out if isinstance(v, Tensor))
    return out


def _attention_modules(model: nn.Module) -> set[nn.Module]:
    inside: set[nn.Module] = set()
    for attn in find_attention(model).values():
        inside.update(attn.modules())
    return inside


@register("function", "sparsity", paper=_DEPGRAPH, module="litmix.sparsity.removal")
def channel_groups(
    model: nn.Module, example_inputs: Any, layers: Sequence[str] | None = None
) -> tuple[list[ChannelGroup], dict[str, str]]:
    """The removable output-channel groups of ``model`` (Torch-Pruning's dependency graph on ``example_inputs``).

    A group is removable when exactly one layer produces its channels (no residual addition or concatenation
    couples it to another producer), at least one layer consumes them (the model's output width is not a channel
    group) and every layer inside is supported (see the module docstring). Layers inside attention modules are
    left to head pruning.

    Args:
        model: the model (traced in eval mode with the RNG state preserved; nothing in it changes).
        example_inputs: inputs for one forward call (a tensor, or a tuple/dict as Torch-Pruning accepts).
        layers: root layer names to consider (default: every ``nn.Linear``/``nn.Conv*``/HF ``Conv1D``).

    Returns:
        ``(groups, excluded)``: the removable groups and ``{layer: why it is not removable}``.

    Raises:
        ImportError: when Torch-Pruning is not installed (naming the extra).
        ValueError: for ``layers`` naming no supported layer of ``model``.
        RuntimeError: when the model cannot be traced.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> groups, excluded = channel_groups(net, torch.randn(2, 4))
        >>> [(g.root, g.size, [(n, d) for n, d, _ in g.members]) for g in groups]
        [('0', 8, [('0.weight', 0), ('0.bias', 0), ('2.weight', 1)])]
        >>> excluded
        {'2': 'its output channels are the model output (no layer consumes them)'}
    """
    names = {m: n for n, m in model.named_modules()}
    candidates = {
        n: m for n, m in model.named_modules() if _is_producer(m) and isinstance(getattr(m, "weight", None), Tensor)
    }
    if layers is not None:
        unknown = [n for n in layers if n not in candidates]
        if unknown:
            raise ValueError(
                f"channel_groups(layers={list(layers)}): {unknown} are not nn.Linear/nn.Conv*/Conv1D layers of "
                f"{type(model).__name__}; available: {list(candidates)}"
            )
        candidates = {n: candidates[n] for n in layers}
    attention = _attention_modules(model)
    excluded: dict[str, str] = {}
    for n, m in list(candidates.items()):
        if m in attention:
            excluded[n] = "inside an attention module (pruned by heads)"
            del candidates[n]
    if not candidates:
        return [], excluded
    dg = _graph(model, example_inputs, "channel_groups")
    groups: list[ChannelGroup] = []
    for name, layer in candidates.items():
        if layer not in dg.module2node:
            excluded[name] = "not reached by the forward pass on the example inputs"
            continue
        pruner = dg.get_pruner_of_module(layer)
        size = int(pruner.get_out_channels(layer))
        group = dg.get_pruning_group(layer, pruner.prune_out_channels, list(range(size)))
        members: list[tuple[str, int, Tensor]] = []
        producers: list[str] = []
        consumers, why = 0, ""
        for item in group:
            dep, target = item.dep, item.dep.target.module
            if not isinstance(target, nn.Module):
                why = f"couples an unwrapped parameter ({type(target).__name__})"
                break
            out = dg.is_out_channel_pruning_fn(dep.handler)
            dims = _param_dims(target, out)
            tname = names.get(target)
            if dims is None or (dims and tname is None):
                why = f"couples an unsupported layer ({type(target).__name__} {tname or ''})".replace(" )", ")")
                break
            if _is_producer(target):
                if out:
                    producers.append(str(tname))
                else:
                    consumers += 1
            index = torch.full((size,), -1, dtype=torch.long)
            for idx, root in zip(item.idxs, item.root_idxs, strict=True):
                index[int(root)] = int(idx)
            if dims and bool((index < 0).any()):
                why = f"maps its channels onto {tname} other than one to one"
                break
            for leaf, dim in dims:
                p = getattr(target, leaf, None)
                if isinstance(p, nn.Parameter):
                    members.append((f"{tname}.{leaf}" if tname else leaf, dim, index))
        if not why and len(set(producers)) > 1:
            why = (
                f"coupled to other producing layers by a residual addition or concatenation ({sorted(set(producers))})"
            )
        if not why and consumers == 0:
            why = "its output channels are the model output (no layer consumes them)"
        if why:
            excluded[name] = why
            continue
        groups.append(ChannelGroup(name, size, list({(n, d): (n, d, i) for n, d, i in members}.values())))
    return groups, excluded


@register("function", "sparsity", paper=_DEPGRAPH, module="litmix.sparsity.removal")
def channel_parameter_masks(
    model: nn.Module, groups: Sequence[ChannelGroup], keep: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Parameter masks (True = kept) removing the channels ``keep`` marks False from every tensor of each group.

    Args:
        model: the model the groups were found in.
        groups: from :func:`channel_groups`.
        keep: root layer name -> bool ``[size]`` (True = kept); groups not named keep every channel.

    Returns:
        parameter name -> bool mask of the parameter's shape (only parameters some group touches).

    Raises:
        ValueError: for a ``keep`` entry of the wrong length.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> groups, _ = channel_groups(net, torch.randn(1, 4))
        >>> masks = channel_parameter_masks(net, groups, {"0": torch.tensor([True, False, True])})
        >>> masks["0.weight"].all(dim=1).tolist(), masks["2.weight"].all(dim=0).tolist()
        ([True, False, True], [True, False, True])
    """
    params = dict(model.named_parameters())
    out: dict[str, Tensor] = {}
    for g in groups:
        k = keep.get(g.root)
        if k is None:
            continue
        k = k.to(torch.bool).flatten().cpu()
        if k.numel() != g.size:
            raise ValueError(f"channel_parameter_masks: {g.root!r} has {g.size} channels, the mask {k.numel()}")
        for name, dim, index in g.members:
            p = params[name]
            mask = out.get(name)
            if mask is None:
                mask = out[name] = torch.ones(p.shape, dtype=torch.bool, device=p.device)
            pruned = index[~k].to(p.device)
            if pruned.numel():
                mask.index_fill_(dim, pruned, False)
    return out


class RemovalReport(NamedTuple):
    """What :func:`shrink_model` removed.

    ``channels``: layer -> removed output-channel indices (original numbering); ``heads``: attention module ->
    removed head indices; ``widths``: layer -> output width after removal (``out_features``/``out_channels``/``nf``;
    attention modules: heads kept), the numbers to re-create the shrunk architecture with.
    """

    params_before: int
    params_after: int
    channels: dict[str, list[int]]
    heads: dict[str, list[int]]
    widths: dict[str, int]


def _masks_of(model: nn.Module, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    if masks is not None:
        return {n: m.detach().to(torch.bool).cpu() for n, m in masks.items()}
    return {n: getattr(o, leaf + MASK_SUFFIX).cpu() for n, (o, leaf) in find_masks(model).items()}


def _fully_pruned(mask: Tensor, dim: int) -> Tensor:
    """Bool ``[mask.shape[dim]]``: entries whose whole slice along ``dim`` is pruned."""
    return ~mask.movedim(dim, 0).reshape(mask.shape[dim], -1).any(dim=1)


def _remove_gpt2_heads(attn: nn.Module, removed: list[int]) -> None:
    heads, dim = int(attn.num_heads), int(attn.head_dim)  # type: ignore[arg-type]
    e = heads * dim
    cols = [k * e + h * dim + j for k in range(3) for h in removed for j in range(dim)]
    rows = [h * dim + j for h in removed for j in range(dim)]
    pruner = _conv1d_pruner()
    pruner.prune_out_channels(attn.c_attn, cols)
    pruner.prune_in_channels(attn.c_proj, rows)
    kept = heads - len(removed)
    setattr(attn, "num_heads", kept)  # noqa: B010 - GPT-2 attention reads both in forward
    setattr(attn, "split_size", kept * dim)  # noqa: B010
    if hasattr(attn, "pruned_heads") and isinstance(attn.pruned_heads, set):
        attn.pruned_heads |= set(removed)


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@register("function", "sparsity", paper=_DEPGRAPH, module="litmix.sparsity.removal")
@torch.no_grad()
def shrink_model(
    model: nn.Module, masks: Mapping[str, Tensor] | None = None, example_inputs: Any = None
) -> RemovalReport:
    """Physically remove every fully masked output channel and attention head of ``model`` (in place).

    A channel is removed when its producing layer's whole row (``nn.Linear``/``nn.Conv*``; a column of HF
    ``Conv1D``) is masked; Torch-Pruning's dependency graph removes it from every coupled tensor (bias, norms,
    consuming layers). A head is removed when every weight it owns is masked (see
    :mod:`litmix.functional.head_importance`). The ``<param>_mask`` buffers are dropped at the end. Masks from
    :class:`~litmix.callbacks.StructuredPruning` make the shrunk model compute exactly what the masked one did.

    **Re-creating the shrunk model** (e.g. to load its ``state_dict`` strictly): build it at the widths in the
    returned report (``report.widths``), or build the dense model as before and call ``shrink_model`` on it with
    the same masks (``callback.engine.masks``, saved with its checkpoint state): the shapes come out identical.

    Args:
        model: the model (changed in place; re-create optimizers afterwards).
        masks: parameter name -> bool mask (True = kept); default: the model's ``<param>_mask`` buffers.
        example_inputs: inputs for one forward call, needed to trace the dependency graph when channels are removed.

    Returns:
        A :class:`RemovalReport` (parameter counts before/after, what was removed, the new widths).

    Raises:
        ImportError: when Torch-Pruning is not installed (naming the extra).
        ValueError: for masks of unknown parameters or of the wrong shape, a masked channel whose removal would
            change the model output width or that a coupled layer still uses, fully masked heads of an
            ``nn.MultiheadAttention`` (not removable), or channels to remove without ``example_inputs``.

    Example:
        >>> torch.manual_seed(0)
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> mask = torch.ones(8, 4, dtype=torch.bool)
        >>> mask[4:] = False  # the last 4 hidden units
        >>> x = torch.randn(5, 4)
        >>> with torch.no_grad():
        ...     net[0].weight[4:] = 0.0; net[0].bias[4:] = 0.0
        >>> before = net(x)
        >>> report = shrink_model(net, {"0.weight": mask}, example_inputs=x)
        >>> net, report.params_before, report.params_after
        (Sequential(
          (0): Linear(in_features=4, out_features=4, bias=True)
          (1): ReLU()
          (2): Linear(in_features=4, out_features=3, bias=True)
        ), 67, 35)
        >>> torch.allclose(before, net(x))
        True
    """
    require_torch_pruning("shrink_model", "masks")
    given = _masks_of(model, masks)
    params = dict(model.named_parameters())
    for n, m in given.items():
        if n not in params:
            raise ValueError(f"shrink_model(masks=...): {n!r} is not a parameter of {type(model).__name__}")
        if tuple(m.shape) != tuple(params[n].shape):
            raise ValueError(
                f"shrink_model(masks=...): the mask of {n!r} has shape {tuple(m.shape)}, the parameter "
                f"{tuple(params[n].shape)}"
            )
    before = _count(model)
    remove_masks(model)  # bake the buffers (if any) into the weights and drop them: the shapes are about to change
    for n, m in given.items():
        params[n].masked_fill_(~m.to(params[n].device), 0)
    removed_heads: dict[str, list[int]] = {}
    widths: dict[str, int] = {}
    # 1. heads (no tracing needed)
    for name, attn in find_attention(model).items():
        gone = torch.nonzero(~kept_heads(model, given, [name])[name]).flatten().tolist()
        if not gone:
            continue
        if isinstance(attn, nn.MultiheadAttention):
            raise ValueError(
                f"shrink_model(masks=...): heads {gone} of {name!r} are masked, but nn.MultiheadAttention heads cannot "
                "be removed (its embed_dim is both the input width and num_heads * head_dim); keep them masked "
                "(zeros) or use an attention module with separate projections"
            )
        if len(gone) >= int(attn.num_heads):  # type: ignore[arg-type]
            raise ValueError(f"shrink_model(masks=...): every head of {name!r} is masked; keep at least one")
        _remove_gpt2_heads(attn, gone)
        removed_heads[name] = gone
        widths[name] = int(attn.num_heads)  # type: ignore[arg-type]
    # 2. channels, through the dependency graph
    attention = _attention_modules(model)
    plan: dict[str, list[int]] = {}
    for name, layer in model.named_modules():
        if not _is_producer(layer) or layer in attention:
            continue
        wmask = given.get(f"{name}.weight" if name else "weight")
        if wmask is None:
            continue
        dims = _param_dims(layer, True)
        assert dims is not None
        pruned_rows = torch.nonzero(_fully_pruned(wmask, dims[0][1])).flatten().tolist()
        if pruned_rows:
            plan[name] = pruned_rows
    if plan:
        if example_inputs is None:
            raise ValueError(
                f"shrink_model(example_inputs=None): removing the masked channels of {list(plan)} needs example "
                "inputs to trace the dependency graph"
            )
        dg = _graph(model, example_inputs, "shrink_model")
        modules = dict(model.named_modules())
        names = {m: n for n, m in modules.items()}
        done: set[str] = set()
        for name, gone in plan.items():
            if name in done:
                continue
            layer = modules[name]
            pruner = dg.get_pruner_of_module(layer)
            group = dg.get_pruning_group(layer, pruner.prune_out_channels, gone)
            consumers = 0
            for dep, idxs in group:
                target = dep.target.module
                tname = names.get(target)
                if not _is_producer(target):
                    continue
                if not dg.is_out_channel_pruning_fn(dep.handler):
                    consumers += 1
                    continue
                if tname == name:
                    continue
                tmask = given.get(f"{tname}.weight")
                dims = _param_dims(target, True)
                assert dims is not None
                hit = [int(i) for i in idxs]
                if tmask is None or not bool(_fully_pruned(tmask, dims[0][1])[hit].all()):
                    raise ValueError(
                        f"shrink_model(masks=...): the masked channels of {name!r} are coupled (residual addition or "
                        f"concatenation) to {tname!r}, which still uses some of them; mask the same channels there or "
                        "leave these layers out"
                    )
                done.add(str(tname))
            if consumers == 0:
                raise ValueError(
                    f"shrink_model(masks=...): the output channels of {name!r} are the model output; removing "
                    f"{len(gone)} of them would change the output width"
                )
            if not dg.check_pruning_group(group):
                raise ValueError(f"shrink_model(masks=...): every output channel of {name!r} is masked")
            group.prune()
            done.add(name)
    channels: dict[str, list[int]] = {}
    for name, gone in plan.items():
        channels[name] = gone
        layer = model.get_submodule(name)
        w = _weight(layer)
        widths[name] = int(w.shape[1] if _is_conv1d(layer) or getattr(layer, "transposed", False) else w.shape[0])
    return RemovalReport(before, _count(model), channels, removed_heads, widths)


@torch.no_grad()
def forward_time_ratio(small: nn.Module, big: nn.Module, inputs: Any, reps: int = 15, warmup: int = 2) -> float:
    """Median forward time of ``small`` divided by ``big``'s, measured interleaved in this process.

    The honest way to say whether a shrunk model is faster: the same inputs, alternating calls (so machine load hits
    both alike), medians; both models are put in eval mode. Below 1 means ``small`` is faster.

    Args:
        small: e.g. the shrunk model.
        big: e.g. the dense model.
        inputs: one forward call's input (a tensor, or a tuple of positional arguments).
        reps: timed calls of each model.
        warmup: untimed calls of each model first.

    Example:
        >>> big, small = nn.Linear(512, 512), nn.Linear(512, 64)
        >>> forward_time_ratio(small, big, torch.randn(256, 512)) < 1.0
        True
    """
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    small.eval()
    big.eval()
    for _ in range(warmup):
        small(*args)
        big(*args)
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(reps):
        for i, model in enumerate((small, big)):
            start = time.perf_counter()
            model(*args)
            times[i].append(time.perf_counter() - start)
    return statistics.median(times[0]) / statistics.median(times[1])
