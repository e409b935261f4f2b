"""Small data utilities shared by the datamodules and callbacks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from litmix.validation import check_int

_SEED_MODULUS = 2**63


class IndexedDataset(Dataset):
    """Wrap a map-style dataset so that item ``i`` is ``(*dataset[i], i)``.

    Sample indices let callbacks cache per-sample values (teacher outputs, reference losses).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> ds = IndexedDataset(TensorDataset(torch.zeros(3, 2), torch.tensor([0, 1, 0])))
        >>> ds[2][2]
        2
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        item = self.dataset[index]
        if not isinstance(item, tuple | list):
            item = (item,)
        return (*item, index)


def split_batch(batch: Any) -> tuple[Any, Tensor | None, Tensor | None]:
    """Split a batch into ``(inputs, targets, indices)``.

    Accepts ``(x,)``, ``(x, y)``, ``(x, y, index)`` tuples/lists and dicts with ``"x"``/``"input"``/
    ``"input_ids"``, ``"y"``/``"target"``/``"labels"`` and ``"index"`` keys. Missing parts are ``None``.

    Example:
        >>> x, y, idx = split_batch((torch.zeros(2, 3), torch.tensor([1, 0])))
        >>> x.shape, y.tolist(), idx
        (torch.Size([2, 3]), [1, 0], None)
    """
    if isinstance(batch, dict):
        x = next((batch[k] for k in ("x", "input", "inputs", "input_ids") if k in batch), None)
        y = next((batch[k] for k in ("y", "target", "targets", "labels") if k in batch), None)
        return x, y, batch.get("index")
    if isinstance(batch, Sequence) and not isinstance(batch, Tensor):
        x = batch[0] if len(batch) > 0 else None
        y = batch[1] if len(batch) > 1 else None
        idx = batch[2] if len(batch) > 2 else None
        return x, y, idx
    return batch, None, None


def stratified_split(targets: Tensor, fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Indices of a stratified split: ``fraction`` of every class goes to the first part.

    Example:
        >>> a, b = stratified_split(torch.tensor([0, 0, 1, 1, 1, 1]), 0.5)
        >>> sorted(a.tolist() + b.tolist())
        [0, 1, 2, 3, 4, 5]
        >>> len(a)
        3
    """
    gen = torch.Generator().manual_seed(seed)
    first, second = [], []
    for c in torch.unique(targets):
        idx = torch.nonzero(targets == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = round(fraction * len(idx))
        first.append(idx[:k])
        second.append(idx[k:])
    return torch.cat(first).sort().values, torch.cat(second).sort().values


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """Random order that depends only on ``(seed, epoch)``, so a resumed run sees the same batches.

    Lightning calls :meth:`set_epoch` at the start of every training epoch (as for a ``DistributedSampler``);
    a plain ``shuffle=True`` DataLoader would instead continue one generator, which a resumed run cannot
    reproduce. Under DDP (``use_distributed_sampler=True``), Lightning wraps a training sampler in its
    ``DistributedSamplerWrapper``, which forwards ``set_epoch`` and deals this permutation (the same on every
    rank) out to the ranks with a ``DistributedSampler(shuffle=True)`` seeded by ``PL_GLOBAL_SEED`` and the
    epoch: the shards are disjoint and together cover every sample (padded by repetition to equal lengths),
    and they depend only on (seed, global seed, epoch), so a resumed run sees the same shards.

    Raises:
        TypeError: for a non-integer ``num_samples`` or ``seed``.
        ValueError: for a negative ``num_samples`` or ``seed``.

    Example:
        >>> s = EpochShuffleSampler(5, seed=0)
        >>> first = list(s); s.set_epoch(1); second = list(s); s.set_epoch(0)
        >>> first == list(s), first != second, sorted(second)
        (True, True, [0, 1, 2, 3, 4])
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = check_int("EpochShuffleSampler", "num_samples", num_samples, low=0)
        self.seed = check_int("EpochShuffleSampler", "seed", seed, low=0)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        # one generator seed per (seed, epoch); the modulus keeps any seed in the generator's range
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % _SEED_MODULUS)
        return iter(torch.randperm(self.num_samples, generator=gen).tolist())
