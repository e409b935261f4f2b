"""PHATGOOSE: a frozen linear layer with a bank of LoRA experts, their sigmoid gates and post-hoc top-k routing.

Paper: "Learning to Route Among Specialized Experts for Zero-Shot Generalization", Muqeeth, Liu, Liu, Raffel
(ICML 2024, https://arxiv.org/abs/2402.05859). The maths lives in :mod:`litmix.functional.phatgoose`.

Workflow (:func:`to_phatgoose` wraps every ``nn.Linear`` / HF ``Conv1D`` of a model, :func:`phatgoose_mode` switches
every wrapped layer and freezes everything the stage does not train):

1. ``phatgoose_mode(model, "expert", i)``: train expert ``i``'s LoRA adapter on task ``i`` (base frozen);
2. ``phatgoose_mode(model, "gate", i)``: train expert ``i``'s gate vectors only (adapter and base frozen); the
   adapter's output is scaled by ``sigmoid(g_i . x)`` in every module;
3. ``phatgoose_mode(model, "route")``: zero-shot inference; every module routes each token to its ``top_k`` experts.

Experts trained independently on separate copies of the base model (``num_experts=1`` each) are assembled into one
routed model with :func:`import_expert`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from litmix.functional.phatgoose import PAPER, _mixture, _routing_matrix, _scores
from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_float, check_int, check_type

__all__ = ["PHATGOOSELinear", "import_expert", "phatgoose_mode", "to_phatgoose"]

Mode = Literal["base", "expert", "gate", "route", "uniform"]
Routing = Literal["token", "example"]
MODES = ("base", "expert", "gate", "route", "uniform")
ROUTINGS = ("token", "example")
_CONV1D = "transformers.pytorch_utils.Conv1D"


def _is_conv1d(layer: nn.Module) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" == _CONV1D for c in type(layer).__mro__)


@register("layer", "optimization", paper=PAPER, module="litmix.layers")
class PHATGOOSELinear(nn.Module):
    """A frozen ``nn.Linear`` beside a bank of ``num_experts`` LoRA experts with PHATGOOSE gates and router.

    Muqeeth, Liu, Liu and Raffel, "Learning to Route Among Specialized Experts for Zero-Shot Generalization"
    (ICML 2024, https://arxiv.org/abs/2402.05859). Expert ``e`` adds ``scaling * B_e A_e x`` (``scaling = alpha /
    rank``; ``A_e`` ``(rank, in)`` Kaiming-uniform, ``B_e`` ``(out, rank)`` zero at init, so a fresh expert changes
    nothing) and owns a gate vector ``g_e`` ``(in,)`` (zero at init). The output in each :attr:`mode`:

    * ``"base"``: ``base(x)``;
    * ``"expert"``: ``base(x) + scaling * B_i A_i x`` for :attr:`expert` ``i`` (train the adapter; the oracle);
    * ``"gate"``: ``base(x) + sigmoid(g_i . x) * scaling * B_i A_i x`` (train the gate with the adapter frozen);
    * ``"route"``: ``base(x) + scaling * sum_{e in top-k} w_e B_e A_e x`` with scores
      ``standardize(x) . standardize(g_e) / sqrt(in)`` and ``w = softmax`` over the ``top_k`` selected scores, per
      token (``routing="token"``) or per example (``"example"``: scores averaged over every dimension between the
      first and the last before the top-k);
    * ``"uniform"``: ``base(x) + scaling * mean_e B_e A_e x`` (the uniform merge of all adapters).

    :meth:`set_mode` switches the mode and sets ``requires_grad``: the base is always frozen; ``"expert"`` trains
    ``lora_a[i]``/``lora_b[i]`` only, ``"gate"`` trains ``gates[i]`` only, the other modes nothing. After a routed
    forward, :attr:`last_index` and :attr:`last_weights` (``(..., top_k)``, detached) hold the routing decision.

    Args:
        in_features: input size (>= 1).
        out_features: output size (>= 1).
        num_experts: number of LoRA experts (>= 1).
        rank: LoRA rank of every expert (>= 1).
        alpha: LoRA ``alpha`` (> 0); the adapter output is scaled by ``alpha / rank``.
        top_k: experts per token in ``"route"`` mode, in ``[1, num_experts]`` (the paper uses 2).
        bias: whether the base layer has a bias.
        routing: ``"token"`` (the paper) or ``"example"`` (one decision per example of a ``(B, ..., in)`` input).
        eps: variance epsilon of the standardization (> 0).

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for a size, rank or ``num_experts`` < 1, ``alpha <= 0``, ``top_k`` outside
            ``[1, num_experts]``, an unknown ``routing``; in :meth:`set_mode`, an unknown mode or a missing/out of
            range ``expert``; in :meth:`forward`, an input whose last size is not ``in_features``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> layer = PHATGOOSELinear(6, 3, num_experts=3, rank=2, top_k=2)
        >>> x = torch.randn(5, 6)
        >>> torch.equal(layer(x), layer.base(x))  # fresh experts (B = 0) change nothing
        True
        >>> _ = layer.set_mode("gate", expert=1)
        >>> [n for n, p in layer.named_parameters() if p.requires_grad]
        ['gates.1']
        >>> _ = layer.set_mode("route")
        >>> layer(x).shape, layer.last_index.shape, bool(layer.last_weights.sum(-1).allclose(torch.ones(5)))
        (torch.Size([5, 3]), torch.Size([5, 2]), True)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_experts: int = 4,
        rank: int = 8,
        alpha: float = 16.0,
        top_k: int = 2,
        bias: bool = True,
        routing: Routing = "token",
        eps: float = 1e-5,
    ) -> None:
        owner = type(self).__name__
        in_features = check_int(owner, "in_features", in_features, low=1, high=1 << 20)
        out_features = check_int(owner, "out_features", out_features, low=1, high=1 << 20)
        num_experts = check_int(owner, "num_experts", num_experts, low=1, high=4096)
        rank = check_int(owner, "rank", rank, low=1, high=1 << 16)
        alpha = check_float(owner, "alpha", alpha, low=0.0, low_open=True)
        top_k = check_int(owner, "top_k", top_k, low=1)
        if top_k > num_experts:
            raise ValueError(f"{owner}(top_k={top_k}, num_experts={num_experts}): top_k must be <= num_experts")
        bias = check_bool(owner, "bias", bias)
        routing = check_choice(owner, "routing", routing, ROUTINGS)
        eps = check_float(owner, "eps", eps, low=0.0, low_open=True)
        super().__init__()
        self.in_features, self.out_features, self.num_experts = in_features, out_features, num_experts
        self.rank, self.alpha, self.top_k, self.routing, self.eps = rank, float(alpha), top_k, routing, float(eps)
        self.scaling = self.alpha / rank
        self.base = nn.Linear(in_features, out_features, bias=bias)
        self.base.requires_grad_(False)
        self.lora_a = nn.ParameterList()
        self.lora_b = nn.ParameterList()
        self.gates = nn.ParameterList()
        for _ in range(num_experts):
            a = torch.empty(rank, in_features)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # LoRA's (and nn.Linear's) default
            self.lora_a.append(nn.Parameter(a))
            self.lora_b.append(nn.Parameter(torch.zeros(out_features, rank)))
            self.gates.append(nn.Parameter(torch.zeros(in_features)))
        self.mode: str = "route"
        self.expert: int | None = None
        self.last_index: Tensor | None = None
        self.last_weights: Tensor | None = None
        self.set_mode("route")

    @classmethod
    def from_linear(
        cls,
        layer: nn.Module,
        num_experts: int = 4,
        rank: int = 8,
        alpha: float = 16.0,
        top_k: int = 2,
        routing: Routing = "token",
        eps: float = 1e-5,
    ) -> PHATGOOSELinear:
        """Wrap a trained ``nn.Linear`` or HF ``Conv1D`` (its weight and bias are copied and frozen).

        Raises:
            TypeError: if ``layer`` is neither an ``nn.Linear`` nor a ``transformers`` ``Conv1D``.
            ValueError: for a bad expert setting (see the class).
        """
        owner = cls.__name__
        check_type(owner, "layer", layer, nn.Module)
        weight = getattr(layer, "weight", None)
        if isinstance(layer, nn.Linear) and isinstance(weight, Tensor):
            matrix = weight.detach()
        elif _is_conv1d(layer) and isinstance(weight, Tensor):
            matrix = weight.detach().T  # Conv1D stores (in, out) and computes x @ W + b
        else:
            raise TypeError(f"{owner}(layer={type(layer).__name__}): layer must be an nn.Linear or a HF Conv1D")
        bias = getattr(layer, "bias", None)
        new = cls(matrix.shape[1], matrix.shape[0], num_experts, rank, alpha, top_k, bias is not None, routing, eps)
        new = new.to(device=matrix.device, dtype=matrix.dtype)
        with torch.no_grad():
            new.base.weight.copy_(matrix)
            if isinstance(bias, Tensor) and new.base.bias is not None:
                new.base.bias.copy_(bias.detach())
        return new

    def set_mode(self, mode: Mode, expert: int | None = None) -> PHATGOOSELinear:
        """Switch to ``mode`` (``expert`` is required for ``"expert"``/``"gate"``) and set ``requires_grad``.

        Raises:
            TypeError: for a non-str ``mode`` or a non-int ``expert``.
            ValueError: for an unknown ``mode``, a missing ``expert`` in ``"expert"``/``"gate"`` mode, one given in
                another mode, or one outside ``[0, num_experts)``.
        """
        owner = f"{type(self).__name__}.set_mode"
        mode = check_choice(owner, "mode", mode, MODES)
        expert = check_int(owner, "expert", expert, low=0, high=self.num_experts - 1, allow_none=True)
        if mode in ("expert", "gate") and expert is None:
            raise ValueError(f"{owner}(mode={mode!r}, expert=None): mode {mode!r} needs the expert index")
        if mode not in ("expert", "gate") and expert is not None:
            raise ValueError(f"{owner}(mode={mode!r}, expert={expert}): only 'expert' and 'gate' take an expert")
        self.mode, self.expert = mode, expert
        self.base.requires_grad_(False)
        for group in (self.lora_a, self.lora_b, self.gates):
            group.requires_grad_(False)
        if mode == "expert" and expert is not None:
            self.lora_a[expert].requires_grad_(True)
            self.lora_b[expert].requires_grad_(True)
        elif mode == "gate" and expert is not None:
            self.gates[expert].requires_grad_(True)
        return self

    def stacked(self) -> tuple[Tensor, Tensor, Tensor]:
        """The bank as tensors: ``lora_a`` ``(E, rank, in)``, ``lora_b`` ``(E, out, rank)``, gates ``(E, in)``."""
        return torch.stack(list(self.lora_a)), torch.stack(list(self.lora_b)), torch.stack(list(self.gates))

    def routing_scores(self, x: Tensor) -> Tensor:
        """PHATGOOSE scores ``(..., E)`` of the tokens ``x`` (averaged per example with ``routing="example"``)."""
        scores = _scores(x, torch.stack(list(self.gates)), self.eps, True)
        if self.routing == "example" and x.dim() > 2:
            dims = tuple(range(1, x.dim() - 1))
            scores = scores.mean(dim=dims, keepdim=True).expand_as(scores)
        return scores

    def forward(self, x: Tensor) -> Tensor:
        """The base output plus the adapters' contribution in the current :attr:`mode`."""
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}.forward(x=...): x has {x.shape[-1]} features in its last dimension, "
                f"expected in_features={self.in_features}"
            )
        out = self.base(x)
        if self.mode == "base":
            return out
        if self.mode in ("expert", "gate"):
            i = int(self.expert) if self.expert is not None else 0
            delta = (x @ self.lora_a[i].T) @ self.lora_b[i].T * self.scaling
            if self.mode == "gate":
                delta = torch.sigmoid(x @ self.gates[i]).unsqueeze(-1) * delta
            return out + delta
        lora_a, lora_b, _ = self.stacked()
        if self.mode == "uniform":
            mix = x.new_full((self.num_experts,), 1.0 / self.num_experts)
            return out + _mixture(x, lora_a, lora_b, mix, self.scaling)
        weights, index = self.routing_scores(x).topk(self.top_k, dim=-1)
        weights = weights.softmax(-1)
        self.last_index, self.last_weights = index.detach(), weights.detach()
        return out + _mixture(x, lora_a, lora_b, _routing_matrix(weights, index, self.num_experts), self.scaling)

    def extra_repr(self) -> str:
        """Sizes, bank and routing."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, num_experts={self.num_experts}, "
            f"rank={self.rank}, alpha={self.alpha}, top_k={self.top_k}, routing={self.routing!r}, mode={self.mode!r}"
        )


@register("function", "optimization", paper=PAPER, module="litmix.layers")
def to_phatgoose(
    model: nn.Module,
    num_experts: int = 4,
    rank: int = 8,
    alpha: float = 16.0,
    top_k: int = 2,
    routing: Routing = "token",
    skip: list[str] | None = None,
) -> nn.Module:
    """Replace every ``nn.Linear`` and HF ``Conv1D`` of ``model`` (in place) by a :class:`PHATGOOSELinear`.

    Only layers whose type is exactly ``nn.Linear`` (subclasses such as attention's
    ``NonDynamicallyQuantizableLinear``, whose weight is read directly, are left alone) or a ``transformers``
    ``Conv1D`` are wrapped; their weights are copied and frozen. Call :func:`phatgoose_mode` next.

    Args:
        model: the trained base model.
        num_experts: LoRA experts per layer (>= 1).
        rank: LoRA rank (>= 1).
        alpha: LoRA alpha (> 0).
        top_k: experts per token when routing, in ``[1, num_experts]``.
        routing: ``"token"`` or ``"example"``.
        skip: qualified module names to leave as they are.

    Returns:
        ``model`` itself.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` (or is itself a layer to wrap), ``skip`` is not a list.
        ValueError: for a bad expert setting, a ``skip`` name that is not a module of the model, or a model with no
            layer to wrap.

    Example:
        >>> net = to_phatgoose(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), num_experts=3, rank=2)
        >>> [type(m).__name__ for m in net]
        ['PHATGOOSELinear', 'ReLU', 'PHATGOOSELinear']
    """
    owner = "to_phatgoose"
    check_type(owner, "model", model, nn.Module)
    PHATGOOSELinear(1, 1, num_experts, rank, alpha, top_k, True, routing)  # validates every setting first
    check_type(owner, "skip", skip, list, allow_none=True)
    names = dict(model.named_modules())
    for name in skip or []:
        if name not in names:
            raise ValueError(f"{owner}(skip={skip}): {name!r} is not a module of the model")
    if type(model) is nn.Linear or _is_conv1d(model):
        raise TypeError(f"{owner}(model={type(model).__name__}): pass a model containing the layer, not the layer")
    targets = [
        n
        for n, m in names.items()
        if n
        and n not in (skip or [])
        and (type(m) is nn.Linear or _is_conv1d(m))
        and not any(n.startswith(f"{p}.") for p in names if isinstance(names[p], PHATGOOSELinear))
    ]
    if not targets:
        raise ValueError(f"{owner}(model={type(model).__name__}): the model has no nn.Linear or Conv1D to wrap")
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = getattr(parent, child)
        setattr(parent, child, PHATGOOSELinear.from_linear(layer, num_experts, rank, alpha, top_k, routing))
    return model


@register("function", "optimization", paper=PAPER, module="litmix.layers")
def phatgoose_mode(
    model: nn.Module, mode: Mode, expert: int | None = None, top_k: int | None = None
) -> list[nn.Parameter]:
    """Switch every :class:`PHATGOOSELinear` of ``model`` to ``mode`` and freeze every other parameter.

    Args:
        model: a model holding :class:`PHATGOOSELinear` layers (:func:`to_phatgoose`).
        mode: ``"base"``, ``"expert"``, ``"gate"``, ``"route"`` or ``"uniform"`` (see :class:`PHATGOOSELinear`).
        expert: the expert trained (``"expert"``/``"gate"``) or applied alone (``"expert"``: the oracle).
        top_k: if given, the new ``top_k`` of every layer (in ``[1, num_experts]``).

    Returns:
        the parameters the stage trains (those with ``requires_grad``): give them to the optimizer.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module`` or for a wrongly typed argument.
        ValueError: if ``model`` holds no :class:`PHATGOOSELinear`, for an unknown ``mode``, a missing or out of range
            ``expert``, or a ``top_k`` outside ``[1, num_experts]``.

    Example:
        >>> net = to_phatgoose(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), num_experts=3, rank=2)
        >>> trained = phatgoose_mode(net, "expert", expert=2)
        >>> [n for n, p in net.named_parameters() if p.requires_grad]
        ['0.lora_a.2', '0.lora_b.2', '2.lora_a.2', '2.lora_b.2']
        >>> len(phatgoose_mode(net, "route", top_k=1))
        0
    """
    owner = "phatgoose_mode"
    check_type(owner, "model", model, nn.Module)
    layers = [m for m in model.modules() if isinstance(m, PHATGOOSELinear)]
    if not layers:
        raise ValueError(f"{owner}(model={type(model).__name__}): the model holds no PHATGOOSELinear (to_phatgoose)")
    mode = check_choice(owner, "mode", mode, MODES)
    low = min(m.num_experts for m in layers)
    expert = check_int(owner, "expert", expert, low=0, high=low - 1, allow_none=True)
    top_k = check_int(owner, "top_k", top_k, low=1, high=low, allow_none=True)
    model.requires_grad_(False)
    for layer in layers:
        layer.set_mode(mode, expert)
        if top_k is not None:
            layer.top_k = top_k
    return [p for p in model.parameters() if p.requires_grad]


@register("function", "optimization", paper=PAPER, module="litmix.layers")
def import_expert(target: nn.Module, source: nn.Module, expert: int, source_expert: int = 0) -> nn.Module:
    """Copy one expert (LoRA adapters and gate vectors of every layer) from ``source`` into ``target``'s slot.

    PHATGOOSE's experts are trained independently (by different contributors, on different machines); each can
    wrap its own copy of the base model (``to_phatgoose(model, num_experts=1)``), train expert 0 and its gates, and
    share them. This assembles the shared experts into one routed model. Layers are matched by qualified name;
    their base weights must be identical (the same base model) and their sizes and ranks equal.

    Args:
        target: the model that routes (holding :class:`PHATGOOSELinear` layers with at least ``expert + 1`` slots).
        source: a model with the same :class:`PHATGOOSELinear` layers that trained ``source_expert``.
        expert: the slot in ``target`` (>= 0).
        source_expert: the slot in ``source`` (>= 0).

    Returns:
        ``target`` itself.

    Raises:
        TypeError: if ``target`` or ``source`` is not an ``nn.Module``.
        ValueError: if their :class:`PHATGOOSELinear` layers differ (names, sizes, rank, base weights), none exists,
            or a slot is out of range.

    Example:
        >>> import copy
        >>> _ = torch.manual_seed(0)
        >>> base = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> routed = to_phatgoose(copy.deepcopy(base), num_experts=3, rank=2)
        >>> contributor = to_phatgoose(copy.deepcopy(base), num_experts=1, rank=2, top_k=1)
        >>> with torch.no_grad():
        ...     _ = contributor[0].lora_b[0].fill_(1.0)
        >>> _ = import_expert(routed, contributor, expert=2)
        >>> torch.equal(routed[0].lora_b[2], contributor[0].lora_b[0]), float(routed[0].lora_b[1].abs().sum())
        (True, 0.0)
    """
    owner = "import_expert"
    check_type(owner, "target", target, nn.Module)
    check_type(owner, "source", source, nn.Module)
    mine = {n: m for n, m in target.named_modules() if isinstance(m, PHATGOOSELinear)}
    theirs = {n: m for n, m in source.named_modules() if isinstance(m, PHATGOOSELinear)}
    if not mine:
        raise ValueError(f"{owner}(target={type(target).__name__}): the target holds no PHATGOOSELinear")
    if set(mine) != set(theirs):
        raise ValueError(
            f"{owner}(source=...): source's PHATGOOSELinear layers {sorted(theirs)} are not {sorted(mine)}"
        )
    expert = check_int(owner, "expert", expert, low=0, high=min(m.num_experts for m in mine.values()) - 1)
    source_expert = check_int(
        owner, "source_expert", source_expert, low=0, high=min(m.num_experts for m in theirs.values()) - 1
    )
    for name, layer in mine.items():
        other = theirs[name]
        if (layer.in_features, layer.out_features, layer.rank) != (other.in_features, other.out_features, other.rank):
            raise ValueError(f"{owner}(source=...): layer {name!r} differs in size or rank")
        same_bias = (layer.base.bias is None) == (other.base.bias is None) and (
            layer.base.bias is None or torch.equal(layer.base.bias, other.base.bias)
        )
        if not torch.equal(layer.base.weight, other.base.weight) or not same_bias:
            raise ValueError(f"{owner}(source=...): layer {name!r} has another base weight (not the same base model)")
    with torch.no_grad():
        for name, layer in mine.items():
            other = theirs[name]
            layer.lora_a[expert].copy_(other.lora_a[source_expert])
            layer.lora_b[expert].copy_(other.lora_b[source_expert])
            layer.gates[expert].copy_(other.gates[source_expert])
    return target
