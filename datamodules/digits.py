"""scikit-learn's bundled 8x8 digits as a LightningDataModule."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from litmix.base import Example, LitmixDataModule
from litmix.data import EpochShuffleSampler, IndexedDataset, stratified_split
from litmix.registry import register
from litmix.validation import check_bool, check_float, check_int

#: Images in scikit-learn's digits set.
DIGITS_SIZE = 1797
MAX_SEED = 2**32 - 1


@register("datamodule", "data")
class DigitsDataModule(LitmixDataModule):
    """scikit-learn's ``load_digits`` (1,797 images, 10 classes), stratified train/validation split.

    Works offline and needs nothing but ``pip install``: the data ships with scikit-learn. Items are
    ``(x, y, index)`` with ``x`` scaled to [0, 1] (``pixels / 16``), flat (64) or as ``1 x 8 x 8`` images.
    The test set is the validation split. The training order depends only on ``(seed, epoch)``, so a resumed
    run sees the batches an uninterrupted one sees; under DDP the ranks get disjoint shards.

    Args:
        batch_size: training batch size (>= 1).
        val_fraction: share of each class held out, in (0, 1).
        flatten: return 64-vectors (True) or 1x8x8 images.
        train_size: keep about this many training images, stratified (each class rounded to its share), or all
            when ``None``; at least 10 (one per class) and at most the size of the training split.
        seed: seed of the split and the shuffling, in [0, 2**32 - 1].

    Raises:
        TypeError: for an argument of the wrong type (e.g. ``batch_size=2.5``), naming it.
        ValueError: for a batch size below 1, a fraction outside (0, 1), a ``train_size`` below 10 or (at
            ``setup``) larger than the training split, or a negative seed.

    Example:
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> x, y, idx = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), len(dm.train_dataset), len(dm.val_dataset)
        ((32, 64), 1258, 539)
    """

    num_classes = 10

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.3,
        flatten: bool = True,
        train_size: int | None = None,
        seed: int = 0,
    ) -> None:
        name = type(self).__name__
        batch_size = check_int(name, "batch_size", batch_size, low=1)
        val_fraction = check_float(name, "val_fraction", val_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        flatten = check_bool(name, "flatten", flatten)
        train_size = check_int(name, "train_size", train_size, low=10, high=DIGITS_SIZE, allow_none=True)
        seed = check_int(name, "seed", seed, low=0, high=MAX_SEED)
        super().__init__()
        self.batch_size, self.val_fraction, self.flatten = batch_size, val_fraction, flatten
        self.train_size, self.seed = train_size, seed
        self.train_dataset: Dataset
        self.val_dataset: Dataset

    @classmethod
    def example(cls) -> Example:
        """A :class:`~litmix.testing.TinyClassifier` on 64 training digits in batches of 16."""
        from litmix.testing import TinyClassifier

        return Example(TinyClassifier(in_features=64, num_classes=10), cls(batch_size=16, train_size=64), [])

    def setup(self, stage: str | None = None) -> None:
        """Load and split (idempotent).

        Raises:
            ValueError: if ``train_size`` exceeds the training split.
        """
        if hasattr(self, "full_dataset"):
            return
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.tensor(data.data, dtype=torch.float32) / 16.0
        if not self.flatten:
            x = x.view(-1, 1, 8, 8)
        y = torch.tensor(data.target, dtype=torch.long)
        train_idx, val_idx = stratified_split(y, 1.0 - self.val_fraction, seed=self.seed)
        if self.train_size is not None:
            if self.train_size > len(train_idx):
                raise ValueError(
                    f"{type(self).__name__}(train_size={self.train_size}): train_size must be <= {len(train_idx)}, "
                    f"the size of the training split with val_fraction={self.val_fraction}"
                )
            keep, _ = stratified_split(y[train_idx], self.train_size / len(train_idx), seed=self.seed)
            train_idx = train_idx[keep]
        self.targets = y
        self.full_dataset = IndexedDataset(TensorDataset(x, y))
        self.train_dataset = Subset(self.full_dataset, train_idx.tolist())
        self.val_dataset = Subset(self.full_dataset, val_idx.tolist())

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the order depends only on (seed, epoch), so resumed runs match."""
        sampler = EpochShuffleSampler(len(self.train_dataset), seed=self.seed)  # type: ignore[arg-type]
        return DataLoader(self.train_dataset, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        """Validation batches."""
        return DataLoader(self.val_dataset, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        """The validation split."""
        return self.val_dataloader()
