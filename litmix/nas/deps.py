"""DεpS: delayed ε-shrinking of a Once-for-All supernet's sampled space (the schedule functions).

Sahni et al., "Delayed ε-Shrinking for Faster Once-For-All Training", https://arxiv.org/abs/2407.06167. Used by
:class:`litmix.callbacks.ShrinkingSchedule` together with :func:`litmix.nas.ofa.ofa_progressive_bounds`.
"""

from __future__ import annotations

__all__ = ["deps_subnet_lr_scale", "deps_width_lower_bound"]


def deps_width_lower_bound(
    progress: float, start_frac: float = 0.5, grow_frac: float = 0.25, min_ratio: float = 0.25
) -> float:
    """Smallest elastic width ratio that may be sampled at training ``progress`` (DεpS delayed shrinking).

    Before ``start_frac`` only the full model (ratio 1) is trained (DεpS "FM-Warmup": shrinking starts when the
    full model is about half trained); from there the lower bound decreases linearly and reaches ``min_ratio``
    after a further ``grow_frac`` of training, so the sampled space grows gradually and monotonically.
    ``grow_frac = 0`` opens the whole space at once (BigNAS-style sampling with ``start_frac = 0``).

    Args:
        progress: fraction of training done, clamped to ``[0, 1]``.
        start_frac: when shrinking starts, in ``[0, 1]``.
        grow_frac: fraction of training over which the space grows to full size, >= 0.
        min_ratio: the space's smallest width ratio, in ``(0, 1]``.

    Raises:
        ValueError: for arguments out of range.

    Example:
        >>> [round(deps_width_lower_bound(p), 3) for p in (0.0, 0.49, 0.5, 0.625, 0.75, 1.0)]
        [1.0, 1.0, 1.0, 0.625, 0.25, 0.25]
    """
    if not 0.0 <= start_frac <= 1.0 or grow_frac < 0 or not 0.0 < min_ratio <= 1.0:
        raise ValueError(
            f"deps_width_lower_bound(start_frac={start_frac}, grow_frac={grow_frac}, min_ratio={min_ratio}): need "
            "start_frac in [0, 1], grow_frac >= 0, min_ratio in (0, 1]"
        )
    p = min(max(float(progress), 0.0), 1.0)
    if p < start_frac:
        return 1.0
    if grow_frac == 0:
        return min_ratio
    frac = min((p - start_frac) / grow_frac, 1.0)
    return 1.0 - (1.0 - min_ratio) * frac


def deps_subnet_lr_scale(
    progress: float, start_frac: float = 0.5, eps_frac: float = 0.25, eps_start: float = 0.1
) -> float:
    """DεpS ε-shrinking: the subnets' learning-rate factor ramps linearly from ``eps_start`` to 1.

    Zero before ``start_frac`` (no subnets are trained), ``eps_start`` when shrinking starts, 1 after a
    further ``eps_frac`` of training, so smaller subnets do not disturb the partially trained full model.

    Args:
        progress: fraction of training done, clamped to ``[0, 1]``.
        start_frac: when shrinking starts, in ``[0, 1]``.
        eps_frac: length of the ramp as a fraction of training, >= 0 (0 = no ramp).
        eps_start: factor at the start of the ramp, in ``[0, 1]``.

    Raises:
        ValueError: for arguments out of range.

    Example:
        >>> [round(deps_subnet_lr_scale(p), 3) for p in (0.2, 0.5, 0.625, 0.9)]
        [0.0, 0.1, 0.55, 1.0]
    """
    if not 0.0 <= start_frac <= 1.0 or eps_frac < 0 or not 0.0 <= eps_start <= 1.0:
        raise ValueError(
            f"deps_subnet_lr_scale(start_frac={start_frac}, eps_frac={eps_frac}, eps_start={eps_start}): need "
            "start_frac and eps_start in [0, 1], eps_frac >= 0"
        )
    p = min(max(float(progress), 0.0), 1.0)
    if p < start_frac:
        return 0.0
    if eps_frac == 0:
        return 1.0
    return eps_start + (1.0 - eps_start) * min((p - start_frac) / eps_frac, 1.0)
