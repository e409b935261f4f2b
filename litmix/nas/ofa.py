"""Once-for-All: the elastic choices allowed under progressive shrinking (depth, then width).

Cai et al., "Once-for-All: Train One Network and Specialize it for Efficient Deployment",
https://arxiv.org/abs/1908.09791. Used by :class:`litmix.plugins.OFASupernetModule` and
:class:`litmix.callbacks.ShrinkingSchedule`; BN re-calibration is :func:`litmix.nas.evaluation.recalibrate_bn`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["depth_choices_allowed", "ofa_progressive_bounds", "width_choices_allowed"]


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
