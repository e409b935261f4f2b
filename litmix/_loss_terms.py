"""Implementation of :mod:`litmix.loss_terms` (import from there; its docstring describes the mechanism).

The base class lives in a ``_``-module so that LightningCLI never offers it as a selectable callback.
"""

from __future__ import annotations

import functools
import math
import weakref
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from litmix.base import LitmixCallback
from litmix.protocols import LossTermProvider

__all__ = ["LossTermCallback", "apply_loss_terms", "install_loss_wrapper", "loss_term_providers", "remove_loss_wrapper"]

_WRAPPED_ATTR = "_litmix_loss_wrapper"
_MAX_WINDOW = 1024  # flush at least this often even when step logging is off
# trainer -> (the callbacks list it was computed from, its length, the providers): the providers are looked up
# once per fit instead of one runtime Protocol check per callback and step.
_PROVIDERS: weakref.WeakKeyDictionary[pl.Trainer, tuple[list[Any], int, list[LossTermProvider]]] = (
    weakref.WeakKeyDictionary()
)


def loss_term_providers(trainer: pl.Trainer) -> list[LossTermProvider]:
    """The callbacks of ``trainer`` that contribute loss terms, in callback order (cached per trainer)."""
    callbacks = trainer.callbacks  # type: ignore[attr-defined]
    cached = _PROVIDERS.get(trainer)
    if cached is not None and cached[0] is callbacks and cached[1] == len(callbacks):
        return cached[2]
    providers = [cb for cb in callbacks if isinstance(cb, LossTermProvider)]
    _PROVIDERS[trainer] = (callbacks, len(callbacks), providers)
    return providers


def apply_loss_terms(
    trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, output: Any
) -> Any:
    """Return ``output`` with every provider's weighted term added to its loss.

    The total is ``prod(p.task_loss_scale) * loss + sum(p.loss_term_weight * term_p)``. Terms of
    :class:`LossTermCallback` providers are recorded for the cheap window logging described in the module
    docstring; other :class:`~litmix.protocols.LossTermProvider` objects are logged with a per-step
    ``pl_module.log(f"{p.log_prefix}/loss", on_step=True, on_epoch=True)``.

    Args:
        trainer: the running trainer (its callbacks are the providers).
        pl_module: the module being trained.
        batch: the training batch.
        batch_idx: its index.
        output: what ``training_step`` returned: a loss tensor, a dict with ``"loss"``, or ``None``.

    Returns:
        The same kind of object with the combined loss.

    Raises:
        TypeError: if ``output`` is neither a tensor, a dict with ``"loss"`` nor ``None``.
    """
    if output is None:
        return None
    providers = loss_term_providers(trainer)
    if not providers:
        return output
    if isinstance(output, Tensor):
        loss = output
    elif isinstance(output, dict) and "loss" in output:
        loss = output["loss"]
    else:
        raise TypeError(
            "litmix loss terms need training_step to return a loss tensor or a dict with a 'loss' key, "
            f"got {type(output).__name__}"
        )
    scale = math.prod(p.task_loss_scale for p in providers)
    if (
        len(providers) == 1
        and 0.0 < providers[0].loss_term_weight < 1.0
        and scale == 1.0 - providers[0].loss_term_weight
    ):
        # (1 - w) * loss + w * term as one kernel (one autograd node): the usual distillation mix
        term = _term(providers[0], trainer, pl_module, batch, batch_idx, output)
        if term is None:
            total = loss * scale
        elif term.dtype == loss.dtype and term.shape == loss.shape:
            total = torch.lerp(loss, term, providers[0].loss_term_weight)
        else:
            total = torch.add(loss * scale, term, alpha=providers[0].loss_term_weight)
    else:
        total = loss if scale == 1.0 else loss * scale
        for provider in providers:
            term = _term(provider, trainer, pl_module, batch, batch_idx, output)
            weight = provider.loss_term_weight
            if term is None or weight == 0.0:
                continue
            total = total + term if weight == 1.0 else torch.add(total, term, alpha=weight)
    if isinstance(output, Tensor):
        return total
    return {**output, "loss": total}


