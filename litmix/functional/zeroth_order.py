"""Zeroth-order gradient estimates from forward passes only (DeepZero, Chen et al. 2024): pure tensor functions.

* :func:`cge_gradient`: coordinate-wise estimates ``(f(theta + mu e_i) - f(theta)) / mu`` on chosen coordinates;
* :func:`rge_gradient`: randomized estimates ``(1/q) sum_k (f(theta + mu u_k) - f(theta)) / mu * u_k``;
* :func:`sample_coordinates`: a random subset of every tensor's coordinates with given per-tensor densities;
* :func:`zo_grasp_ratios`: per-tensor densities from GraSP scores whose gradient and Hessian-gradient product
  are themselves estimated with forward passes (DeepZero's ZO-GraSP).

The perturbed forwards are batched with ``torch.func.vmap`` over ``torch.func.functional_call`` (``chunk``
perturbations at a time), never by copying the model. ``loss_fn`` maps a dict of parameters to a scalar loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from litmix.registry import register
from litmix.validation import check_float, check_int, check_type

__all__ = ["cge_gradient", "rge_gradient", "sample_coordinates", "zo_grasp_ratios"]

_PAPER = "DeepZero: Scaling up Zeroth-Order Optimization for Deep Model Training (https://arxiv.org/abs/2310.02025)"
LossFn = Callable[[Mapping[str, Tensor]], Tensor]


def _batched_losses(loss_fn: LossFn, params: Mapping[str, Tensor], deltas: Mapping[str, Tensor]) -> Tensor:
    """``loss_fn(params + deltas[k])`` for every ``k`` of the leading dimension, in one vmapped call."""
    names = list(deltas)
    k = next(iter(deltas.values())).shape[0]

    def one(*perturbed: Tensor) -> Tensor:
        merged = dict(params)
        merged.update(zip(names, perturbed, strict=True))
        return loss_fn(merged)

    batched = [params[n].unsqueeze(0) + deltas[n] for n in names]
    out = torch.func.vmap(one, randomness="different")(*batched)
    return out.reshape(k)


@register("function", "optimization", paper=_PAPER, module="litmix.functional.zeroth_order")
def cge_gradient(
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    coords: Mapping[str, Tensor] | None = None,
    mu: float = 1e-3,
    chunk: int = 256,
) -> tuple[dict[str, Tensor], Tensor, int]:
    """Coordinate-wise gradient estimate (CGE) on the coordinates ``coords`` (all when ``None``).

    ``g_i = (f(theta + mu e_i) - f(theta)) / mu`` for every chosen flat index ``i`` of every tensor; 0 elsewhere.
    Costs ``len(chosen) + 1`` forward passes (batched ``chunk`` at a time).

    Args:
        loss_fn: maps a dict of parameters to a scalar loss.
        params: the point ``theta`` (tensors are not modified).
        coords: per tensor name, int64 flat indices of the coordinates to estimate; tensors absent get 0.
        mu: the finite-difference step, > 0.
        chunk: perturbations per vmapped call, >= 1 (bounds the memory: ``chunk`` copies of the parameters).

    Returns:
        ``(gradient estimate per name, f(theta), number of forward passes)``.

    Raises:
        ValueError: for ``mu <= 0``, ``chunk < 1`` or an index outside its tensor.

    Example:
        >>> w = {"w": torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)}
        >>> loss = lambda p: (p["w"] ** 2).sum()  # gradient 2w
        >>> g, f0, forwards = cge_gradient(loss, w, {"w": torch.tensor([0, 2])}, mu=1e-6)
        >>> [round(v, 4) for v in g["w"].tolist()], float(f0), forwards
        ([2.0, 0.0, 6.0], 14.0, 3)
    """
    mu = check_float("cge_gradient", "mu", mu, low=0.0, low_open=True)
    chunk = check_int("cge_gradient", "chunk", chunk, low=1)
    if coords is None:
        coords = {n: torch.arange(p.numel(), device=p.device) for n, p in params.items()}
    names: list[str] = []
    owner_ids, flat_idx = [], []
    for name, idx in coords.items():
        if name not in params:
            raise ValueError(f"cge_gradient(coords): no parameter named {name!r}")
        idx = idx.to(torch.long).reshape(-1).cpu()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= params[name].numel()):
            raise ValueError(f"cge_gradient(coords[{name!r}]): an index lies outside [0, {params[name].numel()})")
        owner_ids.append(torch.full_like(idx, len(names)))
        flat_idx.append(idx)
        names.append(name)
    owners = torch.cat(owner_ids) if owner_ids else torch.zeros(0, dtype=torch.long)
    columns = torch.cat(flat_idx) if flat_idx else torch.zeros(0, dtype=torch.long)
    total = int(columns.numel())
    with torch.no_grad():
        f0 = loss_fn(params).detach()
        grads = {n: torch.zeros_like(p) for n, p in params.items()}
        for start in range(0, total, chunk):
            own, col = owners[start : start + chunk], columns[start : start + chunk]
            k = int(col.numel())
            deltas, placed = {}, []
            for j in torch.unique(own).tolist():
                name = names[j]
                rows = (own == j).nonzero().squeeze(1)
                cols = col[rows].to(params[name].device)
                d = params[name].new_zeros((k, params[name].numel()))
                d[rows.to(d.device), cols] = mu
                deltas[name] = d.view(k, *params[name].shape)
                placed.append((name, rows, cols))
            est = (_batched_losses(loss_fn, params, deltas) - f0) / mu
            for name, rows, cols in placed:
                grads[name].view(-1)[cols] = est[rows.to(est.device)]
    return grads, f0, total + 1


@register("function", "optimization", paper=_PAPER, module="litmix.functional.zeroth_order")
def rge_gradient(
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    q: int = 20,
    mu: float = 1e-3,
    masks: Mapping[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
    chunk: int = 256,
) -> tuple[dict[str, Tensor], Tensor, int]:
    """Randomized gradient estimate (RGE) with ``q`` Gaussian directions, restricted to ``masks`` if given.

    ``g = (1/q) sum_k (f(theta + mu u_k) - f(theta)) / mu * u_k`` with ``u_k ~ N(0, I)`` (zero outside the mask):
    ``q + 1`` forward passes, cheaper and noisier than :func:`cge_gradient`.

    Args:
        loss_fn: maps a dict of parameters to a scalar loss.
        params: the point ``theta``.
        q: number of directions, >= 1.
        mu: smoothing radius, > 0.
        masks: per tensor name, a bool mask of the coordinates perturbed (tensors absent: all coordinates).
        generator: random generator of the directions (default: the global one).
        chunk: directions per vmapped call, >= 1.

    Returns:
        ``(gradient estimate per name, f(theta), number of forward passes)``.

    Raises:
        ValueError: for ``q < 1``, ``mu <= 0`` or ``chunk < 1``.

    Example:
        >>> w = {"w": torch.ones(4, dtype=torch.float64)}
        >>> gen = torch.Generator().manual_seed(0)
        >>> g, f0, forwards = rge_gradient(lambda p: p["w"].sum(), w, q=4000, generator=gen)
        >>> forwards, bool(((g["w"] - 1).abs() < 0.1).all())  # E[u u^T] grad = grad
        (4001, True)
    """
    q = check_int("rge_gradient", "q", q, low=1)
    mu = check_float("rge_gradient", "mu", mu, low=0.0, low_open=True)
    chunk = check_int("rge_gradient", "chunk", chunk, low=1)
    with torch.no_grad():
        f0 = loss_fn(params).detach()
        grads = {n: torch.zeros_like(p) for n, p in params.items()}
        for start in range(0, q, chunk):
            k = min(chunk, q - start)
            us = {}
            for name, p in params.items():
                u = torch.randn((k, *p.shape), generator=generator, dtype=p.dtype).to(p.device)
                if masks is not None and name in masks:
                    u = u * masks[name].to(u.dtype)
                us[name] = u
            losses = _batched_losses(loss_fn, params, {n: mu * u for n, u in us.items()})
            coef = (losses - f0) / (mu * q)
            for name, u in us.items():
                grads[name] += torch.tensordot(coef, u, dims=1)
    return grads, f0, q + 1


@register("function", "optimization", paper=_PAPER, module="litmix.functional.zeroth_order")
def sample_coordinates(
    shapes: Mapping[str, torch.Size], densities: Mapping[str, float], generator: torch.Generator
) -> dict[str, Tensor]:
    """A uniformly random ``ceil(density * numel)`` subset of each tensor's flat coordinates (sorted int64).

    Args:
        shapes: tensor shapes by name.
        densities: per name, the fraction of coordinates kept, in [0, 1] (names absent: 0).
        generator: the random generator (seed it from the step to get the same subset on every DDP rank).

    Returns:
        Flat indices per name (names with no coordinate are left out).

    Raises:
        ValueError: for a density outside [0, 1].

    Example:
        >>> idx = sample_coordinates({"w": torch.Size([2, 5])}, {"w": 0.5}, torch.Generator().manual_seed(0))
        >>> len(idx["w"]), bool((idx["w"].diff() > 0).all())
        (5, True)
    """
    check_type("sample_coordinates", "generator", generator, torch.Generator)
    out = {}
    for name, shape in shapes.items():
        d = check_float("sample_coordinates", f"densities[{name!r}]", densities.get(name, 0.0), low=0.0, high=1.0)
        n = math.prod(shape)
        k = min(n, math.ceil(d * n - 1e-9))
        if k:
            out[name] = torch.randperm(n, generator=generator)[:k].sort().values
    return out


@register("function", "optimization", paper=_PAPER, module="litmix.functional.zeroth_order")
def zo_grasp_ratios(
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    density: float,
    q: int = 64,
    mu: float = 5e-3,
    delta: float = 1e-2,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Per-tensor densities from zeroth-order GraSP scores (DeepZero's ZO-GraSP, at initialisation).

    GraSP (Wang et al., https://arxiv.org/abs/2002.07376) scores every weight by ``S = -theta * (H g)``; weights
    with the largest scores are removed. Here ``g`` is an RGE estimate and ``H g`` the finite difference
    ``(g(theta + delta * g) - g(theta)) / delta`` of two RGE estimates with the same directions (common random
    numbers). Keeping the ``density`` fraction of weights with the lowest scores globally gives each tensor's
    kept fraction: the layer-wise ratios DeepZero re-samples random coordinates with during training.

    Args:
        loss_fn: maps a dict of parameters to a scalar loss.
        params: the initial parameters.
        density: overall fraction of coordinates kept, in (0, 1].
        q: RGE directions per estimate, >= 1.
        mu: RGE smoothing radius, > 0.
        delta: Hessian-gradient finite-difference step, > 0.
        generator: random generator (default: the global one).

    Returns:
        The kept fraction per tensor name (their element-weighted mean is ``density``).

    Raises:
        ValueError: for a density outside (0, 1], ``q < 1`` or non-positive steps.

    Example:
        >>> p = {"a": torch.randn(20, dtype=torch.float64), "b": torch.randn(30, dtype=torch.float64)}
        >>> ratios = zo_grasp_ratios(lambda d: (d["a"] ** 2).sum() + d["b"].sum(), p, 0.5, q=8)
        >>> round((ratios["a"] * 20 + ratios["b"] * 30) / 50, 2)
        0.5
    """
    density = check_float("zo_grasp_ratios", "density", density, low=0.0, high=1.0, low_open=True)
    q = check_int("zo_grasp_ratios", "q", q, low=1)
    mu = check_float("zo_grasp_ratios", "mu", mu, low=0.0, low_open=True)
    delta = check_float("zo_grasp_ratios", "delta", delta, low=0.0, low_open=True)
    gen = generator if generator is not None else torch.Generator().manual_seed(int(torch.initial_seed() % 2**63))
    state = gen.get_state()
    g, _, _ = rge_gradient(loss_fn, params, q=q, mu=mu, generator=gen)
    gen.set_state(state)  # the same directions at the shifted point
    shifted = {n: p + delta * g[n] for n, p in params.items()}
    g2, _, _ = rge_gradient(loss_fn, shifted, q=q, mu=mu, generator=gen)
    scores = torch.cat([(-params[n] * (g2[n] - g[n]) / delta).reshape(-1) for n in params])
    total = scores.numel()
    keep = max(1, math.ceil(density * total - 1e-9))
    kept = torch.zeros(total, dtype=torch.bool)
    kept[torch.argsort(scores.to(torch.float64).cpu(), stable=True)[:keep]] = True
    out, start = {}, 0
    for name, p in params.items():
        n = p.numel()
        out[name] = float(kept[start : start + n].float().mean())
        start += n
    return out
