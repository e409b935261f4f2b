"""XOR cluster data with flipped training labels (benign overfitting and grokking) as a LightningDataModule."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from litmix.base import Example, LitmixDataModule
from litmix.data import EpochShuffleSampler, IndexedDataset
from litmix.registry import register
from litmix.validation import check_float, check_int

_PAPER = "Benign Overfitting and Grokking in ReLU Networks for XOR Cluster Data (https://arxiv.org/abs/2310.02541)"
MAX_SEED = 2**32 - 1
MAX_DIM = 2**20


def xor_cluster_sample(
    n: int, mu1: Tensor, mu2: Tensor, eta: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``n`` points ``x = mu + xi`` with ``mu`` uniform on ``{+mu1, -mu1, +mu2, -mu2}`` and ``xi ~ N(0, I_d)``.

    Returns ``(x, label, clean_label, flipped)``: ``clean_label`` is 0 for the clusters ``+-mu1`` and 1 for
    ``+-mu2`` (the XOR of the signs when ``mu1 = u + v``, ``mu2 = u - v``); ``label`` equals it except on exactly
    ``round(eta * n)`` randomly chosen points (``flipped``), where it is flipped.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y, clean, flipped = xor_cluster_sample(10, torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0]), 0.2, g)
        >>> tuple(x.shape), int(flipped.sum()), bool((y != clean).eq(flipped).all())
        ((10, 2), 2, True)
    """
    cluster = torch.randint(0, 4, (n,), generator=generator)  # 0: +mu1, 1: -mu1, 2: +mu2, 3: -mu2
    centers = torch.stack([mu1, -mu1, mu2, -mu2])
    x = centers[cluster] + torch.randn(n, mu1.numel(), generator=generator)
    clean = (cluster >= 2).long()
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[torch.randperm(n, generator=generator)[: round(eta * n)]] = True
    return x, torch.where(flipped, 1 - clean, clean), clean, flipped


