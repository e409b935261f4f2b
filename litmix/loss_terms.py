"""Adding loss terms from callbacks to any LightningModule.

Lightning has no loss hook, so litmix supports exactly one of two mechanisms per run:

1. **Protocol** -- a module that sets the class attribute ``collects_loss_terms = True`` calls
   :func:`apply_loss_terms` on its loss inside ``training_step`` (required under manual optimization,
   before ``manual_backward``).
2. **Wrapping** -- for every other module, the first :class:`LossTermCallback` to run ``setup`` replaces
   ``pl_module.training_step`` by an instance attribute that calls the original and then
   :func:`apply_loss_terms`. One wrapper serves all providers, so every term is counted exactly once, and
   ``teardown`` removes it.
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from litmix.base import LitmixCallback
from litmix.protocols import LossTermProvider

_WRAPPED_ATTR = "_litmix_loss_wrapper"


def loss_term_providers(trainer: pl.Trainer) -> list[LossTermProvider]:
    """The callbacks of ``trainer`` that contribute loss terms, in callback order."""
    return [cb for cb in trainer.callbacks if isinstance(cb, LossTermProvider)]  # type: ignore[attr-defined]


def apply_loss_terms(
    trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, output: Any
) -> Any:
    """Return ``output`` with every provider's weighted term added to its loss.

    Args:
        trainer: the running trainer (its callbacks are the providers).
        pl_module: the module being trained; terms are logged through it as ``<name>/loss``.
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
    total = loss * math.prod(p.task_loss_scale for p in providers)
    for provider in providers:
        term = provider.loss_term(trainer, pl_module, batch, batch_idx, output)
        if term is None:
            continue
        pl_module.log(f"{provider.loss_term_name}/loss", term.detach(), on_step=True, on_epoch=True)
        total = total + provider.loss_term_weight * term
    if isinstance(output, Tensor):
        return total
    return {**output, "loss": total}


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


class LossTermCallback(LitmixCallback):
    """Base class of callbacks that add a term to the training loss.

    Subclasses set ``loss_term_name`` and implement :meth:`loss_term`. ``setup`` checks the module can take
    the term and installs the shared wrapper; ``teardown`` removes it.
    """

    modifies_loss: ClassVar[bool] = True
    loss_term_name: str = "loss_term"
    loss_term_weight: float = 1.0
    task_loss_scale: float = 1.0

    def loss_term(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, outputs: Any
    ) -> Tensor | None:
        """The unweighted term for this step (``None`` adds nothing)."""
        raise NotImplementedError

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the optimization mode and install the loss wrapper for ``fit``."""
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
        install_loss_wrapper(pl_module, trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the loss wrapper."""
        remove_loss_wrapper(pl_module)
