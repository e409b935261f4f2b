"""Run-length helpers shared by the NAS and proxy plugins: training progress and the per-step cosine schedule.

Both read the run's length from ``trainer.estimated_stepping_batches`` (Lightning's count of optimizer steps,
accounting for ``max_steps``, ``max_epochs``, ``limit_train_batches``, gradient accumulation and DDP sharding).
When that count is unknown (an infinite run or a dataloader without length) they fall back to epochs when
``max_epochs`` is set, and otherwise raise a ``ValueError`` that names the plugin and what to set.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch

__all__ = ["cosine_lr_scheduler", "training_progress"]


def _unknown_length(owner: str, trainer: pl.Trainer, what: str) -> ValueError:
    return ValueError(
        f"{owner}: {what} needs the run's length, but Trainer(max_steps={trainer.max_steps}, "
        f"max_epochs={trainer.max_epochs}) with this dataloader gives an unknown number of steps; set max_steps "
        "or max_epochs (with a dataloader that has a length)"
    )


def training_progress(trainer: pl.Trainer, owner: str = "litmix", epoch_end: bool = False) -> float:
    """Fraction of the run done, in ``[0, 1]``: ``global_step / estimated_stepping_batches``.

    When the step count is unknown, ``(current_epoch [+ 1 at an epoch end]) / max_epochs``.

    Args:
        trainer: the running Trainer.
        owner: name used in the error message.
        epoch_end: called at the end of an epoch (the epoch fallback then counts the current epoch as done).

    Raises:
        ValueError: when neither the step count nor ``max_epochs`` is known.

    Example:
        >>> from types import SimpleNamespace
        >>> training_progress(SimpleNamespace(estimated_stepping_batches=8, global_step=2, max_epochs=2))
        0.25
        >>> stub = SimpleNamespace(estimated_stepping_batches=float("inf"), current_epoch=0, max_epochs=4, max_steps=-1)
        >>> training_progress(stub, epoch_end=True)
        0.25
    """
    total = trainer.estimated_stepping_batches
    if math.isfinite(total) and total > 0:
        return min(max(trainer.global_step / total, 0.0), 1.0)
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs > 0:
        return min((trainer.current_epoch + (1 if epoch_end else 0)) / max_epochs, 1.0)
    raise _unknown_length(owner, trainer, "its schedule")


def cosine_lr_scheduler(optimizer: torch.optim.Optimizer, trainer: pl.Trainer, owner: str = "litmix") -> dict[str, Any]:
    """The ``lr_scheduler`` entry of ``configure_optimizers`` for a cosine decay to 0 over the run.

    :class:`torch.optim.lr_scheduler.CosineAnnealingLR` stepped every optimizer step, with ``T_max =
    trainer.estimated_stepping_batches``; when the step count is unknown but ``max_epochs`` is set, stepped per
    epoch with ``T_max = max_epochs``.

    Args:
        optimizer: the optimizer to schedule.
        trainer: the Trainer (``self.trainer`` inside ``configure_optimizers``).
        owner: name used in the error message.

    Raises:
        ValueError: when neither the step count nor ``max_epochs`` is known.

    Example:
        >>> from types import SimpleNamespace
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = cosine_lr_scheduler(opt, SimpleNamespace(estimated_stepping_batches=4))
        >>> sched["interval"], sched["scheduler"].T_max
        ('step', 4)
        >>> endless = SimpleNamespace(estimated_stepping_batches=float("inf"), max_epochs=-1, max_steps=-1)
        >>> cosine_lr_scheduler(opt, endless, "ParZCPredictor")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ParZCPredictor: a cosine learning-rate schedule needs the run's length, but Trainer(...
    """
    total = trainer.estimated_stepping_batches
    if math.isfinite(total) and total > 0:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(total))
        return {"scheduler": sched, "interval": "step"}
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs > 0:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(max_epochs))
        return {"scheduler": sched, "interval": "epoch"}
    raise _unknown_length(owner, trainer, "a cosine learning-rate schedule")