@register("datamodule", "optimization", paper=_PAPER)
class XORClusterDataModule(LitmixDataModule):
    """Four Gaussian clusters ``+-mu1``, ``+-mu2`` (``mu1 _|_ mu2``) labelled by XOR, with flipped training labels.

    The data model of Xu, Wang, Frei, Vardi and Hu, "Benign Overfitting and Grokking in ReLU Networks for XOR
    Cluster Data", ICLR 2024 (https://arxiv.org/abs/2310.02541): ``x = mu + xi`` with ``mu`` uniform on
    ``{+mu1, -mu1, +mu2, -mu2}``, ``||mu1|| = ||mu2|| = mu_norm``, ``mu1`` orthogonal to ``mu2`` and
    ``xi ~ N(0, I_d)``; the clean label is the cluster pair (0 for ``+-mu1``, 1 for ``+-mu2``; the paper's
    ``y = 1 - 2 * label``), which is the XOR of the signs along ``u = (mu1 + mu2) / 2`` and ``v = (mu1 - mu2) / 2``,
    so no linear classifier beats chance. In the training set a fraction ``eta`` of the labels is flipped (exactly
    ``round(eta * n)`` points, chosen at random; the paper flips each with probability ``eta``); the validation
    (= test) set of ``n_val`` points has clean labels. The paper's regime is high-dimensional (``d`` much larger
    than ``n``, ``mu_norm**2`` between about ``sqrt(d)`` and ``d / n``): a two-layer ReLU network trained by GD
    fits the noisy labels at once and generalises (groks) later.

    ``mu1`` and ``mu2`` are ``mu_norm`` times two orthonormal random directions (QR of a seeded Gaussian matrix).
    Everything is a function of ``seed``; the training order depends only on ``(seed, epoch)`` and the DDP shards
    are disjoint. Items are ``(x, label, index)`` (float32, int64, int64). ``batch_size=None`` gives full-batch
    training. After ``setup``, :attr:`mu1`, :attr:`mu2`, :attr:`clean_labels` and :attr:`flipped` describe the
    training set.

    Args:
        n: number of training points (>= 2).
        d: dimension (>= 2).
        mu_norm: norm of the cluster means, a finite number > 0 (default ``d ** 0.3``, roughly the paper's regime
            ``d ** 0.25 < ||mu|| < sqrt(d / n)`` for ``n`` up to ``d ** 0.4``), or ``None`` for that default.
        eta: fraction of flipped training labels, in [0, 0.5).
        n_val: number of clean validation (= test) points (>= 1).
        batch_size: training batch size (>= 1), or ``None`` for the whole training set.
        seed: seed of the means, the samples, the flips and the shuffling, in [0, 2**32 - 1].

    Raises:
        TypeError: for an argument of the wrong type (e.g. ``n=10.0``), naming it.
        ValueError: for ``n < 2``, ``d < 2`` (or above 2**20), ``mu_norm <= 0`` or not finite, ``eta`` outside
            [0, 0.5), ``n_val < 1``, a batch size below 1 or a seed outside [0, 2**32 - 1].

    Example:
        >>> dm = XORClusterDataModule(n=40, d=20, eta=0.1, n_val=100, batch_size=None)
        >>> dm.setup("fit")
        >>> x, y, index = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), int(dm.flipped.sum()), float(dm.mu1 @ dm.mu2) == 0.0 or abs(float(dm.mu1 @ dm.mu2)) < 1e-5
        ((40, 20), 4, True)
    """

    num_classes = 2

    def __init__(
        self,
        n: int = 200,
        d: int = 1000,
        mu_norm: float | None = None,
        eta: float = 0.1,
        n_val: int = 2000,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        name = type(self).__name__
        n = check_int(name, "n", n, low=2)
        d = check_int(name, "d", d, low=2, high=MAX_DIM)
        mu_norm = check_float(name, "mu_norm", mu_norm, low=0.0, low_open=True, allow_none=True)
        eta = check_float(name, "eta", eta, low=0.0, high=0.5, high_open=True)
        n_val = check_int(name, "n_val", n_val, low=1)
        batch_size = check_int(name, "batch_size", batch_size, low=1, allow_none=True)
        seed = check_int(name, "seed", seed, low=0, high=MAX_SEED)
        super().__init__()
        self.n, self.d, self.eta, self.n_val = n, d, eta, n_val
        self.mu_norm = float(d**0.3) if mu_norm is None else mu_norm
        self.batch_size, self.seed = batch_size, seed
        self.train_dataset: Dataset
        self.val_dataset: Dataset

    @classmethod
    def example(cls) -> Example:
        """A :class:`~litmix.testing.TinyClassifier` on 64 points in 8 dimensions, batches of 16."""
        from litmix.testing import TinyClassifier

        return Example(
            TinyClassifier(in_features=8, num_classes=2), cls(n=64, d=8, eta=0.1, n_val=32, batch_size=16), []
        )

    def setup(self, stage: str | None = None) -> None:
        """Draw the means and both sets (idempotent)."""
        if hasattr(self, "mu1"):
            return
        gen = torch.Generator().manual_seed(self.seed)
        basis, _ = torch.linalg.qr(torch.randn(self.d, 2, generator=gen, dtype=torch.float64))
        mu1, mu2 = (self.mu_norm * basis[:, 0]).float(), (self.mu_norm * basis[:, 1]).float()
        x, y, clean, flipped = xor_cluster_sample(self.n, mu1, mu2, self.eta, gen)
        x_val, _, y_val, _ = xor_cluster_sample(self.n_val, mu1, mu2, 0.0, gen)
        self.mu1, self.mu2, self.clean_labels, self.flipped = mu1, mu2, clean, flipped
        self.train_dataset = IndexedDataset(TensorDataset(x, y))
        self.val_dataset = IndexedDataset(TensorDataset(x_val, y_val))

    @property
    def bayes_accuracy(self) -> float:
        """Accuracy of the Bayes-optimal classifier on clean data (nearest of the four means), in closed form.

        A point of cluster ``+mu1`` is classified right when its coordinates along ``mu1`` and ``mu2``,
        ``mu_norm + g1`` and ``g2`` (independent standard normals), satisfy ``|mu_norm + g1| > |g2|``.
        """
        # P(|m + g1| > |g2|) by numerical integration over g2 (trapezoid on a fine grid)
        m = self.mu_norm
        grid = torch.linspace(0.0, 10.0, 20001, dtype=torch.float64)
        phi = torch.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi)
        normal_cdf = torch.special.ndtr
        inside = normal_cdf(grid - m) - normal_cdf(-grid - m)  # P(|m + g1| <= t)
        return float(1.0 - torch.trapezoid(2 * phi * inside, grid))

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the order depends only on (seed, epoch)."""
        n = len(self.train_dataset)  # type: ignore[arg-type]
        sampler = EpochShuffleSampler(n, seed=self.seed)
        return DataLoader(self.train_dataset, batch_size=self.batch_size or n, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        """Clean validation points."""
        n = len(self.val_dataset)  # type: ignore[arg-type]
        return DataLoader(self.val_dataset, batch_size=min(n, 1024))

    def test_dataloader(self) -> DataLoader:
        """The clean validation points."""
        return self.val_dataloader()
