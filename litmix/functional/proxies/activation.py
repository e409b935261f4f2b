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

__all__ = ["NaswotKernel", "epe_nas", "is_activation", "jacob_cov", "naswot", "zen"]

_K = 1e-5


def _log(v: float) -> float:
    return math.log(v) if v > 0 else -math.inf


ACTIVATIONS: tuple[type, ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Tanh,
)


def is_activation(module: nn.Module) -> bool:
    """An activation module NASWOT hooks: one of :data:`ACTIVATIONS` or a Hugging Face activation module.

    Hugging Face models use their own classes (GPT-2's ``NewGELUActivation`` in ``transformers.activations``),
    which are recognised by their module so that ``naswot`` sees their units.
    """
    return isinstance(module, ACTIVATIONS) or type(module).__module__.startswith("transformers.activations")


def input_jacobian(ctx: ProxyContext) -> tuple[Tensor, Tensor]:
    """Per-sample input Jacobian of ``Σ_c f_c(x)`` (backward of ones) flattened to ``(B, D)`` float64, and f(x).

    The input is :meth:`ProxyContext.float_input` (the input embeddings for token ids of a Hugging Face model).
    """
    x = ctx.float_input().detach().clone().requires_grad_(True)
    ctx.model.zero_grad(set_to_none=True)
    y = ctx.forward_with_input(x)
    y.backward(torch.ones_like(y))
    assert x.grad is not None
    return x.grad.detach().reshape(x.shape[0], -1).double(), y.detach()


def jacob_cov_score(jac: Tensor) -> float:
    """jacob_cov of a flattened ``(B, D)`` Jacobian (NaN when a row is constant)."""
    corr = torch.corrcoef(jac)
    if not bool(torch.isfinite(corr).all()):
        return math.nan
    v = torch.linalg.eigvalsh(corr)
    return float(-(torch.log(v + _K) + 1.0 / (v + _K)).sum())


@register_proxy("jacob_cov")
def jacob_cov(ctx: ProxyContext) -> float:
    """−Σ_i [log(v_i + k) + 1/(v_i + k)], v = eigenvalues of corrcoef(J) (``eigvalsh``), k = 1e-5.

    NaN when a sample's Jacobian is constant (e.g. an all-``none`` NB201 cell); the NaN policy applies.
    """
    return jacob_cov_score(input_jacobian(ctx)[0])


def epe_nas_score(ctx: ProxyContext, jac: Tensor, out: Tensor) -> float:
    """epe_nas of a flattened ``(B, D)`` Jacobian and the output ``out`` (for the class count).

    Raises:
        ValueError: when the targets are not one class label per sample (sequence labelling, language models).
    """
    assert ctx.targets is not None
    labels = ctx.targets.reshape(-1)
    if labels.numel() != jac.shape[0]:
        raise ValueError(
            f"epe_nas needs one class label per sample: the batch has {jac.shape[0]} samples but targets of shape "
            f"{tuple(ctx.targets.shape)} (per-token targets of a sequence model have no per-sample class)"
        )
    if ctx.sample_mask is not None:
        jac, labels = jac[ctx.sample_mask.reshape(-1)], labels[ctx.sample_mask.reshape(-1)]
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


@register_proxy("epe_nas", needs_labels=True)
def epe_nas(ctx: ProxyContext) -> float:
    """Σ_c |Σ log(|corrcoef(J_c)| + k)| over the classes c of the batch (J_c = Jacobians of class c).

    With more than 100 output classes NASLib's variant is used: each s_c is divided by the class's sample count
    and the score is the mean over class pairs of |s_c − s_c'|. With a ``sample_mask`` (a graph's
    ``train_mask``) only the masked samples count.

    Raises:
        ValueError: when the targets are not one class label per sample (e.g. next-token targets).
    """
    jac, out = input_jacobian(ctx)
    return epe_nas_score(ctx, jac, out)


