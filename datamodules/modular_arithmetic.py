"""Modular arithmetic tables ``(a op b) mod p`` (the grokking data sets) as a LightningDataModule."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from litmix.base import Example, LitmixDataModule
from litmix.data import EpochShuffleSampler, IndexedDataset
from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_float, check_int

_PAPER = "Grokking: Generalization Beyond Overfitting on Small Algorithmic Datasets (https://arxiv.org/abs/2201.02177)"
MAX_SEED = 2**32 - 1
#: Largest modulus: the table has p**2 rows.
MAX_P = 2**12
OPERATIONS = ("add", "sub", "mul", "div")


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % k for k in range(2, int(n**0.5) + 1))


def modular_table(p: int, op: str) -> tuple[Tensor, Tensor]:
    """All pairs ``(a, b)`` of Z_p (``b != 0`` for ``div``) and their labels ``(a op b) mod p``.

    ``div`` is ``a * b^(p - 2) mod p`` (``b``'s inverse by Fermat's little theorem, so ``p`` must be prime).
    Rows are in the order ``a * p + b`` (skipping ``b = 0`` for ``div``).

    Example:
        >>> pairs, labels = modular_table(5, "div")
        >>> pairs[:3].tolist(), labels[:3].tolist(), len(labels)
        ([[0, 1], [0, 2], [0, 3]], [0, 0, 0], 20)
        >>> int(labels[(pairs == torch.tensor([3, 2])).all(1)])  # 3 / 2 = 3 * 3 = 9 = 4 mod 5
        4
    """
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    if op == "div":
        keep = b != 0
        a, b = a[keep], b[keep]
        inverse = torch.tensor([pow(int(v), p - 2, p) for v in range(p)])
        labels = (a * inverse[b]) % p
    elif op == "add":
        labels = (a + b) % p
    elif op == "sub":
        labels = (a - b) % p
    elif op == "mul":
        labels = (a * b) % p
    else:
        raise ValueError(f"modular_table(op={op!r}): op must be one of {OPERATIONS}")
    return torch.stack([a, b], 1), labels


@register("datamodule", "optimization", paper=_PAPER)
class ModularArithmeticDataModule(LitmixDataModule):
    """Every equation ``a op b = c (mod p)``, a seeded train fraction of them for training (grokking data).

    Power et al., "Grokking: Generalization Beyond Overfitting on Small Algorithmic Datasets", 2022
    (https://arxiv.org/abs/2201.02177): a small network trained on a fraction of an operation table of Z_p fits
    the training equations early and generalises to the held-out ones much later ("grokking"). Kumar et al.,
    "Grokking as the transition from lazy to rich training dynamics", ICLR 2024 (https://arxiv.org/abs/2310.06110)
    use the same modular-addition table with a two-layer MLP over one-hot inputs.

    Items are ``(tokens, label, index)``: ``tokens`` are the int64 operands ``(a, b)``, or ``(a, b, p)`` with
    ``equals_token=True`` (token ``p`` stands for "=", so the vocabulary has ``p + 1`` symbols, as in Power et
    al.'s sequence format); ``label = (a op b) mod p`` in ``[0, p)``; ``index`` is the row of the full table
    (order ``a * p + b``, ``b = 0`` skipped for ``div``). ``div`` is ``a * b^-1`` over ``b != 0`` and needs a prime
    ``p``. The split is a seeded random ``train_fraction`` of the table (at least one equation on each side); the
    validation (= test) split is the rest. The training order depends only on ``(seed, epoch)``, and under DDP the
    ranks get disjoint shards. ``batch_size=None`` serves the whole training split as one batch (full-batch
    training, as in the grokking papers). After ``setup`` the whole table is in :attr:`tokens` / :attr:`labels`
    with the split in :attr:`train_indices` / :attr:`val_indices` (for full-batch loops outside a Trainer).

    Args:
        p: the modulus, in [2, 4096] (prime for ``op="div"``).
        op: ``"add"``, ``"sub"``, ``"mul"`` or ``"div"``.
        train_fraction: share of the table used for training, in (0, 1).
        batch_size: training batch size (>= 1), or ``None`` for the whole training split.
        equals_token: append the "=" token ``p`` to every input.
        seed: seed of the split and the shuffling, in [0, 2**32 - 1].

    Raises:
        TypeError: for an argument of the wrong type (e.g. ``p=7.0``), naming it.
        ValueError: for ``p < 2`` (or above 4096), a non-prime ``p`` with ``op="div"``, an unknown ``op``, a
            ``train_fraction`` outside (0, 1), a batch size below 1 or a seed outside [0, 2**32 - 1].

    Example:
        >>> dm = ModularArithmeticDataModule(p=7, op="add", train_fraction=0.5, batch_size=8)
        >>> dm.setup("fit")
        >>> tokens, label, index = next(iter(dm.train_dataloader()))
        >>> tokens.dtype, tuple(tokens.shape), bool(((tokens[:, 0] + tokens[:, 1]) % 7 == label).all())
        (torch.int64, (8, 2), True)
        >>> len(dm.train_dataset), len(dm.val_dataset), dm.vocab_size, dm.num_classes
        (24, 25, 7, 7)
    """

    def __init__(
        self,
        p: int = 97,
        op: Literal["add", "sub", "mul", "div"] = "add",
        train_fraction: float = 0.5,
        batch_size: int | None = 512,
        equals_token: bool = False,
        seed: int = 0,
    ) -> None:
        name = type(self).__name__
        p = check_int(name, "p", p, low=2, high=MAX_P)
        op = check_choice(name, "op", op, OPERATIONS)
        if op == "div" and not _is_prime(p):
            raise ValueError(f"{name}(p={p}, op='div'): p must be prime for op='div' (every b != 0 needs an inverse)")
        train_fraction = check_float(
            name, "train_fraction", train_fraction, low=0.0, high=1.0, low_open=True, high_open=True
        )
        batch_size = check_int(name, "batch_size", batch_size, low=1, allow_none=True)
        equals_token = check_bool(name, "equals_token", equals_token)
        seed = check_int(name, "seed", seed, low=0, high=MAX_SEED)
        super().__init__()
        self.p, self.op, self.train_fraction = p, op, train_fraction
        self.batch_size, self.equals_token, self.seed = batch_size, equals_token, seed
        self.train_dataset: Dataset
        self.val_dataset: Dataset

    @property
    def num_classes(self) -> int:
        """Number of labels: ``p``."""
        return self.p

    @property
    def vocab_size(self) -> int:
        """Number of input symbols: ``p``, plus one for the "=" token."""
        return self.p + int(self.equals_token)

    @property
    def seq_len(self) -> int:
        """Tokens per input: 2, or 3 with the "=" token."""
        return 2 + int(self.equals_token)

    @classmethod
    def example(cls) -> Example:
        """A :class:`~litmix.testing.TinyTokenLM` over ``(a, b, =)`` tokens of ``mod 7`` addition, batches of 8."""
        from litmix.testing import TinyTokenLM

        datamodule = cls(p=7, op="add", train_fraction=0.5, batch_size=8, equals_token=True)
        return Example(TinyTokenLM(vocab_size=datamodule.vocab_size), datamodule, [])

    def setup(self, stage: str | None = None) -> None:
        """Build the table and split it (idempotent)."""
        if hasattr(self, "tokens"):
            return
        pairs, labels = modular_table(self.p, self.op)
        if self.equals_token:
            pairs = torch.cat([pairs, torch.full((len(pairs), 1), self.p, dtype=torch.long)], 1)
        n = len(labels)
        k = min(max(round(self.train_fraction * n), 1), n - 1)
        gen = torch.Generator().manual_seed(self.seed)
        perm = torch.randperm(n, generator=gen)
        self.tokens, self.labels = pairs, labels
        self.train_indices, self.val_indices = perm[:k].sort().values, perm[k:].sort().values
        full = IndexedDataset(TensorDataset(pairs, labels))
        self.train_dataset = Subset(full, self.train_indices.tolist())
        self.val_dataset = Subset(full, self.val_indices.tolist())

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the order depends only on (seed, epoch)."""
        n = len(self.train_dataset)  # type: ignore[arg-type]
        sampler = EpochShuffleSampler(n, seed=self.seed)
        return DataLoader(self.train_dataset, batch_size=self.batch_size or n, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        """The held-out equations."""
        n = len(self.val_dataset)  # type: ignore[arg-type]
        return DataLoader(self.val_dataset, batch_size=self.batch_size or n)

    def test_dataloader(self) -> DataLoader:
        """The held-out equations (same as validation)."""
        return self.val_dataloader()
