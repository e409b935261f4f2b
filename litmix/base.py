"""Common base class of litmix callbacks: per-instance state keys, capability flags, examples."""

from __future__ import annotations

from typing import Any, ClassVar

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback


class LitmixCallback(Callback):
    """Base of every litmix callback.

    Capability flags are class variables read by the contract tests; ``name`` makes the checkpoint state
    key unique so two instances of one class can live in the same Trainer.
    """

    family: ClassVar[str] = "core"
    modifies_loss: ClassVar[bool] = False
    modifies_structure: ClassVar[bool] = False
    requires_teacher: ClassVar[bool] = False
    state_version: ClassVar[int] = 1

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    @property
    def state_key(self) -> str:
        """Checkpoint key: the class name plus ``name`` when given."""
        return self._generate_state_key(name=self.name) if self.name else type(self).__qualname__

    @classmethod
    def example(cls) -> LitmixCallback:
        """A tiny CPU-fast instance used by the contract tests and the docs."""
        raise NotImplementedError(f"{cls.__name__}.example() is not implemented")

    @classmethod
    def example_module(cls) -> pl.LightningModule:
        """The module the contract tests fit this callback on."""
        from litmix.testing import TinyClassifier

        return TinyClassifier()

    @classmethod
    def example_datamodule(cls) -> pl.LightningDataModule:
        """The data the contract tests fit this callback on."""
        from litmix.testing import TinyDataModule

        return TinyDataModule()

    def state_dict(self) -> dict[str, Any]:
        """Checkpointed state; subclasses extend it. Always holds a ``version`` field."""
        return {"version": self.state_version}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (subclasses read their keys with ``.get``)."""
