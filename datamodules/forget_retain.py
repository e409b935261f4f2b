"""Forget / retain / test splits for machine unlearning, with forget-anchored paired training items."""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset, TensorDataset

from litmix.base import Example, LitmixDataModule
from litmix.data import IndexedDataset
from litmix.registry import register
from litmix.validation import check_float, check_int, check_type

BASES = ("digits", "mnist")
VAL_LOADER_ORDER = ("forget", "retain", "test", "holdout")
DEFAULT_FORGET_FRACTION = 0.1


def _strip(item: Any) -> Any:
    """``(x, y)`` from a ``(x, y[, index...])`` tuple; dict items are returned unchanged."""
    if isinstance(item, dict):
        return {k: v for k, v in item.items() if k != "index"}
    if isinstance(item, tuple | list):
        return tuple(item[:2])
    return item


def dataset_targets(dataset: Dataset) -> Tensor:
    """Class labels of a map-style dataset (fast paths for ``Subset``/``IndexedDataset``/``TensorDataset``).

    Example:
        >>> ds = Subset(IndexedDataset(TensorDataset(torch.zeros(4, 2), torch.tensor([0, 1, 2, 3]))), [3, 1])
        >>> dataset_targets(ds).tolist()
        [3, 1]
    """
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, IndexedDataset):
        return dataset_targets(dataset.dataset)
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) > 1:
        return dataset.tensors[1].long()
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets).long()
    labels = []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        item = dataset[i]
        y = item.get("y", item.get("labels")) if isinstance(item, dict) else item[1]
        labels.append(int(y))  # type: ignore[arg-type]
    return torch.tensor(labels, dtype=torch.long)


