"""Registry, model handling and the :func:`zero_cost_proxies` entry point of the zero-cost proxies.

Numerics follow the reference code (SamsungLabs/zero-cost-nas ``foresight``, automl/NASLib) with its
pitfalls fixed: every proxy scores a ``copy.deepcopy`` of the (DDP-unwrapped) model, autocast is disabled,
hooks are always removed, symmetric eigenproblems use ``eigvalsh`` and log-determinants ``slogdet``, every
requested proxy is returned (NASLib's ``find_measures`` returns only the last one), and every proxy is
"higher is better".
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_float, check_int, check_type

__all__ = [
    "LayerFilter",
    "ProxyContext",
    "ProxySpec",
    "get_proxy",
    "list_proxies",
    "register_proxy",
    "register_shared_planner",
    "resolve_layer_filter",
    "weight_of",
    "zero_cost_proxies",
]

_PAPER = "Zero-Cost Proxies for Lightweight NAS (https://arxiv.org/abs/2101.08134)"

BnMode = Literal["train", "identity"]
NanPolicy = Union[Literal["nan", "raise", "naslib"], float]  # noqa: UP007 (runtime alias)
LayerFilter = Union[str, tuple[type, ...], Callable[[str, nn.Module], bool], None]  # noqa: UP007

ProxyValue = Union[float, Tensor, dict[str, Tensor]]  # noqa: UP007
ProxyFn = Callable[["ProxyContext"], ProxyValue]


@dataclass(frozen=True)
class ProxySpec:
    """A registered proxy.

    Attributes:
        name: registry name.
        fn: ``fn(ctx) -> value``; a dict of per-layer values is summed into the total.
        needs_labels: the proxy needs ``targets``.
        needs_data: the proxy reads the given inputs' values (data-free proxies only use their shapes).
        bn_mode: ``"train"`` (BN in train mode, the reference default) or ``"identity"`` (BN forward replaced by
            identity, as synflow does).
        dtype: dtype the model copy and floating inputs are cast to.
        log_scale: report ``signed_log(total)`` (synflow).
        doc: one-line description.
        layerwise: the proxy sums over the selected layers' weights; it refuses a model where the layer filter
            selects none (a silent 0 otherwise).
    """

    name: str
    fn: ProxyFn
    needs_labels: bool = False
    needs_data: bool = True
    bn_mode: BnMode = "train"
    dtype: torch.dtype = torch.float32
    log_scale: bool = False
    doc: str = ""
    layerwise: bool = False


_PROXIES: dict[str, ProxySpec] = {}


def register_proxy(
    name: str,
    needs_labels: bool = False,
    needs_data: bool = True,
    bn_mode: BnMode = "train",
    dtype: torch.dtype = torch.float32,
    log_scale: bool = False,
    layerwise: bool = False,
) -> Callable[[ProxyFn], ProxyFn]:
    """Decorator registering a pure scoring function ``fn(ctx: ProxyContext) -> float | Tensor | dict``.

    Raises:
        ValueError: for a name registered twice by different functions or an unknown ``bn_mode``.

    Example:
        >>> @register_proxy("_doc_params", needs_data=False)
        ... def _doc_params(ctx):
        ...     return float(sum(p.numel() for p in ctx.model.parameters()))
        >>> zero_cost_proxies(nn.Linear(3, 2), torch.randn(4, 3), names=["_doc_params"])
        {'_doc_params': 8.0}
        >>> _ = _PROXIES.pop("_doc_params")
    """
    if bn_mode not in ("train", "identity"):
        raise ValueError(f"register_proxy(bn_mode={bn_mode!r}): bn_mode must be 'train' or 'identity'")

    def decorator(fn: ProxyFn) -> ProxyFn:
        old = _PROXIES.get(name)
        if old is not None and old.fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"register_proxy: proxy {name!r} is already registered by {old.fn!r}")
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _PROXIES[name] = ProxySpec(name, fn, needs_labels, needs_data, bn_mode, dtype, log_scale, doc, layerwise)
        return fn

    return decorator


def list_proxies() -> list[str]:
    """Names of the registered proxies, sorted.

    Example:
        >>> {"synflow", "snip", "naswot", "zen", "params", "flops"} <= set(list_proxies())
        True
    """
    return sorted(_PROXIES)


def get_proxy(name: str) -> ProxySpec:
    """The :class:`ProxySpec` registered as ``name``.

    Raises:
        ValueError: naming the unknown proxy and listing the available ones.
    """
    try:
        return _PROXIES[name]
    except KeyError:
        raise ValueError(f"unknown proxy {name!r}; available proxies: {list_proxies()}") from None


# ----------------------------------------------------------------------------------------------------------
# Layer selection


def _extended_types() -> tuple[type, ...]:
    types: list[type] = [nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear, nn.Embedding, nn.Bilinear]
    pyg_linear = sys.modules.get("torch_geometric.nn.dense.linear")  # a model using it has imported it
    if pyg_linear is not None:
        types.append(pyg_linear.Linear)
    return tuple(types)


def resolve_layer_filter(layer_filter: LayerFilter = None) -> Callable[[str, nn.Module], bool]:
    """Turn a layer selection into a predicate ``(qualified_name, module) -> bool``.

    Args:
        layer_filter: ``None`` or ``"reference"``: ``nn.Conv2d`` and ``nn.Linear`` only (the reference code's
            coverage, for comparable numbers); ``"extended"``: also ``Conv1d/3d``, ``ConvTranspose2d``,
            ``Embedding``, ``Bilinear``, torch_geometric's ``Linear`` and Hugging Face's ``Conv1D`` (GPT-2);
            ``"all"``: every module owning a ``weight`` parameter with at least 2 dimensions; a tuple of module
            types; or a callable predicate.

    Raises:
        ValueError: for an unknown preset name.
        TypeError: for any other type.

    Example:
        >>> pred = resolve_layer_filter("extended")
        >>> pred("emb", nn.Embedding(4, 2)), resolve_layer_filter(None)("emb", nn.Embedding(4, 2))
        (True, False)
    """
    if layer_filter is None or layer_filter == "reference":
        return lambda name, m: isinstance(m, nn.Conv2d | nn.Linear)
    if isinstance(layer_filter, str):
        if layer_filter == "extended":
            types = _extended_types()
            return lambda name, m: isinstance(m, types) or type(m).__name__ == "Conv1D"
        if layer_filter == "all":
            return lambda name, m: isinstance(w := getattr(m, "weight", None), nn.Parameter) and w.dim() >= 2
        raise ValueError(f"layer_filter={layer_filter!r}: must be 'reference', 'extended', 'all', types or a callable")
    if isinstance(layer_filter, tuple) and all(isinstance(t, type) for t in layer_filter):
        types_ = layer_filter
        return lambda name, m: isinstance(m, types_)
    if callable(layer_filter):
        return layer_filter
    raise TypeError(f"layer_filter must be None, a preset name, a tuple of types or a callable, got {layer_filter!r}")


def weight_of(module: nn.Module) -> Tensor:
    """The ``weight`` tensor of a layer.

    Raises:
        TypeError: if the module has no tensor ``weight``.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return weight


