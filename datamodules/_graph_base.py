"""Pieces shared by the graph DataModules (node, link and user–item data): sources, DDP world, sized state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from torch.utils.data import Dataset
from torch_geometric.data import Data

from litmix.base import LitmixDataModule
from litmix.validation import check_path, check_type

__all__ = ["IdRange", "ShardedGraphDataModule", "SizeCheckedDataModule", "check_root_or_data"]


def check_root_or_data(owner: str, root: str | os.PathLike[str] | None, data: object) -> Path | None:
    """Check that exactly one of a Planetoid ``root`` folder and a PyG ``data`` graph is given; ``root`` as a path.

    Raises:
        TypeError: if ``data`` is not a ``torch_geometric.data.Data`` or ``root`` not a path.
        ValueError: for none or both of ``root`` and ``data``.

    Example:
        >>> check_root_or_data("GraphDataModule", None, Data()) is None
        True
        >>> check_root_or_data("GraphDataModule", None, None)
        Traceback (most recent call last):
        ...
        ValueError: GraphDataModule(root=None, data=None): give exactly one of root (a folder with Planetoid raw files) and data (a torch_geometric.data.Data)
    """  # noqa: E501
    check_type(owner, "data", data, Data, allow_none=True)
    path = check_path(owner, "root", root, allow_none=True)
    if (path is None) == (data is None):
        raise ValueError(
            f"{owner}(root={root!r}, data={'None' if data is None else 'Data(...)'}): give exactly one of "
            "root (a folder with Planetoid raw files) and data (a torch_geometric.data.Data)"
        )
    return path


class IdRange(Dataset):
    """Item ``i`` is ``i`` (an id into a split the collate function looks up)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i

    def __getitems__(self, ids: list[int]) -> list[int]:
        """A whole batch in one call (the DataLoader's batched fetch)."""
        return list(ids)


class ShardedGraphDataModule(LitmixDataModule):
    """A DataModule whose loaders shard over the trainer's ranks (one rank without a trainer)."""

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)


class SizeCheckedDataModule(ShardedGraphDataModule):
    """State = ``version``, ``seed`` and the data's sizes; a checkpoint of other sizes is refused.

    Subclasses set ``self.seed``, ``self._ready = False`` and ``self._expected = None`` in ``__init__``, implement
    ``_sizes_now`` and call ``_mark_ready`` at the end of ``setup``. ``_other`` names what differs in the error.
    """

    _other: ClassVar[str] = "other data"
    seed: int
    _ready: bool
    _expected: dict[str, int] | None

    def _sizes_now(self) -> dict[str, int]:
        raise NotImplementedError

    def _mark_ready(self) -> None:
        self._ready = True
        if self._expected is not None:
            self._check_expected()

    def _check_expected(self) -> None:
        assert self._expected is not None
        now = self._sizes_now()
        if now != self._expected:
            raise ValueError(
                f"{type(self).__name__}: the checkpoint was written on {self._other} ({self._expected}) than this "
                f"data module serves ({now})"
            )

    def state_dict(self) -> dict[str, Any]:
        """``version``, ``seed`` and the data's sizes (``None`` before ``setup`` unless loaded)."""
        sizes = self._sizes_now() if self._ready else self._expected
        return {**super().state_dict(), "seed": self.seed, "sizes": None if sizes is None else dict(sizes)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the seed; the sizes must match the data (checked now, or at ``setup``).

        Raises:
            ValueError: for a newer state version or a checkpoint written on other data.
        """
        super().load_state_dict(state_dict)
        self.seed = int(state_dict.get("seed", self.seed))
        sizes = state_dict.get("sizes")
        self._expected = None if sizes is None else {k: int(v) for k, v in sizes.items()}
        if self._ready and self._expected is not None:
            self._check_expected()
