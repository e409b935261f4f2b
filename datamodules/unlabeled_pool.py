"""A few labels and a big unlabeled pool from any labelled data set: the data of distillation on unlabeled data."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torch.utils.data.dataloader import default_collate

from litmix.base import Example, LitmixDataModule
from litmix.data import EpochShuffleSampler, IndexedDataset, split_batch, stratified_split
from litmix.functional.corruptions import web_corrupt
from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_float, check_int, check_type

__all__ = ["HIDDEN_LABEL", "UnlabeledPoolDataModule"]

#: The label of a sample whose label is hidden (PyTorch's ``ignore_index``: cross-entropy skips it).
HIDDEN_LABEL = -100
SERVES = ("unlabeled", "labeled", "mixed")
_PAPER = "Big Self-Supervised Models are Strong Semi-Supervised Learners (https://arxiv.org/abs/2006.10029)"
_CHUNK = 4096


def _fast_columns(dataset: Dataset) -> tuple[Tensor, Tensor] | None:
    """``(targets, names)`` of TensorDataset / IndexedDataset / Subset stacks without reading any item."""
    if isinstance(dataset, Subset):
        inner = _fast_columns(dataset.dataset)
        if inner is None:
            return None
        pick = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        return inner[0][pick], inner[1][pick]
    if isinstance(dataset, IndexedDataset) and isinstance(dataset.dataset, TensorDataset | Subset | IndexedDataset):
        inner = _fast_columns(dataset.dataset)
        if inner is None:
            return None
        return inner[0], torch.arange(len(dataset))
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        y = dataset.tensors[1]
        if len(dataset.tensors) >= 3:
            return y, dataset.tensors[2].long()
        return y, torch.arange(len(dataset))
    return None


def _columns(dataset: Dataset, owner: str) -> tuple[Tensor, Tensor]:
    """Targets and sample names (the item's index when it has one, else its position) of every item."""
    fast = _fast_columns(dataset)
    if fast is not None:
        return fast[0].reshape(-1).long(), fast[1].reshape(-1).long()
    targets, names = [], []
    for pos in range(len(dataset)):  # type: ignore[arg-type]
        item = dataset[pos]
        _, y, index = split_batch(item)
        if y is None:
            raise ValueError(f"{owner}(base=...): items must be (x, y) or (x, y, index) with a label, got {type(item)}")
        targets.append(int(y))
        names.append(int(index) if index is not None else pos)
    return torch.tensor(targets, dtype=torch.long), torch.tensor(names, dtype=torch.long)


class _PoolView(Dataset):
    """Items ``(x, y or HIDDEN_LABEL, name)`` of chosen positions; ``inputs`` replaces ``x`` (corrupted pool)."""

    def __init__(
        self, dataset: Dataset, positions: Tensor, names: Tensor, labels: Tensor, inputs: Tensor | None = None
    ) -> None:
        self.dataset, self.positions, self.names, self.labels, self.inputs = dataset, positions, names, labels, inputs

    def __len__(self) -> int:
        return int(self.positions.numel())

    def __getitem__(self, i: int) -> tuple[Any, Tensor, Tensor]:
        x = self.inputs[i] if self.inputs is not None else split_batch(self.dataset[int(self.positions[i])])[0]
        return x, self.labels[i], self.names[i]


@register("datamodule", "distillation", paper=_PAPER)
class UnlabeledPoolDataModule(LitmixDataModule):
    """A small labelled subset and a big unlabeled pool (labels hidden) from any labelled DataModule or dataset.

    Paper: SimCLRv2, "Big Self-Supervised Models are Strong Semi-Supervised Learners", Chen, Kornblith, Swersky,
    Norouzi and Hinton (https://arxiv.org/abs/2006.10029): a big model fine-tuned on the few labels teaches a
    student on the unlabeled data with its soft labels only (``L = -Σ_x Σ_y P_T(y|x; T) log P_S(y|x; T)``).
    With ``pool_corruption > 0`` the pool is a shifted "web" pool (heavy deterministic corruptions,
    :func:`litmix.functional.corruptions.web_corrupt`) as used by KD³ ("Distribution Shift Matters for Knowledge
    Distillation with Webly Collected Images", https://arxiv.org/abs/2307.11469).

    In ``setup`` the wrapped training set (``base.train_dataloader().dataset`` of a DataModule, or the dataset
    itself) is split: ``num_labeled`` samples (or ``labeled_fraction`` of them), stratified by class with
    ``seed``, keep their labels; the **pool** is every other sample, plus the labelled ones when
    ``include_labeled=True`` (SimCLRv2 distils on the whole training set without labels). Items are
    ``(x, y, index)`` as every litmix DataModule's: ``index`` is the wrapped item's index (its position when it
    has none), and pool samples carry ``y = -100`` (:data:`HIDDEN_LABEL`, PyTorch's ``ignore_index``), so a
    cross-entropy on them contributes nothing and no label can leak.

    ``train_dataloader`` serves ``serve``: ``"unlabeled"`` (the pool; distil with
    :class:`~litmix.plugins.DistillationModule` ``task_loss=None`` or :class:`~litmix.plugins.KD3Module`),
    ``"labeled"`` (the labelled subset: fine-tune the teacher, or the student-alone baseline) or ``"mixed"``
    (the labelled subset with its labels and the pool's other samples without: SimCLRv2's weighted sum of task
    loss and distillation with ``DistillationModule(task_loss="cross_entropy")``; every sample once).
    :meth:`labeled_dataloader` and :meth:`unlabeled_dataloader` serve either part whatever ``serve`` says. The
    order depends only on ``(seed, epoch)``; under DDP Lightning shards it (disjoint, complete shards).
    Validation and test loaders are the wrapped DataModule's (a dataset base validates on the labelled subset).

    With ``pool_corruption > 0`` the pool's inputs (square single-channel images ``[1, H, H]``, ``[H, H]`` or flat
    ``[H·H]``) are corrupted once in ``setup``, deterministically per ``(corruption_seed, index)`` (the same on
    every rank and run), and kept in memory (pool size × input size); the labelled subset stays clean (also in
    ``"mixed"``).

    Args:
        base: the labelled ``LightningDataModule`` or map-style dataset (items ``(x, y)`` or ``(x, y, index)``).
        num_labeled: labelled samples (>= 1); ``None`` = ``labeled_fraction`` of the training set (at least one).
        labeled_fraction: share of labelled samples in (0, 1], used when ``num_labeled`` is ``None``.
        serve: ``"unlabeled"``, ``"labeled"`` or ``"mixed"``: what ``train_dataloader`` serves.
        include_labeled: the pool also holds the labelled samples (labels hidden there).
        batch_size: training batch size (>= 1).
        pool_corruption: severity in [0, 1] of the pool's web corruption (0 = the clean pool).
        corruption_seed: seed of the corruptions, >= 0 (``None`` = ``seed``).
        seed: seed of the labelled split and the shuffling, >= 0.

    Raises:
        TypeError: for an argument of the wrong type (e.g. a ``base`` that is neither a DataModule nor a dataset),
            naming it.
        ValueError: for a value outside its range; in ``setup``, items without labels, ``num_labeled`` not below
            the training set's size, or ``pool_corruption > 0`` on inputs that are not square single-channel
            images.

    Example:
        >>> dm = UnlabeledPoolDataModule.example().datamodule
        >>> dm.setup("fit")
        >>> x, y, index = next(iter(dm.train_dataloader()))
        >>> len(dm.labeled_dataset), len(dm.pool_dataset), bool((y == -100).all())
        (8, 64, True)
        >>> sorted(set(next(iter(dm.labeled_dataloader()))[1].tolist()))
        [0, 1, 2, 3]
    """

    def __init__(
        self,
        base: pl.LightningDataModule | Dataset,
        num_labeled: int | None = None,
        labeled_fraction: float = 0.01,
        serve: Literal["unlabeled", "labeled", "mixed"] = "unlabeled",
        include_labeled: bool = True,
        batch_size: int = 128,
        pool_corruption: float = 0.0,
        corruption_seed: int | None = None,
        seed: int = 0,
    ) -> None:
        owner = type(self).__name__
        check_type(owner, "base", base, (pl.LightningDataModule, Dataset))
        self.num_labeled = check_int(owner, "num_labeled", num_labeled, low=1, allow_none=True)
        self.labeled_fraction = check_float(
            owner, "labeled_fraction", labeled_fraction, low=0.0, high=1.0, low_open=True
        )
        self.serve = check_choice(owner, "serve", serve, SERVES)
        self.include_labeled = check_bool(owner, "include_labeled", include_labeled)
        self.batch_size = check_int(owner, "batch_size", batch_size, low=1)
        self.pool_corruption = check_float(owner, "pool_corruption", pool_corruption, low=0.0, high=1.0)
        self.corruption_seed = check_int(
            owner, "corruption_seed", corruption_seed, low=0, high=2**32 - 1, allow_none=True
        )
        self.seed = check_int(owner, "seed", seed, low=0, high=2**32 - 1)
        super().__init__()
        self.base = base
        self.labeled_dataset: Dataset
        self.pool_dataset: Dataset
        self.mixed_dataset: Dataset

    @classmethod
    def example(cls) -> Example:
        """A KD student (``task_loss=None``) distilled from a seeded teacher on the pool of 64 Gaussian-blob samples."""
        from litmix.plugins.distillation_module import DistillationModule
        from litmix.testing import TinyDataModule

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            teacher = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
            student = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
        module = DistillationModule(student, teacher, [{"kind": "kd", "temperature": 1.0}], task_loss=None, lr=0.01)
        return Example(module, cls(TinyDataModule(), num_labeled=8, batch_size=16), [])

    # ------------------------------------------------------------------------------------------------ split

    def _base_dataset(self) -> Dataset:
        if isinstance(self.base, pl.LightningDataModule):
            self.base.setup("fit")
            return self.base.train_dataloader().dataset
        return self.base

    def setup(self, stage: str | None = None) -> None:
        """Split the wrapped training set into the labelled subset and the pool (idempotent)."""
        if hasattr(self, "_views"):
            if isinstance(self.base, pl.LightningDataModule) and stage not in (None, "fit"):
                self.base.setup(stage)
            return
        owner = type(self).__name__
        dataset = self._base_dataset()
        targets, names = _columns(dataset, owner)
        n = int(targets.numel())
        k = self.num_labeled if self.num_labeled is not None else max(1, round(self.labeled_fraction * n))
        if k >= n:
            raise ValueError(
                f"{owner}(num_labeled={self.num_labeled}, labeled_fraction={self.labeled_fraction}): {k} labelled "
                f"samples leave no unlabeled pool in a training set of {n}"
            )
        labeled, _ = stratified_split(targets, k / n, seed=self.seed)
        if labeled.numel() == 0:  # rounding per class can round every class down
            labeled = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))[:k].sort().values
        is_labeled = torch.zeros(n, dtype=torch.bool)
        is_labeled[labeled] = True
        pool = torch.arange(n) if self.include_labeled else (~is_labeled).nonzero().flatten()
        hidden = torch.full((n,), HIDDEN_LABEL, dtype=torch.long)
        mixed_labels = torch.where(is_labeled, targets, hidden)
        inputs = self._corrupted_pool(dataset, pool, names) if self.pool_corruption > 0 else None
        self.labeled_dataset = _PoolView(dataset, labeled, names[labeled], targets[labeled])
        self.pool_dataset = _PoolView(dataset, pool, names[pool], hidden[pool], inputs)
        # mixed: the labelled samples (clean, with labels), then the pool's other samples (labels hidden)
        rest = ~is_labeled[pool]
        mixed = torch.cat([labeled, pool[rest]])
        mixed_inputs = None
        if inputs is not None:
            clean = default_collate([split_batch(dataset[int(p)])[0] for p in labeled.tolist()])
            mixed_inputs = torch.cat([clean, inputs[rest]])
        self.mixed_dataset = _PoolView(dataset, mixed, names[mixed], mixed_labels[mixed], mixed_inputs)
        self._views = {"unlabeled": self.pool_dataset, "labeled": self.labeled_dataset, "mixed": self.mixed_dataset}
        if isinstance(self.base, pl.LightningDataModule) and stage not in (None, "fit"):
            self.base.setup(stage)

    def _corrupted_pool(self, dataset: Dataset, pool: Tensor, names: Tensor) -> Tensor:
        owner = type(self).__name__
        chunks = []
        for start in range(0, pool.numel(), _CHUNK):
            items = [dataset[int(p)] for p in pool[start : start + _CHUNK].tolist()]
            chunks.append(default_collate([split_batch(item)[0] for item in items]))
        x = torch.cat(chunks)
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError(f"{owner}(pool_corruption={self.pool_corruption}): the inputs must be float image tensors")
        value_range = (float(x.min()), float(x.max()))
        if value_range[1] <= value_range[0]:
            value_range = (value_range[0], value_range[0] + 1.0)
        seed = self.seed if self.corruption_seed is None else self.corruption_seed
        try:
            out = [
                web_corrupt(x[s : s + _CHUNK], names[pool][s : s + _CHUNK], seed, self.pool_corruption, value_range)
                for s in range(0, x.shape[0], _CHUNK)
            ]
        except ValueError as err:
            raise ValueError(f"{owner}(pool_corruption={self.pool_corruption}): {err}") from None
        return torch.cat(out)

    # ------------------------------------------------------------------------------------------------ loaders

    def _loader(self, part: str) -> DataLoader:
        if not hasattr(self, "_views"):
            self.setup("fit")
        view = self._views[part]
        sampler = EpochShuffleSampler(len(view), seed=self.seed)
        return DataLoader(view, batch_size=self.batch_size, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches of ``serve``'s part; the order depends only on ``(seed, epoch)``."""
        return self._loader(self.serve)

    def labeled_dataloader(self) -> DataLoader:
        """The labelled subset ``(x, y, index)``, shuffled by ``(seed, epoch)``."""
        return self._loader("labeled")

    def unlabeled_dataloader(self) -> DataLoader:
        """The pool ``(x, -100, index)``, shuffled by ``(seed, epoch)``."""
        return self._loader("unlabeled")

    def val_dataloader(self) -> Any:
        """The wrapped DataModule's validation loader (a dataset base: the labelled subset, in order)."""
        if isinstance(self.base, pl.LightningDataModule):
            return self.base.val_dataloader()
        self.setup("fit")
        return DataLoader(self.labeled_dataset, batch_size=self.batch_size)

    def test_dataloader(self) -> Any:
        """The wrapped DataModule's test loader."""
        if not isinstance(self.base, pl.LightningDataModule):
            raise ValueError(f"{type(self).__name__}: a dataset base has no test split; wrap a DataModule")
        return self.base.test_dataloader()

    def state_dict(self) -> dict[str, Any]:
        """Version and the wrapped DataModule's state."""
        state = super().state_dict()
        if isinstance(self.base, pl.LightningDataModule):
            state["base"] = self.base.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check the version; restore the wrapped DataModule's state."""
        super().load_state_dict(state_dict)
        if isinstance(self.base, pl.LightningDataModule) and "base" in state_dict:
            self.base.load_state_dict(state_dict["base"])
