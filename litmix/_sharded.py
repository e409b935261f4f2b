"""Refusing sharded strategies (FSDP, DeepSpeed) in plugins whose per-parameter state assumes whole parameters.

Private helper of the unlearning and proxy plugins (``UnlearningModule``, ``InferenceCost``, ``SaveInit``);
a candidate for :mod:`litmix.base` so every plugin refuses with the same words.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

__all__ = ["SHARDED_STRATEGIES", "refuse_sharded_strategy"]

#: Lightning strategies that shard parameters across ranks.
SHARDED_STRATEGIES: tuple[type, ...] = (FSDPStrategy, DeepSpeedStrategy)


def refuse_sharded_strategy(owner: str, strategy: Any, why: str, instead: str = "strategy='ddp'") -> None:
    """Raise when ``strategy`` shards parameters (FSDP, DeepSpeed), naming it, the reason and what to use.

    Raises:
        MisconfigurationException: for an ``FSDPStrategy`` or ``DeepSpeedStrategy`` (or a subclass).

    Example:
        >>> refuse_sharded_strategy("SaveInit", object(), "theta_0 is a full copy")  # not sharded: no error
        >>> refuse_sharded_strategy("SaveInit", FSDPStrategy(), "theta_0 is a full copy")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning...MisconfigurationException: SaveInit does not support Trainer(strategy=FSDPStrategy): ...
    """
    if isinstance(strategy, SHARDED_STRATEGIES):
        raise MisconfigurationException(
            f"{owner} does not support Trainer(strategy={type(strategy).__name__}): {why}; "
            f"use {instead} (or a single device)"
        )
