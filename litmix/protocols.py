"""Protocols and capability flags shared by every litmix plugin."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
from torch import Tensor


@runtime_checkable
class LossTermProvider(Protocol):
    """A callback that contributes a weighted term to the training loss.

    The total loss of a step is ``prod(p.task_loss_scale) * task_loss + sum(p.loss_term_weight * term_p)``
    over every provider in ``trainer.callbacks`` (see :func:`litmix.loss_terms.apply_loss_terms`).

    Attributes:
        loss_term_name: prefix under which the term is logged (``<name>/loss``).
        loss_term_weight: factor applied to the term.
        task_loss_scale: factor applied to the module's own loss (1.0 leaves it unchanged).
    """

    loss_term_name: str
    loss_term_weight: float
    task_loss_scale: float

    def loss_term(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, outputs: Any
    ) -> Tensor | None:
        """The unweighted term for this step, or ``None`` to add nothing."""
        ...
