"""Thresholdout: a holdout set that stays valid under adaptive reuse (Dwork et al., Science 2015)."""

from __future__ import annotations

import math
from typing import Any

import torch

from litmix.registry import register
from litmix.validation import check_float, check_int

__all__ = ["Thresholdout"]

_PAPER = (
    "The reusable holdout: Preserving validity in adaptive data analysis (Dwork, Feldman, Hardt, Pitassi, "
    "Reingold, Roth; Science 2015; https://arxiv.org/abs/1506.02629)"
)


@register("metric", "optimization", paper=_PAPER, module="litmix.metrics")
class Thresholdout:
    """Answer adaptive queries about a holdout set without overfitting to it (Thresholdout).

    Dwork et al., "The reusable holdout: Preserving validity in adaptive data analysis", Science 2015
    (https://arxiv.org/abs/1506.02629). A query is a statistic measured on the training set and on the holdout
    (an accuracy, a correlation, a mean loss). While the two agree to within a noisy threshold the answer is the
    *training* value, so the analyst learns nothing about the holdout; when they disagree (overfitting shows),
    the answer is the holdout value plus Laplace noise and one unit of the budget is spent:

    * at the start and after every overfitting answer: ``T_hat = threshold + Lap(2 sigma)``;
    * per query: if ``|holdout - train| > T_hat + Lap(4 sigma)``, answer ``holdout + Lap(sigma)`` and spend one
      unit of ``budget``; else answer ``train``;
    * with the budget spent, answers are ``nan`` (the holdout is used up).

    Noise comes from a generator seeded by ``seed``; :meth:`state_dict` holds the budget left, the current
    threshold and the generator state, so a resumed analysis gives the answers an uninterrupted one gives.

    Args:
        threshold: ``T``, the allowed gap between train and holdout values, > 0 (the paper: 0.04 for accuracies).
        sigma: Laplace noise scale, >= 0 (the paper: 0.01).
        budget: number of overfitting answers before the holdout is used up, >= 1.
        seed: seed of the noise, >= 0.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value outside its range, naming it; in :meth:`query`, a non-finite value.

    Example:
        >>> holdout = Thresholdout(threshold=0.04, sigma=0.0, budget=2)
        >>> holdout.query(train=0.71, holdout=0.70)  # close: the training value, nothing learnt about the holdout
        0.71
        >>> holdout.query(train=0.95, holdout=0.70)  # overfitting: the holdout value, one unit spent
        0.7
        >>> holdout.budget_left
        1
    """

    def __init__(self, threshold: float = 0.04, sigma: float = 0.01, budget: int = 100, seed: int = 0) -> None:
        owner = type(self).__name__
        self.threshold = check_float(owner, "threshold", threshold, low=0.0, low_open=True)
        self.sigma = check_float(owner, "sigma", sigma, low=0.0)
        self.budget = check_int(owner, "budget", budget, low=1)
        self.seed = check_int(owner, "seed", seed, low=0)
        self._generator = torch.Generator().manual_seed(self.seed)
        self.budget_left = self.budget
        self.queries = 0
        self._t_hat = self.threshold + self._laplace(2 * self.sigma)

    @classmethod
    def example(cls) -> Thresholdout:
        """The paper's settings: threshold 0.04, noise 0.01."""
        return cls(threshold=0.04, sigma=0.01, budget=100)

    def _laplace(self, scale: float) -> float:
        if scale == 0.0:
            return 0.0
        u = float(torch.rand((), generator=self._generator, dtype=torch.float64)) - 0.5
        return -scale * math.copysign(1.0, u) * math.log1p(-2 * abs(u))

    def query(self, train: float, holdout: float) -> float:
        """The answer to one query (see the class docstring).

        Raises:
            ValueError: if ``train`` or ``holdout`` is not a finite number.
        """
        owner = f"{type(self).__name__}.query"
        train = check_float(owner, "train", float(train))
        holdout = check_float(owner, "holdout", float(holdout))
        self.queries += 1
        if self.budget_left < 1:
            return math.nan
        if abs(holdout - train) > self._t_hat + self._laplace(4 * self.sigma):
            self.budget_left -= 1
            self._t_hat = self.threshold + self._laplace(2 * self.sigma)
            return holdout + self._laplace(self.sigma)
        return train

    def state_dict(self) -> dict[str, Any]:
        """Budget left, queries answered, the current threshold and the noise generator's state."""
        return {
            "budget_left": self.budget_left,
            "queries": self.queries,
            "t_hat": self._t_hat,
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.budget_left = int(state["budget_left"])
        self.queries = int(state["queries"])
        self._t_hat = float(state["t_hat"])
        self._generator.set_state(state["generator"])
