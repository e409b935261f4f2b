"""RoBoT: a Bayesian-optimised weighted ensemble of training-free proxies, then greedy exploitation."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from litmix.registry import register
from litmix.validation import check_float, check_int

__all__ = ["RoBoTResult", "RoBoTSearch", "minmax_normalize"]


def minmax_normalize(matrix: Any) -> np.ndarray:
    """Min-max normalise each column of an ``(n_archs, M)`` proxy matrix to [0, 1]; NaN/inf entries become 0.

    Min and max are taken over the finite entries only (RoBoT skips NaNs); a constant column maps to 0.

    Example:
        >>> minmax_normalize([[1.0, 5.0], [3.0, float("nan")], [2.0, 7.0]]).tolist()
        [[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]]
    """
    x = np.asarray(matrix, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"proxy matrix must be 2-D (n_archs, n_proxies), got shape {x.shape}")
    out = np.zeros_like(x)
    for j in range(x.shape[1]):
        col = x[:, j]
        finite = np.isfinite(col)
        if not finite.any():
            continue
        lo, hi = col[finite].min(), col[finite].max()
        if hi > lo:
            out[finite, j] = (col[finite] - lo) / (hi - lo)
    return out


@dataclass
class RoBoTResult:
    """Outcome of :meth:`RoBoTSearch.search`.

    Attributes:
        best_index: pool index of the best queried architecture.
        best_arch: its pool entry.
        best_value: its oracle value.
        weights: the best weight vector found by BO, one per proxy.
        queried: pool indices in query order (distinct; ``len(queried) <= budget``).
        values: oracle values in the same order.
        bo_history: ``(weights, objective)`` per BO iteration.
    """

    best_index: int
    best_arch: Any
    best_value: float
    weights: dict[str, float]
    queried: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    bo_history: list[tuple[dict[str, float], float]] = field(default_factory=list)


def _bayes_opt() -> Any:
    try:
        import bayes_opt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "RoBoTSearch needs the PyPI package 'bayesian-optimization': pip install 'litmix[nas]' "
            "(or pip install bayesian-optimization)"
        ) from err
    return bayes_opt


def _fast_ucb(acquisition: Any, kappa: float, seed: int, n_random: int, n_smart: int) -> Any:
    """UCB whose acquisition maximisation uses ``n_random`` samples and ``n_smart`` L-BFGS-B restarts."""
    import inspect

    base = acquisition.UpperConfidenceBound
    accepted = set(inspect.signature(base.suggest).parameters)

    class _UCB(base):  # type: ignore[misc, valid-type]
        def suggest(self, gp: Any, target_space: Any, **kwargs: Any) -> Any:
            if "n_random" in accepted:
                kwargs.setdefault("n_random", n_random)
            for key in ("n_smart", "n_l_bfgs_b"):
                if key in accepted:
                    kwargs.setdefault(key, n_smart)
            return super().suggest(gp, target_space, **kwargs)

    return _UCB(kappa=kappa, random_state=seed)


@register(
    "utility",
    "proxy",
    paper="Robustifying and Boosting Training-Free Neural Architecture Search (https://arxiv.org/abs/2403.07591)",
    module="litmix.nas",
)
class RoBoTSearch:
    """RoBoT: Bayesian optimisation of proxy-ensemble weights, then greedy exploitation of the best ensemble.

    He et al., "Robustifying and Boosting Training-Free Neural Architecture Search" (ICLR 2024,
    https://arxiv.org/abs/2403.07591; reference code hzf1174/RoBoT ``search_nb201.py``). Each proxy is min-max
    normalised over the pool (non-finite values skipped), ``Score(A; w) = Σ_i w_i·M̃_i(A)`` with
    ``w ∈ [−1, 1]^M``. Bayesian optimisation (PyPI ``bayesian-optimization``, Gaussian process + UCB) proposes
    ``w``; its objective is the oracle value of ``argmax_A Score(A; w)``. Then the top-ranked *unqueried*
    architectures under the best ``w`` are queried until ``budget`` distinct oracle queries are spent; the best
    queried architecture is returned. Repeated picks are answered from a cache and do not cost budget.

    Args:
        proxy_names: names of the proxy columns (also the BO parameter names).
        budget: number of distinct oracle queries (>= 1), RoBoT's T (20 on NAS-Bench-201).
        n_bo_iter: BO iterations; default ``budget - 1`` (the reference's ``init_points=0, n_iter=T-1``). BO
            also stops once the budget is spent.
        kappa: UCB exploration constant (> 0).
        seed: random state of the BO library.
        acq_samples: random points scored when maximising the acquisition (the library's ``n_random``,
            default there 10,000; fewer is much faster for the few weights here).
        acq_restarts: L-BFGS-B restarts of the acquisition maximisation (the library's ``n_smart``).
        gp_restarts: restarts of the GP hyperparameter fit (the library's default is 5).

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for empty/duplicate ``proxy_names``, ``budget < 1``, ``n_bo_iter < 1``, ``kappa <= 0`` or a
            negative ``seed``/``acq_restarts``/``gp_restarts``; in
            :meth:`search`, for a proxy matrix whose shape does not match the pool and the names.
        ImportError: in :meth:`search`, when ``bayesian-optimization`` is missing (install the ``nas`` extra).

    Example:
        >>> import random
        >>> pool = list(range(50))  # the oracle value of architecture i is i
        >>> rng = random.Random(0)
        >>> proxies = {"good": [float(i) for i in pool], "noise": [rng.random() for _ in pool]}
        >>> result = RoBoTSearch(["good", "noise"], budget=8, seed=0).search(pool, proxies, oracle=float)
        >>> result.best_arch, len(result.queried)
        (49, 8)
    """

    def __init__(
        self,
        proxy_names: Sequence[str],
        budget: int = 20,
        n_bo_iter: int | None = None,
        kappa: float = 2.576,
        seed: int = 0,
        acq_samples: int = 2000,
        acq_restarts: int = 2,
        gp_restarts: int = 1,
    ) -> None:
        owner = "RoBoTSearch"
        if isinstance(proxy_names, str) or not isinstance(proxy_names, Sequence):
            raise TypeError(f"{owner}(proxy_names={proxy_names!r}): proxy_names must be a list of names")
        names = list(proxy_names)
        if any(not isinstance(n, str) for n in names):
            raise TypeError(f"{owner}(proxy_names={proxy_names!r}): every proxy name must be a str")
        if not names or len(set(names)) != len(names):
            raise ValueError(f"{owner}(proxy_names={proxy_names!r}): need a non-empty list of distinct names")
        check_int(owner, "budget", budget, low=1)
        check_int(owner, "n_bo_iter", n_bo_iter, low=1, allow_none=True)
        check_float(owner, "kappa", kappa, low=0.0, low_open=True)
        check_int(owner, "seed", seed, low=0)
        check_int(owner, "acq_samples", acq_samples, low=1)
        check_int(owner, "acq_restarts", acq_restarts, low=0)
        check_int(owner, "gp_restarts", gp_restarts, low=0)
        self.acq_samples, self.acq_restarts, self.gp_restarts = acq_samples, acq_restarts, gp_restarts
        self.proxy_names = names
        self.budget = budget
        self.n_bo_iter = n_bo_iter if n_bo_iter is not None else max(budget - 1, 1)
        self.kappa = float(kappa)
        self.seed = int(seed)

    @classmethod
    def example(cls) -> RoBoTSearch:
        """A two-proxy search with a budget of 8 queries (the class example).

        Example:
            >>> RoBoTSearch.example().budget
            8
        """
        return cls(["good", "noise"], budget=8, seed=0)

    def _matrix(self, n: int, proxy_matrix: Any) -> np.ndarray:
        if isinstance(proxy_matrix, Mapping):
            missing = [k for k in self.proxy_names if k not in proxy_matrix]
            if missing:
                raise ValueError(f"RoBoTSearch.search: proxy_matrix lacks columns {missing}")
            cols = [np.asarray(proxy_matrix[k], dtype=np.float64) for k in self.proxy_names]
            if any(c.shape != (n,) for c in cols):
                raise ValueError(f"RoBoTSearch.search: every proxy column needs {n} values (one per pool entry)")
            x = np.stack(cols, axis=1)
        else:
            x = np.asarray(proxy_matrix, dtype=np.float64)
            if x.shape != (n, len(self.proxy_names)):
                raise ValueError(
                    f"RoBoTSearch.search: proxy_matrix has shape {x.shape}, expected {(n, len(self.proxy_names))}"
                )
        return minmax_normalize(x)

    def _optimizer(self) -> tuple[Any, Any]:
        bo = _bayes_opt()
        bounds = dict.fromkeys(self.proxy_names, (-1.0, 1.0))
        try:  # bayesian-optimization >= 2.0
            from bayes_opt import acquisition

            acq = _fast_ucb(acquisition, self.kappa, self.seed, self.acq_samples, self.acq_restarts)
            opt = bo.BayesianOptimization(
                f=None,
                pbounds=bounds,
                acquisition_function=acq,
                random_state=self.seed,
                verbose=0,
                allow_duplicate_points=True,
            )
            opt.set_gp_params(n_restarts_optimizer=self.gp_restarts)
            return opt, None
        except ImportError:  # pragma: no cover - bayesian-optimization 1.x
            opt = bo.BayesianOptimization(
                f=None, pbounds=bounds, random_state=self.seed, verbose=0, allow_duplicate_points=True
            )
            return opt, bo.UtilityFunction(kind="ucb", kappa=self.kappa, xi=0.0)

    def search(self, pool: Sequence[Any], proxy_matrix: Any, oracle: Callable[[Any], float]) -> RoBoTResult:
        """Run BO over the ensemble weights, then greedy exploitation, within ``budget`` oracle queries.

        Args:
            pool: candidate architectures (anything ``oracle`` accepts).
            proxy_matrix: ``(len(pool), M)`` array in ``proxy_names`` order, or a mapping name -> column.
            oracle: ``oracle(arch) -> float`` (higher is better), e.g. a benchmark lookup or a short training.

        Returns:
            A :class:`RoBoTResult`.

        Raises:
            ValueError: for an empty pool or a proxy matrix of the wrong shape.
        """
        n = len(pool)
        if n == 0:
            raise ValueError("RoBoTSearch.search: pool is empty")
        scores = self._matrix(n, proxy_matrix)
        cache: dict[int, float] = {}
        queried: list[int] = []

        def query(i: int) -> float:
            if i not in cache:
                cache[i] = float(oracle(pool[i]))
                queried.append(i)
            return cache[i]

        def ranking(w: np.ndarray) -> np.ndarray:
            return np.argsort(-(scores @ w), kind="stable")

        opt, utility = self._optimizer()
        history: list[tuple[dict[str, float], float]] = []
        for _ in range(self.n_bo_iter):
            if len(cache) >= self.budget:
                break
            params = opt.suggest() if utility is None else opt.suggest(utility)
            w = np.array([float(params[k]) for k in self.proxy_names])
            value = query(int(ranking(w)[0]))
            target = value if math.isfinite(value) else -1e12
            opt.register(params=params, target=target)
            history.append(({k: float(params[k]) for k in self.proxy_names}, value))
        best_w, _ = max(history, key=lambda h: h[1])
        w_star = np.array([best_w[k] for k in self.proxy_names])
        for i in ranking(w_star):  # greedy exploitation of the best ensemble
            if len(cache) >= self.budget:
                break
            query(int(i))
        values = [cache[i] for i in queried]
        best = max(range(len(queried)), key=lambda j: values[j])
        return RoBoTResult(
            best_index=queried[best],
            best_arch=pool[queried[best]],
            best_value=values[best],
            weights=best_w,
            queried=queried,
            values=values,
            bo_history=history,
        )
