"""A plain text file as character-level language-modelling batches."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from litmix.data import EpochShuffleSampler
from litmix.registry import register


class _Windows(Dataset):
    def __init__(self, ids: Tensor, block_size: int, stride: int) -> None:
        self.ids, self.block_size = ids, block_size
        self.starts = torch.arange(0, len(ids) - block_size - 1, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        s = int(self.starts[i])
        chunk = self.ids[s : s + self.block_size + 1]
        return chunk[:-1], chunk[1:], i


@register("datamodule", "data")
class CharLMDataModule(pl.LightningDataModule):
    """Character-level LM batches from one UTF-8 text file (e.g. Tiny Shakespeare).

    The vocabulary is the sorted set of characters in the file; the first ``1 - val_fraction`` of the text
    trains, the rest validates. Items are ``(input_ids, target_ids, index)`` of length ``block_size``.

    Args:
        path: the text file.
        block_size: characters per sequence (>= 1).
        batch_size: sequences per batch (>= 1).
        val_fraction: tail share of the text used for validation, in (0, 1).
        max_chars: read at most this many characters (``None``: all).
        seed: shuffling seed.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: for sizes below 1, a fraction outside (0, 1), or a text too short for one block.

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "t.txt")
        >>> _ = open(path, "w").write("hello world " * 50)
        >>> dm = CharLMDataModule(path, block_size=16, batch_size=4)
        >>> dm.setup("fit")
        >>> x, y, _ = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), dm.vocab_size, dm.decode(x[0, :5].tolist()) != ""
        ((4, 16), 8, True)
    """

    def __init__(
        self,
        path: str,
        block_size: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.1,
        max_chars: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for arg, value in (("block_size", block_size), ("batch_size", batch_size), ("max_chars", max_chars)):
            if value is not None and value < 1:
                raise ValueError(f"CharLMDataModule({arg}={value}): {arg} must be >= 1")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"CharLMDataModule(val_fraction={val_fraction}): val_fraction must be in (0, 1)")
        if not Path(path).is_file():
            raise FileNotFoundError(f"CharLMDataModule(path={path!r}): no such text file")
        self.path, self.block_size, self.batch_size = Path(path), block_size, batch_size
        self.val_fraction, self.max_chars, self.seed = val_fraction, max_chars, seed
        text = self.path.read_text(encoding="utf-8")
        self.text = text[: self.max_chars] if self.max_chars else text
        n_val = int(len(self.text) * self.val_fraction)
        if len(self.text) - n_val <= block_size + 1 or n_val <= block_size + 1:
            raise ValueError(
                f"CharLMDataModule(path={path!r}, block_size={block_size}): the text ({len(self.text)} characters) "
                "is too short for one training and one validation block"
            )
        self.chars = sorted(set(self.text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters."""
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Characters to ids."""
        return [self.stoi[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        """Ids to characters."""
        return "".join(self.chars[i] for i in ids)

    def setup(self, stage: str | None = None) -> None:
        """Tokenise and split."""
        ids = torch.tensor(self.encode(self.text), dtype=torch.long)
        n_val = int(len(ids) * self.val_fraction)
        self.train_dataset = _Windows(ids[:-n_val], self.block_size, self.block_size)
        self.val_dataset = _Windows(ids[-n_val:], self.block_size, self.block_size)

    def train_dataloader(self) -> DataLoader:
        """Shuffled non-overlapping windows; the order depends only on (seed, epoch)."""
        sampler = EpochShuffleSampler(len(self.train_dataset), seed=self.seed)  # type: ignore[arg-type]
        return DataLoader(self.train_dataset, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        """Validation windows."""
        return DataLoader(self.val_dataset, batch_size=self.batch_size)
