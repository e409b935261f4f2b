"""Activation- and Jacobian-based zero-cost proxies: jacob_cov, epe_nas, naswot, zen.

References: Mellor et al., "Neural Architecture Search without Training" (https://arxiv.org/abs/2006.04647,
jacob_cov in v1, NASWOT in v3, code BayesWatch/nas-without-training); Lopes et al., "EPE-NAS"
(https://arxiv.org/abs/2102.08099); Lin et al., "Zen-NAS" (https://arxiv.org/abs/2102.01063, code
idstcv/ZenNAS); all as in automl/NASLib ``naslib/predictors/utils/pruners/measures``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from litmix.functional.proxies.core import ProxyContext, hooks_removed, register_proxy, weight_of

__all__ = ["epe_nas", "jacob_cov", "naswot", "zen"]

_K = 1e-5


def _log(v: float) -> float:
    return math.log(v) if v > 0 else -math.inf


ACTIVATIONS: tuple[type, ...] = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU)


def input_jacobian(ctx: ProxyContext) -> tuple[Tensor, Tensor]:
    """Per-sample input Jacobian of ``Σ_c f_c(x)`` (backward of ones) flattened to ``(B, D)`` float64, and f(x)."""
    x = ctx.args[ctx.input_index()].detach().clone().requires_grad_(True)
    ctx.model.zero_grad(set_to_none=True)
    y = ctx.forward(ctx.with_input(x))
    y.backward(torch.ones_like(y))
    assert x.grad is not None
    return x.grad.detach().reshape(x.shape[0], -1).double(), y.detach()


@register_proxy("jacob_cov")
def jacob_cov(ctx: ProxyContext) -> float:
    """−Σ_i [log(v_i + k) + 1/(v_i + k)], v = eigenvalues of corrcoef(J) (``eigvalsh``), k = 1e-5.

    NaN when a sample's Jacobian is constant (e.g. an all-``none`` NB201 cell); the NaN policy applies.
    """
    corr = torch.corrcoef(input_jacobian(ctx)[0])
    if not bool(torch.isfinite(corr).all()):
        return math.nan
    v = torch.linalg.eigvalsh(corr)
    return float(-(torch.log(v + _K) + 1.0 / (v + _K)).sum())


@register_proxy("epe_nas", needs_labels=True)
def epe_nas(ctx: ProxyContext) -> float:
    """Σ_c |Σ log(|corrcoef(J_c)| + k)| over the classes c of the batch (J_c = Jacobians of class c).

    With more than 100 output classes NASLib's variant is used: each s_c is divided by the class's sample count
    and the score is the mean over class pairs of |s_c − s_c'|.
    """
    jac, out = input_jacobian(ctx)
    assert ctx.targets is not None
    labels = ctx.targets.reshape(-1)
    n_classes = int(out.shape[-1])
    scores: list[Tensor] = []
    for c in torch.unique(labels):
        rows = jac[labels == c]
        corr = torch.corrcoef(rows) if rows.shape[0] > 1 else torch.ones(1, 1, dtype=jac.dtype)
        s = torch.log(corr.abs() + _K).sum()
        scores.append(s / corr.shape[0] if n_classes > 100 else s)
    if n_classes <= 100:
        return float(sum(s.abs() for s in scores))
    stacked = torch.stack(scores)
    return float((stacked[:, None] - stacked[None, :]).abs().sum() / len(scores))


@register_proxy("naswot")
def naswot(ctx: ProxyContext) -> float:
    """log|K|, K = Σ_ReLU [c cᵀ + (1−c)(1−c)ᵀ] of the binary codes c = 1[pre-activation > 0] (``slogdet``).

    One forward, hooks on every activation module (``nn.ReLU`` as in the reference; GELU/SiLU/ELU/... use the
    sign of their input, the natural generalisation; ``F.relu`` calls are invisible). Option ``gaussian=True``
    replaces the floating input by N(0, 1) noise (data-free variant). NaN when the model has no activation
    modules.
    """
    args = ctx.args
    if ctx.options.get("gaussian", False):
        x = ctx.args[ctx.input_index()]
        args = ctx.with_input(torch.randn_like(x))
    kernel: list[Tensor] = []

    def hook(module: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        code = (inp[0].detach().reshape(inp[0].shape[0], -1) > 0).double()
        k = code @ code.t() + (1.0 - code) @ (1.0 - code).t()
        kernel.append(k if not kernel else kernel.pop() + k)

    with hooks_removed([]) as handles, torch.no_grad():
        for m in ctx.model.modules():
            if isinstance(m, ACTIVATIONS):
                handles.append(m.register_forward_hook(hook))
        ctx.forward(args)
    if not kernel:
        return math.nan
    return float(torch.linalg.slogdet(kernel[0])[1])


@register_proxy("zen", needs_data=False)
def zen(ctx: ProxyContext) -> float:
    """Log E_n Σ |f(x) − f(x + γε)| + Σ_BN log sqrt(mean σ²), on Gaussian weights and inputs.

    f is ``model.forward_pre_gap`` when the model has it (feature map before global pooling, as Zen-NAS needs),
    else the model output. The copy's filtered layers get N(0, 1) weights and zero biases, BN/GroupNorm
    γ = 1, β = 0; x, ε ~ N(0, 1) of the input's shape; γ = option ``mixup_gamma`` (0.01).

    Option ``bn_scaling``: ``"running_var"`` (default, the code's quirk: the BN ``running_var`` after the two
    forwards, ``0.9·(0.9·v0 + 0.1·v1) + 0.1·v2``, so the score depends on BN momentum and on the model's
    previous running stats) or ``"batch"`` (the paper: the batch variance of each BN input in the clean
    forward). Option ``repeat`` averages over repeats.
    """
    gamma = float(ctx.options.get("mixup_gamma", 1e-2))
    mode = ctx.options.get("bn_scaling", "running_var")
    if mode not in ("running_var", "batch"):
        raise ValueError(f"zen option bn_scaling={mode!r}: must be 'running_var' or 'batch'")
    method = "forward_pre_gap" if callable(getattr(ctx.model, "forward_pre_gap", None)) else None
    bns = [m for m in ctx.model.modules() if isinstance(m, nn.BatchNorm2d)]
    scores = []
    batch_var: list[Tensor] = []
    for _ in range(int(ctx.options.get("repeat", 1))):
        with torch.no_grad():
            for _, m in ctx.layers:
                nn.init.normal_(weight_of(m))
                bias = getattr(m, "bias", None)
                if isinstance(bias, Tensor):
                    nn.init.zeros_(bias)
            for m in ctx.model.modules():
                if isinstance(m, nn.BatchNorm2d | nn.GroupNorm) and m.affine:
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        x0 = ctx.args[ctx.input_index()]
        x = torch.randn_like(x0)
        x2 = x + gamma * torch.randn_like(x0)
        batch_var.clear()
        with hooks_removed([]) as handles, torch.no_grad():
            if mode == "batch":
                for m in bns:
                    handles.append(
                        m.register_forward_hook(
                            lambda mod, inp, out: batch_var.append(inp[0].var(dim=(0, 2, 3), unbiased=False).mean())
                        )
                    )
            out = ctx.forward(ctx.with_input(x), method)
            handles_n = len(batch_var)
            out2 = ctx.forward(ctx.with_input(x2), method)
        delta = (out - out2).abs().reshape(out.shape[0], -1).sum(dim=1).mean()
        if mode == "batch":
            log_bn = sum(0.5 * _log(float(v)) for v in batch_var[:handles_n])
        else:
            log_bn = sum(0.5 * _log(float(m.running_var.mean())) for m in bns if m.running_var is not None)
        scores.append(_log(float(delta)) + log_bn)
    return float(sum(scores) / len(scores))
