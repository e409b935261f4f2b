"""Save a module's initial weights theta_0 at fit start (needed by LeBeD)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import Tensor

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example, LitmixCallback
from litmix.registry import register
from litmix.validation import check_path

_PAPER = "Online GNN Evaluation Under Test-time Graph Distribution Shifts (https://arxiv.org/abs/2403.09953)"


@register("callback", "proxy", paper=_PAPER)
class SaveInit(LitmixCallback):
    """Record the module's initial parameters theta_0 once, at the start of the first fit.

    LeBeD (Zheng et al., "Online GNN Evaluation Under Test-time Graph Distribution Shifts", ICLR 2024,
    https://arxiv.org/abs/2403.09953) re-trains the model from the *same* initialisation on a test graph and
    scores the parameter distance; :func:`litmix.functional.graph_proxies.lebed_score` takes
    :attr:`init_state`. The copy is taken in ``on_fit_start`` (after DDP has broadcast rank 0's weights, so
    every rank holds the same theta_0), kept on CPU, stored in the callback checkpoint state (a resumed run
    keeps the original theta_0 instead of the resumed weights) and, when ``path`` is given, written there
    with ``torch.save`` by global rank 0. It logs nothing.

    Sharded strategies are refused in ``setup``: theta_0 is a copy of whole parameters, which FSDP and
    DeepSpeed split across ranks; use DDP.

    Args:
        path: optional file to write theta_0 to (``str`` or ``os.PathLike``; its folder is created).
        name: optional instance name (unique checkpoint key).

    Raises:
        TypeError: if ``path`` is neither ``None`` nor a path, or ``name`` is not a string.
        ValueError: for an empty ``path`` or ``name``.
        MisconfigurationException: in ``setup`` under ``strategy="fsdp"`` or DeepSpeed.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, (cb,) = SaveInit.example()
        >>> before = {k: v.clone() for k, v in module.state_dict().items()}
        >>> _ = fit_tiny([cb], module=module, datamodule=datamodule, max_steps=2)
        >>> all(torch.equal(before[k], cb.init_state[k]) for k in before)
        True
    """

    default_log_prefix: ClassVar[str] = "save_init"

    def __init__(self, path: str | os.PathLike[str] | None = None, name: str | None = None) -> None:
        super().__init__(name=name)
        owner = type(self).__name__
        check_path(owner, "path", path, must_exist=False, allow_none=True)
        if path is not None and not str(path).strip():
            raise ValueError(f"{owner}(path={path!r}): path must be a non-empty path or None")
        self.path: str | None = None if path is None else str(path)
        self.init_state: dict[str, Tensor] | None = None

    def _state_key_fields(self) -> dict[str, Any]:
        """Two unnamed instances writing to different files are different instances."""
        return {} if self.path is None else {"path": self.path}

    @classmethod
    def example(cls) -> Example:
        """No file output, on :class:`litmix.testing.TinyClassifier` and ``TinyDataModule``."""
        from litmix.testing import TinyClassifier, TinyDataModule

        return Example(TinyClassifier(), TinyDataModule(), [cls()])

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check state keys; refuse sharded strategies (theta_0 is a copy of whole parameters)."""
        super().setup(trainer, pl_module, stage)
        refuse_sharded_strategy(
            type(self).__name__, trainer.strategy, "theta_0 is a copy of whole parameters, which it shards"
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Copy the weights unless a theta_0 was already restored from a checkpoint."""
        if self.init_state is None:
            self.init_state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
            if self.path is not None and trainer.is_global_zero:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                torch.save(self.init_state, self.path)

    def state_dict(self) -> dict[str, Any]:
        """theta_0 (``None`` before the first fit)."""
        return {**super().state_dict(), "init_state": self.init_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore theta_0."""
        super().load_state_dict(state_dict)
        self.init_state = state_dict.get("init_state")
