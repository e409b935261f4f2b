"""Shared shell of the data-pruning DataModules: wrap a base DataModule, serve a checkpointed subset of its data.

Private module; the public classes are :class:`~litmix.datamodules.ConceptClusterPruning` and
:class:`~litmix.datamodules.ComputeAwareFiltering`.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from litmix.base import LitmixDataModule
from litmix.data import EpochShuffleSampler
from litmix.validation import check_int, check_type

MAX_SEED = 2**32 - 1


def dist_group() -> Any:
    """``torch.distributed`` when a process group is up, else ``None``."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (identity without a process group)."""
    dist = dist_group()
    if dist is None or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without a process group."""
    dist = dist_group()
    return (0, 1) if dist is None else (dist.get_rank(), dist.get_world_size())


def train_dataset_of(base: pl.LightningDataModule) -> Dataset:
    """The map-style training set of a set-up DataModule: ``train_dataset``, else its train loader's dataset."""
    dataset = getattr(base, "train_dataset", None)
    if dataset is None:
        dataset = base.train_dataloader().dataset  # type: ignore[union-attr]
    return dataset  # type: ignore[no-any-return]


class SubsetDataModule(LitmixDataModule):
    """Base of the data-pruning wrappers: the base's training set restricted to the selected positions.

    Subclasses implement :meth:`_compute_selection` (called on every rank; rank 0's answer is broadcast) and
    may check their arguments against the data in :meth:`_check_data` (called at ``setup``). The selection is
    computed lazily the first time it is needed (the training loader), so a resumed run, whose checkpoint
    Lightning loads after ``setup``, serves the checkpointed subset without recomputing it.
    """

    #: Prefix of logged keys and of the table's name.
    log_prefix = "data_pruning"

    def __init__(self, base: pl.LightningDataModule, batch_size: int | None = None, seed: int = 0) -> None:
        name = type(self).__name__
        check_type(name, "base", base, pl.LightningDataModule)
        check_int(name, "batch_size", batch_size, low=1, allow_none=True)
        check_int(name, "seed", seed, low=0, high=MAX_SEED)
        super().__init__()
        self.base, self.batch_size, self.seed = base, batch_size, seed
        self._kept: Tensor | None = None
        self._table: dict[str, Any] | None = None
        self._selected_from = -1  # size of the training set the selection was made from
        #: ``"computed"`` or ``"checkpoint"`` once a selection exists.
        self.selection_source: str | None = None
        self.table_path: Path | None = None

    # ---- data access ------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """The base's ``prepare_data``."""
        self.base.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Set up the base (sharing this DataModule's trainer) and check the arguments against its data."""
        if self.trainer is not None:
            self.base.trainer = self.trainer
        self.base.setup(stage)  # type: ignore[arg-type]
        if stage in (None, "fit") and not hasattr(self, "train_base"):
            self.train_base = train_dataset_of(self.base)
            self.num_train = len(self.train_base)  # type: ignore[arg-type]
            if self._kept is not None and self._selected_from not in (-1, self.num_train):
                raise ValueError(
                    f"{type(self).__name__}(base=...): the loaded selection is for a training set of "
                    f"{self._selected_from} samples, this base DataModule has {self.num_train}"
                )
            self._check_data()

    def _check_data(self) -> None:
        """Data-dependent argument checks (before any compute); raise ``ValueError`` naming the argument."""

    def _compute_selection(self) -> dict[str, Any] | None:
        """``{"kept": sorted positions (long tensor), "table": {"columns": [...], "data": [[...]]}}`` on rank 0."""
        raise NotImplementedError

    def select(self) -> Tensor:
        """Sorted positions (in the base's training set) of the kept samples; computed once, then cached."""
        if self._kept is None:
            if not hasattr(self, "train_base"):
                self.setup("fit")
            result = broadcast_object(self._compute_selection())
            assert result is not None
            self._kept = result["kept"].long().cpu()
            self._selected_from = self.num_train
            self._table = result.get("table")
            self.selection_source = "computed"
            self._log_selection()
        return self._kept

    @property
    def table(self) -> dict[str, Any] | None:
        """The per-group table of the selection (``columns``, ``data``), once selected."""
        return self._table

    def _base_loader(self) -> DataLoader | None:
        try:
            loader = self.base.train_dataloader()
        except Exception:  # a base without a usable train loader: plain defaults
            return None
        return loader if isinstance(loader, DataLoader) else None

    def train_dataloader(self) -> DataLoader:
        """The kept samples, shuffled by (seed, epoch) (Lightning shards them under DDP); base's collate."""
        kept = self.select()
        subset = Subset(self.train_base, kept.tolist())
        loader = self._base_loader()
        batch_size = self.batch_size or (loader.batch_size if loader is not None else None) or 64
        sampler = EpochShuffleSampler(len(subset), seed=self.seed)
        return DataLoader(
            subset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=loader.collate_fn if loader is not None else None,
            num_workers=loader.num_workers if loader is not None else 0,
        )

    def val_dataloader(self) -> Any:
        """The base's validation loader(s), unchanged."""
        return self.base.val_dataloader()

    def test_dataloader(self) -> Any:
        """The base's test loader(s), unchanged."""
        return self.base.test_dataloader()

    def predict_dataloader(self) -> Any:
        """The base's predict loader(s), unchanged."""
        return self.base.predict_dataloader()

    def teardown(self, stage: str) -> None:
        """The base's ``teardown``."""
        self.base.teardown(stage)

    # ---- state --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Version, the kept positions and their table (when selected), and the base's state."""
        state = super().state_dict()
        if self._kept is not None:
            state["kept"] = self._kept.clone()
            state["num_train"] = self._selected_from
            state["table"] = self._table
        base_state = self.base.state_dict()
        if base_state:
            state["base"] = base_state
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the selection (a resumed run sees the same subset) and the base's state.

        Raises:
            ValueError: for a newer state version, or a selection from a training set of another size.
        """
        super().load_state_dict(state_dict)
        if "base" in state_dict:
            self.base.load_state_dict(state_dict["base"])
        if state_dict.get("kept") is None:
            return
        num_train = int(state_dict.get("num_train", -1))
        if hasattr(self, "num_train") and num_train not in (-1, self.num_train):
            raise ValueError(
                f"{type(self).__name__}: the checkpoint's selection is for a training set of {num_train} samples, "
                f"this base DataModule has {self.num_train}"
            )
        self._kept = torch.as_tensor(state_dict["kept"]).long().clone()
        self._selected_from = num_train
        self._table = state_dict.get("table")
        self.selection_source = "checkpoint"

    # ---- logging ----------------------------------------------------------------------------------------
    def _log_selection(self) -> None:
        """Kept count / fraction to the loggers; the table to W&B (``log_table``) or to a CSV file."""
        trainer = self.trainer
        if trainer is None or not trainer.is_global_zero or self._kept is None:
            return
        metrics = {
            f"{self.log_prefix}/kept": float(len(self._kept)),
            f"{self.log_prefix}/kept_fraction": len(self._kept) / max(1, self.num_train),
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            if self._table is None:
                continue
            if callable(getattr(logger, "log_table", None)):
                logger.log_table(  # type: ignore[attr-defined]
                    key=f"{self.log_prefix}/selection", columns=self._table["columns"], data=self._table["data"]
                )
                continue
            folder = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) or trainer.default_root_dir
            self.write_table(Path(str(folder)) / f"{self.log_prefix}_selection.csv")

    def write_table(self, path: str | os.PathLike[str]) -> Path:
        """Write the selection table as CSV to ``path`` (folders created); returns the path."""
        if self._table is None:
            raise ValueError(f"{type(self).__name__}: no selection table yet (call select() first)")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(self._table["columns"])
            writer.writerows(self._table["data"])
        self.table_path = target
        return target
