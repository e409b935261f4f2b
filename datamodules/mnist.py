"""MNIST from the four original IDX ``.gz`` files, without torchvision."""

from __future__ import annotations

import gzip
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from litmix.data import EpochShuffleSampler, IndexedDataset, stratified_split
from litmix.registry import register

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
MEAN, STD = 0.1307, 0.3081


def find_mnist_root(root: str | Path) -> Path:
    """The folder holding the four MNIST files: ``root``, ``root/raw`` or ``root/MNIST/raw``.

    Raises:
        FileNotFoundError: naming the path searched and the files expected.
    """
    base = Path(root).expanduser()
    for candidate in (base, base / "raw", base / "MNIST" / "raw"):
        if all((candidate / f).is_file() for f in MNIST_FILES):
            return candidate
    raise FileNotFoundError(
        f"MNISTDataModule(root={str(root)!r}): no MNIST files found in {base} (nor raw/ or MNIST/raw/ below it); "
        f"expected {', '.join(MNIST_FILES)}"
    )


def read_idx(path: Path) -> Tensor:
    """Read one gzipped IDX file into a uint8 tensor.

    Raises:
        ValueError: if the magic number is not that of an IDX uint8 file.
    """
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not an IDX uint8 file (magic number {magic})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    return torch.from_numpy(data.copy())


@register("datamodule", "data")
class MNISTDataModule(pl.LightningDataModule):
    """MNIST read from the original IDX ``.gz`` files (no torchvision, no download).

    Items are ``(x, y, index)``; ``x`` is normalised with the usual mean/std, as ``1 x 28 x 28`` images
    or flat 784-vectors. Validation = a stratified part of the training files; test = the t10k files.

    Args:
        root: folder with the four ``.gz`` files (``root``, ``root/raw`` or ``root/MNIST/raw``).
        batch_size: training batch size (> 0).
        val_size: training images held out for validation (>= 0).
        train_size: keep this many training images (stratified), all when ``None``.
        test_size: keep the first this many test images, all when ``None``.
        flatten: flat 784-vectors instead of images.
        seed: seed of the split and the shuffling.

    Raises:
        FileNotFoundError: when ``root`` lacks the files (at construction, before any compute).
        ValueError: for non-positive sizes.

    Example:
        >>> import os
        >>> root = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")
        >>> dm = MNISTDataModule(root, train_size=1000, val_size=100, test_size=500) if os.path.isdir(root) else None
    """

    num_classes = 10

    def __init__(
        self,
        root: str,
        batch_size: int = 128,
        val_size: int = 5000,
        train_size: int | None = None,
        test_size: int | None = None,
        flatten: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for arg, value in (("batch_size", batch_size), ("train_size", train_size), ("test_size", test_size)):
            if value is not None and value < 1:
                raise ValueError(f"MNISTDataModule({arg}={value}): {arg} must be >= 1")
        if val_size < 0:
            raise ValueError(f"MNISTDataModule(val_size={val_size}): val_size must be >= 0")
        self.root = find_mnist_root(root)
        self.batch_size, self.val_size, self.train_size = batch_size, val_size, train_size
        self.test_size, self.flatten, self.seed = test_size, flatten, seed
        self.train_dataset: Dataset
        self.val_dataset: Dataset
        self.test_dataset: Dataset

    def _tensors(self, prefix: str) -> tuple[Tensor, Tensor]:
        images = read_idx(self.root / f"{prefix}-images-idx3-ubyte.gz").float().div_(255.0)
        images = images.sub_(MEAN).div_(STD).unsqueeze(1)
        if self.flatten:
            images = images.flatten(1)
        return images, read_idx(self.root / f"{prefix}-labels-idx1-ubyte.gz").long()

    def setup(self, stage: str | None = None) -> None:
        """Read the files and split (idempotent)."""
        if hasattr(self, "full_train"):
            return
        x, y = self._tensors("train")
        self.full_train = IndexedDataset(TensorDataset(x, y))
        self.train_targets = y
        rest, val_idx = stratified_split(y, 1.0 - self.val_size / len(y), seed=self.seed)
        if self.train_size is not None and self.train_size < len(rest):
            keep, _ = stratified_split(y[rest], self.train_size / len(rest), seed=self.seed)
            rest = rest[keep]
        self.train_dataset = Subset(self.full_train, rest.tolist())
        self.val_dataset = Subset(self.full_train, val_idx.tolist())
        tx, ty = self._tensors("t10k")
        if self.test_size is not None:
            tx, ty = tx[: self.test_size], ty[: self.test_size]
        self.test_dataset = IndexedDataset(TensorDataset(tx, ty))

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the order depends only on (seed, epoch), so resumed runs match."""
        sampler = EpochShuffleSampler(len(self.train_dataset), seed=self.seed)  # type: ignore[arg-type]
        return DataLoader(self.train_dataset, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        """Validation batches."""
        return DataLoader(self.val_dataset, batch_size=512)

    def test_dataloader(self) -> DataLoader:
        """The t10k test set."""
        return DataLoader(self.test_dataset, batch_size=512)