def _select_layers(model: nn.Module, predicate: Callable[[str, nn.Module], bool]) -> list[tuple[str, nn.Module]]:
    out = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if (
            predicate(name, module)
            and isinstance(weight, Tensor)
            and not isinstance(weight, nn.parameter.UninitializedParameter)
        ):
            out.append((name, module))
    return out


# ----------------------------------------------------------------------------------------------------------
# The context handed to each proxy


def default_output_fn(output: Any) -> Tensor:
    """Tensor of a model output: the tensor itself, ``.logits`` (Hugging Face) or the first element."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    raise TypeError(f"cannot find a tensor in the model output of type {type(output).__name__}; pass output_fn")


def default_loss_fn(output: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over the last dimension (classification, node classification, language modelling)."""
    return nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), targets.reshape(-1))


def _is_graph_data(obj: Any) -> bool:
    """A PyG ``Data``/``Batch`` (or any ``BaseData``), detected without importing torch_geometric."""
    pyg_data = sys.modules.get("torch_geometric.data")
    return pyg_data is not None and isinstance(obj, pyg_data.Data | pyg_data.HeteroData)


@dataclass
class ProxyContext:
    """Everything a proxy function sees: a private model copy, the batch, the selected layers and options.

    Attributes:
        model: a deep copy in train mode, cast to the proxy's dtype; the proxy may mutate it.
        args: positional forward arguments (floating tensors cast to the proxy's dtype).
        kwargs: keyword forward arguments.
        targets: labels or ``None``.
        layers: ``(name, module)`` pairs selected by the layer filter (their ``.weight`` is scored).
        loss_fn: ``loss_fn(output_tensor, targets) -> scalar``.
        output_fn: maps the raw model output to a tensor.
        options: per-proxy keyword options.
        sample_mask: boolean mask over the output's first dimension selecting the samples that the loss and the
            label-based proxies use (a graph's ``train_mask``), or ``None`` for all of them.
    """

    model: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    targets: Tensor | None
    layers: list[tuple[str, nn.Module]]
    loss_fn: Callable[[Tensor, Tensor], Tensor] = default_loss_fn
    output_fn: Callable[[Any], Tensor] = default_output_fn
    options: dict[str, Any] = field(default_factory=dict)
    sample_mask: Tensor | None = None

    def forward(self, args: tuple[Any, ...] | None = None, method: str | None = None) -> Tensor:
        """Model output tensor for ``args`` (default: the batch); ``method`` names another forward method."""
        fn = getattr(self.model, method) if method else self.model
        return self.output_fn(fn(*(self.args if args is None else args), **self.kwargs))

    def loss(self, output: Tensor | None = None) -> Tensor:
        """Loss of ``output`` (default: a forward of the batch) against the targets, on the masked samples.

        Raises:
            ValueError: if no targets were given.
        """
        if self.targets is None:
            raise ValueError("this proxy needs targets; pass targets=")
        out = self.forward() if output is None else output
        targets = self.targets
        if self.sample_mask is not None:
            out, targets = out[self.sample_mask], targets[self.sample_mask]
        return self.loss_fn(out, targets)

    # -- the floating input (input Jacobian, Gaussian inputs) -------------------------------------------------
    def _token_ids(self) -> tuple[str, Tensor] | None:
        """``("arg", ids)`` / ``("input_ids", ids)`` when the batch is integer token ids of an embedding model."""
        if not callable(getattr(self.model, "get_input_embeddings", None)):
            return None
        ids = self.kwargs.get("input_ids")
        if isinstance(ids, Tensor) and not ids.is_floating_point():
            return "input_ids", ids
        if self.args and isinstance(self.args[0], Tensor) and not self.args[0].is_floating_point():
            return "arg", self.args[0]
        return None

    def _float_kwarg(self) -> str | None:
        """Name of the first floating tensor keyword argument (``inputs_embeds=``), when no argument is one."""
        if _has_float_arg(self.args):
            return None
        for key, value in self.kwargs.items():
            if isinstance(value, Tensor) and value.is_floating_point():
                return key
        return None

    def float_input(self) -> Tensor:
        """The floating input that gradients flow to and that noise replaces.

        The first floating tensor argument; the ``x`` of a PyG ``Data`` argument; the first floating tensor
        keyword argument (e.g. ``inputs_embeds=`` of a Hugging Face model); or, for token ids of a model
        with ``get_input_embeddings()`` (Hugging Face), the input embeddings of the ids (the model is then
        called with ``inputs_embeds=``).

        Raises:
            ValueError: when there is no floating input (token ids of a model without ``get_input_embeddings``).
        """
        for a in self.args:
            if isinstance(a, Tensor) and a.is_floating_point():
                return a
            if _is_graph_data(a) and isinstance(getattr(a, "x", None), Tensor) and a.x.is_floating_point():
                return a.x  # type: ignore[no-any-return]
        key = self._float_kwarg()
        if key is not None:
            return self.kwargs[key]  # type: ignore[no-any-return]
        tokens = self._token_ids()
        if tokens is not None:
            with torch.no_grad():
                emb = self.model.get_input_embeddings()(tokens[1])  # type: ignore[operator]
            return emb.detach()  # type: ignore[no-any-return]
        raise ValueError(
            "this proxy needs a floating-point input tensor (input Jacobian or noise inputs); the batch has none "
            "(integer token ids of a model without get_input_embeddings(), for example)"
        )

    def forward_with_input(self, x: Tensor, method: str | None = None) -> Tensor:
        """Model output tensor for the batch with its floating input (see :meth:`float_input`) replaced by ``x``."""
        for i, a in enumerate(self.args):
            if isinstance(a, Tensor) and a.is_floating_point():
                return self.forward((*self.args[:i], x, *self.args[i + 1 :]), method)
            if _is_graph_data(a) and isinstance(getattr(a, "x", None), Tensor) and a.x.is_floating_point():
                data = copy.copy(a)
                data.x = x
                return self.forward((*self.args[:i], data, *self.args[i + 1 :]), method)
        key = self._float_kwarg()
        if key is not None:  # e.g. inputs_embeds= of a Hugging Face model
            fn = getattr(self.model, method) if method else self.model
            return self.output_fn(fn(*self.args, **{**self.kwargs, key: x}))
        tokens = self._token_ids()
        if tokens is None:
            self.float_input()  # raises saying why
        assert tokens is not None
        fn = getattr(self.model, method) if method else self.model
        kwargs = {k: v for k, v in self.kwargs.items() if k != "input_ids"}
        args = self.args[1:] if tokens[0] == "arg" else self.args
        return self.output_fn(fn(*args, inputs_embeds=x, **kwargs))

    def input_index(self) -> int:
        """Position of the first floating-point tensor argument.

        Raises:
            ValueError: when no argument is a floating-point tensor (token ids only, for example).
        """
        for i, a in enumerate(self.args):
            if isinstance(a, Tensor) and a.is_floating_point():
                return i
        raise ValueError("this proxy needs a floating-point input tensor (input Jacobian or noise inputs)")

    def with_input(self, x: Tensor) -> tuple[Any, ...]:
        """The argument tuple with the floating input replaced by ``x``."""
        i = self.input_index()
        return (*self.args[:i], x, *self.args[i + 1 :])

    def weights(self) -> list[Tensor]:
        """The scored weight tensors, in layer order."""
        return [weight_of(m) for _, m in self.layers]