def _term(
    provider: LossTermProvider,
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    batch: Any,
    batch_idx: int,
    output: Any,
) -> Tensor | None:
    """The provider's term of this step, recorded for logging."""
    term = provider.loss_term(trainer, pl_module, batch, batch_idx, output)
    if term is None:
        return None
    if isinstance(provider, LossTermCallback):
        provider._record_term(term, trainer.global_step)
    else:
        pl_module.log(f"{provider.log_prefix}/loss", term.detach(), on_step=True, on_epoch=True)
    return term


def install_loss_wrapper(pl_module: pl.LightningModule, trainer: pl.Trainer) -> None:
    """Wrap ``pl_module.training_step`` once so that it applies every provider's loss term."""
    if getattr(pl_module, "collects_loss_terms", False) or _WRAPPED_ATTR in pl_module.__dict__:
        return
    original = pl_module.training_step

    @functools.wraps(original)
    def training_step(*args: Any, **kwargs: Any) -> Any:
        output = original(*args, **kwargs)
        batch = args[0] if args else kwargs.get("batch")
        batch_idx = args[1] if len(args) > 1 else kwargs.get("batch_idx", 0)
        return apply_loss_terms(pl_module.trainer, pl_module, batch, batch_idx, output)

    pl_module.__dict__[_WRAPPED_ATTR] = True
    pl_module.training_step = training_step  # type: ignore[method-assign]


def remove_loss_wrapper(pl_module: pl.LightningModule) -> None:
    """Undo :func:`install_loss_wrapper` (idempotent)."""
    if pl_module.__dict__.pop(_WRAPPED_ATTR, None):
        pl_module.__dict__.pop("training_step", None)


def _logs_this_step(trainer: pl.Trainer) -> bool:
    """Whether Lightning writes step metrics to the loggers after the current batch (its own rule)."""
    try:
        n = trainer.log_every_n_steps  # type: ignore[attr-defined]
        if n and (trainer.fit_loop.epoch_loop._batches_that_stepped + 1) % n and not trainer.should_stop:  # type: ignore[attr-defined]
            return bool(trainer.fast_dev_run)  # type: ignore[attr-defined]  # cheap common case: not a logging step
        if trainer.fit_loop._should_accumulate() and trainer.lightning_module.automatic_optimization:
            return False
        return bool(trainer._logger_connector.should_update_logs or trainer.fast_dev_run)  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - private Lightning API moved: fall back to the public step count
        n = trainer.log_every_n_steps  # type: ignore[attr-defined]
        return bool(n) and trainer.global_step % n == 0


