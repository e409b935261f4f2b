"""Once-for-All: the elastic choices allowed under progressive shrinking, elastic kernels and the subnet search.

Cai et al., "Once-for-All: Train One Network and Specialize it for Efficient Deployment",
https://arxiv.org/abs/1908.09791. Used by :class:`litmix.plugins.OFASupernetModule` and
:class:`litmix.callbacks.ShrinkingSchedule`; BN re-calibration is :func:`litmix.nas.evaluation.recalibrate_bn`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "PHASES",
    "constrained_evolution",
    "depth_choices_allowed",
    "ofa_progressive_bounds",
    "progressive_choices",
    "progressive_phase",
    "ridge_fit",
    "ridge_predict",
    "sliced_batch_norm",
    "transform_kernel",
    "width_choices_allowed",
]


def sliced_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor, channels: int) -> Tensor:
    """Batch norm of ``x`` with the first ``channels`` of ``bn``'s affine parameters and running statistics.

    An elastic layer of a once-for-all supernet uses the leading channels only; the running statistics of those
    channels are updated as ``bn`` itself would update them (momentum, or the cumulative average when
    ``momentum=None``).

    Example:
        >>> bn = nn.BatchNorm1d(4)
        >>> y = sliced_batch_norm(bn, torch.randn(8, 2), 2)
        >>> y.shape, int(bn.num_batches_tracked), bool(bn.running_mean[2:].eq(0).all())
        (torch.Size([8, 2]), 1, True)
    """
    factor = 0.0
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch = bn.training or bn.running_mean is None
    return nn.functional.batch_norm(
        x,
        None if bn.running_mean is None else bn.running_mean[:channels],
        None if bn.running_var is None else bn.running_var[:channels],
        None if bn.weight is None else bn.weight[:channels],
        None if bn.bias is None else bn.bias[:channels],
        use_batch,
        factor,
        bn.eps,
    )


def width_choices_allowed(choices: Sequence[float], lower_bound: float) -> list[float]:
    """Width ratios of ``choices`` not below ``lower_bound`` (at least the largest one).

    Example:
        >>> width_choices_allowed([0.25, 0.5, 0.75, 1.0], 0.6)
        [0.75, 1.0]
    """
    allowed = [c for c in sorted(choices) if c >= lower_bound - 1e-9]
    return allowed or [max(choices)]


def depth_choices_allowed(choices: Sequence[int], lower_bound: int) -> list[int]:
    """Depths of ``choices`` not below ``lower_bound`` (at least the largest one).

    Example:
        >>> depth_choices_allowed([2, 3, 4], 3)
        [3, 4]
    """
    allowed = [c for c in sorted(choices) if c >= lower_bound]
    return allowed or [max(choices)]


def ofa_progressive_bounds(
    progress: float,
    start_frac: float = 0.5,
    grow_frac: float = 0.25,
    min_ratio: float = 0.25,
    min_depth: int = 1,
    max_depth: int = 1,
    order: str = "progressive",
) -> tuple[int, float]:
    """``(depth_lower_bound, width_lower_bound)`` of Once-for-All progressive shrinking under a DεpS delay.

    OFA shrinks one dimension after the other: full -> kernel -> depth -> width ("expand"). Before
    ``start_frac`` only the full model is sampled (DεpS delay). With ``order="progressive"`` the growing window
    ``[start_frac, start_frac + grow_frac]`` is split in two equal halves when the depth is elastic
    (``min_depth < max_depth``): the depth bound falls from ``max_depth`` to ``min_depth`` in the first, then the
    width bound from 1 to ``min_ratio`` in the second (the whole window when the depth is fixed: exactly
    :func:`deps_width_lower_bound`). ``order="joint"`` opens both over the whole window. There is no kernel
    phase: the bounds serve MLP supernets, which have no kernels.

    Args:
        progress: fraction of training done, clamped to ``[0, 1]``.
        start_frac: when shrinking starts, in ``[0, 1]``.
        grow_frac: length of the growing window, >= 0 (0 opens everything at ``start_frac``).
        min_ratio: smallest width ratio, in ``(0, 1]``.
        min_depth: smallest depth, in ``[1, max_depth]``.
        max_depth: largest depth, >= 1.
        order: ``"progressive"`` (depth, then width) or ``"joint"``.

    Raises:
        ValueError: for arguments out of range or an unknown ``order``.

    Example:
        >>> bounds = [ofa_progressive_bounds(p, 0.5, 0.4, 0.25, 2, 4) for p in (0.4, 0.6, 0.8, 0.9)]
        >>> [(d, round(w, 3)) for d, w in bounds]
        [(4, 1.0), (3, 1.0), (2, 0.625), (2, 0.25)]
        >>> d, w = ofa_progressive_bounds(0.7, 0.5, 0.4, 0.25, 2, 4, order="joint"); d, round(w, 3)
        (3, 0.625)
    """
    if order not in ("progressive", "joint"):
        raise ValueError(f"ofa_progressive_bounds(order={order!r}): order must be 'progressive' or 'joint'")
    if not 1 <= min_depth <= max_depth:
        raise ValueError(f"ofa_progressive_bounds(min_depth={min_depth}, max_depth={max_depth}): need 1 <= min <= max")
    if not 0.0 <= start_frac <= 1.0 or grow_frac < 0 or not 0.0 < min_ratio <= 1.0:
        raise ValueError(
            f"ofa_progressive_bounds(start_frac={start_frac}, grow_frac={grow_frac}, min_ratio={min_ratio}): need "
            "start_frac in [0, 1], grow_frac >= 0, min_ratio in (0, 1]"
        )
    p = min(max(float(progress), 0.0), 1.0)

    def ramp(start: float, length: float) -> float:  # 0 before start, then linear to 1 over length
        if p < start_frac or p < start:
            return 0.0
        return 1.0 if length <= 0 else min((p - start) / length, 1.0)

    if min_depth == max_depth or order == "joint":
        depth_frac = width_frac = ramp(start_frac, grow_frac)
    else:
        half = grow_frac / 2.0
        depth_frac, width_frac = ramp(start_frac, half), ramp(start_frac + half, half)
    depth = max_depth - round(depth_frac * (max_depth - min_depth))
    return depth, 1.0 - (1.0 - min_ratio) * width_frac


# ---------------------------------------------------------------------------------------------------------
# Convolutional Once-for-All: progressive shrinking phases, elastic kernels, predictor and constrained search

PHASES = ("full", "kernel", "depth", "width")


def progressive_phase(progress: float, phase_fracs: Sequence[float]) -> tuple[str, float]:
    """The Once-for-All progressive-shrinking phase at ``progress`` and the fraction ``q`` of that phase done.

    Phases in order: ``full`` (largest network only), ``kernel`` (elastic kernel size), ``depth`` (elastic
    depth), ``width`` (elastic expand ratio); ``phase_fracs`` gives the lengths of the first three as fractions
    of the run, the width phase takes the rest.

    Args:
        progress: fraction of training done, clamped to ``[0, 1]``.
        phase_fracs: three non-negative fractions summing to at most 1.

    Raises:
        ValueError: for a wrong number of fractions, negative ones or a sum above 1.

    Example:
        >>> [progressive_phase(p, [0.25, 0.25, 0.25]) for p in (0.1, 0.3, 0.625, 0.9)]
        [('full', 0.4), ('kernel', 0.2), ('depth', 0.5), ('width', 0.6)]
    """
    fracs = [float(f) for f in phase_fracs]
    if len(fracs) != 3 or any(not f >= 0 for f in fracs) or sum(fracs) > 1 + 1e-9:
        raise ValueError(f"progressive_phase(phase_fracs={list(phase_fracs)}): need 3 fractions >= 0, sum <= 1")
    p = min(max(float(progress), 0.0), 1.0)
    lengths = [*fracs, max(1.0 - sum(fracs), 0.0)]
    start = 0.0
    for i, (name, length) in enumerate(zip(PHASES, lengths, strict=True)):
        last = all(rest <= 0 for rest in lengths[i + 1 :])
        if length > 0 and (p < start + length or last):
            return name, round(min((p - start) / length, 1.0), 12)
        start += length
    return PHASES[-1], 1.0


def progressive_choices(choices: Sequence[int], q: float, gradual: bool = True) -> list[int]:
    """The choices of an elastic dimension open at fraction ``q`` of its phase (largest first).

    Once-for-All opens elastic depth and width in two stages (e.g. depth {4, 3}, then {4, 3, 2}): with
    ``gradual=True`` the phase is cut into ``len(choices) - 1`` equal parts and each part opens one more choice;
    with ``gradual=False`` every choice is open (OFA's kernel phase).

    Example:
        >>> progressive_choices([1, 2, 3], 0.2), progressive_choices([1, 2, 3], 0.7)
        ([2, 3], [1, 2, 3])
        >>> progressive_choices([3, 5, 7], 0.0, gradual=False)
        [3, 5, 7]
    """
    ordered = sorted(choices, reverse=True)
    if not gradual or len(ordered) <= 2:
        return sorted(ordered)
    n = len(ordered) - 1
    count = 1 + min(n, int(min(max(q, 0.0), 1.0) * n) + 1)
    return sorted(ordered[:count])


def transform_kernel(weight: Tensor, kernel_size: int, matrices: dict[str, Tensor]) -> Tensor:
    """Once-for-All's elastic kernel: centre-crop ``weight`` step by step and apply the transformation matrices.

    ``weight`` is ``[C, 1, K, K]`` (depthwise); to reach a smaller size ``k`` the centre ``k' x k'`` of the
    current kernel is taken for each next smaller size ``k'`` and multiplied per channel by the matrix
    ``matrices[f"{big}to{small}"]`` (``[k'^2, k'^2]``, shared by the channels of the layer, identity at init):
    7 -> 5 -> 3 as in the paper.

    Raises:
        ValueError: for an unknown kernel size (no matrix chain reaches it).

    Example:
        >>> w = torch.arange(49.0).view(1, 1, 7, 7)
        >>> mats = {"7to5": torch.eye(25), "5to3": torch.eye(9)}
        >>> transform_kernel(w, 3, mats).flatten().tolist()
        [16.0, 17.0, 18.0, 23.0, 24.0, 25.0, 30.0, 31.0, 32.0]
    """
    current = int(weight.shape[-1])
    out = weight
    while current > kernel_size:
        key = next((k for k in matrices if k.startswith(f"{current}to")), None)
        if key is None:
            raise ValueError(f"transform_kernel: no matrix from kernel {current} (need {kernel_size})")
        small = int(key.split("to")[1])
        start = (current - small) // 2
        crop = out[:, :, start : start + small, start : start + small]
        c = crop.shape[0]
        out = nn.functional.linear(crop.reshape(c, small * small), matrices[key]).view(c, 1, small, small)
        current = small
    if current != kernel_size:
        raise ValueError(f"transform_kernel: kernel size {kernel_size} is not reachable from {weight.shape[-1]}")
    return out


def ridge_fit(features: Tensor, targets: Tensor, l2: float = 1e-2) -> Tensor:
    """Closed-form ridge regression with an intercept: weights ``[F + 1]`` (last entry: intercept).

    The accuracy predictor of the Once-for-All search (the paper uses an MLP; ridge on one-hot architecture
    encodings is enough for the small spaces here).

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [2.0]]); w = ridge_fit(x, 2 * x[:, 0] + 1, l2=0.0)
        >>> [round(v, 4) for v in w.tolist()]
        [2.0, 1.0]
    """
    x = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], dim=1)
    reg = torch.eye(x.shape[1], dtype=torch.float64) * l2
    reg[-1, -1] = 0.0
    return (torch.linalg.pinv(x.T @ x + reg) @ (x.T @ targets.double())).float()  # pinv: collinear one-hots


def ridge_predict(weights: Tensor, features: Tensor) -> Tensor:
    """Predictions of :func:`ridge_fit` weights.

    Example:
        >>> ridge_predict(torch.tensor([2.0, 1.0]), torch.tensor([[3.0]])).tolist()
        [7.0]
    """
    return features.float() @ weights[:-1] + weights[-1]


def constrained_evolution(
    sample: Callable[[torch.Generator], Any],
    mutate: Callable[[Any, torch.Generator], Any],
    crossover: Callable[[Any, Any, torch.Generator], Any],
    cost: Callable[[Any], float],
    score: Callable[[list[Any]], Tensor],
    budget: float,
    population: int = 64,
    generations: int = 20,
    parent_ratio: float = 0.25,
    mutation_ratio: float = 0.5,
    seed: int = 0,
    max_tries: int = 1000,
) -> tuple[Any, float]:
    """Once-for-All's evolutionary search: maximise ``score`` over candidates with ``cost <= budget``.

    Each generation keeps the best ``parent_ratio`` of the population and refills it with mutations and
    crossovers of parents (both re-drawn until they satisfy the budget, as OFA's ``EvolutionFinder``).

    Returns:
        ``(best candidate, its score)``.

    Raises:
        ValueError: when no candidate within the budget is found in ``max_tries`` samples.

    Example:
        >>> def draw(g):
        ...     return int(torch.randint(100, (1,), generator=g))
        >>> def mutate(c, g):
        ...     return min(99, max(0, c + int(torch.randint(-3, 4, (1,), generator=g))))
        >>> def score(cs):
        ...     return torch.tensor(cs, dtype=torch.float)  # bigger is better; cost = value
        >>> best, s = constrained_evolution(draw, mutate, lambda a, b, g: (a + b) // 2, float, score, budget=40)
        >>> best
        40
    """
    gen = torch.Generator().manual_seed(seed)

    def feasible(draw: Callable[[], Any]) -> Any:
        for _ in range(max_tries):
            cand = draw()
            if cost(cand) <= budget:
                return cand
        raise ValueError(f"constrained_evolution: no candidate within budget {budget} in {max_tries} tries")

    pop = [feasible(lambda: sample(gen)) for _ in range(population)]
    n_parents = max(1, round(parent_ratio * population))
    n_mutate = round(mutation_ratio * population)
    best, best_score = pop[0], float("-inf")
    for _ in range(generations + 1):
        scores = score(pop)
        order = torch.argsort(scores, descending=True, stable=True).tolist()
        if float(scores[order[0]]) > best_score:
            best, best_score = pop[order[0]], float(scores[order[0]])
        parents = [pop[i] for i in order[:n_parents]]

        def pick(parents: list[Any] = parents) -> Any:
            return parents[int(torch.randint(len(parents), (1,), generator=gen))]

        children = [feasible(lambda: mutate(pick(), gen)) for _ in range(n_mutate)]
        children += [feasible(lambda: crossover(pick(), pick(), gen)) for _ in range(population - n_parents - n_mutate)]
        pop = parents + children
    return best, best_score
