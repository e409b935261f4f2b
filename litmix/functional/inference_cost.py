"""Idealised runtime of autoregressive generation: profile a (prompt, output) grid and fit a cost model.

Narayanan et al., "Cheaply Evaluating Inference Efficiency Metrics for Autoregressive Transformer APIs"
(NeurIPS 2023, https://arxiv.org/abs/2305.02440). Runtime of one query with ``p`` prompt tokens and ``o``
generated tokens is modelled as ``runtime(p, o) = f(p) + g * (o - 1)``: ``f`` (prompt encoding plus the
first output token) is piecewise linear in ``p`` and ``g`` is the time per further output token. Repeated
measurements are reduced to their minimum (the lower envelope: the run least disturbed by contention)
before the least-squares fit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CostModel", "fit_cost_model", "profile_grid"]


@dataclass(frozen=True)
class CostModel:
    """Fitted ``runtime(p, o) = intercept + slope * p + sum_k hinge_k * max(0, p - knot_k) + g * (o - 1)``.

    Attributes:
        intercept: ``f(0)`` in seconds.
        prompt_slope: seconds per prompt token below the first knot.
        knots: prompt lengths where the slope of ``f`` may change.
        hinge_slopes: slope changes at the knots (seconds per token).
        per_token: ``g``, seconds per generated token after the first.
        r2: coefficient of determination of the fit on the (reduced) measurements.
    """

    intercept: float
    prompt_slope: float
    knots: tuple[float, ...]
    hinge_slopes: tuple[float, ...]
    per_token: float
    r2: float

    def prompt_cost(self, p: float) -> float:
        """``f(p)``: seconds to encode a prompt of ``p`` tokens and emit the first output token."""
        hinge = sum(s * max(0.0, p - k) for s, k in zip(self.hinge_slopes, self.knots, strict=True))
        return self.intercept + self.prompt_slope * p + hinge

    def runtime(self, p: float, o: float) -> float:
        """Idealised runtime in seconds of a query with ``p`` prompt and ``o >= 1`` output tokens."""
        return self.prompt_cost(p) + self.per_token * (o - 1)


def _design(p: Tensor, o: Tensor, knots: Sequence[float]) -> Tensor:
    cols = [torch.ones_like(p), p, *[(p - k).clamp_min(0) for k in knots], o - 1]
    return torch.stack(cols, dim=1)


def fit_cost_model(
    prompt_lengths: Tensor,
    output_lengths: Tensor,
    runtimes: Tensor,
    knots: Sequence[float] = (),
    envelope: bool = True,
) -> CostModel:
    """Least-squares fit of ``runtime(p, o) = f(p) + g (o - 1)`` with ``f`` piecewise linear.

    Args:
        prompt_lengths: ``(n,)`` prompt lengths ``p``.
        output_lengths: ``(n,)`` output lengths ``o >= 1``.
        runtimes: ``(n,)`` measured seconds.
        knots: prompt lengths where ``f`` may change slope (empty: ``f`` linear).
        envelope: reduce repeated ``(p, o)`` measurements to their minimum before fitting.

    Returns:
        The fitted :class:`CostModel`.

    Raises:
        ValueError: for mismatched shapes, ``o < 1``, or fewer distinct grid points than parameters.

    Example:
        >>> p = torch.tensor([8.0, 8, 64, 64, 128, 128])
        >>> o = torch.tensor([1.0, 9, 1, 9, 1, 9])
        >>> t = 0.01 + 0.001 * p + 0.005 * (o - 1)
        >>> m = fit_cost_model(p, o, t)
        >>> round(m.per_token, 6), round(m.prompt_slope, 6), round(m.intercept, 6)
        (0.005, 0.001, 0.01)
    """
    p, o, t = (torch.as_tensor(v, dtype=torch.float64).flatten() for v in (prompt_lengths, output_lengths, runtimes))
    if not p.shape == o.shape == t.shape:
        raise ValueError(f"fit_cost_model: shapes differ: {tuple(p.shape)}, {tuple(o.shape)}, {tuple(t.shape)}")
    if bool((o < 1).any()):
        raise ValueError("fit_cost_model: output_lengths must be >= 1")
    if envelope:
        keys = torch.stack([p, o], 1)
        uniq, inv = torch.unique(keys, dim=0, return_inverse=True)
        tmin = torch.full((len(uniq),), float("inf"), dtype=torch.float64).scatter_reduce(0, inv, t, reduce="amin")
        p, o, t = uniq[:, 0], uniq[:, 1], tmin
    design = _design(p, o, knots)
    if len(torch.unique(torch.stack([p, o], 1), dim=0)) < design.shape[1]:
        raise ValueError(
            f"fit_cost_model: need at least {design.shape[1]} distinct (p, o) points for {len(knots)} knots"
        )
    coef = torch.linalg.lstsq(design, t.unsqueeze(1)).solution.squeeze(1)
    resid = t - design @ coef
    ss_tot = float(((t - t.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    c = coef.tolist()
    return CostModel(
        intercept=c[0],
        prompt_slope=c[1],
        knots=tuple(float(k) for k in knots),
        hinge_slopes=tuple(c[2:-1]),
        per_token=c[-1],
        r2=r2,
    )


def profile_grid(
    generate: Callable[[int, int], object],
    prompt_lengths: Sequence[int],
    output_lengths: Sequence[int],
    repeats: int = 3,
    warmup: int = 1,
) -> tuple[Tensor, Tensor, Tensor]:
    """Time ``generate(p, o)`` on every grid point ``repeats`` times (interleaved, after ``warmup`` calls).

    Args:
        generate: runs one query with prompt length ``p`` and ``o`` output tokens.
        prompt_lengths: grid of ``p``.
        output_lengths: grid of ``o`` (each >= 1).
        repeats: measurements per grid point (>= 1).
        warmup: untimed calls on the first grid point.

    Returns:
        ``(p, o, seconds)`` as float64 tensors of length ``len(P) * len(O) * repeats``.

    Example:
        >>> p, o, t = profile_grid(lambda p, o: None, [1, 2], [1, 3], repeats=2)
        >>> p.tolist(), o.tolist(), bool((t >= 0).all())
        ([1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0], [1.0, 3.0, 1.0, 3.0, 1.0, 3.0, 1.0, 3.0], True)
    """
    if repeats < 1:
        raise ValueError(f"profile_grid(repeats={repeats}): repeats must be >= 1")
    for _ in range(warmup):
        generate(prompt_lengths[0], output_lengths[0])
    ps, os_, ts = [], [], []
    for _ in range(repeats):  # interleave repeats so slow phases of the machine hit every grid point alike
        for p in prompt_lengths:
            for o in output_lengths:
                start = time.perf_counter()
                generate(p, o)
                ts.append(time.perf_counter() - start)
                ps.append(float(p))
                os_.append(float(o))
    as64 = torch.float64
    return torch.tensor(ps, dtype=as64), torch.tensor(os_, dtype=as64), torch.tensor(ts, dtype=as64)
