"""Base classes of litmix plugins (import them from :mod:`litmix.base`): one contract for every kind.

The contract, checked by the tests generated over the registry (``tests/test_contract.py``):

* ``example()`` returns an :class:`Example` ``(module, datamodule, callbacks)`` that fits in seconds on a CPU;
* checkpointed state carries a ``version``; a checkpoint written by a newer version than the code knows is an
  error naming both versions (:func:`check_state_version`);
* a callback's ``state_key`` is derived from its identity (``name`` when given, else the configuration that
  tells two instances apart, as Lightning's ``EarlyStopping`` does); two instances with one key in a Trainer
  are an error at ``setup`` that says to pass ``name=``;
* metadata (kind, family, paper) lives in the registry only (:func:`litmix.registry.register`).
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

__all__ = ["Example", "LitmixCallback", "LitmixDataModule", "LitmixModule", "check_state_version"]


class Example(NamedTuple):
    """What every plugin's ``example()`` returns: a module, its data and the callbacks to fit them with.

    Example:
        >>> from litmix.testing import TinyClassifier, TinyDataModule
        >>> ex = Example(TinyClassifier(), TinyDataModule())
        >>> ex.callbacks
        []
    """

    module: pl.LightningModule
    datamodule: pl.LightningDataModule
    callbacks: list[Callback] = []  # noqa: RUF012 - NamedTuple default; never mutated


def check_state_version(owner: str, state: dict[str, Any], known: int) -> int:
    """The ``version`` stored in ``state`` (1 when absent); a version newer than ``known`` is an error.

    Raises:
        ValueError: naming the checkpoint's and the code's version.

    Example:
        >>> check_state_version("GradualPruning", {"version": 1}, 1)
        1
        >>> check_state_version("GradualPruning", {"version": 3}, 1)
        Traceback (most recent call last):
        ...
        ValueError: GradualPruning: the checkpoint's state version 3 is newer than this code's (1); upgrade litmix
    """
    version = int(state.get("version", 1))
    if version > known:
        raise ValueError(
            f"{owner}: the checkpoint's state version {version} is newer than this code's ({known}); upgrade litmix"
        )
    return version


class LitmixCallback(Callback):
    """Base of every litmix callback.

    Subclasses call ``super().setup(...)`` (checks state keys), ``super().state_dict()`` (adds ``version``) and
    ``super().load_state_dict(...)`` (checks it), and override :meth:`_state_key_fields` when two unnamed
    instances can differ (e.g. the parameters they prune).
    """

    state_version: ClassVar[int] = 1
    #: State entries that hold wall-clock measurements: the resume contract does not compare their values.
    measured_state_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str | None = None) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(
                f"{type(self).__name__}(name={name!r}): name must be str or None, got {type(name).__name__}"
            )
        if name is not None and not name.strip():
            raise ValueError(f"{type(self).__name__}(name={name!r}): name must be a non-empty string or None")
        self.name = name

    def _state_key_fields(self) -> dict[str, Any]:
        """Configuration that tells two unnamed instances apart (empty: the class name is the key)."""
        return {}

    @property
    def state_key(self) -> str:
        """Checkpoint key: the class name plus ``name`` when given, else plus :meth:`_state_key_fields`."""
        if self.name:
            return self._generate_state_key(name=self.name)
        fields = self._state_key_fields()
        return self._generate_state_key(**fields) if fields else type(self).__qualname__

    @property
    def log_prefix(self) -> str:
        """Prefix of every logged key: ``name`` when given, else the class's default prefix."""
        return self.name or self.default_log_prefix

    default_log_prefix: ClassVar[str] = ""

    @classmethod
    def example(cls) -> Example:
        """A tiny CPU-fast :class:`Example` used by the contract tests and the docs."""
        raise NotImplementedError(f"{cls.__name__}.example() is not implemented")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse a second litmix callback with the same state key in this Trainer."""
        callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
        same = [cb for cb in callbacks if isinstance(cb, LitmixCallback) and cb.state_key == self.state_key]
        if len(same) > 1:
            raise ValueError(
                f"{type(self).__name__}: {len(same)} callbacks in this Trainer share the checkpoint key "
                f"{self.state_key!r}, so their states would overwrite each other; pass a distinct name= to each"
            )

    def state_dict(self) -> dict[str, Any]:
        """Checkpointed state; subclasses extend it. Always holds a ``version`` field."""
        return {"version": self.state_version}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check the state's ``version``; subclasses then read their keys with ``.get``."""
        check_state_version(type(self).__name__, state_dict, self.state_version)


class LitmixModule(pl.LightningModule):
    """Base of every litmix LightningModule plugin.

    State that is not a parameter or buffer goes into ``on_save_checkpoint`` under ``checkpoint["litmix"]``
    with a ``version``; :meth:`on_load_checkpoint` checks it.
    """

    state_version: ClassVar[int] = 1

    @classmethod
    def example(cls) -> Example:
        """A tiny CPU-fast :class:`Example` used by the contract tests and the docs."""
        raise NotImplementedError(f"{cls.__name__}.example() is not implemented")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the state version."""
        checkpoint.setdefault("litmix", {})["version"] = self.state_version

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the state version."""
        check_state_version(type(self).__name__, checkpoint.get("litmix", {}), self.state_version)


class LitmixDataModule(pl.LightningDataModule):
    """Base of every litmix DataModule: an ``example()`` and a versioned ``state_dict``.

    Subclasses serve deterministic data per ``seed`` and epoch and shard disjointly under DDP.
    """

    state_version: ClassVar[int] = 1

    @classmethod
    def example(cls) -> Example:
        """A tiny CPU-fast :class:`Example` used by the contract tests and the docs."""
        raise NotImplementedError(f"{cls.__name__}.example() is not implemented")

    def state_dict(self) -> dict[str, Any]:
        """Checkpointed state; subclasses extend it."""
        return {"version": self.state_version}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check the state version."""
        check_state_version(type(self).__name__, state_dict, self.state_version)
