"""A plain text file as character-level language-modelling batches."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from litmix.base import Example, LitmixDataModule
from litmix.data import EpochShuffleSampler
from litmix.registry import register
from litmix.validation import check_float, check_int, check_path

MAX_SEED = 2**32 - 1


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


_EXAMPLE_TEXT: list[str] = []


def _example_text() -> str:
    """A per-process text file (a pangram, repeated) for :meth:`CharLMDataModule.example`, removed at exit."""
    if _EXAMPLE_TEXT and os.path.isfile(_EXAMPLE_TEXT[0]):
        return _EXAMPLE_TEXT[0]
    folder = tempfile.mkdtemp(prefix="litmix-charlm-example-")
    owner = os.getpid()

    def cleanup() -> None:
        if os.getpid() == owner:  # not in forked DDP workers
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(cleanup)
    path = os.path.join(folder, "text.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("the quick brown fox jumps over the lazy dog. " * 40)
    _EXAMPLE_TEXT[:] = [path]
    return path


@register("datamodule", "data")
class CharLMDataModule(LitmixDataModule):
    """Character-level LM batches from one UTF-8 text file (e.g. Tiny Shakespeare).

    The vocabulary is the sorted set of characters in the file; the first ``1 - val_fraction`` of the text
    trains, the rest validates. Items are ``(input_ids, target_ids, index)`` of length ``block_size``.

    Args:
        path: the text file.
        block_size: characters per sequence (>= 1).
        batch_size: sequences per batch (>= 1).
        val_fraction: tail share of the text used for validation, in (0, 1).
        max_chars: read at most this many characters (``None``: all).
        seed: shuffling seed, in [0, 2**32 - 1]; the training order depends only on ``(seed, epoch)``.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        FileNotFoundError: naming the missing file (a :class:`~litmix.validation.MissingPathError`, so also a
            ``ValueError``).
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
        name = type(self).__name__
        file = check_path(name, "path", path)
        block_size = check_int(name, "block_size", block_size, low=1)
        batch_size = check_int(name, "batch_size", batch_size, low=1)
        val_fraction = check_float(name, "val_fraction", val_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        max_chars = check_int(name, "max_chars", max_chars, low=1, allow_none=True)
        seed = check_int(name, "seed", seed, low=0, high=MAX_SEED)
        assert file is not None
        if not file.is_file():
            raise ValueError(f"{name}(path={str(path)!r}): path must be a text file, got a directory")
        super().__init__()
        self.path, self.block_size, self.batch_size = file, block_size, batch_size
        self.val_fraction, self.max_chars, self.seed = val_fraction, max_chars, seed
        text = self.path.read_text(encoding="utf-8")
        self.text = text[: self.max_chars] if self.max_chars else text
        n_val = int(len(self.text) * self.val_fraction)
        if len(self.text) - n_val <= block_size + 1 or n_val <= block_size + 1:
            raise ValueError(
                f"{name}(path={str(path)!r}, block_size={block_size}, val_fraction={val_fraction}, "
                f"max_chars={max_chars}): the text ({len(self.text)} characters) is too short for one training and "
                f"one validation block: the training part ({len(self.text) - n_val}) and the validation part "
                f"({n_val}) must each exceed block_size + 1 characters; lower block_size, raise max_chars or "
                "move val_fraction towards 0.5"
            )
        self.chars = sorted(set(self.text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def example(cls) -> Example:
        """A tiny next-token model (:class:`litmix.testing.TinyTokenLM`) on a 1,800-character text in blocks of 16."""
        from litmix.testing import TinyTokenLM

        datamodule = cls(_example_text(), block_size=16, batch_size=8, val_fraction=0.2)
        return Example(TinyTokenLM(vocab_size=datamodule.vocab_size), datamodule, [])

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
        """Tokenise and split (idempotent)."""
        if hasattr(self, "train_dataset"):
            return
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