@contextlib.contextmanager
def hooks_removed(handles: list[Any]) -> Iterator[list[Any]]:
    """Yield ``handles`` (a list to append hook handles to) and remove them all on exit, even on error."""
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()


def signed_log(x: float) -> float:
    """NASLib's signed log: ``log(x)`` for x > 0, ``-log(-x)`` for x < 0, ``-inf`` at 0."""
    if x > 0:
        return math.log(x)
    if x < 0:
        return -math.log(-x)
    return -math.inf


# ----------------------------------------------------------------------------------------------------------
# Entry point


def _unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, DistributedDataParallel | DataParallel):
        model = model.module
    return model


def _bn_to_identity(model: nn.Module) -> nn.Module:
    if isinstance(model, _BatchNorm):
        return nn.Identity()
    for name, child in model.named_children():
        setattr(model, name, _bn_to_identity(child))
    return model


def _cast(obj: Any, dtype: torch.dtype, device: torch.device | None) -> Any:
    if isinstance(obj, Tensor):
        obj = obj.to(device) if device is not None else obj
        return obj.to(dtype) if obj.is_floating_point() else obj
    if _is_graph_data(obj):
        data = copy.copy(obj)
        for key, value in obj.items():
            if isinstance(value, Tensor):
                data[key] = _cast(value, dtype, device)
        return data
    if isinstance(obj, tuple | list):
        return type(obj)(_cast(o, dtype, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _cast(v, dtype, device) for k, v in obj.items()}
    return obj


def _apply_nan_policy(name: str, value: float, policy: NanPolicy) -> float:
    if math.isfinite(value):
        return value
    if policy == "nan":
        return value
    if policy == "raise":
        raise ValueError(f"proxy {name!r} is not finite ({value}); pass nan_policy='nan' or a replacement value")
    if policy == "naslib":
        return -1e8
    return float(policy)


_SHARED: list[tuple[Callable[..., list[list[str]]], Callable[..., dict[str, ProxyValue]]]] = []


def register_shared_planner(
    planner: Callable[..., list[list[str]]], runner: Callable[..., dict[str, ProxyValue]]
) -> None:
    """Register ``planner(names, options, model, float_arg) -> groups`` and ``runner(ctx, group, options)``.

    :mod:`litmix.functional.proxies.shared` registers the built-in shared passes.
    """
    if (planner, runner) not in _SHARED:
        _SHARED.append((planner, runner))


def _has_float_arg(args: tuple[Any, ...]) -> bool:
    for a in args:
        if isinstance(a, Tensor) and a.is_floating_point():
            return True
        if _is_graph_data(a) and isinstance(getattr(a, "x", None), Tensor) and a.x.is_floating_point():
            return True
    return False


def _graph_forward_args(model: nn.Module, data: Any) -> tuple[Any, ...]:
    """Forward arguments for a PyG ``Data``/``Batch``: its attributes named by ``forward``'s leading parameters.

    ``forward(x, edge_index, ...)`` gets ``(data.x, data.edge_index, ...)``: the leading positional parameters
    that ``data`` holds (not ``None``), stopping at the first it lacks; a ``forward`` whose first parameter is not
    an attribute of ``data`` (``forward(data)``, ``forward(batch)``) gets ``(data,)``.
    """
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):
        return (data,)
    params = [
        p
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    keys = set(data.keys())
    if not params or params[0].name in ("data", "batch") or params[0].name not in keys:
        return (data,)
    args = []
    for p in params:
        value = getattr(data, p.name, None) if p.name in keys else None
        if value is None:
            break
        args.append(value)
    return tuple(args)


def _sdpa_math() -> contextlib.AbstractContextManager[Any]:
    """The math attention backend: differentiable twice (grasp), unlike the fused CPU/flash kernels."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


@register("function", "proxy", paper=_PAPER, module="litmix.functional")
def zero_cost_proxies(
    model: nn.Module,
    inputs: Any,
    targets: Tensor | None = None,
    names: Sequence[str] = ("synflow", "snip", "grad_norm", "naswot", "params", "flops"),
    *,
    per_layer: bool = False,
    layer_filter: LayerFilter = None,
    seed: int | None = None,
    nan_policy: NanPolicy = "nan",
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    output_fn: Callable[[Any], Tensor] | None = None,
    return_timings: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    shared: bool = True,
) -> dict[str, Any]:
    """Score ``model`` with zero-cost proxies ("higher is better"), never touching the model itself.

    Implements the proxies of Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS" (ICLR 2021,
    https://arxiv.org/abs/2101.08134) and the papers cited by each proxy. Each proxy is computed on a
    ``copy.deepcopy`` of the model (DDP's ``.module`` unwrapped), in train mode, with autocast disabled, the math
    attention backend (so that ``grasp``'s double backward works through ``scaled_dot_product_attention``) and
    cast to the proxy's dtype (synflow: float64, BN replaced by identity). With ``shared=True`` (default) the
    proxies that can share passes (``grad_norm, snip, plain, fisher, grasp, jacob_cov, epe_nas, naswot``) are
    computed together on one copy from one forward (see :mod:`litmix.functional.proxies.shared`): the same
    numbers up to float round-off (bit-identical on the benchmark's NB201 cell), all 13 proxies in about 0.4x
    the time of computing them one by one (``benchmarks/bench_proxies.py``).

    Inputs beyond tensors:

    * a PyG ``Data``/``Batch``: the model is called with the attributes its ``forward``'s leading parameters
      name (``forward(x, edge_index)`` gets ``data.x, data.edge_index``), or with the ``Data`` itself when its
      first parameter is not one (``forward(data)``); ``targets`` default to ``data.y``, and a boolean
      ``data.train_mask`` restricts the loss, ``epe_nas`` and ``naswot`` to the training nodes;
    * token ids of a model with ``get_input_embeddings()`` (Hugging Face): the proxies that need a floating input
      (``jacob_cov``, ``epe_nas``, ``zen``, ``naswot(gaussian=True)``) take the input embeddings as that input and
      call the model with ``inputs_embeds=``; embedding-space inputs given directly (``{"inputs_embeds": e}``,
      any floating keyword argument) are that input as they are.

    Args:
        model: any ``nn.Module`` (a LightningModule works: its ``forward`` is called).
        inputs: a tensor, a tuple of positional forward arguments (e.g. ``(x, edge_index)`` for a PyG GNN), a dict
            of keyword arguments (e.g. ``{"input_ids": ids}``) or a PyG ``Data``/``Batch``.
        targets: labels for the loss-based proxies (class indices; for language models the next-token ids).
        names: proxies to compute, see :func:`list_proxies`.
        per_layer: return ``{name: {"total": value, layer_name: value, ...}}`` (layer entries for layer-wise
            proxies; synflow's layer entries are the raw, un-logged sums).
        layer_filter: which layers' weights are scored, see :func:`resolve_layer_filter`.
        seed: seed of the torch RNG for each proxy (global RNG state is restored afterwards).
        nan_policy: for non-finite scores: ``"nan"`` keep, ``"raise"``, ``"naslib"`` (-1e8) or a replacement.
        loss_fn: ``loss_fn(output, targets)``; default cross-entropy over the last dimension.
        output_fn: maps the model output to a tensor; default: the tensor, ``.logits`` or the first element.
        return_timings: also return ``<name>_seconds`` (wall time incl. the copy; proxies computed by one shared
            pass split its time equally).
        options: per-proxy options, e.g. ``{"zen": {"bn_scaling": "batch"}, "fisher": {"samsung_broadcast": False}}``.
        shared: share passes between proxies (default); ``False`` computes each proxy on its own copy.

    Returns:
        ``{name: float}`` (or per-layer dicts), plus ``<name>_seconds`` when asked.

    Raises:
        TypeError: for an argument of the wrong type (naming it).
        ValueError: for unknown proxy names (listing the available ones), a label-based proxy without targets,
            a non-finite score under ``nan_policy="raise"``, or a proxy that cannot score this model (saying why:
            no floating input, no activation modules for naswot, no per-sample labels for epe_nas, ...).

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
        >>> scores = zero_cost_proxies(net, x, y, names=["synflow", "snip", "naswot", "params", "flops"], seed=0)
        >>> scores["params"], scores["flops"]
        (195.0, 176.0)
        >>> sorted(zero_cost_proxies(net, x, y, names=["snip"], per_layer=True)["snip"])
        ['0', '2', 'total']
        >>> both = zero_cost_proxies(net, x, y, names=["snip", "grad_norm"])
        >>> both == zero_cost_proxies(net, x, y, names=["snip", "grad_norm"], shared=False)
        True
    """
    owner = "zero_cost_proxies"
    if isinstance(names, str):
        names = [names]
    check_type(owner, "model", model, nn.Module)
    check_type(owner, "names", names, (list, tuple))
    check_bool(owner, "per_layer", per_layer)
    check_int(owner, "seed", seed, allow_none=True)
    if isinstance(nan_policy, str):
        check_choice(owner, "nan_policy", nan_policy, ("nan", "raise", "naslib"))
    else:
        check_float(owner, "nan_policy", nan_policy, finite=False)
    check_bool(owner, "return_timings", return_timings)
    check_bool(owner, "shared", shared)
    check_type(owner, "options", options, Mapping, allow_none=True)
    specs = [get_proxy(n) for n in names]
    base = _unwrap(model)
    sample_mask: Tensor | None = None
    if _is_graph_data(inputs):
        data = inputs
        if targets is None and isinstance(getattr(data, "y", None), Tensor):
            targets = data.y
        mask = getattr(data, "train_mask", None)
        if isinstance(mask, Tensor) and mask.dtype == torch.bool:
            sample_mask = mask
        inputs = _graph_forward_args(base, data)
    for spec in specs:
        if spec.needs_labels and targets is None:
            raise ValueError(f"proxy {spec.name!r} needs labels: pass targets= (or a PyG Data with y)")
    predicate = resolve_layer_filter(layer_filter)
    if isinstance(inputs, dict):
        args: tuple[Any, ...] = ()
        kwargs: dict[str, Any] = dict(inputs)
    elif isinstance(inputs, tuple | list):
        args, kwargs = tuple(inputs), {}
    else:
        args, kwargs = (inputs,), {}
    layerwise = [spec.name for spec in specs if spec.layerwise]
    if layerwise and not _select_layers(base, predicate):
        candidates = sorted(
            {
                type(m).__name__
                for m in base.modules()
                if isinstance(w := getattr(m, "weight", None), Tensor) and w.dim() >= 2
            }
        )
        raise ValueError(
            f"proxies {layerwise} score the weights of the layers selected by layer_filter={layer_filter!r}, and "
            f"it selects none of this model's layers (layers with weights: {candidates}); pass "
            "layer_filter='extended' (adds Conv1d/3d, Embedding, PyG and Hugging Face linear layers), 'all', "
            "a tuple of types or a predicate"
        )
    param = next(base.parameters(), None)
    device = param.device if param is not None else None
    options = options or {}
    if isinstance(targets, Tensor) and device is not None:
        targets = targets.to(device)
    if sample_mask is not None and device is not None:
        sample_mask = sample_mask.to(device)

    # units of work, each on its own copy: a shared group with its runner, or one proxy (runner None)
    units: list[tuple[list[ProxySpec], Callable[..., dict[str, ProxyValue]] | None]] = []
    grouped: set[str] = set()
    if shared:
        float_arg = _has_float_arg(args) or _has_float_arg(tuple(kwargs.values()))
        unique = list(dict.fromkeys(spec.name for spec in specs))
        for planner, shared_runner in _SHARED:
            for group in planner([n for n in unique if n not in grouped], options, base, float_arg):
                units.append(([get_proxy(n) for n in group], shared_runner))
                grouped.update(group)
    units += [([spec], None) for spec in specs if spec.name not in grouped]

    values: dict[str, ProxyValue] = {}
    seconds: dict[str, float] = {}
    for unit, runner in units:
        start = time.perf_counter()
        spec = unit[0]
        devices = [device] if device is not None and device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.autocast(device_type="cpu", enabled=False):
            if seed is not None:
                torch.manual_seed(seed)
            net = copy.deepcopy(base)
            if spec.bn_mode == "identity":
                net = _bn_to_identity(net)
            net = net.to(spec.dtype).train()
            for p in net.parameters():
                p.requires_grad_(True)
            ctx = ProxyContext(
                model=net,
                args=_cast(args, spec.dtype, device),
                kwargs=_cast(kwargs, spec.dtype, device),
                targets=targets,
                layers=_select_layers(net, predicate),
                loss_fn=loss_fn or default_loss_fn,
                output_fn=output_fn or default_output_fn,
                options=dict(options.get(spec.name, {})) if runner is None else {},
                sample_mask=sample_mask,
            )
            ctx_manager = torch.autocast(device_type="cuda", enabled=False) if devices else contextlib.nullcontext()
            with ctx_manager, _sdpa_math():
                if runner is not None:
                    values.update(runner(ctx, [s.name for s in unit], options))
                else:
                    values[spec.name] = spec.fn(ctx)
            del net, ctx
        elapsed = time.perf_counter() - start
        for s in unit:
            seconds[s.name] = elapsed / len(unit)

    out: dict[str, Any] = {}
    for spec in specs:
        value = values[spec.name]
        layer_values: dict[str, float] = {}
        if isinstance(value, dict):
            layer_values = {k: float(v) for k, v in value.items()}
            total = float(sum(layer_values.values()))
        else:
            total = float(value)
        if spec.log_scale:
            total = signed_log(total)
        total = _apply_nan_policy(spec.name, total, nan_policy)
        out[spec.name] = {"total": total, **layer_values} if per_layer else total
        if return_timings:
            out[f"{spec.name}_seconds"] = seconds[spec.name]
    return out
