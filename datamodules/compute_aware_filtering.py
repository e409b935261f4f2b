"""Compute-aware data filtering: the pool of quality buckets to train on depends on the compute budget."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from litmix.base import Example
from litmix.data import split_batch
from litmix.datamodules._data_pruning import SubsetDataModule, broadcast_object, rank_and_world
from litmix.functional.data_pruning import _check_curve, choose_pool, pool_loss
from litmix.registry import register
from litmix.validation import check_int, check_type

QualityFn = Callable[[Any, Any], Tensor]


def _check_buckets(owner: str, buckets: Any) -> list[list[int]] | None:
    if buckets is None:
        return None
    check_type(owner, "buckets", buckets, (list, tuple))
    if not buckets:
        raise ValueError(f"{owner}(buckets={buckets!r}): buckets must be a non-empty list of non-empty index lists")
    out = []
    for bucket in buckets:
        check_type(owner, "buckets", bucket, (list, tuple))
        if not bucket:
            raise ValueError(f"{owner}(buckets={buckets!r}): every bucket must hold at least one index")
        for i in bucket:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise TypeError(f"{owner}(buckets={buckets!r}): bucket entries must be ints, got {type(i).__name__}")
            if i < 0:
                raise ValueError(f"{owner}(buckets={buckets!r}): bucket entries must be positions >= 0, got {i}")
        out.append([int(i) for i in bucket])
    seen: set[int] = set()
    for bucket in out:
        if seen & set(bucket) or len(set(bucket)) != len(bucket):
            raise ValueError(f"{owner}(buckets={buckets!r}): buckets must be disjoint and free of repeats")
        seen |= set(bucket)
    return out


@register(
    "datamodule",
    "data",
    paper="Scaling Laws for Data Filtering -- Data Curation cannot be Compute Agnostic "
    "(https://arxiv.org/abs/2404.07177)",
)
class ComputeAwareFiltering(SubsetDataModule):
    """Train on the top quality buckets of any DataModule's training set, as many as the compute budget calls for.

    Goyal, Maini, Lipton, Raghunathan, Kolter, "Scaling Laws for Data Filtering -- Data Curation cannot be
    Compute Agnostic" (CVPR 2024, https://arxiv.org/abs/2404.07177). Each quality bucket has a utility curve
    ``{"a", "b", "tau"}``: loss ``a * n^b`` over the first pass, the utility ``b`` halving every ``tau``
    repetitions (fit it from small runs with :func:`litmix.functional.data_pruning.fit_utility_curve`). A pool
    of the ``m`` best buckets has the size-weighted mean curve; for ``budget_samples`` samples seen, the ``m``
    with the lowest predicted loss is chosen (:func:`~litmix.functional.data_pruning.choose_pool`): a small budget
    favours the best bucket alone, a large one more, lower-quality data instead of many repetitions.

    Buckets are explicit positions in the base's training set (``buckets``, best first) or equal-size quantiles
    of ``quality_fn(x, y) -> (batch,)`` scores (higher is better; computed on rank 0 and broadcast), one per
    utility curve. The selection is made on first use (the training loader), kept in :meth:`state_dict` (a
    resumed run serves the same subset) and logged as a table (per bucket: size, ``a``, ``b``, ``tau``, predicted
    loss of the pool of the buckets up to it, selected) through the logger's ``log_table`` (W&B) or as CSV.
    Validation, test and predict loaders are the base's, unchanged; Lightning shards the subset under DDP.

    Args:
        base: the DataModule to filter (exposes ``train_dataset`` or a map-style train loader dataset).
        budget_samples: compute budget in samples seen (> 0).
        utilities: one utility curve ``{"a": > 0, "b": <= 0 typically, "tau": > 0}`` per bucket, best first.
        buckets: positions of each bucket in the base's training set (non-empty, disjoint), best first; or
            ``None`` with ``quality_fn``.
        quality_fn: ``(x, y) -> (batch,)`` quality scores used when ``buckets`` is ``None``.
        batch_size: training batch size; ``None``: the base's.
        seed: seed of the shuffling.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a ``budget_samples <= 0``, an empty bucket list or an empty bucket, overlapping buckets,
            a utility curve without ``a``/``b``/``tau`` or with a non-positive ``a``/``tau``, a number of curves
            that differs from the number of buckets, neither ``buckets`` nor ``quality_fn``, or (at ``setup``) a
            bucket position outside the training set; each message names the argument.

    Example:
        >>> from litmix.datamodules import DigitsDataModule
        >>> curves = [{"a": 1.0, "b": -0.5, "tau": 1.0}, {"a": 1.0, "b": -0.4, "tau": 1.0}]
        >>> buckets = [list(range(100)), list(range(100, 1100))]
        >>> small = ComputeAwareFiltering(DigitsDataModule(), 100, curves, buckets)
        >>> large = ComputeAwareFiltering(DigitsDataModule(), 5000, curves, buckets)
        >>> small.setup("fit"); large.setup("fit")
        >>> len(small.select()), len(large.select()), small.num_buckets_selected, large.num_buckets_selected
        (100, 1100, 1, 2)
    """

    log_prefix = "compute_aware_filtering"

    def __init__(
        self,
        base: pl.LightningDataModule,
        budget_samples: int,
        utilities: list[dict[str, float]] | None = None,
        buckets: list[list[int]] | None = None,
        quality_fn: QualityFn | None = None,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        name = type(self).__name__
        check_type(name, "base", base, pl.LightningDataModule)
        self.budget_samples = check_int(name, "budget_samples", budget_samples, low=1)
        self.buckets = _check_buckets(name, buckets)
        if quality_fn is not None and not callable(quality_fn):
            raise TypeError(f"{name}(quality_fn={quality_fn!r}): quality_fn must be callable or None")
        if self.buckets is None and quality_fn is None:
            raise ValueError(f"{name}(buckets=None, quality_fn=None): give buckets or a quality_fn")
        if utilities is None:
            raise ValueError(f"{name}(utilities=None): give one utility curve per bucket (see fit_utility_curve)")
        check_type(name, "utilities", utilities, (list, tuple))
        if not utilities:
            raise ValueError(f"{name}(utilities=[]): give one utility curve per bucket (see fit_utility_curve)")
        self.utilities = [_check_curve(name, "utilities", c) for c in utilities]
        if self.buckets is not None and len(self.buckets) != len(self.utilities):
            raise ValueError(
                f"{name}(buckets=..., utilities=...): {len(self.buckets)} buckets but {len(self.utilities)} utility "
                "curves; give one curve per bucket"
            )
        self.quality_fn = quality_fn
        super().__init__(base, batch_size=batch_size, seed=seed)
        self.num_buckets_selected: int | None = None
        self.predicted_losses: list[float] | None = None

    @classmethod
    def example(cls) -> Example:
        """:class:`~litmix.testing.TinyClassifier` on the better of two buckets of 64 training digits."""
        from litmix.datamodules.digits import DigitsDataModule
        from litmix.testing import TinyClassifier

        base = DigitsDataModule(batch_size=16, train_size=64)
        curves = [{"a": 1.0, "b": -0.5, "tau": 1.0}, {"a": 1.0, "b": -0.2, "tau": 1.0}]
        module = TinyClassifier(in_features=64, num_classes=10)
        return Example(module, cls(base, 30, curves, buckets=[list(range(30)), list(range(30, 60))]), [])

    def _check_data(self) -> None:
        """Every bucket position inside the training set."""
        if self.buckets is None:
            return
        n = self.num_train
        bad = [i for bucket in self.buckets for i in bucket if i >= n]
        if bad:
            raise ValueError(
                f"{type(self).__name__}(buckets=...): positions {bad[:5]} are outside the training set of {n} samples"
            )

    def quality_buckets(self) -> list[list[int]]:
        """The buckets (best first): the given ones, or quantiles of ``quality_fn`` scores (rank 0's, broadcast)."""
        if self.buckets is not None:
            return self.buckets
        rank, _ = rank_and_world()
        buckets = None
        if rank == 0:
            assert self.quality_fn is not None
            scores = []
            for batch in DataLoader(self.train_base, batch_size=512, shuffle=False):  # type: ignore[arg-type]
                x, y, _ = split_batch(batch)
                with torch.no_grad():
                    s = torch.as_tensor(self.quality_fn(x, y)).flatten().float().cpu()
                if s.shape[0] != len(x):
                    raise ValueError(
                        f"{type(self).__name__}(quality_fn=...): quality_fn must return one score per sample, got "
                        f"{s.shape[0]} for a batch of {len(x)}"
                    )
                scores.append(s)
            order = torch.cat(scores).argsort(descending=True, stable=True)
            buckets = [chunk.sort().values.tolist() for chunk in order.tensor_split(len(self.utilities))]
        return broadcast_object(buckets)  # type: ignore[no-any-return]

    def _compute_selection(self) -> dict[str, Any] | None:
        buckets = self.quality_buckets()
        sizes = [len(b) for b in buckets]
        if min(sizes) < 1:
            raise ValueError(
                f"{type(self).__name__}(utilities=...): {len(self.utilities)} quality buckets from "
                f"{self.num_train} samples leave one empty; give fewer utility curves"
            )
        m, losses = choose_pool(self.budget_samples, sizes, self.utilities)
        self.num_buckets_selected, self.predicted_losses = m, losses
        kept: Tensor = torch.tensor(sorted(i for b in buckets[:m] for i in b), dtype=torch.long)
        rows = [[j, sizes[j], c["a"], c["b"], c["tau"], losses[j], j < m] for j, c in enumerate(self.utilities)]
        columns = ["bucket", "size", "a", "b", "tau", "predicted_loss_of_pool_up_to_here", "selected"]
        return {"kept": kept, "table": {"columns": columns, "data": rows}, "m": m, "losses": losses}

    def select(self) -> Tensor:
        """Sorted positions of the samples of the chosen buckets (computed once, then cached)."""
        kept = super().select()
        if self.num_buckets_selected is None and self._table is not None:
            self.num_buckets_selected = sum(bool(row[-1]) for row in self._table["data"])
            self.predicted_losses = [float(row[5]) for row in self._table["data"]]
        return kept

    def predicted_loss(self, num_buckets: int, budget_samples: int | None = None) -> float:
        """Predicted loss of training on the ``num_buckets`` best buckets for ``budget_samples`` samples seen."""
        buckets = self.quality_buckets()
        sizes = [len(b) for b in buckets[:num_buckets]]
        return float(pool_loss(budget_samples or self.budget_samples, sizes, self.utilities[:num_buckets]))
