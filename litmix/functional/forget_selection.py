"""Forget-set generators: per-sample scores that choose *which* data to unlearn.

Two score producers, both feeding :meth:`litmix.datamodules.ForgetRetainDataModule.from_scores`:

- :func:`knn_shapley`: the exact Data Shapley value of every training point for a K-nearest-neighbour
  classifier, in ``O(N log N)`` per test point (Jia et al., "Efficient Task-Specific Data Valuation for Nearest
  Neighbor Algorithms", https://arxiv.org/abs/1908.08619; Data Shapley: Ghorbani & Zou, "Data Shapley: Equitable
  Valuation of Data for Machine Learning", https://arxiv.org/abs/1904.02868). Low values flag harmful
  (e.g. mislabeled) points, high values the most useful ones.
- :func:`tmc_shapley`: truncated Monte-Carlo Data Shapley for any subset utility (e.g. a model refit), and
  :func:`g_shapley`, its one-epoch batch-1 SGD approximation for differentiable models.
- :func:`worst_case_forget_scores`: the bi-level "worst-case forget set" of Fan et al., "Challenging Forgets:
  Unveiling the Worst-Case Forget Sets in Machine Unlearning" (https://arxiv.org/abs/2403.07362): continuous
  weights ``w`` in ``[0, 1]^N`` with ``sum(w) = m``, updated so that the chosen points keep a low loss after the
  model is fine-tuned (SignSGD) on the rest; the top-``m`` weights are the hardest set to forget.
  :func:`bisection_projection` is its projection onto ``{w in [0, 1]^N, sum(w) = m}``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int, check_type

__all__ = [
    "bisection_projection",
    "g_shapley",
    "knn_shapley",
    "per_sample_loss",
    "tmc_shapley",
    "worst_case_forget_scores",
]


def _check_xy(owner: str, x: Tensor, y: Tensor, xname: str, yname: str) -> None:
    check_type(owner, xname, x, Tensor)
    check_type(owner, yname, y, Tensor)
    if x.dim() != 2 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{owner}({xname}, {yname}): need {xname} [N, D] and {yname} [N] with the same N, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{owner}({xname}): empty; give at least one point")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{owner}({xname}): holds NaN or infinite values")


@register(
    "function",
    "unlearning",
    paper="Efficient Task-Specific Data Valuation for Nearest Neighbor Algorithms (https://arxiv.org/abs/1908.08619)",
)
def knn_shapley(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, k: int = 5) -> Tensor:
    """Exact Shapley value of every training point for the unweighted K-NN classifier's test likelihood.

    Utility of a subset ``S``: the mean over test points of ``(1/K) sum_{j <= min(K, |S|)} 1[y_{a_j(S)} = y_test]``
    (``a_j(S)`` the ``j``-th nearest point of ``S``, Euclidean). Its Shapley values have a closed form (Jia et al.
    2019, Theorem 1): with the training points sorted by distance to a test point, ``a_1`` nearest,
    ``s_{a_N} = 1[y_{a_N} = y] / N`` and ``s_{a_i} = s_{a_{i+1}} + (1[y_{a_i} = y] - 1[y_{a_{i+1}} = y]) / K *
    min(K, i) / i``; the values are averaged over test points. They sum to ``U(all) - U(empty)`` (efficiency).
    Ties in distance are broken by training index.

    Args:
        train_x: ``[N, D]`` training features.
        train_y: ``[N]`` integer labels.
        test_x: ``[M, D]`` validation features (the utility's data).
        test_y: ``[M]`` integer labels.
        k: neighbours (>= 1).

    Returns:
        ``[N]`` float64 values.

    Raises:
        TypeError: a non-tensor input or a non-int ``k``.
        ValueError: mismatched shapes, empty sets, non-finite features or ``k < 1``.

    Example:
        Brute force over every permutation of 5 points agrees with the closed form:

        >>> import itertools, math
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(5, 2, generator=g), torch.tensor([0, 1, 0, 1, 1])
        >>> tx, ty = torch.randn(3, 2, generator=g), torch.tensor([0, 1, 1])
        >>> def utility(s):
        ...     if not s:
        ...         return 0.0
        ...     idx = torch.tensor(sorted(s))
        ...     d = torch.cdist(tx, x[idx])
        ...     near = idx[d.argsort(dim=1, stable=True)[:, :2]]          # K = 2
        ...     return float((y[near] == ty[:, None]).double().sum(1).mean() / 2)
        >>> brute = torch.zeros(5, dtype=torch.float64)
        >>> for perm in itertools.permutations(range(5)):
        ...     for j, i in enumerate(perm):
        ...         brute[i] += utility(perm[: j + 1]) - utility(perm[:j])
        >>> brute /= math.factorial(5)
        >>> values = knn_shapley(x, y, tx, ty, k=2)
        >>> bool(torch.allclose(values, brute, atol=1e-12)), abs(float(values.sum()) - utility(range(5))) < 1e-12
        (True, True)
    """
    owner = "knn_shapley"
    _check_xy(owner, train_x, train_y, "train_x", "train_y")
    _check_xy(owner, test_x, test_y, "test_x", "test_y")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"{owner}(train_x, test_x): feature sizes differ ({train_x.shape[1]} vs {test_x.shape[1]})")
    check_int(owner, "k", k, low=1)
    n = train_x.shape[0]
    dist = torch.cdist(test_x.double(), train_x.double())  # [M, N]
    order = dist.argsort(dim=1, stable=True)  # a_1 .. a_N per test point
    match = (train_y[order] == test_y[:, None]).double()  # [M, N] in sorted order
    i = torch.arange(1, n + 1, dtype=torch.float64)
    coef = torch.clamp(i, max=k) / i / k  # min(K, i) / (i K), i = 1..N
    s = torch.zeros_like(match)
    s[:, -1] = match[:, -1] / n
    # s_i = s_{i+1} + (match_i - match_{i+1}) coef_i for i = N-1 .. 1: a reversed cumulative sum
    diffs = (match[:, :-1] - match[:, 1:]) * coef[:-1]
    s[:, :-1] = s[:, -1:] + diffs.flip(1).cumsum(1).flip(1)
    values = torch.zeros_like(s).scatter_(1, order, s)
    return values.mean(0)


@register(
    "function",
    "unlearning",
    paper="Data Shapley: Equitable Valuation of Data for Machine Learning (https://arxiv.org/abs/1904.02868)",
)
def tmc_shapley(
    utility: Callable[[Tensor], float],
    n: int,
    permutations: int = 100,
    tolerance: float = 0.01,
    seed: int = 0,
) -> Tensor:
    """Truncated Monte-Carlo Shapley values of ``n`` points for any subset ``utility`` (Ghorbani & Zou 2019).

    Per random permutation, points are added one by one and each gets the utility change it causes; once the
    running utility is within ``tolerance * |U(all)|`` of ``U(all)`` for more than 5 consecutive points, the rest
    of the permutation gets 0 (truncation, as in the reference ``DShap.py``; ``tolerance=0`` disables it).
    Values are the mean over ``permutations``. ``utility`` takes a 1-D ``LongTensor`` of point indices (possibly
    empty) and returns a float, e.g. the validation accuracy of a model fitted on those points. Use
    :func:`knn_shapley` where a K-NN utility will do: it is exact and needs no refits.

    Args:
        utility: subset -> score.
        n: number of points (>= 1).
        permutations: Monte-Carlo permutations (>= 1).
        tolerance: truncation tolerance relative to ``|U(all)|`` (>= 0).
        seed: seed of the permutations (>= 0).

    Returns:
        ``[n]`` float64 values.

    Raises:
        TypeError: ``utility`` not callable or a wrong numeric type.
        ValueError: a value out of range, or a non-finite utility.

    Example:
        Without truncation TMC converges to the exact values (here :func:`knn_shapley`'s):

        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(6, 2, generator=g), torch.tensor([0, 1, 0, 1, 1, 0])
        >>> tx, ty = torch.randn(5, 2, generator=g), torch.tensor([0, 1, 1, 0, 1])
        >>> def utility(idx):
        ...     if len(idx) == 0:
        ...         return 0.0
        ...     near = idx[torch.cdist(tx, x[idx]).argsort(dim=1, stable=True)[:, :3]]
        ...     return float((y[near] == ty[:, None]).double().sum(1).mean() / 3)
        >>> tmc = tmc_shapley(utility, 6, permutations=300, tolerance=0.0)     # max error 0.007
        >>> float((tmc - knn_shapley(x, y, tx, ty, k=3)).abs().max()) < 0.03
        True
    """
    owner = "tmc_shapley"
    if not callable(utility):
        raise TypeError(f"{owner}(utility={utility!r}): utility must be a callable subset -> float")
    check_int(owner, "n", n, low=1)
    check_int(owner, "permutations", permutations, low=1)
    check_float(owner, "tolerance", tolerance, low=0.0)
    check_int(owner, "seed", seed, low=0)

    def score(idx: Tensor) -> float:
        value = float(utility(idx))
        if not math.isfinite(value):
            raise ValueError(f"{owner}: utility returned {value} for a subset of {len(idx)} points")
        return value

    gen = torch.Generator().manual_seed(seed)
    empty, full = score(torch.zeros(0, dtype=torch.long)), score(torch.arange(n))
    total = torch.zeros(n, dtype=torch.float64)
    for _ in range(permutations):
        perm = torch.randperm(n, generator=gen)
        previous, close = empty, 0
        for j in range(n):
            if tolerance > 0 and close > 5:
                break  # the rest of the permutation adds (about) nothing
            current = score(perm[: j + 1])
            total[perm[j]] += current - previous
            previous = current
            close = close + 1 if abs(full - current) <= tolerance * abs(full) else 0
    return total / permutations


@register(
    "function",
    "unlearning",
    paper="Data Shapley: Equitable Valuation of Data for Machine Learning (https://arxiv.org/abs/1904.02868)",
)
def g_shapley(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    val_inputs: Tensor,
    val_targets: Tensor,
    lr: float = 0.1,
    permutations: int = 20,
    score: Literal["accuracy", "neg_loss"] = "neg_loss",
    seed: int = 0,
) -> Tensor:
    """Gradient Shapley (G-Shapley, Ghorbani & Zou 2019): one epoch of batch-1 SGD in permutation order per sample.

    Every permutation restarts from ``model``'s weights and takes one SGD step (``lr``, cross-entropy) per training
    point in permutation order; the point's marginal is the change of the validation ``score`` that its step
    causes (``"accuracy"`` as in the reference ``DShap.py``, or ``"neg_loss"``, minus the mean validation
    cross-entropy: smoother for tiny validation sets). Values are the mean over ``permutations``. ``model`` is
    not modified. The reference searches ``lr`` over ``10^-1 ... 10^-4.5``; pass the one that trains well.

    Args:
        model: the initial classifier (e.g. an untrained ``nn.Linear``; logits from ``model(inputs)``).
        inputs: ``[N, ...]`` training inputs.
        targets: ``[N]`` labels.
        val_inputs: validation inputs (the utility's data).
        val_targets: validation labels.
        lr: SGD step size (> 0).
        permutations: Monte-Carlo permutations (>= 1).
        score: ``"neg_loss"`` or ``"accuracy"``.
        seed: seed of the permutations (>= 0).

    Returns:
        ``[N]`` float64 values.

    Raises:
        TypeError: a wrong argument type.
        ValueError: a value out of range or mismatched inputs and targets.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(30, 2, generator=g); y = (x[:, 0] > 0).long(); y[:3] = 1 - y[:3]    # 3 flipped
        >>> v = g_shapley(nn.Linear(2, 2), x, y, x, (x[:, 0] > 0).long(), permutations=10)
        >>> v.shape, bool(v[:3].mean() < v[3:].mean())
        (torch.Size([30]), True)
    """
    owner = "g_shapley"
    check_type(owner, "model", model, nn.Module)
    for name, tensor in (("inputs", inputs), ("targets", targets), ("val_inputs", val_inputs)):
        check_type(owner, name, tensor, Tensor)
    check_type(owner, "val_targets", val_targets, Tensor)
    if inputs.shape[0] != targets.shape[0] or val_inputs.shape[0] != val_targets.shape[0] or len(targets) == 0:
        raise ValueError(f"{owner}(inputs, targets, val_inputs, val_targets): need matching, non-empty [N] sets")
    check_float(owner, "lr", lr, low=0.0, low_open=True)
    check_int(owner, "permutations", permutations, low=1)
    check_choice(owner, "score", score, ("accuracy", "neg_loss"))
    check_int(owner, "seed", seed, low=0)
    frozen = copy.deepcopy(model)
    theta0 = {k: v.detach().clone() for k, v in frozen.named_parameters()}
    buffers = dict(frozen.named_buffers())

    def value(params: dict[str, Tensor]) -> float:
        with torch.no_grad():
            logits = functional_call(frozen, (params, buffers), (val_inputs,))
            if score == "accuracy":
                return float((logits.argmax(-1) == val_targets).double().mean())
            return -float(F.cross_entropy(logits, val_targets))

    gen = torch.Generator().manual_seed(seed)
    n = int(targets.shape[0])
    total = torch.zeros(n, dtype=torch.float64)
    for _ in range(permutations):
        params = {k: v.clone().requires_grad_(True) for k, v in theta0.items()}
        previous = value(params)
        for i in torch.randperm(n, generator=gen).tolist():
            loss = F.cross_entropy(functional_call(frozen, (params, buffers), (inputs[i : i + 1],)), targets[i : i + 1])
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            with torch.no_grad():
                params = {
                    k: (p - lr * gr if gr is not None else p).requires_grad_(True)
                    for (k, p), gr in zip(params.items(), grads, strict=True)
                }
            current = value(params)
            total[i] += current - previous
            previous = current
    return total / permutations


def per_sample_loss(model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
    """Per-sample cross-entropy of a classifier (no gradient): the difficulty score baseline.

    Low loss = the model generalises to the point, so forgetting it is hard (Challenging Forgets observe that the
    bi-level selection largely picks the lowest-loss points).

    Example:
        >>> per_sample_loss(nn.Linear(2, 3), torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)).shape
        torch.Size([4])
    """
    with torch.no_grad():
        return F.cross_entropy(model(inputs), targets, reduction="none")


def bisection_projection(w: Tensor, m: float, iters: int = 60) -> Tensor:
    """Project ``w`` onto ``{v in [0, 1]^N : sum(v) = m}``: ``clamp(w - mu, 0, 1)``, ``mu`` by bisection (float64).

    Raises:
        ValueError: ``m`` outside ``[0, N]``.

    Example:
        >>> v = bisection_projection(torch.tensor([0.9, 0.5, 2.0, -1.0]), 2.0)
        >>> [round(x, 4) for x in v.tolist()], round(float(v.sum()), 6)
        ([0.7, 0.3, 1.0, 0.0], 2.0)
    """
    w = w.double()
    n = w.numel()
    if not 0.0 <= m <= n:
        raise ValueError(f"bisection_projection(m={m}): m must be in [0, {n}] (the number of weights)")
    lo, hi = float(w.min()) - 1.0, float(w.max())
    for _ in range(iters):
        mu = (lo + hi) / 2
        if float((w - mu).clamp(0.0, 1.0).sum()) > m:
            lo = mu
        else:
            hi = mu
    return (w - (lo + hi) / 2).clamp(0.0, 1.0)


@register(
    "function",
    "unlearning",
    paper="Challenging Forgets: Unveiling the Worst-Case Forget Sets in Machine Unlearning "
    "(https://arxiv.org/abs/2403.07362)",
)
def worst_case_forget_scores(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    m: int,
    select_epochs: int = 10,
    unlearn_steps: int = 10,
    theta_lr: float = 0.01,
    w_lr: float = 0.01,
    gamma: float = 0.0,
    mode: Literal["worst", "best"] = "worst",
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Bi-level worst-case (or best-case) forget-set weights of Challenging Forgets; top-``m`` = the forget set.

    Upper level ``min_w sum_i w_i l_i(theta*(w)) + gamma ||w||^2`` over ``w in [0, 1]^N, sum(w) = m``; lower level
    ``theta*(w) = argmin sum_i (1 - w_i) l_i(theta)`` approximated, from the trained ``theta_0`` every select
    epoch, by ``unlearn_steps`` full-batch **SignSGD** steps (``theta -= theta_lr * sign(grad)``). Then
    ``w <- w -/+ w_lr (l(theta*) + 2 gamma w)`` (the implicit gradient through ``theta*`` is dropped, as in the
    reference code ``OPTML-Group/Unlearn-WorstCase``) and :func:`bisection_projection` back onto the constraint.
    ``mode="worst"`` (descent) favours points that keep a low loss without being trained on (hard to forget:
    the retrained model still fits them); ``"best"`` flips the sign. ``model`` is not modified.

    Args:
        model: the trained classifier ``theta_0`` (any module; ``model(inputs)`` gives logits).
        inputs: ``[N, ...]`` training inputs.
        targets: ``[N]`` labels.
        m: forget-set size (1 <= m < N).
        select_epochs: upper-level iterations (>= 1).
        unlearn_steps: SignSGD steps per lower level (>= 1).
        theta_lr: SignSGD step size (> 0).
        w_lr: weight step size (> 0).
        gamma: L2 penalty on ``w`` (>= 0).
        mode: ``"worst"`` or ``"best"``.
        loss_fn: per-sample loss ``(logits, targets) -> [N]``; default cross-entropy.

    Returns:
        ``[N]`` weights in ``[0, 1]`` summing to ``m`` (pass them to ``ForgetRetainDataModule.from_scores(...,
        k=m, lowest=False)``).

    Raises:
        TypeError: a wrong argument type.
        ValueError: a value out of range or mismatched ``inputs`` / ``targets``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(40, 3, generator=g), torch.randint(0, 2, (40,), generator=g)
        >>> w = worst_case_forget_scores(nn.Linear(3, 2), x, y, m=8, select_epochs=2, unlearn_steps=2)
        >>> w.shape, round(float(w.sum()), 4), bool(((w >= 0) & (w <= 1)).all())
        (torch.Size([40]), 8.0, True)
    """
    owner = "worst_case_forget_scores"
    check_type(owner, "model", model, nn.Module)
    check_type(owner, "inputs", inputs, Tensor)
    check_type(owner, "targets", targets, Tensor)
    if inputs.shape[0] != targets.shape[0] or targets.dim() != 1:
        raise ValueError(
            f"{owner}(inputs, targets): need [N, ...] inputs and [N] targets, got {tuple(inputs.shape)} and "
            f"{tuple(targets.shape)}"
        )
    n = int(targets.shape[0])
    check_int(owner, "m", m, low=1)
    if m >= n:
        raise ValueError(f"{owner}(m={m}): the forget set must leave something to retain (m < N = {n})")
    check_int(owner, "select_epochs", select_epochs, low=1)
    check_int(owner, "unlearn_steps", unlearn_steps, low=1)
    check_float(owner, "theta_lr", theta_lr, low=0.0, low_open=True)
    check_float(owner, "w_lr", w_lr, low=0.0, low_open=True)
    check_float(owner, "gamma", gamma, low=0.0)
    check_choice(owner, "mode", mode, ("worst", "best"))
    lf = loss_fn or (lambda logits, y: F.cross_entropy(logits, y, reduction="none"))
    frozen = copy.deepcopy(model)
    theta0 = {k: v.detach().clone() for k, v in frozen.named_parameters()}
    buffers = dict(frozen.named_buffers())
    sign = 1.0 if mode == "worst" else -1.0
    w = torch.full((n,), m / n, dtype=torch.float64)
    for _ in range(select_epochs):
        params = {k: v.clone().requires_grad_(True) for k, v in theta0.items()}
        for _ in range(unlearn_steps):
            losses = lf(functional_call(frozen, (params, buffers), (inputs,)), targets)
            objective = ((1.0 - w).to(losses.dtype) * losses).sum() / n
            grads = torch.autograd.grad(objective, list(params.values()), allow_unused=True)
            with torch.no_grad():
                params = {
                    k: (p - theta_lr * g.sign() if g is not None else p).requires_grad_(True)
                    for (k, p), g in zip(params.items(), grads, strict=True)
                }
        with torch.no_grad():
            losses = lf(functional_call(frozen, (params, buffers), (inputs,)), targets).double()
        w = bisection_projection(w - sign * w_lr * (losses + 2.0 * gamma * w), float(m))
    return w
