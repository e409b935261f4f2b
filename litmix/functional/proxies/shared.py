"""Shared passes: several proxies from one model copy, one forward and as few backward passes as possible.

By default (``shared=True``), :func:`~litmix.functional.proxies.zero_cost_proxies` computes the proxies below
that are requested together with :func:`shared_pass`, on **one** copy from **one** forward of the batch
(``shared=False`` gives each proxy its own copy and passes):

* the loss gradient of the scored weights (one backward) serves ``grad_norm``, ``snip``, ``plain`` and
  ``fisher`` (whose activation-gradient hooks fire during that backward);
* ``grasp`` reuses that forward and gradient (taken with ``create_graph=True``) for its Hessian-gradient
  product (one double backward) instead of two further forwards;
* the input Jacobian (a backward of ones to the input) serves ``jacob_cov`` and ``epe_nas``;
* ``naswot``'s activation codes are read by hooks during the same forward.

The numbers are those of the one-by-one computation: every proxy here makes exactly one forward of the batch in
train mode after ``torch.manual_seed(seed)`` on a fresh copy, so the shared forward is the same computation
(BN batch statistics, dropout masks). What can differ is floating-point rounding in the backward passes (a
gradient taken with ``create_graph=True``, the input gradient computed alongside the weight gradient), at the
level of float32 round-off; ``tests/test_proxies_shared.py`` checks ``rel=1e-5``. Not shared (each then gets
its own copy, as before): ``grasp`` with a temperature ``T != 1`` or with active dropout (its reference makes
two forwards, hence two dropout masks), ``naswot`` with ``gaussian=True``, and the input-Jacobian proxies of a
token-id model (their input is the embeddings, so the forward differs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from litmix.functional.proxies import activation, gradient
from litmix.functional.proxies.core import ProxyContext, ProxyValue, get_proxy, register_shared_planner, weight_of

__all__ = ["GRADIENT", "JACOBIAN", "plan_shared", "shared_pass"]

GRADIENT = ("grad_norm", "snip", "plain", "fisher", "grasp")
JACOBIAN = ("jacob_cov", "epe_nas")
_BUILTIN = {
    "grad_norm": gradient.grad_norm,
    "snip": gradient.snip,
    "plain": gradient.plain,
    "fisher": gradient.fisher,
    "grasp": gradient.grasp,
    "jacob_cov": activation.jacob_cov,
    "epe_nas": activation.epe_nas,
    "naswot": activation.naswot,
}


def _has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


def plan_shared(
    names: list[str], options: Mapping[str, Mapping[str, Any]], model: nn.Module, float_arg: bool
) -> list[list[str]]:
    """Groups of ``names`` to compute together with :func:`shared_pass` (groups of one are left out).

    Args:
        names: the requested proxies.
        options: per-proxy options.
        model: the (unwrapped) model, to look for dropout.
        float_arg: the batch holds a floating input of its own (not token ids turned into embeddings).
    """
    ok = []
    for n in names:
        if n not in _BUILTIN or get_proxy(n).fn is not _BUILTIN[n]:
            continue
        opts = options.get(n, {})
        if n == "grasp" and (float(opts.get("T", 1.0)) != 1.0 or _has_dropout(model)):
            continue
        if n == "naswot" and opts.get("gaussian", False):
            continue
        ok.append(n)
    # the Jacobian of token ids is taken at the embeddings: a different forward
    groups = [ok] if float_arg else [[n for n in ok if n not in JACOBIAN], [n for n in ok if n in JACOBIAN]]
    return [g for g in groups if len(g) > 1]


def _zero() -> Tensor:
    return torch.zeros((), dtype=torch.float64)


def shared_pass(ctx: ProxyContext, names: list[str], options: Mapping[str, Mapping[str, Any]]) -> dict[str, ProxyValue]:
    """The values of ``names`` (a group from :func:`plan_shared`) from one forward of ``ctx``'s batch.

    Raises:
        ValueError: as the proxies themselves (no targets, no floating input, naswot's refusals, ...).
    """
    want = set(names)
    grad_names = [n for n in GRADIENT if n in want]
    jac_names = [n for n in JACOBIAN if n in want]
    if grad_names and ctx.targets is None:
        raise ValueError(f"proxy {grad_names[0]!r} needs targets; pass targets=")
    out: dict[str, ProxyValue] = {}
    fisher = (
        gradient.FisherHooks(ctx, bool(options.get("fisher", {}).get("samsung_broadcast", True)))
        if "fisher" in want
        else None
    )
    kernel = (
        activation.NaswotKernel(ctx.model, str(options.get("naswot", {}).get("count", "modules")))
        if "naswot" in want
        else None
    )
    try:
        ctx.model.zero_grad(set_to_none=True)
        x: Tensor | None = None
        if jac_names:
            x = ctx.float_input().detach().clone().requires_grad_(True)
            y = ctx.forward_with_input(x)
        else:
            y = ctx.forward()
    finally:
        if kernel is not None:
            kernel.remove()
    try:
        if grad_names:
            loss = ctx.loss(y)
            weights = ctx.weights()
            grasp = "grasp" in want
            grads = torch.autograd.grad(
                loss, weights, create_graph=grasp, retain_graph=grasp or bool(jac_names), allow_unused=True
            )
            if fisher is not None:
                fisher.armed = False
                out["fisher"] = fisher.values(ctx)
            for n in grad_names:
                if n in gradient.GRAD_FORMULAS:
                    f = gradient.GRAD_FORMULAS[n]
                    out[n] = {
                        name: f(weight_of(m).detach(), g.detach()) if g is not None else _zero()
                        for (name, m), g in zip(ctx.layers, grads, strict=True)
                    }
            if grasp:
                z = gradient.grasp_z(grads, grads, loss.dtype)
                hg: tuple[Tensor | None, ...] = (
                    torch.autograd.grad(z, weights, retain_graph=bool(jac_names), allow_unused=True)
                    if z.requires_grad
                    else (None,) * len(weights)
                )
                out["grasp"] = {
                    name: (-weight_of(m).detach() * h).sum() if h is not None else _zero()
                    for (name, m), h in zip(ctx.layers, hg, strict=True)
                }
            del grads
        if jac_names:
            assert x is not None
            (jx,) = torch.autograd.grad(y, x, grad_outputs=torch.ones_like(y))
            jac = jx.detach().reshape(x.shape[0], -1).double()
            if "jacob_cov" in want:
                out["jacob_cov"] = activation.jacob_cov_score(jac)
            if "epe_nas" in want:
                out["epe_nas"] = activation.epe_nas_score(ctx, jac, y.detach())
    finally:
        if fisher is not None:
            fisher.remove()
    if kernel is not None:
        out["naswot"] = kernel.score(ctx)
    return out


register_shared_planner(plan_shared, shared_pass)
