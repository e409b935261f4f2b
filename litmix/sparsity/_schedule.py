"""The pruning schedule arguments shared by the scheduled pruners (``GradualPruning``, ``StructuredPruning``).

Both take ``start_fraction``/``end_fraction`` (of ``trainer.estimated_stepping_batches``), optional absolute
``start_step``/``end_step`` overriding them, and ``every_n_steps``: :func:`check_step_schedule` validates them in
the constructor, :func:`resolve_step_schedule` turns them into optimizer steps ``(t0, t1)`` when fit starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning.pytorch as pl

from litmix.validation import check_float, check_int

__all__ = ["check_step_schedule", "resolve_step_schedule"]


def check_step_schedule(
    owner: str,
    start_fraction: float,
    end_fraction: float,
    start_step: int | None,
    end_step: int | None,
    every_n_steps: int,
) -> tuple[float, float, int | None, int | None, int]:
    """Validate the schedule arguments; returns them checked, in the order given.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: ``start_fraction`` outside [0, 1), ``end_fraction`` outside (0, 1] or not above
            ``start_fraction``, ``start_step < 0``, ``end_step <= start_step`` (or < 1), ``every_n_steps < 1``.

    Example:
        >>> check_step_schedule("P", 0.0, 0.5, None, 10, 2)
        (0.0, 0.5, None, 10, 2)
    """
    start_fraction = check_float(owner, "start_fraction", start_fraction, low=0.0, high=1.0, high_open=True)
    end_fraction = check_float(owner, "end_fraction", end_fraction, low=0.0, high=1.0, low_open=True)
    if end_fraction <= start_fraction:
        raise ValueError(
            f"{owner}(start_fraction={start_fraction}, end_fraction={end_fraction}): start_fraction must be below "
            "end_fraction (pruning starts before it ends)"
        )
    start_step = check_int(owner, "start_step", start_step, low=0, allow_none=True)
    end_step = check_int(owner, "end_step", end_step, low=1 if start_step is None else start_step + 1, allow_none=True)
    every_n_steps = check_int(owner, "every_n_steps", every_n_steps, low=1)
    return start_fraction, end_fraction, start_step, end_step, every_n_steps


def resolve_step_schedule(
    owner: str,
    trainer: pl.Trainer,
    start_fraction: float,
    end_fraction: float,
    start_step: int | None,
    end_step: int | None,
    shortfall: Callable[[int], str] | None = None,
) -> tuple[int, int]:
    """The schedule's first and last optimizer steps ``(t0, t1)`` for this run (call it in ``on_fit_start``).

    Absolute steps win over fractions; a fraction-derived ``t1`` is capped at the run's last step.
    ``shortfall(last)`` may say what an unreachable ``start_step``/``end_step`` would cost (put in the error).

    Raises:
        ValueError: fractions with a run of unknown length, a ``start_step``/``end_step`` beyond the run's last
            optimizer step, or a schedule that does not end after it starts within the run (naming the argument,
            its value and the run length).
    """
    total = trainer.estimated_stepping_batches
    if total <= 0:  # an iterable dataset without max_steps: unknown
        total = math.inf
    if (start_step is None or end_step is None) and not math.isfinite(total):
        raise ValueError(
            f"{owner}(start_fraction={start_fraction}, end_fraction={end_fraction}): the run length is "
            f"unknown (trainer.estimated_stepping_batches={total}); pass start_step and end_step or set "
            "max_steps/max_epochs"
        )
    last = int(total) - 1 if math.isfinite(total) else None  # the last optimizer step the run makes
    for arg, value in (("start_step", start_step), ("end_step", end_step)):
        if value is not None and last is not None and value > last:
            cost = f", so {shortfall(last)}" if shortfall is not None else ""
            raise ValueError(
                f"{owner}({arg}={value}): the run makes only {int(total)} optimizer steps (0..{last}, "
                f"trainer.estimated_stepping_batches={int(total)}){cost}; pass {arg} <= {last} or lengthen the run"
            )
    t0 = start_step if start_step is not None else int(start_fraction * total)
    t1 = end_step if end_step is not None else max(min(round(end_fraction * total), int(total) - 1), t0 + 1)
    if t1 <= t0:
        raise ValueError(
            f"{owner}(end_step={end_step}): the schedule must end after it starts (start step {t0}, from "
            f"start_fraction={start_fraction} of {total} steps); pass a larger end_step or start_step"
        )
    if last is not None and t1 > last:  # t0 is the run's last step: no room to ramp
        raise ValueError(
            f"{owner}(start_step={start_step}, start_fraction={start_fraction}): the schedule starts at step {t0}, "
            f"the last of the {int(total)} optimizer steps the run makes, so it cannot end after it starts; start "
            "earlier or lengthen the run"
        )
    return t0, t1
