"""Learned active-learning acquisition (Zhang, Jain & Jamieson, "Learning to Actively Learn: A Robust Approach").

Pure tensors. An acquisition *policy* maps the state of an active-learning run (the model's predictions on the
unlabelled pool, the labelled set and its labels, the share of the budget spent) to a distribution over the
next query. Here the state is summarised per candidate by :func:`candidate_features`, a small network scores
the features (:class:`~litmix.active_learning_policy.ActiveLearningPolicy`), and the query is the candidate
with the highest score (or a sample from the softmax during training). :func:`simulate_episodes` runs whole
active-learning episodes on a pool with a kernel ridge learner, vectorised over episodes, and returns the
learning curves and the log-probabilities of the queries (for REINFORCE); the baselines "random" and
"uncertainty" (smallest top-2 margin) run through the same code.

Paper: https://arxiv.org/abs/2010.15382. The simplifications are listed in
:class:`~litmix.active_learning_policy.ActiveLearningPolicy`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int, check_type

__all__ = [
    "NUM_FEATURES",
    "STRATEGIES",
    "BinaryPoolTask",
    "EpisodeResult",
    "acquire_indices",
    "binary_pool_tasks",
    "candidate_features",
    "kernel_ridge_scores",
    "rbf_similarity",
    "simulate_episodes",
    "uncertainty_scores",
]

PAPER = "Learning to Actively Learn: A Robust Approach (https://arxiv.org/abs/2010.15382)"
_MODULE = "litmix.functional.active_learning"

#: Acquisition strategies understood by :func:`acquire_indices` and :func:`simulate_episodes`.
STRATEGIES = ("random", "uncertainty", "learned")
#: Width of :func:`candidate_features`: uncertainty, its rank, density, novelty, predicted-class share, progress.
NUM_FEATURES = 6

#: A policy: ``(..., n, NUM_FEATURES)`` features -> ``(..., n)`` scores (higher: query first).
Scorer = Callable[[Tensor], Tensor]


def _ranks(values: Tensor, valid: Tensor) -> Tensor:
    """Rank of each value among the valid ones along the last axis, scaled to [0, 1] (invalid entries: 0)."""
    filled = values.masked_fill(~valid, float("-inf"))
    order = filled.argsort(dim=-1).argsort(dim=-1).to(values.dtype)  # -inf first
    invalid = (~valid).sum(-1, keepdim=True).to(values.dtype)
    count = valid.sum(-1, keepdim=True).to(values.dtype)
    ranks = (order - invalid) / (count - 1).clamp_min(1.0)
    return ranks.clamp(0.0, 1.0).masked_fill(~valid, 0.0)


@register("function", "optimization", paper=PAPER, module=_MODULE)
def rbf_similarity(x: Tensor, y: Tensor | None = None, gamma: float | None = None) -> Tensor:
    """RBF kernel ``exp(-gamma * ||x_i - y_j||^2)`` between the rows of ``x`` and ``y`` (default ``y = x``).

    With ``gamma=None`` the median heuristic of ``x`` sets ``gamma = 1 / median(||x_i - x_j||^2)``, so the kernel
    has the same scale on every data set (the policy's density and novelty features transfer across tasks).

    Raises:
        TypeError: if ``x`` or ``y`` is not a tensor.
        ValueError: for non-2-D inputs, different widths, or a non-positive ``gamma``.

    Example:
        >>> k = rbf_similarity(torch.tensor([[0.0], [1.0], [3.0]]), gamma=1.0)
        >>> [round(v, 4) for v in k[0].tolist()]
        [1.0, 0.3679, 0.0001]
    """
    check_type("rbf_similarity", "x", x, Tensor)
    if y is not None:
        check_type("rbf_similarity", "y", y, Tensor)
    other = x if y is None else y
    if x.dim() != 2 or other.dim() != 2 or x.shape[1] != other.shape[1]:
        raise ValueError(
            f"rbf_similarity(x=..., y=...): x and y must be 2-D with equal widths, got {tuple(x.shape)} "
            f"and {tuple(other.shape)}"
        )
    if gamma is None:
        d_self = torch.cdist(x, x).pow(2)
        off = d_self[~torch.eye(len(x), dtype=torch.bool)]
        median = off.median() if off.numel() else torch.tensor(1.0)
        gamma = 1.0 / float(median.clamp_min(1e-12))
    gamma = check_float("rbf_similarity", "gamma", gamma, low=0.0, low_open=True)
    return torch.exp(-gamma * torch.cdist(x, other).pow(2))


@register("function", "optimization", paper=PAPER, module=_MODULE)
def uncertainty_scores(probs: Tensor) -> Tensor:
    """Margin uncertainty ``1 - (p_top1 - p_top2)`` of class probabilities ``(..., C)``; in [0, 1], 1 = a tie.

    Raises:
        TypeError: if ``probs`` is not a tensor.
        ValueError: for fewer than 2 classes.

    Example:
        >>> [round(v, 2) for v in uncertainty_scores(torch.tensor([[0.5, 0.5], [0.9, 0.1]])).tolist()]
        [1.0, 0.2]
    """
    check_type("uncertainty_scores", "probs", probs, Tensor)
    if probs.dim() < 1 or probs.shape[-1] < 2:
        raise ValueError(f"uncertainty_scores(probs=...): probs must be (..., C) with C >= 2, got {tuple(probs.shape)}")
    top = probs.topk(2, dim=-1).values
    return 1.0 - (top[..., 0] - top[..., 1])


@register("function", "optimization", paper=PAPER, module=_MODULE)
def candidate_features(
    probs: Tensor,
    similarity: Tensor,
    labelled: Tensor,
    targets: Tensor,
    progress: float | Tensor,
    closest: Tensor | None = None,
) -> Tensor:
    """Per-candidate state features ``(..., n, NUM_FEATURES)`` of an active-learning run on a pool of ``n``.

    Columns: (0) margin uncertainty of ``probs``; (1) its rank among the unlabelled candidates in [0, 1];
    (2) density: mean similarity to the pool divided by its maximum; (3) novelty: ``1 - max`` similarity to a
    labelled point (1 while nothing is labelled); (4) the share of the labelled set whose label is the
    candidate's predicted class (label balance); (5) ``progress``, the share of the budget spent. Every column
    lies in [0, 1] and is scale-free, so one policy applies to models and pools it was not trained on.

    Args:
        probs: ``(..., n, C)`` class probabilities of the current model on the pool.
        similarity: ``(n, n)`` similarity of the pool points (e.g. :func:`rbf_similarity`), values in [0, 1].
        labelled: ``(..., n)`` bool, the labelled points.
        targets: ``(..., n)`` or ``(n,)`` long labels (only the labelled entries are read).
        progress: share of the budget spent, in [0, 1] (a float or a ``(...)`` tensor).
        closest: optional ``(..., n)`` max similarity of each point to the labelled set (when the caller keeps it
            up to date incrementally); computed from ``labelled`` when ``None``.

    Raises:
        TypeError: for a non-tensor input.
        ValueError: for shapes that do not match.

    Example:
        >>> probs = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
        >>> sim = torch.tensor([[1.0, 0.5, 0.1], [0.5, 1.0, 0.2], [0.1, 0.2, 1.0]])
        >>> f = candidate_features(probs, sim, torch.tensor([False, True, False]), torch.tensor([0, 0, 1]), 0.5)
        >>> f.shape, [round(v, 2) for v in f[0].tolist()]
        (torch.Size([3, 6]), [1.0, 1.0, 0.94, 0.5, 1.0, 0.5])
    """
    for name, value in (("probs", probs), ("similarity", similarity), ("labelled", labelled), ("targets", targets)):
        check_type("candidate_features", name, value, Tensor)
    n = similarity.shape[0] if similarity.dim() == 2 else -1
    if similarity.dim() != 2 or similarity.shape[1] != n:
        raise ValueError(f"candidate_features(similarity=...): must be (n, n), got {tuple(similarity.shape)}")
    if probs.dim() < 2 or probs.shape[-2] != n or probs.shape[-1] < 2:
        raise ValueError(f"candidate_features(probs=...): must be (..., {n}, C >= 2), got {tuple(probs.shape)}")
    if labelled.shape != probs.shape[:-1] or labelled.dtype != torch.bool:
        raise ValueError(
            f"candidate_features(labelled=...): must be a bool tensor of shape {tuple(probs.shape[:-1])}, "
            f"got {labelled.dtype} {tuple(labelled.shape)}"
        )
    if targets.shape[-1] != n:
        raise ValueError(f"candidate_features(targets=...): last dimension must be {n}, got {tuple(targets.shape)}")
    dtype = probs.dtype
    unc = uncertainty_scores(probs)
    unc_rank = _ranks(unc, ~labelled)
    density = similarity.mean(dim=1)
    density = (density / density.max().clamp_min(1e-12)).to(dtype).expand_as(unc)
    lab = labelled.to(dtype)
    # max similarity to a labelled point: (..., n, n) * (..., 1, n) -> max over the labelled axis
    if closest is None:
        closest = (similarity.to(dtype) * lab.unsqueeze(-2)).amax(dim=-1)
    novelty = torch.where(labelled.any(-1, keepdim=True), 1.0 - closest, torch.ones_like(closest)).clamp(0.0, 1.0)
    num_classes = probs.shape[-1]
    onehot = torch.nn.functional.one_hot(targets.long().clamp(0, num_classes - 1), num_classes).to(dtype)
    counts = (onehot * lab.unsqueeze(-1)).sum(-2)  # (..., C)
    share = counts / lab.sum(-1, keepdim=True).clamp_min(1.0)
    predicted = probs.argmax(-1)
    class_share = share.gather(-1, predicted)
    prog = torch.as_tensor(progress, dtype=dtype).clamp(0.0, 1.0)
    prog = prog.unsqueeze(-1).expand_as(unc) if prog.dim() > 0 else prog.expand_as(unc)
    return torch.stack([unc, unc_rank, density, novelty, class_share, prog], dim=-1)


def _strategy_scores(
    strategy: str,
    probs: Tensor,
    similarity: Tensor | None,
    labelled: Tensor,
    targets: Tensor,
    progress: float | Tensor,
    policy: Scorer | None,
    generator: torch.Generator | None,
) -> Tensor:
    if strategy == "random":
        return torch.rand(labelled.shape, generator=generator, dtype=probs.dtype)
    if strategy == "uncertainty":
        return uncertainty_scores(probs)
    assert policy is not None
    assert similarity is not None
    return policy(candidate_features(probs, similarity, labelled, targets, progress))


@register("function", "optimization", paper=PAPER, module=_MODULE)
def acquire_indices(
    probs: Tensor,
    similarity: Tensor | None,
    labelled: Tensor,
    targets: Tensor,
    n: int,
    strategy: str = "uncertainty",
    policy: Scorer | None = None,
    progress: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Choose ``n`` unlabelled pool points, one at a time, with ``strategy``.

    ``"random"``: uniformly; ``"uncertainty"``: smallest top-2 margin of ``probs``; ``"learned"``: highest
    ``policy(candidate_features(...))``. Between two picks of one round the picked point counts as labelled
    for the features (novelty, rank), while ``probs`` and the label shares stay those of the round's model,
    since labels only arrive after the round.

    Args:
        probs: ``(n_pool, C)`` class probabilities on the pool.
        similarity: ``(n_pool, n_pool)`` pool similarity (read by ``"learned"`` only; may be ``None`` otherwise).
        labelled: ``(n_pool,)`` bool.
        targets: ``(n_pool,)`` labels (only labelled entries read).
        n: how many to choose (at most the number of unlabelled points).
        strategy: one of :data:`STRATEGIES`.
        policy: the scorer for ``"learned"``.
        progress: share of the budget spent before this round.
        generator: random source of ``"random"``.

    Returns:
        ``(n,)`` long pool positions in the order chosen.

    Raises:
        TypeError: for a wrong argument type.
        ValueError: for an unknown strategy, ``"learned"`` without a policy, or ``n`` above the unlabelled count.

    Example:
        >>> probs = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.6, 0.4]])
        >>> acquire_indices(probs, None, torch.tensor([False, False, True]), torch.zeros(3), 2).tolist()
        [0, 1]
    """
    strategy = check_choice("acquire_indices", "strategy", strategy, STRATEGIES)
    free = int((~labelled).sum())
    n = check_int("acquire_indices", "n", n, low=0, high=free)
    if strategy == "learned" and policy is None:
        raise ValueError("acquire_indices(policy=None): the 'learned' strategy needs a policy")
    if strategy == "learned" and similarity is None:
        raise ValueError("acquire_indices(similarity=None): the 'learned' strategy needs the pool similarity")
    mask = labelled.clone()
    chosen: list[int] = []
    closest = None
    if strategy == "learned":
        assert similarity is not None
        closest = (similarity.to(probs.dtype) * mask.to(probs.dtype)).amax(dim=-1)  # kept up to date per pick
    for _ in range(n):
        if strategy == "learned":
            assert policy is not None
            assert similarity is not None
            scores = policy(candidate_features(probs, similarity, mask, targets, progress, closest))
        else:
            scores = _strategy_scores(strategy, probs, similarity, mask, targets, progress, policy, generator)
        pick = int(scores.masked_fill(mask, float("-inf")).argmax())
        chosen.append(pick)
        mask[pick] = True
        if closest is not None:
            closest = torch.maximum(closest, similarity[pick].to(closest.dtype))  # type: ignore[index]
        if strategy != "learned":  # other scores do not depend on the labelled set
            rest = scores.masked_fill(mask, float("-inf")).argsort(descending=True)[: n - len(chosen)]
            chosen += rest.tolist()
            break
    return torch.tensor(chosen, dtype=torch.long)


@register("function", "optimization", paper=PAPER, module=_MODULE)
def kernel_ridge_scores(
    k_query: Tensor, k_pool: Tensor, labelled_idx: Tensor, signs: Tensor, ridge: float = 0.1
) -> Tensor:
    """Kernel ridge regression on ``+-1`` labels, batched over episodes: ``f = K_qL (K_LL + ridge I)^-1 y``.

    Args:
        k_query: ``(q, n)`` kernel between the query points and the pool.
        k_pool: ``(n, n)`` kernel of the pool.
        labelled_idx: ``(..., m)`` long pool positions of the labelled points.
        signs: ``(..., m)`` labels in {-1, +1}.
        ridge: the ridge (> 0).

    Returns:
        ``(..., q)`` decision values (``> 0``: class 1).

    Raises:
        ValueError: for mismatched shapes or a non-positive ridge.

    Example:
        >>> k = rbf_similarity(torch.tensor([[0.0], [0.1], [2.0], [2.1]]), gamma=1.0)
        >>> (kernel_ridge_scores(k, k, torch.tensor([0, 2]), torch.tensor([-1.0, 1.0])) > 0).tolist()
        [False, False, True, True]
    """
    ridge = check_float("kernel_ridge_scores", "ridge", ridge, low=0.0, low_open=True)
    if labelled_idx.shape != signs.shape:
        raise ValueError(
            f"kernel_ridge_scores(signs=...): shape {tuple(signs.shape)} != labelled_idx {tuple(labelled_idx.shape)}"
        )
    if k_pool.dim() != 2 or k_query.dim() != 2 or k_query.shape[1] != k_pool.shape[0]:
        raise ValueError(
            f"kernel_ridge_scores(k_query=..., k_pool=...): need (q, n) and (n, n), got {tuple(k_query.shape)} "
            f"and {tuple(k_pool.shape)}"
        )
    return _ridge_coefficients(k_pool, labelled_idx, signs, ridge) @ k_query.T.to(k_pool.dtype)


def _ridge_coefficients(k_pool: Tensor, labelled_idx: Tensor, signs: Tensor, ridge: float) -> Tensor:
    """Dual coefficients as a dense ``(..., n)`` vector (zero off the labelled set): ``f(X) = coef @ K(X, pool).T``.

    A point labelled twice contributes once per copy (kernel ridge on the multiset).
    """
    k_ll = k_pool[labelled_idx.unsqueeze(-1), labelled_idx.unsqueeze(-2)]  # (..., m, m)
    eye = torch.eye(k_ll.shape[-1], dtype=k_ll.dtype)
    alpha = torch.linalg.solve(k_ll + ridge * eye, signs.to(k_ll.dtype).unsqueeze(-1)).squeeze(-1)  # (..., m)
    coef = torch.zeros((*labelled_idx.shape[:-1], k_pool.shape[0]), dtype=k_ll.dtype)
    return coef.scatter_add(-1, labelled_idx, alpha)


class EpisodeResult(NamedTuple):
    """Result of :func:`simulate_episodes`.

    Attributes:
        curve: ``(E, budget)`` test accuracy after each query.
        log_prob: ``(E, budget)`` log-probability of each query under the sampling policy (0 without sampling).
        queries: ``(E, budget)`` long pool positions queried, in order.
    """

    curve: Tensor
    log_prob: Tensor
    queries: Tensor


@register("function", "optimization", paper=PAPER, module=_MODULE)
def simulate_episodes(
    k_pool: Tensor,
    k_test: Tensor,
    y_pool: Tensor,
    y_test: Tensor,
    initial: Tensor,
    budget: int,
    strategy: str = "uncertainty",
    policy: Scorer | None = None,
    sample: bool = False,
    temperature: float = 1.0,
    ridge: float = 0.1,
    prob_scale: float = 4.0,
    generator: torch.Generator | None = None,
) -> EpisodeResult:
    """Run ``E`` active-learning episodes of ``budget`` queries on one binary pool, vectorised over episodes.

    The learner is kernel ridge regression on the labelled points (:func:`kernel_ridge_scores`); its class-1
    probability is ``sigmoid(prob_scale * f)``. Each step scores the unlabelled pool with ``strategy`` (as
    :func:`acquire_indices`), queries one point (the best, or with ``sample=True`` a draw from
    ``softmax(scores / temperature)``, whose log-probability is kept for REINFORCE), refits and records the
    test accuracy.

    Args:
        k_pool: ``(n, n)`` pool kernel (e.g. :func:`rbf_similarity`).
        k_test: ``(q, n)`` kernel between test points and the pool.
        y_pool: ``(n,)`` pool labels in {0, 1} (revealed as queried).
        y_test: ``(q,)`` test labels in {0, 1}.
        initial: ``(E, m0)`` long, the labelled pool positions each episode starts from (m0 >= 1).
        budget: queries per episode (>= 1).
        strategy: one of :data:`STRATEGIES`.
        policy: scorer for ``"learned"``.
        sample: draw the queries from the softmax (training) instead of taking the best.
        temperature: softmax temperature (> 0) when sampling.
        ridge: kernel ridge (> 0).
        prob_scale: slope of the probability (> 0).
        generator: random source (random strategy, sampling).

    Returns:
        :class:`EpisodeResult` (curve, log_prob and queries, each ``(E, budget)``).

    Raises:
        TypeError: for a wrong argument type.
        ValueError: for an unknown strategy, ``"learned"`` without a policy, or a budget larger than the pool.

    Example:
        >>> x = torch.cat([torch.randn(20, 2) - 2, torch.randn(20, 2) + 2])
        >>> y = torch.arange(40) // 20
        >>> k = rbf_similarity(x)
        >>> res = simulate_episodes(k, k, y, y, torch.tensor([[0], [25]]), budget=4)
        >>> res.curve.shape, res.queries.shape
        (torch.Size([2, 4]), torch.Size([2, 4]))
    """
    strategy = check_choice("simulate_episodes", "strategy", strategy, STRATEGIES)
    check_type("simulate_episodes", "initial", initial, Tensor)
    if initial.dim() != 2 or initial.shape[1] < 1:
        raise ValueError(f"simulate_episodes(initial=...): must be (E, m0 >= 1), got {tuple(initial.shape)}")
    n = k_pool.shape[0]
    budget = check_int("simulate_episodes", "budget", budget, low=1, high=n - initial.shape[1])
    temperature = check_float("simulate_episodes", "temperature", temperature, low=0.0, low_open=True)
    prob_scale = check_float("simulate_episodes", "prob_scale", prob_scale, low=0.0, low_open=True)
    if strategy == "learned" and policy is None:
        raise ValueError("simulate_episodes(policy=None): the 'learned' strategy needs a policy")
    episodes = initial.shape[0]
    labelled_idx = initial.long()
    mask = torch.zeros(episodes, n, dtype=torch.bool)
    mask.scatter_(1, labelled_idx, True)
    targets = y_pool.long()
    signs_pool = 2.0 * targets.to(k_pool.dtype) - 1.0
    curve, queries, log_probs = [], [], []
    rows = torch.arange(episodes)
    closest = k_pool[labelled_idx].amax(dim=-2)  # (E, n) max similarity to the labelled set
    k_test_t = k_test.T.to(k_pool.dtype)
    with torch.no_grad():
        coef = _ridge_coefficients(k_pool, labelled_idx, signs_pool[labelled_idx], ridge)
    for step in range(budget):
        with torch.no_grad():
            f_pool = coef @ k_pool
            p1 = torch.sigmoid(prob_scale * f_pool)
            probs = torch.stack([1.0 - p1, p1], dim=-1)
        progress = step / budget
        if strategy == "learned":
            with torch.no_grad():
                feats = candidate_features(probs, k_pool, mask, targets.expand(episodes, n), progress, closest)
            assert policy is not None
            scores = policy(feats)
        else:
            scores = _strategy_scores(strategy, probs, k_pool, mask, targets, progress, None, generator)
        masked = scores.masked_fill(mask, float("-inf"))
        if sample:
            logp = torch.log_softmax(masked / temperature, dim=-1)
            pick = torch.multinomial(logp.detach().exp(), 1, generator=generator).squeeze(-1)
            log_probs.append(logp[rows, pick])
        else:
            pick = masked.detach().argmax(dim=-1)
            log_probs.append(torch.zeros(episodes, dtype=k_pool.dtype))
        queries.append(pick)
        mask = mask.scatter(1, pick.unsqueeze(-1), True)
        closest = torch.maximum(closest, k_pool[pick])
        labelled_idx = torch.cat([labelled_idx, pick.unsqueeze(-1)], dim=-1)
        with torch.no_grad():
            coef = _ridge_coefficients(k_pool, labelled_idx, signs_pool[labelled_idx], ridge)
            f_test = coef @ k_test_t
            curve.append(((f_test > 0).long() == y_test.long()).to(k_pool.dtype).mean(-1))
    return EpisodeResult(torch.stack(curve, dim=-1), torch.stack(log_probs, dim=-1), torch.stack(queries, dim=-1))


class BinaryPoolTask(NamedTuple):
    """One binary active-learning problem: a pool to query and a test set (see :func:`binary_pool_tasks`).

    Attributes:
        k_pool: ``(n, n)`` pool kernel.
        k_test: ``(q, n)`` test-pool kernel.
        y_pool: ``(n,)`` pool labels in {0, 1}.
        y_test: ``(q,)`` test labels in {0, 1}.
    """

    k_pool: Tensor
    k_test: Tensor
    y_pool: Tensor
    y_test: Tensor


@register("function", "optimization", paper=PAPER, module=_MODULE)
def binary_pool_tasks(
    x: Tensor,
    y: Tensor,
    pairs: list[tuple[int, int]],
    test_fraction: float = 0.4,
    pool_size: int | None = None,
    seed: int = 0,
) -> list[BinaryPoolTask]:
    """One :class:`BinaryPoolTask` per class pair ``(a, b)`` of ``(x, y)``: class ``a`` -> 0, ``b`` -> 1.

    The pair's samples are split at random into a pool and a test set (``test_fraction``); the kernel is
    :func:`rbf_similarity` with the median heuristic of the pool. ``pool_size`` keeps at most that many pool
    points (smaller pools simulate faster).

    Raises:
        ValueError: for a pair with a class that has no sample, or a fraction outside (0, 1).

    Example:
        >>> x = torch.randn(30, 4); y = torch.arange(30) % 3
        >>> task = binary_pool_tasks(x, y, [(0, 2)])[0]
        >>> task.k_pool.shape, task.k_test.shape, sorted(set(task.y_pool.tolist()))
        (torch.Size([12, 12]), torch.Size([8, 12]), [0, 1])
    """
    test_fraction = check_float(
        "binary_pool_tasks", "test_fraction", test_fraction, low=0.0, high=1.0, low_open=True, high_open=True
    )
    gen = torch.Generator().manual_seed(seed)
    tasks = []
    for a, b in pairs:
        idx = torch.nonzero((y == a) | (y == b)).flatten()
        if not bool((y[idx] == a).any()) or not bool((y[idx] == b).any()):
            raise ValueError(f"binary_pool_tasks(pairs=...): class pair {(a, b)} has a class without samples")
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_test = max(1, round(test_fraction * len(idx)))
        test, pool = idx[:n_test], idx[n_test:]
        if pool_size is not None:
            pool = pool[:pool_size]
        xp, xt = x[pool].double(), x[test].double()
        d = torch.cdist(xp, xp).pow(2)
        gamma = 1.0 / float(d[~torch.eye(len(xp), dtype=torch.bool)].median().clamp_min(1e-12))
        tasks.append(
            BinaryPoolTask(
                rbf_similarity(xp, gamma=gamma),
                rbf_similarity(xt, xp, gamma=gamma),
                (y[pool] == b).long(),
                (y[test] == b).long(),
            )
        )
    return tasks
