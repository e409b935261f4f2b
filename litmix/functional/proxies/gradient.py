"""Gradient-based zero-cost proxies: grad_norm, snip, plain, grasp, fisher, synflow.

References: Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS" (https://arxiv.org/abs/2101.08134),
code SamsungLabs/zero-cost-nas ``foresight/pruners/measures``; SNIP (https://arxiv.org/abs/1810.02340);
GraSP (https://arxiv.org/abs/2002.07376); Fisher pruning (https://arxiv.org/abs/1801.05787); SynFlow
(https://arxiv.org/abs/2006.05467). Each returns per-layer values (``Σ`` over the layer's weight elements)
which :func:`~litmix.functional.proxies.zero_cost_proxies` sums.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from litmix.functional.proxies.core import ProxyContext, _is_graph_data, register_proxy, weight_of

__all__ = ["FisherHooks", "fisher", "grad_norm", "grasp", "grasp_z", "plain", "snip", "synflow"]


def _backward_loss(ctx: ProxyContext) -> None:
    ctx.model.zero_grad(set_to_none=True)
    ctx.loss().backward()


GRAD_FORMULAS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "grad_norm": lambda w, g: g.norm(),
    "snip": lambda w, g: (g * w).abs().sum(),
    "plain": lambda w, g: (g * w).sum(),
}


def _per_layer(ctx: ProxyContext, fn: type | object) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for name, m in ctx.layers:
        w, g = m.weight, m.weight.grad
        out[name] = fn(w.detach(), g) if g is not None else torch.zeros((), dtype=torch.float64)  # type: ignore[operator]
    return out


@register_proxy("grad_norm", needs_labels=True, layerwise=True)
def grad_norm(ctx: ProxyContext) -> dict[str, Tensor]:
    """Σ_l ‖∂L/∂W_l‖₂: the **sum of per-layer** gradient norms (not the global norm)."""
    _backward_loss(ctx)
    return _per_layer(ctx, GRAD_FORMULAS["grad_norm"])


@register_proxy("snip", needs_labels=True, layerwise=True)
def snip(ctx: ProxyContext) -> dict[str, Tensor]:
    """Σ |∂L/∂W ⊙ W| (equal to the reference's |∂L/∂m| for an all-ones mask multiplying W)."""
    _backward_loss(ctx)
    return _per_layer(ctx, GRAD_FORMULAS["snip"])


@register_proxy("plain", needs_labels=True, layerwise=True)
def plain(ctx: ProxyContext) -> dict[str, Tensor]:
    """Σ ∂L/∂W ⊙ W (signed); a weak proxy, useful as a negative control."""
    _backward_loss(ctx)
    return _per_layer(ctx, GRAD_FORMULAS["plain"])


@register_proxy("grasp", needs_labels=True, layerwise=True)
def grasp(ctx: ProxyContext) -> dict[str, Tensor]:
    """Σ (−W ⊙ Hg) with g = ∂L/∂W (detached) and Hg from a double backward.

    Reference quirk reproduced: the sign is the reference's ``-theta * Hg`` (flipped relative to the GraSP
    paper's pruning score after a negative correlation was observed), so higher is better. Its ``num_iters``
    reuses the same batch, so one iteration is equivalent. Option ``T`` (temperature, default 1).
    """
    temperature = float(ctx.options.get("T", 1.0))
    weights = ctx.weights()
    ctx.model.zero_grad(set_to_none=True)
    loss = ctx.loss(ctx.forward() / temperature)
    grad_w = torch.autograd.grad(loss, weights, allow_unused=True)
    loss = ctx.loss(ctx.forward() / temperature)
    grad_f = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
    z = grasp_z(grad_w, grad_f, loss.dtype)
    if z.requires_grad:
        z.backward()
    return _per_layer(ctx, lambda w, hg: (-w * hg).sum())


def grasp_z(grad_w: Sequence[Tensor | None], grad_f: Sequence[Tensor | None], dtype: torch.dtype) -> Tensor:
    """GraSP's z = Σ_l g_l · ∂L/∂W_l (g detached), whose weight gradient is the Hessian-gradient product Hg."""
    return sum(
        ((gw.detach() * gf).sum() for gw, gf in zip(grad_w, grad_f, strict=True) if gw is not None and gf is not None),
        start=torch.zeros((), dtype=dtype),
    )


@register_proxy("fisher", needs_labels=True, layerwise=True)
def fisher(ctx: ProxyContext) -> dict[str, Tensor]:
    """Per output channel k of each layer: F_k = ½·mean_n(Σ_spatial a·∂L/∂a)², a = the layer's output.

    Channels are dim 1 of convolution outputs and the last dim otherwise. Reference quirk reproduced by default
    (option ``samsung_broadcast=True``): the channel value is broadcast to every weight of that channel, so a
    layer contributes ``Σ_k F_k · fan_in``; ``samsung_broadcast=False`` gives ``Σ_k F_k``. Uses
    gradient hooks on the layer outputs instead of module backward hooks: the reference's deprecated
    ``register_backward_hook`` on patched forwards leaks memory, and full backward hooks break on a following
    in-place ReLU; the tensor hooks vanish with the graph, the forward hooks are always removed.
    """
    hooks = FisherHooks(ctx, bool(ctx.options.get("samsung_broadcast", True)))
    try:
        _backward_loss(ctx)
    finally:
        hooks.remove()
    return hooks.values(ctx)


class FisherHooks:
    """Forward hooks on the scored layers that register gradient hooks on their outputs (fisher's F_k).

    The gradient hooks add to the values only while :attr:`armed` is true, so that further backward passes
    through the same graph (an input Jacobian, GraSP's double backward) do not count twice.
    """

    def __init__(self, ctx: ProxyContext, broadcast: bool) -> None:
        self.broadcast = broadcast
        self.armed = True
        self._values: dict[str, Tensor] = {}
        self.handles: list[Any] = []
        for name, m in ctx.layers:
            conv = isinstance(m, nn.modules.conv._ConvNd)
            w = weight_of(m)
            fan_in = w[0].numel() if conv else w.numel() // max(_out_features(m), 1)
            self.handles.append(m.register_forward_hook(self._make_hook(name, conv, fan_in)))

    def _make_hook(self, name: str, conv: bool, fan_in: int) -> Callable[..., None]:
        values, broadcast = self._values, self.broadcast

        def grad_hook(act: Tensor, grad: Tensor) -> None:
            if not self.armed:
                return
            prod = act * grad.detach()
            if conv and prod.dim() > 2:
                g_nk = prod.sum(dim=tuple(range(2, prod.dim())))
            else:
                prod = prod.reshape(prod.shape[0], -1, prod.shape[-1]) if prod.dim() > 1 else prod.reshape(1, 1, -1)
                g_nk = prod.sum(dim=1)
            del_k = g_nk.pow(2).mean(0).mul(0.5)
            value = (del_k.abs() * (fan_in if broadcast else 1)).sum()
            values[name] = values.get(name, torch.zeros((), dtype=value.dtype)) + value

        def fwd_hook(module: nn.Module, inp: object, out: Tensor) -> None:
            if isinstance(out, Tensor) and out.requires_grad:
                act = out.detach().clone()  # the activation may later be modified in place (ReLU(inplace=True))
                out.register_hook(lambda grad: grad_hook(act, grad))

        return fwd_hook

    def remove(self) -> None:
        """Remove the forward hooks (the gradient hooks vanish with the graph)."""
        for h in self.handles:
            h.remove()
        self.handles = []

    def values(self, ctx: ProxyContext) -> dict[str, Tensor]:
        """Per-layer fisher values (0 for a layer no gradient reached)."""
        return {name: self._values.get(name, torch.zeros((), dtype=torch.float64)) for name, _ in ctx.layers}


def _out_features(m: nn.Module) -> int:
    for attr in ("out_features", "out_channels", "embedding_dim", "nf"):
        if isinstance(getattr(m, attr, None), int):
            return int(getattr(m, attr))
    return int(weight_of(m).shape[0])


def _ones_input(arg: Any) -> Any:
    """Ones for a floating tensor argument, or a copy of a PyG ``Data`` with ``x = 1``; other arguments unchanged."""
    if isinstance(arg, Tensor):
        return torch.ones_like(arg) if arg.is_floating_point() else arg
    x = getattr(arg, "x", None)
    if _is_graph_data(arg) and isinstance(x, Tensor) and x.is_floating_point():
        data = copy.copy(arg)
        data.x = torch.ones_like(x)
        return data
    return arg


@register_proxy("synflow", needs_data=False, bn_mode="identity", dtype=torch.float64, log_scale=True, layerwise=True)
def synflow(ctx: ProxyContext) -> dict[str, Tensor]:
    """Σ |W ⊙ ∂R/∂W| with R = Σ f(1) on the linearised network, reported as ``log``.

    The copy is float64 with BN forward replaced by identity; ``abs_()`` is applied to every floating
    ``state_dict`` entry; floating inputs become ones (batch 1 when ``inputs`` is a single tensor; other
    inputs such as ``edge_index`` or token ids are kept; a PyG ``Data`` argument gets ``x = 1``). The float64
    copy avoids the float32 overflow of deep networks (values of 1e32–1e61 reported in zero-cost-nas issue #23).

    Reference quirk (documented, not an option: it is a property of the reference's model, not of the proxy):
    on identical networks and inputs this function is bit-identical to SamsungLabs/zero-cost-nas's synflow
    (20 NAS-Bench-201 cells), but the reference scores its own NB201 model, built for synflow with ``bn=False``,
    which removes only the cells' BatchNorms: the reduction blocks keep theirs (on a batch of one ones-image)
    and the convolutions there keep their biases. Its values are about 1e-3 of ours on the same cells, with
    Spearman ρ 0.9985 between the two rankings. To reproduce its numbers, score a network built that way (this
    function removes every BatchNorm, as the paper's definition of synflow on a linearised network does).
    """
    with torch.no_grad():
        for tensor in ctx.model.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
    if len(ctx.args) == 1 and not ctx.kwargs and isinstance(ctx.args[0], Tensor) and ctx.args[0].is_floating_point():
        x = ctx.args[0]
        args: tuple[object, ...] = (torch.ones((1, *x.shape[1:]), dtype=x.dtype, device=x.device),)
    else:
        args = tuple(_ones_input(a) for a in ctx.args)
    ctx.model.zero_grad(set_to_none=True)
    ctx.forward(args).sum().backward()
    return _per_layer(ctx, lambda w, g: (w * g).abs().sum())
