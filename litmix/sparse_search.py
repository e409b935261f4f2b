"""Random search over sparse masks at a fixed sparsity: the neutral baseline for sparse architecture search."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from litmix.functional.proxies import list_proxies, zero_cost_proxies
from litmix.functional.sparsity import default_parameter_names, erk_densities, random_masks
from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int, check_type

__all__ = ["RandomSparseSearch", "SparseTrial"]

PAPER = "Random Search as a Baseline for Sparse Neural Network Architecture Search (https://arxiv.org/abs/2403.08265)"


@dataclass
class SparseTrial:
    """One candidate of a :class:`RandomSparseSearch`: its index, score, per-tensor densities and masks."""

    index: int
    score: float
    densities: dict[str, float]
    masks: dict[str, Tensor] = field(repr=False)

    @property
    def kept(self) -> int:
        """Number of kept weights over the masked tensors."""
        return int(sum(int(m.sum()) for m in self.masks.values()))


def apply_masks(model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    """Zero the pruned weights of ``model`` in place (``True`` = kept) and return it."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].device, params[name].dtype))
    return model


@register("utility", "sparsity", paper=PAPER, module="litmix.sparse_search")
class RandomSparseSearch:
    """Sample ``num_candidates`` random masks at a fixed sparsity, score each, return the best.

    Implements the random-search baseline of "Random Search as a Baseline for Sparse Neural Network Architecture
    Search" (https://arxiv.org/abs/2403.08265): candidates are uniformly random unstructured masks
    (:func:`litmix.functional.sparsity.random_masks`) over the selected weights, with per-tensor densities either
    ``"uniform"`` (every tensor keeps ``1 - sparsity``) or ``"erk"`` (Erdős–Rényi–Kernel,
    :func:`litmix.functional.sparsity.erk_densities`); the overall budget is exact up to one weight per tensor.
    Each candidate is scored on a masked copy of the model (the model itself is never touched) by

    * a zero-cost proxy of :func:`litmix.functional.proxies.zero_cost_proxies` (``scoring="synflow"``, ``"snip"``,
      ... any name of :func:`~litmix.functional.proxies.list_proxies`; higher is better),
    * ``scoring="train"``: ``score_fn(masked_copy) -> float`` (e.g. a short training run returning validation
      accuracy; the callable must keep the masked weights at zero if it trains),
    * ``scoring="random"``: a seeded uniform random score (the paper's finding is that search does not beat it).

    Every trial goes to ``logger.log_metrics`` under ``sparse_search/`` (``step`` = trial index); a ``WandbLogger``
    also gets the table ``sparse_search/trials``. :meth:`to_markdown` renders the table.

    Args:
        sparsity: fraction of the selected weights pruned, in [0, 1).
        num_candidates: number of random masks ``K`` (>= 1).
        profile: ``"uniform"`` or ``"erk"`` per-tensor densities.
        scoring: a proxy name, ``"train"`` or ``"random"``.
        seed: seed of the masks and of the proxies (>= 0); the search is deterministic given it.
        logger: optional Lightning logger for the trials.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for ``sparsity`` outside [0, 1), ``num_candidates < 1``, an unknown profile or scoring; in
            :meth:`search`, unknown parameter names, a model with nothing prunable, proxy scoring without inputs
            or ``scoring="train"`` without ``score_fn``.

    Example:
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
        >>> search = RandomSparseSearch(sparsity=0.5, num_candidates=3, scoring="synflow", seed=0)
        >>> best = search.search(net, x, y)
        >>> len(search.trials), best.kept, best.score == max(t.score for t in search.trials)
        (3, 88, True)
    """

    def __init__(
        self,
        sparsity: float = 0.7,
        num_candidates: int = 8,
        profile: Literal["uniform", "erk"] = "uniform",
        scoring: str = "synflow",
        seed: int = 0,
        logger: Any = None,
    ) -> None:
        cls = type(self).__name__
        self.sparsity: float = check_float(cls, "sparsity", sparsity, low=0.0, high=1.0, high_open=True)
        self.num_candidates: int = check_int(cls, "num_candidates", num_candidates, low=1, high=100_000)
        self.profile: str = check_choice(cls, "profile", profile, ("uniform", "erk"))
        self.scoring: str = check_choice(cls, "scoring", scoring, (*list_proxies(), "train", "random"))
        self.seed: int = check_int(cls, "seed", seed, low=0, high=2**63 - 1)
        self.logger = logger
        self.trials: list[SparseTrial] = []

    def densities(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, float]:
        """Per-tensor densities of the candidates (``1 - sparsity`` overall)."""
        density = 1.0 - self.sparsity
        if self.profile == "erk":
            return erk_densities(shapes, density)
        return dict.fromkeys(shapes, density)

    def search(
        self,
        model: nn.Module,
        inputs: Any = None,
        targets: Tensor | None = None,
        parameter_names: Sequence[str] | None = None,
        score_fn: Callable[[nn.Module], float] | None = None,
    ) -> SparseTrial:
        """Sample, score and log ``num_candidates`` masks; return the best trial (first on ties).

        Args:
            model: the dense model (left unchanged).
            inputs: a batch for the proxies (see :func:`~litmix.functional.proxies.zero_cost_proxies`).
            targets: its labels (for label-based proxies).
            parameter_names: weights to mask; default the weights of Linear/Conv-like layers.
            score_fn: ``masked_model -> float`` for ``scoring="train"``.

        Returns:
            The best :class:`SparseTrial`; all trials are in :attr:`trials`.
        """
        cls = type(self).__name__
        check_type(cls, "model", model, nn.Module)
        names = list(parameter_names) if parameter_names is not None else default_parameter_names(model)
        params = dict(model.named_parameters())
        unknown = [n for n in names if n not in params]
        if unknown:
            raise ValueError(f"{cls}.search(parameter_names={unknown}): unknown parameters of the model")
        if not names:
            raise ValueError(f"{cls}.search(model={type(model).__name__}): the model has no prunable weights")
        if self.scoring == "train" and not callable(score_fn):
            raise ValueError(f"{cls}(scoring='train'): search() needs a callable score_fn(masked_model) -> float")
        if self.scoring not in ("train", "random") and inputs is None:
            raise ValueError(f"{cls}(scoring={self.scoring!r}): search() needs inputs for the proxy")
        shapes = {n: tuple(params[n].shape) for n in names}
        densities = self.densities(shapes)
        generator = torch.Generator().manual_seed(self.seed)
        self.trials = []
        for k in range(self.num_candidates):
            masks = random_masks(shapes, densities, generator)
            self.trials.append(
                SparseTrial(k, self._score(model, masks, inputs, targets, score_fn, generator), densities, masks)
            )
        self._log()
        return max(self.trials, key=lambda t: (t.score, -t.index))

    def _score(
        self,
        model: nn.Module,
        masks: dict[str, Tensor],
        inputs: Any,
        targets: Tensor | None,
        score_fn: Callable[[nn.Module], float] | None,
        generator: torch.Generator,
    ) -> float:
        if self.scoring == "random":
            return float(torch.rand((), generator=generator))
        masked = apply_masks(copy.deepcopy(model), masks)
        if self.scoring == "train":
            assert score_fn is not None
            score = float(score_fn(masked))
        else:
            score = float(
                zero_cost_proxies(masked, inputs, targets, names=[self.scoring], seed=self.seed)[self.scoring]
            )
        return score if math.isfinite(score) else -math.inf

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """Columns and rows of the trials (index, score, kept weights)."""
        return ["trial", "score", "kept"], [[t.index, t.score, t.kept] for t in self.trials]

    def to_markdown(self) -> str:
        """The trials as a markdown table."""
        columns, rows = self.table()
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row) + " |" for row in rows]
        return "\n".join(lines)

    def _log(self) -> None:
        if self.logger is None:
            return
        for t in self.trials:
            self.logger.log_metrics({"sparse_search/score": t.score, "sparse_search/kept": float(t.kept)}, step=t.index)
        from lightning.pytorch.loggers import WandbLogger

        if isinstance(self.logger, WandbLogger):
            columns, rows = self.table()
            self.logger.log_table(key="sparse_search/trials", columns=columns, data=rows)
