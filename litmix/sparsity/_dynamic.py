"""The shell of the litmix pruners that hold a fixed budget and replace part of it periodically (private module).

:class:`DynamicMaskCallback` adds to :class:`~litmix.sparsity._callback.MaskedPruningCallback` what
:class:`~litmix.callbacks.DynamicSparseTraining` (RigL / SET) and :class:`~litmix.callbacks.SSVI` share: the update
schedule (every ``update_every`` optimizer steps until ``T_end``, resolved from ``end_step`` or ``end_fraction`` of
the run, at the cosine-decayed fraction of ``zeta``), the update made in ``on_before_optimizer_step`` while the
gradient is still dense, the update count and churn (logged with the sparsity, final count at the end) and the
checkpointed position and random generator. A subclass draws its initial masks and implements :meth:`_update`.

Unregistered (a ``_``-module), so that LightningCLI never offers the base itself as a callback.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from litmix.functional.sparsity import cosine_update_fraction
from litmix.sparsity._callback import MaskedPruningCallback, sync_generator

__all__ = ["DynamicMaskCallback"]


class DynamicMaskCallback(MaskedPruningCallback):
    """Base of the fixed-budget pruners that drop and regrow part of their masks every ``update_every`` steps.

    Subclasses set :attr:`update_every`, :attr:`zeta`, :attr:`end_fraction`, :attr:`end_step` and :attr:`seed`
    (through ``__init__``), call :meth:`_reset_updates` when a fresh fit starts, and implement :meth:`_update_masks`
    (replacing :meth:`_update_fraction` of the kept entries), which :meth:`_finish_update` ends.
    """

    def __init__(
        self,
        *,
        update_every: int,
        zeta: float,
        end_fraction: float,
        end_step: int | None,
        seed: int,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.update_every: int = update_every
        self.zeta: float = zeta
        self.end_fraction: float = end_fraction
        self.end_step: int | None = end_step
        self.seed: int = seed
        # state (checkpointed)
        self.initialized: bool = False
        self.last_update_step: int = -1
        self.n_updates: int = 0
        self.last_churn: float = 0.0
        self._generator = torch.Generator().manual_seed(seed)
        # resolved at fit start
        self._t_end: int = 1

    @property
    def updates_enabled(self) -> bool:
        """Whether the masks are ever updated (``False``: no run length is needed)."""
        return True

    def _reset_updates(self) -> None:
        """A fresh fit: no update yet, the generator back at ``seed``."""
        self.initialized, self.last_update_step, self.n_updates, self.last_churn = False, -1, 0, 0.0
        self._generator = torch.Generator().manual_seed(self.seed)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Resolve ``T_end`` in optimizer steps.

        Raises:
            ValueError: when the run length is unknown and ``end_step`` is not given.
        """
        super().on_fit_start(trainer, pl_module)
        total = trainer.estimated_stepping_batches
        if self.end_step is not None:
            self._t_end = self.end_step
            return
        if self.updates_enabled and (total <= 0 or not math.isfinite(total)):
            raise ValueError(
                f"{type(self).__name__}(end_fraction={self.end_fraction}): the run length is unknown "
                f"(trainer.estimated_stepping_batches={total}); pass end_step or set max_steps/max_epochs"
            )
        self._t_end = max(1, round(self.end_fraction * total)) if math.isfinite(total) else 1

    def _is_update_step(self, step: int) -> bool:
        return (
            self.updates_enabled
            and 0 < step < self._t_end
            and step % self.update_every == 0
            and step > self.last_update_step
        )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """At update steps update the masks (rank 0, dense gradients), broadcast; then mask the gradients."""
        step = trainer.global_step
        if self._is_update_step(step):
            with torch.no_grad():
                self._update_masks(trainer, step)
        super().on_before_optimizer_step(trainer, pl_module, optimizer)

    def _update_fraction(self, step: int) -> float:
        """The fraction of the kept entries replaced at ``step``: ``zeta / 2 * (1 + cos(pi step / T_end))``."""
        return cosine_update_fraction(step, self._t_end, self.zeta)

    def _update_masks(self, trainer: pl.Trainer, step: int) -> None:
        """Replace :meth:`_update_fraction` of every mask's kept entries; end with :meth:`_finish_update`."""
        raise NotImplementedError

    def _finish_update(self, trainer: pl.Trainer, step: int, added: int, kept: int) -> None:
        """After ``engine.update``: rank 0's generator to every rank, churn ``added / kept``, the count, logging."""
        sync_generator(trainer, self._generator)
        self.last_churn = added / max(kept, 1)
        self.last_update_step = step
        self.n_updates += 1
        self._masks_changed()

    def _step_metrics(self) -> dict[str, float]:
        return {"churn": self.last_churn}

    def _final_metrics(self) -> dict[str, float]:
        return {"updates": float(self.n_updates)}

    # ------------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:
        """Update position, churn and the generator state (the masks follow at one bit per weight)."""
        return {
            "initialized": self.initialized,
            "last_update_step": self.last_update_step,
            "n_updates": self.n_updates,
            "last_churn": self.last_churn,
            "generator": self._generator.get_state(),
        }

    def _load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        self.initialized = bool(state_dict.get("initialized", False))
        self.last_update_step = int(state_dict.get("last_update_step", -1))
        self.n_updates = int(state_dict.get("n_updates", 0))
        self.last_churn = float(state_dict.get("last_churn", 0.0))
        if "generator" in state_dict:
            self._generator.set_state(state_dict["generator"])
