"""Per-layer zero-cost proxy features of architectures with their ground truth, for learned proxies (ParZC)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset, TensorDataset

from litmix.base import Example, LitmixDataModule
from litmix.data import EpochShuffleSampler, IndexedDataset
from litmix.nas.nb201 import build_nb201_network, code_to_arch, parse_code
from litmix.registry import register
from litmix.validation import check_bool, check_int, check_path, check_type

__all__ = ["ProxyFeatureDataModule", "nb201_layer_features", "nb201_layer_names"]

DEFAULT_PROXIES: tuple[str, ...] = ("grad_norm", "snip", "synflow")


def nb201_layer_names(C: int = 16, N: int = 5) -> list[str]:
    """Names of every conv/linear layer an NB201 network of this size can have (fixed feature layout).

    The layout is that of the all-``nor_conv_3x3`` cell (every edge has a conv): stem, ``3N`` cells x 6 edges,
    2 reduction blocks x 3 convs, classifier; for C=16, N=5 that is ParZC's 98 layers.

    Example:
        >>> len(nb201_layer_names(16, 5)), len(nb201_layer_names(8, 1))
        (98, 26)
    """
    net = build_nb201_network((2,) * 6, C=C, N=N)
    return [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]


def _slog(v: float) -> float:
    return math.copysign(math.log1p(abs(v)), v) if math.isfinite(v) else 0.0


def nb201_layer_features(
    archs: Sequence[str | Sequence[int]],
    proxies: Sequence[str] = DEFAULT_PROXIES,
    *,
    C: int = 16,
    N: int = 5,
    input_shape: Sequence[int] = (3, 32, 32),
    batch_size: int = 16,
    num_classes: int = 10,
    seed: int = 0,
) -> Tensor:
    """Per-layer proxy vectors of NB201 cells, shape ``(len(archs), len(proxies) * L)``.

    ``L`` is the number of layers of :func:`nb201_layer_names`.

    Scores come from :class:`litmix.nas.ranker.ProxyRanker` (``per_layer=True``, fixed seed, Gaussian batch with
    random labels unless the proxies are data-free); entry ``[p * L + l]`` is ``sign(v)·log(1 + |v|)`` of proxy
    ``p`` on layer ``l``, 0 for layers the cell does not have (an edge without a conv). Sharded over ranks when
    ``torch.distributed`` is initialised.

    Raises:
        ValueError: for unknown proxies or architectures (see ``ProxyRanker``).

    Example:
        >>> f = nb201_layer_features([(2,) * 6, (0,) * 6], ["synflow"], C=4, N=1, input_shape=(3, 8, 8))
        >>> f.shape, int((f[1] != 0).sum())  # the skip-only cell has convs only in stem/reductions/head
        (torch.Size([2, 26]), 8)
    """
    from litmix.nas.ranker import ProxyRanker

    names = nb201_layer_names(C, N)
    ranker = ProxyRanker(
        list(archs),
        names=list(proxies),
        C=C,
        N=N,
        num_classes=num_classes,
        input_shape=tuple(input_shape),
        batch_size=batch_size,
        seed=seed,
        per_layer=True,
    )
    table = ranker.score_all()
    out = torch.zeros(len(archs), len(proxies) * len(names))
    for i, row in enumerate(table):
        for p, proxy in enumerate(proxies):
            values = row[proxy]
            for l_idx, layer in enumerate(names):
                if layer in values:
                    out[i, p * len(names) + l_idx] = _slog(float(values[layer]))
    return out


@register(
    "datamodule",
    "proxy",
    paper="ParZC: Parametric Zero-Cost Proxies for Efficient NAS (https://arxiv.org/abs/2402.02105)",
)
class ProxyFeatureDataModule(LitmixDataModule):
    """Architecture features (e.g. per-layer proxy statistics) and ground truth, split into train / held-out.

    The data of learned zero-cost proxies such as ParZC (Dong et al., "ParZC: Parametric Zero-Cost Proxies for
    Efficient NAS", https://arxiv.org/abs/2402.02105): a small random fraction of architectures (``train_size``)
    trains the predictor, the rest is the validation/test set the ranking is judged on. Items are
    ``(x, y, index)``; features are standardised with the training split's mean/std, targets likewise (ranking
    losses do not care; MSE does). Data comes from a ``torch.save``'d dict ``{"features": (n, F), "targets": (n,),
    "archs": [...]}`` (see :meth:`save`) or from tensors.

    Args:
        path: file written by :meth:`save` (or None with ``features``/``targets``).
        train_size: training architectures: a fraction in (0, 1) or a count >= 2.
        batch_size: training batch size (>= 2: ranking losses need pairs).
        seed: seed of the split and of the shuffling (:class:`~litmix.data.EpochShuffleSampler`: the order depends
            only on ``(seed, epoch)``, so a resumed run sees the same batches).
        standardize: standardise features and targets with the training statistics.
        features: ``(n, F)`` tensor (instead of ``path``).
        targets: ``(n,)`` tensor (instead of ``path``).
        archs: optional architecture names, kept as ``self.archs``.

    Under DDP Lightning wraps the training sampler in a ``DistributedSamplerWrapper``: every rank gets a
    disjoint shard of the same ``(seed, epoch)`` permutation.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for neither or both of ``path`` and ``features``, mismatched sizes, a bad ``train_size``
            or ``batch_size < 2``.
        FileNotFoundError: for a missing ``path`` (a :class:`litmix.validation.MissingPathError`, also a
            ``ValueError``, naming the argument).

    Example:
        >>> dm = ProxyFeatureDataModule(features=torch.randn(50, 6), targets=torch.randn(50), train_size=0.2)
        >>> dm.setup("fit")
        >>> len(dm.train_dataset), len(dm.val_dataset), dm.num_features
        (10, 40, 6)
    """

    def __init__(
        self,
        path: str | None = None,
        train_size: float = 0.1,
        batch_size: int = 32,
        seed: int = 0,
        standardize: bool = True,
        features: Tensor | None = None,
        targets: Tensor | None = None,
        archs: list[str] | None = None,
    ) -> None:
        name = "ProxyFeatureDataModule"
        check_path(name, "path", path, must_exist=True, allow_none=True)
        check_type(name, "features", features, Tensor, allow_none=True)
        check_type(name, "targets", targets, Tensor, allow_none=True)
        if (path is None) == (features is None):
            raise ValueError(f"{name}: give exactly one of path= or features= (with targets=)")
        if features is not None and (targets is None or len(targets) != len(features) or features.dim() != 2):
            raise ValueError(f"{name}: features must be (n, F) and targets (n,) of the same length")
        if isinstance(train_size, bool) or not isinstance(train_size, int | float):
            raise TypeError(
                f"{name}(train_size={train_size!r}): train_size must be a fraction in (0, 1) or a count >= 2, "
                f"got {type(train_size).__name__}"
            )
        if not (0.0 < train_size < 1.0 or (float(train_size).is_integer() and train_size >= 2)):
            raise ValueError(
                f"{name}(train_size={train_size!r}): train_size must be a fraction in (0, 1) or a count >= 2"
            )
        if features is not None and train_size >= 1 and train_size >= len(features):
            raise ValueError(
                f"{name}(train_size={train_size!r}): a count must leave held-out architectures (< {len(features)})"
            )
        check_int(name, "batch_size", batch_size, low=2)
        check_int(name, "seed", seed, low=0)
        check_bool(name, "standardize", standardize)
        check_type(name, "archs", archs, list, allow_none=True)
        for arch in archs or []:
            check_type(name, "archs", arch, str)
        super().__init__()
        self.path = path
        self.train_size = train_size
        self.batch_size = batch_size
        self.seed = seed
        self.standardize = standardize
        self._features = features
        self._targets = targets
        self.archs = archs

    @classmethod
    def example(cls) -> Example:
        """A tiny :class:`~litmix.plugins.ParZCPredictor` on 120 synthetic architectures (40 train)."""
        from litmix.plugins.parzc_predictor import ParZCPredictor  # lazy: example only

        return ParZCPredictor.example()

    @staticmethod
    def save(
        path: str | os.PathLike[str], features: Tensor, targets: Tensor, archs: Sequence[str] | None = None
    ) -> None:
        """Write the file format :class:`ProxyFeatureDataModule` reads."""
        torch.save({"features": features, "targets": targets, "archs": list(archs or [])}, path)

    @staticmethod
    def from_nb201(
        path: str | os.PathLike[str],
        records: Any,
        archs: Sequence[str | Sequence[int]],
        **feature_kwargs: Any,
    ) -> None:
        """Compute :func:`nb201_layer_features` for ``archs`` and save them with their validation accuracy.

        ``records`` is the output of :func:`~litmix.nas.nb201.load_nb201`; nothing is done when ``path`` exists.
        """
        if Path(path).exists():
            return
        keys = [code_to_arch(parse_code(a)) for a in archs]
        feats = nb201_layer_features(keys, **feature_kwargs)
        targets = torch.tensor([records[k].val_accuracy for k in keys], dtype=torch.float32)
        ProxyFeatureDataModule.save(path, feats, targets, keys)

    @property
    def num_features(self) -> int:
        """Feature dimension (after ``setup``)."""
        return int(self.features.shape[1])

    def setup(self, stage: str | None = None) -> None:
        """Load, split and standardise (idempotent)."""
        if hasattr(self, "features"):
            return
        if self.path is not None:
            check_path("ProxyFeatureDataModule", "path", self.path)
            data = torch.load(self.path, map_location="cpu", weights_only=False)
            feats, targets = data["features"], data["targets"]
            self.archs = list(data.get("archs") or []) or self.archs
        else:
            assert self._features is not None
            assert self._targets is not None
            feats, targets = self._features, self._targets
        feats, targets = feats.float(), targets.float().flatten()
        n = len(targets)
        n_train = round(self.train_size * n) if self.train_size < 1 else int(self.train_size)
        n_train = min(max(n_train, 2), n - 1)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        self.train_idx, self.val_idx = perm[:n_train].sort().values, perm[n_train:].sort().values
        if self.standardize:
            mean, std = feats[self.train_idx].mean(0), feats[self.train_idx].std(0).clamp_min(1e-6)
            feats = (feats - mean) / std
            t_mean, t_std = targets[self.train_idx].mean(), targets[self.train_idx].std().clamp_min(1e-6)
            targets = (targets - t_mean) / t_std
        self.features, self.targets = feats, targets
        full = IndexedDataset(TensorDataset(feats, targets))
        self.train_dataset = Subset(full, self.train_idx.tolist())
        self.val_dataset = Subset(full, self.val_idx.tolist())

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the order depends only on ``(seed, epoch)``, so resumed runs match."""
        sampler = EpochShuffleSampler(len(self.train_dataset), seed=self.seed)
        return DataLoader(self.train_dataset, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        """Held-out architectures, in index order."""
        return DataLoader(self.val_dataset, batch_size=max(self.batch_size, 256))

    def test_dataloader(self) -> DataLoader:
        """Same as :meth:`val_dataloader`."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """Same as :meth:`val_dataloader`."""
        return self.val_dataloader()