class SplitDataset(Dataset):
    """Items ``indices[i]`` of ``dataset`` as ``(x, y, i)`` (or ``{**item, "index": i}`` for dict items).

    ``i`` is the position inside the split, so forget items share their index with the training pairs
    (reference-NLL caches) and evaluation metrics can de-duplicate by it.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        item = _strip(self.dataset[self.indices[i]])
        if isinstance(item, dict):
            return {**item, "index": i}
        return (*item, i)


class ForgetRetainPairs(Dataset):
    """Forget-anchored pairs: item ``i`` = forget item ``i`` with a retain item drawn for epoch ``e``.

    The retain partner is ``perm(seed, e)[i mod |D_r|]``: a function of (seed, epoch, i) only, hence the
    same on any number of ranks and after a resume. Keys are ``i`` or ``(i, epoch)``
    (:class:`ForgetAnchoredSampler` yields the latter).
    """

    def __init__(self, dataset: Dataset, forget: Sequence[int], retain: Sequence[int], seed: int = 0) -> None:
        self.dataset, self.forget, self.retain, self.seed = dataset, list(forget), list(retain), seed
        self._perm_epoch = -1
        self._perm = torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.forget)

    def retain_partner(self, i: int, epoch: int) -> int:
        """Position in the retain split paired with forget item ``i`` at ``epoch``."""
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.retain), generator=gen), epoch
        return int(self._perm[i % len(self.retain)])

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        j = self.retain_partner(i, epoch)
        return {
            "forget": _strip(self.dataset[self.forget[i]]),
            "retain": _strip(self.dataset[self.retain[j]]),
            "index": i,
        }


class ForgetAnchoredSampler(DistributedSampler):
    """Shuffled (seed + epoch), rank-sharded forget positions, yielded as ``(i, epoch)`` keys.

    A ``DistributedSampler`` subclass, so Lightning keeps it under DDP and calls ``set_epoch`` every epoch.
    """

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        return ((int(i), self.epoch) for i in super().__iter__())


def _check_int_list(owner: str, name: str, value: Any, low: int = 0) -> list[int] | None:
    """``None`` or a non-empty list/tuple of ints >= ``low`` (bools refused)."""
    if value is None:
        return None
    check_type(owner, name, value, (list, tuple), allow_none=True)
    want = f"{name} must be a non-empty list of ints >= {low} or None"
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
    if bad:
        raise TypeError(f"{owner}({name}={value!r}): {want}, got {type(bad[0]).__name__} {bad[0]!r}")
    if not value:
        raise ValueError(f"{owner}({name}={value!r}): the forget set must not be empty; {want}")
    if any(v < low for v in value):
        raise ValueError(f"{owner}({name}={value!r}): {want}")
    return [int(v) for v in value]


@register("datamodule", "unlearning")
class ForgetRetainDataModule(LitmixDataModule):
    """Forget / retain / test splits for unlearning with forget-anchored paired training batches.

    Setting of TOFU and open-unlearning, as used by Negative Preference Optimization
    (https://arxiv.org/abs/2404.05868): one epoch = one pass over the forget set D_f; every training
    item is ``{"forget": (x, y), "retain": (x, y), "index": i}`` with ``i`` the position in D_f and the
    retain partner drawn from a permutation seeded by ``(seed, epoch)`` (identical on any number of ranks).
    Dict items (language models: ``input_ids``/``attention_mask``/``labels``) are passed through as dicts.

    Data: ``base="digits"`` (sklearn digits) or ``"mnist"`` (needs ``root``) by name, so LightningCLI YAML
    can build them; or any LightningDataModule instance exposing ``train_dataset`` and ``test_dataset``
    (or ``val_dataset``); or ``base=None`` with an explicit map-style ``dataset`` (items ``(x, y, ...)``
    or dicts) and optional ``test_dataset``. :meth:`from_datamodule` and :meth:`from_dataset` are the
    Python-side shortcuts.

    Forget spec, at most one of: ``forget_classes`` (every training item of these classes),
    ``forget_indices`` (positions in the training set) or ``forget_fraction`` (a seeded random subset);
    none means ``forget_fraction=0.1`` (a seeded random 10 %, the size of TOFU's ``forget10`` split).
    With ``forget_classes`` the test loader keeps only retained classes and the test items of the
    forgotten classes become the ``holdout`` loader (unless ``holdout_dataset`` is given).

    ``val_dataloader()`` returns the loaders in the order of :attr:`val_loader_names`: ``forget``,
    ``retain``, ``test`` (when there is a test set), ``holdout`` (when there is one); items are
    ``(x, y, i)`` (or dicts with ``"index"``) with ``i`` the position inside that split.
    ``test_dataloader()`` returns the same list.

    Args:
        base: ``"digits"``, ``"mnist"``, a LightningDataModule, or ``None`` with ``dataset``.
        forget_classes: classes to forget (non-empty, present, not all classes).
        forget_indices: training-set positions to forget (non-empty, in range, not everything).
        forget_fraction: share of the training set to forget at random, in (0, 1) (0.1 when no spec is given).
        root: data folder for ``base="mnist"``.
        base_kwargs: extra keyword arguments of the named base DataModule (e.g. ``train_size``).
        dataset: the training dataset when ``base`` is None.
        test_dataset: test set (default: the base DataModule's test or validation split).
        holdout_dataset: never-trained samples for membership inference (see above for the default).
        batch_size: training batch size (pairs per batch).
        eval_batch_size: evaluation batch size.
        eval_retain_size: evaluate on a seeded subset of this many retain items (all when None).
        num_workers: DataLoader workers.
        seed: seed of the random subset, the shuffling and the retain pairing.

    Raises:
        ValueError: for more than one forget spec, an empty forget set, negative or out-of-range indices,
            absent classes, a forget set covering every training item, a ``forget_fraction`` outside (0, 1),
            sizes below 1, negative ``num_workers`` or ``seed``, or unknown ``base`` names (data-dependent checks
            run in :meth:`setup`, before any training).
        TypeError: for an argument of the wrong type (e.g. ``batch_size=2.5``, ``forget_classes=[True]``),
            naming it.

    Example:
        >>> dm = ForgetRetainDataModule("digits", forget_classes=[3], batch_size=8)
        >>> dm.setup("fit")
        >>> len(dm.forget_dataset), len(dm.retain_dataset), dm.val_loader_names
        (128, 1130, ['forget', 'retain', 'test', 'holdout'])
        >>> batch = next(iter(dm.train_dataloader()))
        >>> sorted(batch), batch["forget"][1].unique().tolist(), 3 in batch["retain"][1].tolist()
        (['forget', 'index', 'retain'], [3], False)
    """

    def __init__(
        self,
        base: str | pl.LightningDataModule | None = "digits",
        forget_classes: list[int] | None = None,
        forget_indices: list[int] | None = None,
        forget_fraction: float | None = None,
        root: str | None = None,
        base_kwargs: dict[str, Any] | None = None,
        dataset: Dataset | None = None,
        test_dataset: Dataset | None = None,
        holdout_dataset: Dataset | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        eval_retain_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_type(name, "base", base, (str, pl.LightningDataModule), allow_none=True)
        if isinstance(base, str) and base not in BASES:
            raise ValueError(f"{name}(base={base!r}): base must be one of {BASES}, a LightningDataModule or None")
        forget_classes = _check_int_list(name, "forget_classes", forget_classes)
        forget_indices = _check_int_list(name, "forget_indices", forget_indices)
        check_float(
            name, "forget_fraction", forget_fraction, low=0.0, high=1.0, low_open=True, high_open=True, allow_none=True
        )
        check_type(name, "root", root, (str, os.PathLike), allow_none=True)
        if base == "mnist" and (root is None or not str(root).strip()):
            raise ValueError(f"{name}(base='mnist', root={root!r}): base='mnist' needs root")
        check_type(name, "base_kwargs", base_kwargs, dict, allow_none=True)
        if base_kwargs is not None and not all(isinstance(k, str) for k in base_kwargs):
            raise TypeError(f"{name}(base_kwargs={base_kwargs!r}): base_kwargs must map argument names (str) to values")
        for key, value in (("dataset", dataset), ("test_dataset", test_dataset), ("holdout_dataset", holdout_dataset)):
            if value is not None and not (hasattr(value, "__getitem__") and hasattr(value, "__len__")):
                raise TypeError(
                    f"{name}({key}={value!r}): {key} must be a map-style dataset (with __getitem__ and __len__) or "
                    f"None, got {type(value).__name__}"
                )
        if base is None and dataset is None:
            raise ValueError(f"{name}(base=None, dataset=None): give a base DataModule or a dataset")
        check_int(name, "batch_size", batch_size, low=1)
        check_int(name, "eval_batch_size", eval_batch_size, low=1)
        check_int(name, "eval_retain_size", eval_retain_size, low=1, allow_none=True)
        check_int(name, "num_workers", num_workers, low=0)
        check_int(name, "seed", seed, low=0, high=2**32 - 1)
        specs = {"forget_classes": forget_classes, "forget_indices": forget_indices, "forget_fraction": forget_fraction}
        given = [k for k, v in specs.items() if v is not None]
        if len(given) > 1:
            raise ValueError(
                f"{name}({', '.join(f'{k}={v!r}' for k, v in specs.items() if v is not None)}): give at most one of "
                f"forget_classes, forget_indices, forget_fraction (got {len(given)})"
            )
        if not given:
            forget_fraction = DEFAULT_FORGET_FRACTION
        self.base, self.root, self.base_kwargs = base, root, dict(base_kwargs or {})
        self.forget_classes, self.forget_indices = forget_classes, forget_indices
        self.forget_fraction = None if forget_fraction is None else float(forget_fraction)
        self.dataset, self.test_dataset, self.holdout_dataset = dataset, test_dataset, holdout_dataset
        self.batch_size, self.eval_batch_size, self.eval_retain_size = batch_size, eval_batch_size, eval_retain_size
        self.num_workers, self.seed = num_workers, seed
        self.val_loader_names: list[str] = []
        self.save_hyperparameters(ignore=["dataset", "test_dataset", "holdout_dataset", "base"])
        if isinstance(base, str):
            self.hparams["base"] = base

    @classmethod
    def example(cls) -> Example:
        """Gaussian blobs (64 training items, 10 forgotten) with :class:`~litmix.plugins.UnlearningModule`'s example."""
        from litmix.plugins.unlearning_module import UnlearningModule

        return UnlearningModule.example()

    @classmethod
    def from_datamodule(cls, datamodule: pl.LightningDataModule, **kwargs: Any) -> ForgetRetainDataModule:
        """Wrap another DataModule's ``train_dataset`` and ``test_dataset``/``val_dataset``."""
        return cls(base=datamodule, **kwargs)

    @classmethod
    def from_dataset(
        cls, dataset: Dataset, test_dataset: Dataset | None = None, **kwargs: Any
    ) -> ForgetRetainDataModule:
        """Wrap a map-style training dataset (and optional test set)."""
        return cls(base=None, dataset=dataset, test_dataset=test_dataset, **kwargs)

    @classmethod
    def from_scores(
        cls,
        dataset: Dataset,
        scores: Tensor | Sequence[float],
        k: int | None = None,
        quantile: float | None = None,
        lowest: bool = True,
        test_dataset: Dataset | None = None,
        **kwargs: Any,
    ) -> ForgetRetainDataModule:
        """Forget the items of ``dataset`` chosen by per-sample ``scores`` (bottom-/top-``k`` or a quantile).

        Score producers: :func:`litmix.functional.forget_selection.knn_shapley` (Data Shapley values: lowest =
        harmful / mislabeled, highest = most valuable) and
        :func:`~litmix.functional.forget_selection.worst_case_forget_scores` (Challenging Forgets: highest weights =
        hardest to forget). Give exactly one of ``k`` (the ``k`` lowest, or highest with ``lowest=False``; ties by
        index) or ``quantile`` (every item with a score ``<=`` the ``quantile``-quantile, or ``>=`` it with
        ``lowest=False``: ``quantile=0.9, lowest=False`` = the top 10 %).

        Raises:
            TypeError: ``scores`` not a tensor or list of numbers, ``k`` not an int, ``lowest`` not a bool.
            ValueError: ``scores`` not one finite value per item, neither or both of ``k`` and ``quantile``,
                ``k`` outside ``[1, N - 1]``, ``quantile`` outside ``(0, 1)``, or a selection that is empty or
                covers every item.

        Example:
            >>> from litmix.testing import TinyDataModule
            >>> ds = TinyDataModule(n=10).dataset
            >>> dm = ForgetRetainDataModule.from_scores(ds, torch.arange(10.0), k=3, lowest=False)
            >>> dm.forget_indices
            [7, 8, 9]
            >>> ForgetRetainDataModule.from_scores(ds, torch.arange(10.0), quantile=0.2).forget_indices
            [0, 1]
        """
        owner = f"{cls.__name__}.from_scores"
        check_type(owner, "scores", scores, (Tensor, list, tuple))
        if not isinstance(scores, Tensor):
            bad = [s for s in scores if isinstance(s, bool) or not isinstance(s, numbers.Real)]
            if bad:
                raise TypeError(f"{owner}(scores=[..., {bad[0]!r}, ...]): scores must be numbers")
        values = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
        n = len(dataset)  # type: ignore[arg-type]
        if values.numel() != n:
            raise ValueError(f"{owner}(scores): {values.numel()} scores for a dataset of {n} items; give one per item")
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"{owner}(scores): scores hold NaN or infinite values")
        check_type(owner, "lowest", lowest, bool)
        if (k is None) == (quantile is None):
            raise ValueError(f"{owner}(k={k!r}, quantile={quantile!r}): give exactly one of k and quantile")
        if k is not None:
            check_int(owner, "k", k, low=1, high=n - 1)
            key = values if lowest else -values
            chosen = torch.from_numpy(key.numpy().argsort(kind="stable"))[:k]  # ties: lower index first
        else:
            check_float(owner, "quantile", quantile, low=0.0, high=1.0, low_open=True, high_open=True)
            cut = torch.quantile(values, float(quantile))  # type: ignore[arg-type]
            chosen = torch.nonzero(values <= cut if lowest else values >= cut).flatten()
        forget = sorted(int(i) for i in chosen)
        if not forget or len(forget) >= n:
            raise ValueError(
                f"{owner}(quantile={quantile!r}, lowest={lowest}): the selection holds {len(forget)} of {n} items; "
                "the forget set must be non-empty and leave items to retain"
            )
        return cls(base=None, dataset=dataset, test_dataset=test_dataset, forget_indices=forget, **kwargs)

    def _base_datasets(self) -> tuple[Dataset, Dataset | None]:
        if self.base is None:
            assert self.dataset is not None
            return self.dataset, self.test_dataset
        dm: pl.LightningDataModule
        if isinstance(self.base, str):
            if self.base == "digits":
                from litmix.datamodules.digits import DigitsDataModule

                dm = DigitsDataModule(seed=self.seed, **self.base_kwargs)
            else:
                from litmix.datamodules.mnist import MNISTDataModule

                dm = MNISTDataModule(str(self.root), seed=self.seed, **{"flatten": True, **self.base_kwargs})
        else:
            dm = self.base
        dm.prepare_data()
        dm.setup("fit")
        train = dm.train_dataset  # type: ignore[attr-defined]
        test = self.test_dataset or getattr(dm, "test_dataset", None) or getattr(dm, "val_dataset", None)
        return train, test

    def setup(self, stage: str | None = None) -> None:
        """Build the splits (idempotent); validates the forget spec against the data."""
        if hasattr(self, "train_pairs"):
            return
        name = type(self).__name__
        train, test = self._base_datasets()
        n = len(train)  # type: ignore[arg-type]
        holdout = self.holdout_dataset
        test_idx: list[int] | None = None if test is None else list(range(len(test)))  # type: ignore[arg-type]
        holdout_idx: list[int] | None = None if holdout is None else list(range(len(holdout)))  # type: ignore[arg-type]
        if self.forget_classes is not None:
            targets = dataset_targets(train)
            present = set(targets.unique().tolist())
            missing = [c for c in self.forget_classes if c not in present]
            if missing:
                raise ValueError(
                    f"{name}(forget_classes={self.forget_classes}): classes {missing} are not in the training "
                    f"set (classes present: {sorted(present)})"
                )
            is_forget = torch.isin(targets, torch.tensor(self.forget_classes))
            forget = torch.nonzero(is_forget).flatten().tolist()
            if test is not None:
                test_forget = torch.isin(dataset_targets(test), torch.tensor(self.forget_classes))
                test_idx = torch.nonzero(~test_forget).flatten().tolist()
                if holdout is None:
                    holdout, holdout_idx = test, torch.nonzero(test_forget).flatten().tolist()
        elif self.forget_indices is not None:
            bad = [i for i in self.forget_indices if not 0 <= i < n]
            if bad:
                raise ValueError(
                    f"{name}(forget_indices=[...]): indices {bad[:10]} are out of range for a training set of {n}"
                )
            forget = sorted(set(self.forget_indices))
        else:
            assert self.forget_fraction is not None
            k = max(1, round(self.forget_fraction * n))
            gen = torch.Generator().manual_seed(self.seed)
            forget = torch.randperm(n, generator=gen)[:k].sort().values.tolist()
        forget_set = set(forget)
        retain = [i for i in range(n) if i not in forget_set]
        spec = next(
            f"{k}={v!r}"
            for k, v in (
                ("forget_classes", self.forget_classes),
                ("forget_indices", self.forget_indices),
                ("forget_fraction", self.forget_fraction),
            )
            if v is not None
        )
        if not forget:
            raise ValueError(f"{name}({spec}): the forget set is empty")
        if not retain:
            raise ValueError(f"{name}({spec}): the forget set covers all {n} training items, nothing is retained")
        self.train_base, self.forget_idx, self.retain_idx = train, forget, retain
        self.train_pairs = ForgetRetainPairs(train, forget, retain, seed=self.seed)
        self.forget_dataset = SplitDataset(train, forget)
        self.retain_dataset = SplitDataset(train, retain)
        eval_retain = retain
        if self.eval_retain_size is not None and self.eval_retain_size < len(retain):
            gen = torch.Generator().manual_seed(self.seed + 1)
            pick = torch.randperm(len(retain), generator=gen)[: self.eval_retain_size].sort().values
            eval_retain = [retain[int(p)] for p in pick]
        self.eval_datasets: dict[str, Dataset] = {
            "forget": self.forget_dataset,
            "retain": SplitDataset(train, eval_retain),
        }
        if test is not None and test_idx:
            self.eval_datasets["test"] = SplitDataset(test, test_idx)
        if holdout is not None and holdout_idx:
            self.eval_datasets["holdout"] = SplitDataset(holdout, holdout_idx)
        self.val_loader_names = [k for k in VAL_LOADER_ORDER if k in self.eval_datasets]

    def train_dataloader(self) -> DataLoader:
        """Forget-anchored pairs; one epoch = one pass over the forget set, sharded over ranks."""
        world, rank = 1, 0
        if self.trainer is not None:
            world, rank = self.trainer.world_size, self.trainer.global_rank
        sampler = ForgetAnchoredSampler(
            self.train_pairs, num_replicas=world, rank=rank, shuffle=True, seed=self.seed, drop_last=False
        )
        return DataLoader(self.train_pairs, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)

    def eval_dataloader(self, split: str) -> DataLoader:
        """An unshuffled loader over one evaluation split (``forget``, ``retain``, ``test``, ``holdout``)."""
        return DataLoader(self.eval_datasets[split], batch_size=self.eval_batch_size, num_workers=self.num_workers)

    def forget_dataloader(self) -> DataLoader:
        """The forget split, unshuffled, items carrying their forget position."""
        return self.eval_dataloader("forget")

    def val_dataloader(self) -> list[DataLoader]:
        """Loaders in the order of :attr:`val_loader_names` (forget, retain, test, holdout)."""
        return [self.eval_dataloader(k) for k in self.val_loader_names]

    def test_dataloader(self) -> list[DataLoader]:
        """The same loaders as :meth:`val_dataloader`."""
        return self.val_dataloader()
