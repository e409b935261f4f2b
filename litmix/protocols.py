"""Protocols shared by litmix plugins."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
from torch import Tensor

__all__ = ["LossTermProvider"]


@runtime_checkable
class LossTermProvider(Protocol):
    """A callback that contributes a weighted term to the training loss.

    The total loss of a step is ``prod(p.task_loss_scale) * task_loss + sum(p.loss_term_weight * term_p)``
    over every provider in ``trainer.callbacks`` (see :func:`litmix.loss_terms.apply_loss_terms`). litmix's
    own providers subclass :class:`litmix.loss_terms.LossTermCallback`, which logs the term cheaply.

    Attributes:
        log_prefix: prefix under which the term is logged (``<log_prefix>/loss``).
        loss_term_weight: factor applied to the term.
        task_loss_scale: factor applied to the module's own loss (1.0 leaves it unchanged).
    """

    loss_term_weight: float
    task_loss_scale: float

    @property
    def log_prefix(self) -> str:
        """Prefix under which the term is logged."""
        ...

    def loss_term(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, outputs: Any
    ) -> Tensor | None:
        """The unweighted term for this step, or ``None`` to add nothing."""
        ...