class LossTermCallback(LitmixCallback):
    """Base class of callbacks that add a term to the training loss.

    Subclasses implement :meth:`loss_term` and set ``loss_term_weight`` (factor of the term) and
    ``task_loss_scale`` (factor of the module's own loss) and ``default_log_prefix``. ``setup`` checks the
    module can take the term and installs the shared wrapper; ``teardown`` removes it. The term is logged as
    described in :mod:`litmix.loss_terms` under ``<log_prefix>/loss_step``, ``<log_prefix>/loss_epoch`` and
    ``<log_prefix>/loss``; a non-finite term stops the run with :class:`FloatingPointError`.

    Subclasses that override ``setup``, ``teardown``, ``on_train_epoch_start``, ``on_train_batch_end`` or
    ``on_train_epoch_end`` call ``super()``.
    """

    loss_term_weight: float = 1.0
    task_loss_scale: float = 1.0
    default_log_prefix: ClassVar[str] = "loss_term"

    def loss_term(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, outputs: Any
    ) -> Tensor | None:
        """The unweighted term for this step (``None`` adds nothing)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ cheap term logging

    def _term_state(self) -> dict[str, Any]:
        state: dict[str, Any] | None = self.__dict__.get("_litmix_terms")
        if state is None:
            state = {"window": [], "steps": [], "sum": None, "count": 0}
            self.__dict__["_litmix_terms"] = state
        return state

    def _reset_terms(self) -> None:
        self.__dict__["_litmix_terms"] = None

    def _record_term(self, term: Tensor, step: int) -> None:
        """Keep the detached term of this step for the next flush (no device op, no host sync)."""
        state = self._term_state()
        state["window"].append(term.detach())
        state["steps"].append(step)
        if len(state["window"]) >= _MAX_WINDOW:
            self._flush_terms()

    def _flush_terms(self) -> Tensor | None:
        """Fold the window into the epoch sum; raise on a non-finite term. Returns the window's last term."""
        state = self._term_state()
        window, steps = state["window"], state["steps"]
        if not window:
            return None
        values = torch.stack([w.reshape(()).float() for w in window])
        if not bool(torch.isfinite(values).all()):
            bad = int((~torch.isfinite(values)).nonzero()[0, 0])
            raise FloatingPointError(
                f"{type(self).__name__}(name={self.name!r}): the loss term {self.log_prefix}/loss is "
                f"{values[bad].item()} at global step {steps[bad]}; stopping the run. Check the plugin's inputs "
                "(teacher, model outputs) and its arguments."
            )
        total = values.sum()
        state["sum"] = total if state["sum"] is None else state["sum"] + total
        state["count"] += len(window)
        last = window[-1]
        state["window"], state["steps"] = [], []
        return last

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the epoch's term accumulation."""
        self._reset_terms()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """At Lightning's logging steps: check the window's terms and log ``<log_prefix>/loss_step``."""
        state = self.__dict__.get("_litmix_terms")
        if not state or not state["window"] or not _logs_this_step(trainer):
            return
        last = self._flush_terms()
        if last is not None:
            pl_module.log(f"{self.log_prefix}/loss_step", last, on_step=True, on_epoch=False, batch_size=1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check the last window and log the epoch mean of the term, reduced over all ranks."""
        state = self.__dict__.get("_litmix_terms")
        local = torch.zeros(2, dtype=torch.float64, device=pl_module.device)
        if state:
            self._flush_terms()
            if state["sum"] is not None:
                local[0] = state["sum"].to(torch.float64)
                local[1] = state["count"]
        self._reset_terms()
        totals = trainer.strategy.reduce(local, reduce_op="sum") if trainer.world_size > 1 else local
        if float(totals[1]) == 0:  # no term this epoch on any rank (the collective ran on every rank)
            return
        mean = (totals[0] / totals[1]).float()
        # sync_dist over values identical on every rank: no change, and no "use sync_dist" warning
        kwargs: dict[str, Any] = {
            "on_step": False,
            "on_epoch": True,
            "batch_size": 1,
            "sync_dist": trainer.world_size > 1,
        }
        pl_module.log(f"{self.log_prefix}/loss_epoch", mean, **kwargs)
        pl_module.log(f"{self.log_prefix}/loss", mean, logger=False, **kwargs)

    # ------------------------------------------------------------------ lifecycle

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the optimization mode and install the loss wrapper for ``fit``."""
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        collects = getattr(pl_module, "collects_loss_terms", False)
        if not pl_module.automatic_optimization and not collects:
            raise MisconfigurationException(
                f"{type(self).__name__} adds a loss term, which needs automatic optimization, but "
                f"{type(pl_module).__name__} uses manual optimization. Set `collects_loss_terms = True` on the "
                "module and pass its loss through `litmix.loss_terms.apply_loss_terms(...)` before "
                "`manual_backward`."
            )
        _PROVIDERS.pop(trainer, None)
        self._reset_terms()
        install_loss_wrapper(pl_module, trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the loss wrapper and drop the recorded terms."""
        remove_loss_wrapper(pl_module)
        _PROVIDERS.pop(trainer, None)
        self._reset_terms()
