"""scikit-learn's bundled 8x8 digits as a LightningDataModule."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from litmix.data import EpochShuffleSampler, IndexedDataset, stratified_split
from litmix.registry import register


@register("datamodule", "data")
class DigitsDataModule(pl.LightningDataModule):
    """scikit-learn's ``load_digits`` (1,797 images, 10 classes), stratified train/validation split.

    Works offline: the data ships with scikit-learn. Items are ``(x, y, index)`` with ``x`` scaled to
    [0, 1] (``pixels / 16``), flat (64) or as ``1 x 8 x 8`` images. The test set is the validation split.

    Args:
        batch_size: training batch size (> 0).
        val_fraction: share of each class held out, in (0, 1).
        flatten: return 64-vectors (True) or 1x8x8 images.
        train_size: keep only this many training images (stratified), or all when ``None``.
        seed: seed of the split and the shuffling.

    Raises:
        ValueError: for a batch size below 1 or a fraction outside (0, 1).

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
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"DigitsDataModule(batch_size={batch_size}): batch_size must be >= 1")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"DigitsDataModule(val_fraction={val_fraction}): val_fraction must be in (0, 1)")
        self.batch_size, self.val_fraction, self.flatten = batch_size, val_fraction, flatten
        self.train_size, self.seed = train_size, seed
        self.train_dataset: Dataset
        self.val_dataset: Dataset

    def setup(self, stage: str | None = None) -> None:
        """Load and split (idempotent)."""
        if hasattr(self, "full_dataset"):
            return
        from sklearn.datasets import load_digits

        data = load_digits()
        x = torch.tensor(data.data, dtype=torch.float32) / 16.0
        if not self.flatten:
            x = x.view(-1, 1, 8, 8)
        y = torch.tensor(data.target, dtype=torch.long)
        self.full_dataset = IndexedDataset(TensorDataset(x, y))
        train_idx, val_idx = stratified_split(y, 1.0 - self.val_fraction, seed=self.seed)
        if self.train_size is not None:
            keep, _ = stratified_split(y[train_idx], self.train_size / len(train_idx), seed=self.seed)
            train_idx = train_idx[keep]
        self.targets = y
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
