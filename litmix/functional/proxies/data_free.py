"""Data-free baselines: params, flops (MACs), l2_norm.

``params`` and ``flops`` are the baselines every proxy must beat (NAS-Bench-201 Kendall τ ≈ 0.54 vs
CIFAR-10 accuracy); see Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS"
(https://arxiv.org/abs/2101.08134) and White et al., "A Deeper Look at Zero-Cost Proxies for Lightweight
NAS" (https://iclr-blog-track.github.io/2022/03/25/zero-cost-proxies/).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from litmix.functional.proxies.core import ProxyContext, hooks_removed, register_proxy, weight_of

__all__ = ["flops", "l2_norm", "params"]


@register_proxy("params", needs_data=False)
def params(ctx: ProxyContext) -> float:
    """Number of trainable parameters (all of them, not only the filtered layers; shared ones counted once)."""
    return float(sum(p.numel() for p in ctx.model.parameters() if p.requires_grad))


@register_proxy("flops", needs_data=False, layerwise=True)
def flops(ctx: ProxyContext) -> dict[str, Tensor]:
    """Multiply-accumulates of one forward of the filtered layers, counted by forward hooks.

    A convolution costs ``out.numel() * in_channels/groups * kernel size``, a linear-like layer
    ``out.numel() * in_features``. With a single tensor input (positional, or the only keyword argument such as
    ``input_ids=`` / ``inputs_embeds=``) the batch is cut to 1 (MACs per sample); with a tuple of inputs (e.g. a
    graph) the MACs of the whole forward are counted.
    """
    macs: dict[str, int] = {name: 0 for name, _ in ctx.layers}

    def make_hook(name: str):  # type: ignore[no-untyped-def]
        def hook(module: nn.Module, inp: object, out: object) -> None:
            if not isinstance(out, Tensor):
                return
            w = weight_of(module)
            if isinstance(module, nn.modules.conv._ConvNd):
                macs[name] += out.numel() * w[0].numel()
            elif isinstance(module, nn.Embedding):
                return  # a lookup, no MACs
            else:
                macs[name] += out.numel() * (w.numel() // max(out.shape[-1], 1))

        return hook

    args, kwargs = ctx.args, ctx.kwargs
    if len(args) == 1 and not kwargs and isinstance(args[0], Tensor):
        args = (args[0][:1],)
    elif not args and len(kwargs) == 1 and isinstance(value := next(iter(kwargs.values())), Tensor):
        kwargs = {next(iter(kwargs)): value[:1]}  # {"input_ids": ids} or {"inputs_embeds": e}: per sample too
    with hooks_removed([]) as handles, torch.no_grad():
        for name, m in ctx.layers:
            handles.append(m.register_forward_hook(make_hook(name)))
        ctx.model.eval()  # batch 1 with train-mode BN would fail on 1x1 maps; MACs do not depend on the mode
        fn = ctx.model
        ctx.output_fn(fn(*args, **kwargs))
    return {k: torch.tensor(float(v), dtype=torch.float64) for k, v in macs.items()}


@register_proxy("l2_norm", needs_data=False, layerwise=True)
def l2_norm(ctx: ProxyContext) -> dict[str, Tensor]:
    """Σ_l ‖W_l‖_F: sum of per-layer Frobenius norms of the filtered weights."""
    return {name: weight_of(m).detach().norm() for name, m in ctx.layers}