class NaswotKernel:
    """Forward hooks accumulating NASWOT's kernel K = Σ [c cᵀ + (1−c)(1−c)ᵀ] of the binary activation codes.

    ``count="modules"`` (default) hooks every activation module (:func:`is_activation`); ``count="reference"``
    hooks every module whose type string contains ``'ReLU'`` (BayesWatch/nas-without-training's selection, which
    also matches NB201's ``ReLUConvBN`` wrapper and so counts each wrapped ReLU's codes twice).
    """

    def __init__(self, model: nn.Module, count: str = "modules") -> None:
        if count not in ("modules", "reference"):
            raise ValueError(f"naswot option count={count!r}: must be 'modules' or 'reference'")
        self.kernel: Tensor | None = None
        self.units = 0  # Σ_l (D_l + 1): an upper bound of rank(K)
        self.handles = []
        for m in model.modules():
            hooked = "ReLU" in str(type(m)) if count == "reference" else is_activation(m)
            if hooked:
                self.handles.append(m.register_forward_hook(self._hook))

    def _hook(self, module: nn.Module, inp: tuple[Tensor, ...], out: Tensor) -> None:
        positive = inp[0].detach().reshape(inp[0].shape[0], -1) > 0
        units = positive.shape[1]
        # c cᵀ + (1−c)(1−c)ᵀ = 2 c cᵀ − s 1ᵀ − 1 sᵀ + D with s = row sums: one matmul instead of two, in float32
        # while every intermediate is an integer below 2^24 (exact), so K is the same integer matrix
        code = positive.float() if 2 * units < 2**24 else positive.double()
        s = code.sum(dim=1)
        k = (2.0 * (code @ code.t()) - s[:, None] - s[None, :] + units).double()
        self.kernel = k if self.kernel is None else self.kernel + k
        self.units += units + 1

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self.handles:
            h.remove()
        self.handles = []

    def score(self, ctx: ProxyContext) -> float:
        """log|K| (``slogdet``) over the masked samples.

        Raises:
            ValueError: when no activation module ran, or when K is singular by construction (more samples than
                activation units + 1), both of which would give a meaningless non-finite score.
        """
        if self.kernel is None:
            raise ValueError(
                "naswot: the model has no activation modules to hook (nn.ReLU/GELU/SiLU/... or Hugging Face "
                "activations; functional calls such as F.relu are invisible), so its kernel is undefined"
            )
        k = self.kernel
        if ctx.sample_mask is not None and ctx.sample_mask.numel() == k.shape[0]:
            idx = ctx.sample_mask.reshape(-1).nonzero().reshape(-1)
            k = k[idx][:, idx]
        if k.shape[0] > self.units:
            raise ValueError(
                f"naswot: the kernel is {k.shape[0]}x{k.shape[0]} (one row per sample) but the activations have "
                f"only {self.units} activation units (counting +1 per hooked call), so it is "
                "singular and log|K| = -inf; score fewer samples than activation units"
            )
        return float(torch.linalg.slogdet(k)[1])


@register_proxy("naswot")
def naswot(ctx: ProxyContext) -> float:
    """log|K|, K = Σ_act [c cᵀ + (1−c)(1−c)ᵀ] of the binary codes c = 1[pre-activation > 0] (``slogdet``).

    One forward, hooks on every activation module (``nn.ReLU`` as in the reference; GELU/SiLU/ELU/... and
    Hugging Face activation modules use the sign of their input, the natural generalisation; ``F.relu`` calls
    are invisible). A "sample" is a row of the activation's first dimension (an image, a sequence, a graph's
    node; with a ``sample_mask`` only the masked nodes). Option ``gaussian=True`` replaces the floating input by
    N(0, 1) noise (data-free variant).

    Option ``count``: ``"modules"`` (default) or ``"reference"``. The reference code
    (BayesWatch/nas-without-training) selects modules with ``'ReLU' in str(type(module))``, which also matches
    NB201's ``ReLUConvBN`` wrapper, so every wrapped ReLU's codes enter K twice (99 hooked modules instead of 50
    on an NB201 network with N=5). On NB201 that is an almost constant offset, hence practically the same
    ranking: log|K| +44.08 to +44.11 nats on 4 random (C=16, N=5, batch 64) cells measured here (42.9–44.1
    against the reference code on 20 cells, Spearman 1.0). ``count="reference"`` reproduces that counting for
    comparisons with published numbers: ``options={"naswot": {"count": "reference"}}`` here,
    ``ZeroCostProxies(proxy_options=...)`` in the callback (as fisher's ``samsung_broadcast``).

    Raises:
        ValueError: when the model has no activation modules, or when there are more samples than activation
            units + 1 per layer (K is then singular by construction).
    """
    args = ctx.args
    hooks = NaswotKernel(ctx.model, str(ctx.options.get("count", "modules")))
    try:
        with torch.no_grad():
            if ctx.options.get("gaussian", False):
                x = ctx.float_input()
                ctx.forward_with_input(torch.randn_like(x))
            else:
                ctx.forward(args)
    finally:
        hooks.remove()
    return hooks.score(ctx)


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
        x0 = ctx.float_input()
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
            out = ctx.forward_with_input(x, method)
            handles_n = len(batch_var)
            out2 = ctx.forward_with_input(x2, method)
        delta = (out - out2).abs().reshape(out.shape[0], -1).sum(dim=1).mean()
        if mode == "batch":
            log_bn = sum(0.5 * _log(float(v)) for v in batch_var[:handles_n])
        else:
            log_bn = sum(0.5 * _log(float(m.running_var.mean())) for m in bns if m.running_var is not None)
        scores.append(_log(float(delta)) + log_bn)
    return float(sum(scores) / len(scores))
