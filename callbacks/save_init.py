"""Save a module's initial weights theta_0 at fit start (needed by LeBeD)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from litmix.base import LitmixCallback
from litmix.registry import register

_PAPER = "Online GNN Evaluation Under Test-time Graph Distribution Shifts (https://arxiv.org/abs/2403.09953)"


@register("callback", "proxy", paper=_PAPER)
class SaveInitCallback(LitmixCallback):
    """Record the module's initial parameters theta_0 once, at the start of the first fit.

    LeBeD (Zheng et al., "Online GNN Evaluation Under Test-time Graph Distribution Shifts", ICLR 2024,
    https://arxiv.org/abs/2403.09953) re-trains the model from the *same* initialisation on a test graph and
    scores the parameter distance; :func:`litmix.functional.graph_proxies.lebed_score` takes
    :attr:`init_state`. The copy is taken in ``on_fit_start`` (after DDP has broadcast rank 0's weights, so
    every rank holds the same theta_0), kept on CPU, stored in the callback checkpoint state (a resumed run
    keeps the original theta_0 instead of the resumed weights) and, when ``path`` is given, written there
    with ``torch.save`` by global rank 0.

    Args:
        path: optional file to write theta_0 to.
        name: optional instance name (unique checkpoint key).

    Raises:
        TypeError: if ``path`` is neither ``None`` nor a string.

    Example:
        >>> from litmix.testing import TinyClassifier, fit_tiny
        >>> module, cb = TinyClassifier(), SaveInitCallback()
        >>> before = {k: v.clone() for k, v in module.state_dict().items()}
        >>> _ = fit_tiny([cb], module=module, max_steps=2)
        >>> all(torch.equal(before[k], cb.init_state[k]) for k in before)
        True
    """

    family = "proxy"

    def __init__(self, path: str | None = None, name: str | None = None) -> None:
        super().__init__(name=name)
        if path is not None and not isinstance(path, str):
            raise TypeError(f"SaveInitCallback(path={path!r}): path must be a string or None")
        self.path = path
        self.init_state: dict[str, Tensor] | None = None

    @classmethod
    def example(cls) -> SaveInitCallback:
        """No file output."""
        return cls()

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
        self.init_state = state_dict.get("init_state")
