"""Data pruning maths: concept-cluster pruning (DBP) and compute-aware data filtering (pure tensors).

* Density-based pruning of concept clusters: Abbas, Rusak, Tirumala, Brendel, Chaudhuri, Morcos, "Effective
  pruning of web-scale datasets based on complexity of concept clusters" (ICLR 2024,
  https://arxiv.org/abs/2401.04578): k-means over embeddings, optional SemDeDup inside clusters, cluster
  complexity ``d_inter * d_intra``, keep counts by a softmax over complexity with overflow redistributed, the
  samples farthest from their centroid kept.
* Compute-aware filtering: Goyal, Maini, Lipton, Raghunathan, Kolter, "Scaling Laws for Data Filtering -- Data
  Curation cannot be Compute Agnostic" (CVPR 2024, https://arxiv.org/abs/2404.07177): the utility ``b`` of a
  data bucket (the exponent of the power law ``loss = a * n^b``) halves every ``tau`` repetitions; a pool of
  buckets has the size-weighted mean utility; the pool to train on depends on the compute budget.

Everything here works on tensors and numbers; the DataModules in :mod:`litmix.datamodules` are thin shells.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int, check_type

__all__ = [
    "ConceptClusterSelection",
    "choose_pool",
    "cluster_complexity",
    "complexity_keep_counts",
    "concept_cluster_selection",
    "farthest_from_centroid",
    "fit_utility_curve",
    "kmeans",
    "pool_loss",
    "semantic_dedup",
    "utility_curve_loss",
]

METRICS = ("cosine", "euclidean")
#: Most epochs :func:`utility_curve_loss` follows (later epochs have utility ~ 0 for any sensible ``tau``).
MAX_EPOCHS = 100_000
_CHUNK = 2048


def _check_embeddings(owner: str, x: object) -> Tensor:
    check_type(owner, "x", x, Tensor)
    assert isinstance(x, Tensor)
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{owner}(x=...): x must be a non-empty 2-D tensor (n, d), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{owner}(x=...): x holds NaN or inf")
    return x


def _sq_dists(x: Tensor, c: Tensor, x_sq: Tensor) -> Tensor:
    """Squared Euclidean distances ``(n, k)`` (clamped at 0), ``x_sq`` the squared row norms of ``x``."""
    return (x_sq[:, None] - 2.0 * (x @ c.T) + c.pow(2).sum(1)[None, :]).clamp_min_(0.0)


@register("function", "data")
def kmeans(x: Tensor, k: int, num_iters: int = 50, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Seeded k-means (k-means++ initialisation, then Lloyd iterations until the assignment is stable).

    Deterministic for a given ``seed`` on a given machine. An empty cluster is re-seeded with the point
    farthest from its centroid. Cost per iteration: one ``(n, d) @ (d, k)`` matmul.

    Args:
        x: points ``(n, d)``.
        k: number of clusters, in [1, n].
        num_iters: most Lloyd iterations (>= 1).
        seed: seed of the k-means++ draws.

    Returns:
        ``(centroids (k, d), assignment (n,) long)``.

    Raises:
        TypeError: for a non-tensor ``x`` or a non-integer ``k``.
        ValueError: for ``k`` outside [1, n] or a non-2-D ``x``, naming the argument.

    Example:
        >>> x = torch.cat([torch.zeros(5, 2), torch.full((5, 2), 10.0)])
        >>> centroids, assign = kmeans(x, 2, seed=0)
        >>> sorted(centroids[:, 0].tolist()), assign[:5].unique().numel(), bool(assign[0] != assign[9])
        ([0.0, 10.0], 1, True)
    """
    x = _check_embeddings("kmeans", x)
    n = x.shape[0]
    k = check_int("kmeans", "k", k, low=1, high=n)
    num_iters = check_int("kmeans", "num_iters", num_iters, low=1)
    seed = check_int("kmeans", "seed", seed, low=0)
    gen = torch.Generator().manual_seed(seed)
    x_sq = x.pow(2).sum(1)
    # k-means++ (Arthur & Vassilvitskii 2007)
    first = int(torch.randint(n, (1,), generator=gen))
    centroids = x.new_empty(k, x.shape[1])
    centroids[0] = x[first]
    closest = _sq_dists(x, centroids[:1], x_sq).squeeze(1)
    for j in range(1, k):
        total = float(closest.sum())
        if total <= 0.0:  # fewer distinct points than clusters: any point will do
            pick = int(torch.randint(n, (1,), generator=gen))
        else:
            pick = int(torch.multinomial((closest / total).cpu(), 1, generator=gen))
        centroids[j] = x[pick]
        torch.minimum(closest, _sq_dists(x, centroids[j : j + 1], x_sq).squeeze(1), out=closest)
    assign = torch.full((n,), -1, dtype=torch.long, device=x.device)
    for _ in range(num_iters):
        d = _sq_dists(x, centroids, x_sq)
        new = d.argmin(1)
        if torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        empty = torch.nonzero(counts == 0).flatten()
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None].to(x.dtype)
        if len(empty):
            own = d.gather(1, assign[:, None]).squeeze(1)
            far = own.argsort(descending=True, stable=True)[: len(empty)]
            centroids[empty] = x[far]
    return centroids, assign


def _distance_to_centroid(x: Tensor, centroids: Tensor, assign: Tensor, metric: str) -> Tensor:
    c = centroids[assign]
    if metric == "cosine":
        return 1.0 - torch.nn.functional.cosine_similarity(x, c, dim=1, eps=1e-12)
    return (x - c).norm(dim=1)


@register("function", "data")
def semantic_dedup(x: Tensor, assign: Tensor, centroids: Tensor, eps: float) -> Tensor:
    """SemDeDup inside clusters: drop a sample whose cosine similarity to an earlier one exceeds ``1 - eps``.

    Abbas et al., "SemDeDup: Data-efficient learning at web-scale through semantic deduplication"
    (https://arxiv.org/abs/2303.09540), as used before density-based pruning: inside each cluster the members
    are ordered farthest-from-centroid first (cosine), so of a group of near-duplicates the least prototypical
    one is kept. Memory: one ``(m, 2048)`` block of similarities for a cluster of ``m`` members.

    Args:
        x: embeddings ``(n, d)``.
        assign: cluster of each sample ``(n,)``.
        centroids: cluster centroids ``(k, d)``.
        eps: similarity threshold, in [0, 2] (0 removes exact duplicates only).

    Returns:
        Boolean keep mask ``(n,)``.

    Raises:
        ValueError: for an ``eps`` outside [0, 2] or shapes that do not match.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.001], [0.0, 1.0]])
        >>> semantic_dedup(x, torch.zeros(3, dtype=torch.long), x.mean(0, keepdim=True), eps=0.01).tolist()
        [True, False, True]
    """
    x = _check_embeddings("semantic_dedup", x)
    eps = check_float("semantic_dedup", "eps", eps, low=0.0, high=2.0)
    if assign.shape != (x.shape[0],):
        raise ValueError(
            f"semantic_dedup(assign=...): assign must have shape ({x.shape[0]},), got {tuple(assign.shape)}"
        )
    xn = torch.nn.functional.normalize(x, dim=1, eps=1e-12)
    dist = _distance_to_centroid(x, centroids, assign, "cosine")
    keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    threshold = 1.0 - eps
    for c in torch.unique(assign).tolist():
        members = torch.nonzero(assign == c).flatten()
        if len(members) < 2:
            continue
        members = members[dist[members].argsort(descending=True, stable=True)]
        emb = xn[members]
        m = len(members)
        for j0 in range(0, m, _CHUNK):
            j1 = min(m, j0 + _CHUNK)
            sim = emb[:j1] @ emb[j0:j1].T  # (j1, j1 - j0): rows i, columns j
            upper = torch.arange(j1, device=x.device)[:, None] < torch.arange(j0, j1, device=x.device)[None, :]
            best = sim.masked_fill(~upper, -2.0).amax(0)
            keep[members[j0:j1][best > threshold]] = False
    return keep


@register("function", "data")
def cluster_complexity(
    x: Tensor, centroids: Tensor, assign: Tensor, num_neighbors: int = 20, metric: str = "cosine"
) -> tuple[Tensor, Tensor]:
    """Per-cluster ``(d_intra, d_inter)``; the DBP complexity is their product.

    ``d_intra``: mean distance of the members to their centroid (0 for an empty cluster); ``d_inter``: mean
    distance of the centroid to its ``num_neighbors`` nearest other centroids (capped at ``k - 1``; 0 when
    ``k == 1``). ``metric="cosine"`` uses ``1 - cos`` (the paper's choice for CLIP embeddings).

    Raises:
        ValueError: for ``num_neighbors < 1`` or an unknown metric.

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 1.0]])
        >>> assign = torch.tensor([0, 0, 1, 1])
        >>> c = torch.tensor([[1.0, 0.0], [10.0, 0.5]])
        >>> d_intra, d_inter = cluster_complexity(x, c, assign, metric="euclidean")
        >>> d_intra.tolist(), [round(v, 3) for v in d_inter.tolist()]
        ([1.0, 0.5], [9.014, 9.014])
    """
    x = _check_embeddings("cluster_complexity", x)
    num_neighbors = check_int("cluster_complexity", "num_neighbors", num_neighbors, low=1)
    metric = check_choice("cluster_complexity", "metric", metric, METRICS)
    k = centroids.shape[0]
    dist = _distance_to_centroid(x, centroids, assign, metric)
    counts = torch.bincount(assign, minlength=k).to(dist.dtype)
    d_intra = torch.zeros(k, dtype=dist.dtype, device=x.device).index_add_(0, assign, dist) / counts.clamp_min(1)
    if k == 1:
        return d_intra, torch.zeros_like(d_intra)
    if metric == "cosine":
        cn = torch.nn.functional.normalize(centroids.to(dist.dtype), dim=1, eps=1e-12)
        cc = 1.0 - cn @ cn.T
    else:
        cc = torch.cdist(centroids.to(dist.dtype), centroids.to(dist.dtype))
    cc.fill_diagonal_(float("inf"))
    nearest = cc.topk(min(num_neighbors, k - 1), dim=1, largest=False).values
    return d_intra, nearest.mean(1)


@register("function", "data")
def complexity_keep_counts(complexity: Tensor, sizes: Tensor, num_keep: int, tau: float = 0.1) -> Tensor:
    """Samples to keep per cluster: ``num_keep * softmax(complexity / tau)``, capped at the cluster sizes.

    Clusters whose share exceeds their size are kept whole and the overflow goes to the others in proportion
    to their softmax weights (repeated until nothing overflows); integer counts by largest remainder, ties to
    the lower cluster index. The counts sum to ``min(num_keep, sizes.sum())``.

    Raises:
        ValueError: for ``tau <= 0``, a negative ``num_keep`` or mismatched shapes.

    Example:
        >>> complexity_keep_counts(torch.tensor([0.0, 1.0, 0.5]), torch.tensor([10, 3, 10]), 12, tau=0.5).tolist()
        [2, 3, 7]
    """
    tau = check_float("complexity_keep_counts", "tau", tau, low=0.0, low_open=True)
    num_keep = check_int("complexity_keep_counts", "num_keep", num_keep, low=0)
    if complexity.shape != sizes.shape or complexity.dim() != 1:
        raise ValueError(
            f"complexity_keep_counts(complexity=..., sizes=...): two 1-D tensors of one shape expected, got "
            f"{tuple(complexity.shape)} and {tuple(sizes.shape)}"
        )
    sizes = sizes.long().cpu()
    weights = torch.softmax(complexity.double().cpu() / tau, 0)
    remaining = min(num_keep, int(sizes.sum()))
    counts = torch.zeros_like(sizes)
    open_ = sizes > 0
    share = torch.zeros_like(weights)
    while remaining > 0 and bool(open_.any()):
        w = torch.where(open_, weights, torch.zeros_like(weights))
        if float(w.sum()) <= 0.0:  # softmax underflow: spread evenly over the open clusters
            w = open_.double()
        share = remaining * w / w.sum()
        full = open_ & (share >= sizes.double())
        if not bool(full.any()):
            break
        counts[full] = sizes[full]
        remaining -= int(sizes[full].sum())
        open_ &= ~full
        share = torch.zeros_like(weights)
    if remaining > 0:
        base = share.floor().long()
        counts += base
        left = remaining - int(base.sum())
        if left > 0:
            frac = torch.where(open_, share - base.double(), torch.full_like(share, -1.0))
            order = frac.argsort(descending=True, stable=True)[:left]
            counts[order] += 1
    return counts


@register("function", "data")
def farthest_from_centroid(dist: Tensor, assign: Tensor, counts: Tensor) -> Tensor:
    """Sorted indices of the ``counts[c]`` members of each cluster ``c`` with the largest ``dist`` (ties: lower index).

    Raises:
        ValueError: if ``dist`` and ``assign`` differ in shape or ``counts`` is not 1-D.

    Example:
        >>> farthest_from_centroid(torch.tensor([0.1, 0.9, 0.5, 0.2]), torch.tensor([0, 0, 1, 1]),
        ...                        torch.tensor([1, 1])).tolist()
        [1, 2]
    """
    if dist.dim() != 1 or assign.shape != dist.shape or counts.dim() != 1:
        raise ValueError(
            f"farthest_from_centroid(dist, assign, counts): 1-D tensors expected, dist and assign of one shape; got "
            f"{tuple(dist.shape)}, {tuple(assign.shape)}, {tuple(counts.shape)}"
        )
    n = dist.shape[0]
    order = dist.argsort(descending=True, stable=True)
    order = order[assign[order].argsort(stable=True)]  # grouped by cluster, farthest first
    sorted_assign = assign[order]
    starts = torch.zeros(int(counts.shape[0]) + 1, dtype=torch.long, device=dist.device)
    starts[1:] = torch.bincount(assign, minlength=int(counts.shape[0])).cumsum(0)
    rank = torch.arange(n, device=dist.device) - starts[sorted_assign]
    keep = rank < counts.to(dist.device)[sorted_assign]
    return order[keep].sort().values


class ConceptClusterSelection(NamedTuple):
    """Result of :func:`concept_cluster_selection` (per-cluster tensors have length ``k``)."""

    kept: Tensor  #: sorted indices of the kept samples
    assign: Tensor  #: cluster of every sample (n,)
    sizes: Tensor  #: members per cluster before de-duplication
    dedup_sizes: Tensor  #: members per cluster after de-duplication
    counts: Tensor  #: kept per cluster
    d_intra: Tensor
    d_inter: Tensor
    complexity: Tensor  #: d_inter * d_intra


@register("function", "data")
def concept_cluster_selection(
    x: Tensor,
    keep_fraction: float,
    num_clusters: int,
    tau: float = 0.1,
    dedup_eps: float | None = None,
    num_neighbors: int = 20,
    metric: str = "cosine",
    seed: int = 0,
    num_iters: int = 50,
) -> ConceptClusterSelection:
    """Density-based pruning of concept clusters (DBP): which samples to keep.

    Steps: :func:`kmeans` into ``num_clusters``; with ``dedup_eps``, :func:`semantic_dedup` inside the clusters;
    :func:`cluster_complexity` of the remaining members; :func:`complexity_keep_counts` for
    ``round(keep_fraction * n)`` samples (at least 1); :func:`farthest_from_centroid` inside each cluster.
    Cost: k-means (``num_iters`` matmuls of ``(n, d) @ (d, k)``) dominates; linear in ``n``.

    Args:
        x: embeddings ``(n, d)``.
        keep_fraction: share of the samples to keep, in (0, 1].
        num_clusters: k, in [1, n].
        tau: softmax temperature (> 0); small values favour complex clusters more strongly.
        dedup_eps: SemDeDup threshold in [0, 2], or ``None`` for no de-duplication.
        num_neighbors: centroids averaged in ``d_inter``.
        metric: ``"cosine"`` (paper) or ``"euclidean"``.
        seed: k-means seed.
        num_iters: most k-means iterations.

    Raises:
        ValueError: for a ``keep_fraction`` outside (0, 1], ``num_clusters`` outside [1, n], or another
            out-of-range argument, naming it.

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> tight = torch.randn(50, 2, generator=gen) * 0.1 + torch.tensor([5.0, 0.0])
        >>> wide = torch.randn(50, 2, generator=gen) * 2.0 + torch.tensor([-5.0, 0.0])
        >>> sel = concept_cluster_selection(torch.cat([tight, wide]), 0.5, 2, tau=0.5, metric="euclidean")
        >>> len(sel.kept), int((sel.kept >= 50).sum()) > int((sel.kept < 50).sum())  # the wide cluster keeps more
        (50, True)
    """
    owner = "concept_cluster_selection"
    x = _check_embeddings(owner, x)
    n = x.shape[0]
    keep_fraction = check_float(owner, "keep_fraction", keep_fraction, low=0.0, high=1.0, low_open=True)
    num_clusters = check_int(owner, "num_clusters", num_clusters, low=1, high=n)
    tau = check_float(owner, "tau", tau, low=0.0, low_open=True)
    dedup_eps = check_float(owner, "dedup_eps", dedup_eps, low=0.0, high=2.0, allow_none=True)
    num_neighbors = check_int(owner, "num_neighbors", num_neighbors, low=1)
    metric = check_choice(owner, "metric", metric, METRICS)
    centroids, assign = kmeans(x, num_clusters, num_iters=num_iters, seed=seed)
    sizes = torch.bincount(assign, minlength=num_clusters)
    alive = torch.ones(n, dtype=torch.bool, device=x.device)
    if dedup_eps is not None:
        alive = semantic_dedup(x, assign, centroids, dedup_eps)
    idx = torch.nonzero(alive).flatten()
    xa, aa = x[idx], assign[idx]
    dedup_sizes = torch.bincount(aa, minlength=num_clusters)
    d_intra, d_inter = cluster_complexity(xa, centroids, aa, num_neighbors=num_neighbors, metric=metric)
    complexity = d_inter * d_intra
    num_keep = max(1, round(keep_fraction * n))
    counts = complexity_keep_counts(complexity, dedup_sizes, num_keep, tau=tau)
    dist = _distance_to_centroid(xa, centroids, aa, metric)
    kept = idx[farthest_from_centroid(dist, aa, counts)]
    return ConceptClusterSelection(
        kept.cpu(),
        assign.cpu(),
        sizes.cpu(),
        dedup_sizes.cpu(),
        counts.cpu(),
        d_intra.cpu(),
        d_inter.cpu(),
        complexity.cpu(),
    )


# ---------------------------------------------------------------------------------------------------------
# Compute-aware filtering (Goyal et al., CVPR 2024)


def _as_double(value: float | Sequence[float] | Tensor) -> Tensor:
    return torch.as_tensor(value, dtype=torch.float64)


@register("function", "data")
def utility_curve_loss(
    samples_seen: float | Sequence[float] | Tensor, pool_size: float, a: float, b: float, tau: float
) -> Tensor:
    """Predicted loss after ``samples_seen`` samples drawn by epochs from a pool of ``pool_size`` samples.

    The loss follows ``a * n^b`` (``b < 0`` is the utility) during the first epoch; the ``j``-th pass over the
    pool has utility ``b_j = b * (1/2)^((j - 1) / tau)`` (``tau``: half-life in epochs), so
    ``log y(n) = log a + b_1 log min(n, p) + sum_{j>=2} b_j (log min(n, j p) - log((j - 1) p))``.

    Raises:
        ValueError: for a non-positive ``pool_size``, ``a`` or ``tau``.

    Example:
        >>> [round(v, 4) for v in utility_curve_loss([10, 100], pool_size=100, a=1.0, b=-0.5, tau=1.0).tolist()]
        [0.3162, 0.1]
        >>> round(float(utility_curve_loss(400, pool_size=100, a=1.0, b=-0.5, tau=1.0)), 4)  # 0.1 * 2^-.25 * ...
        0.0785
    """
    owner = "utility_curve_loss"
    pool_size = check_float(owner, "pool_size", pool_size, low=0.0, low_open=True)
    a = check_float(owner, "a", a, low=0.0, low_open=True)
    b = check_float(owner, "b", b)
    tau = check_float(owner, "tau", tau, low=0.0, low_open=True)
    n = _as_double(samples_seen).clamp_min(1.0)
    epochs = min(MAX_EPOCHS, max(1, math.ceil(float(n.max()) / pool_size)))
    log_y = math.log(a) + b * n.clamp(max=pool_size).log()
    for j in range(2, epochs + 1):
        b_j = b * 0.5 ** ((j - 1) / tau)
        gain = (n.clamp(max=j * pool_size).log() - math.log((j - 1) * pool_size)).clamp_min(0.0)
        log_y = log_y + b_j * gain
    return log_y.exp()


def _check_curve(owner: str, name: str, curve: object) -> dict[str, float]:
    check_type(owner, name, curve, dict)
    assert isinstance(curve, dict)
    missing = [k for k in ("a", "b", "tau") if k not in curve]
    if missing:
        raise ValueError(f"{owner}({name}={curve!r}): a utility curve needs keys a, b, tau; missing {missing}")
    return {
        "a": check_float(owner, f"{name}['a']", curve["a"], low=0.0, low_open=True),
        "b": check_float(owner, f"{name}['b']", curve["b"]),
        "tau": check_float(owner, f"{name}['tau']", curve["tau"], low=0.0, low_open=True),
    }


@register("function", "data")
def pool_loss(
    samples_seen: float | Sequence[float] | Tensor, bucket_sizes: Sequence[int], curves: Sequence[dict[str, float]]
) -> Tensor:
    """Predicted loss of training on the union of buckets (sampled uniformly, by epochs over the union).

    The pool's curve is the size-weighted mean of the buckets' ``b`` and ``tau`` (and of ``log a``): every
    bucket is repeated as often as the pool, and each sample contributes its own bucket's utility.

    Raises:
        ValueError: for an empty bucket list, mismatched lengths, a bucket size below 1 or a malformed curve.

    Example:
        >>> good, bad = {"a": 1.0, "b": -0.5, "tau": 1.0}, {"a": 1.0, "b": -0.1, "tau": 1.0}
        >>> round(float(pool_loss(100, [100, 100], [good, bad])), 4)  # (1/100)^((0.5 + 0.1) / 2)
        0.2512
    """
    owner = "pool_loss"
    check_type(owner, "bucket_sizes", bucket_sizes, (list, tuple))
    check_type(owner, "curves", curves, (list, tuple))
    if not bucket_sizes or len(bucket_sizes) != len(curves):
        raise ValueError(
            f"{owner}(bucket_sizes=..., curves=...): one curve per bucket and at least one bucket expected, got "
            f"{len(bucket_sizes)} sizes and {len(curves)} curves"
        )
    sizes = [check_int(owner, "bucket_sizes", s, low=1) for s in bucket_sizes]
    checked = [_check_curve(owner, "curves", c) for c in curves]
    total = float(sum(sizes))
    w = [s / total for s in sizes]
    b = sum(wi * c["b"] for wi, c in zip(w, checked, strict=True))
    tau = sum(wi * c["tau"] for wi, c in zip(w, checked, strict=True))
    log_a = sum(wi * math.log(c["a"]) for wi, c in zip(w, checked, strict=True))
    return utility_curve_loss(samples_seen, total, math.exp(log_a), b, tau)


@register("function", "data")
def choose_pool(
    budget: float, bucket_sizes: Sequence[int], curves: Sequence[dict[str, float]]
) -> tuple[int, list[float]]:
    """How many of the best buckets (ordered best first) to train on for ``budget`` samples seen.

    Returns:
        ``(m, losses)``: the predicted-best number of top buckets and the predicted loss of every prefix
        ``1..len(bucket_sizes)`` (ties go to the smaller pool).

    Raises:
        ValueError: for a budget <= 0 or the errors of :func:`pool_loss`.

    Example:
        >>> top, second = {"a": 1.0, "b": -0.5, "tau": 1.0}, {"a": 1.0, "b": -0.4, "tau": 1.0}
        >>> choose_pool(100, [100, 1000], [top, second])[0], choose_pool(5000, [100, 1000], [top, second])[0]
        (1, 2)
    """
    budget = check_float("choose_pool", "budget", budget, low=0.0, low_open=True)
    check_type("choose_pool", "bucket_sizes", bucket_sizes, (list, tuple))
    if not bucket_sizes:
        raise ValueError("choose_pool(bucket_sizes=[]): at least one bucket is needed")
    losses = [float(pool_loss(budget, bucket_sizes[:m], curves[:m])) for m in range(1, len(bucket_sizes) + 1)]
    best = min(range(len(losses)), key=lambda i: (losses[i], i))
    return best + 1, losses


@register("function", "data")
def fit_utility_curve(
    samples_seen: Sequence[float] | Tensor,
    pool_sizes: Sequence[float] | Tensor,
    losses: Sequence[float] | Tensor,
    tau_bounds: tuple[float, float] = (0.05, 1000.0),
) -> dict[str, float]:
    """Fit one bucket's ``{"a", "b", "tau"}`` from small runs (least squares on log loss, scipy).

    Each run trained on a pool of ``pool_sizes[i]`` samples of the bucket for ``samples_seen[i]`` samples and
    reached ``losses[i]`` (e.g. validation error or loss on clean data). Runs with ``samples_seen <= pool_size``
    (no repetition) pin ``a`` and ``b``; runs with repetitions pin ``tau``. ``b`` is bounded to [-5, 0].

    Raises:
        ValueError: for fewer than 3 runs, mismatched lengths, or non-positive values.

    Example:
        >>> n = [50, 100, 200, 400, 400, 800]; p = [400, 400, 400, 400, 100, 100]
        >>> y = [float(utility_curve_loss(ni, pi, a=2.0, b=-0.4, tau=2.0)) for ni, pi in zip(n, p)]
        >>> {k: round(v, 3) for k, v in fit_utility_curve(n, p, y).items()}
        {'a': 2.0, 'b': -0.4, 'tau': 2.0}
    """
    from scipy.optimize import least_squares

    owner = "fit_utility_curve"
    n, p, y = _as_double(samples_seen).flatten(), _as_double(pool_sizes).flatten(), _as_double(losses).flatten()
    if not (len(n) == len(p) == len(y)):
        raise ValueError(f"{owner}(samples_seen, pool_sizes, losses): lengths differ ({len(n)}, {len(p)}, {len(y)})")
    if len(n) < 3:
        raise ValueError(f"{owner}(samples_seen=...): at least 3 runs are needed, got {len(n)}")
    for name, t in (("samples_seen", n), ("pool_sizes", p), ("losses", y)):
        if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
            raise ValueError(f"{owner}({name}=...): every value must be finite and > 0")
    lo, hi = (check_float(owner, "tau_bounds", v, low=0.0, low_open=True) for v in tau_bounds)
    if lo >= hi:
        raise ValueError(f"{owner}(tau_bounds={tau_bounds!r}): the lower bound must be below the upper")
    log_y = y.log().numpy()
    first = n <= p
    if int(first.sum()) >= 2 and len(torch.unique(n[first])) >= 2:
        xs, ys = n[first].log(), y[first].log()
        slope = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / (xs - xs.mean()).pow(2).sum())
        intercept = float(ys.mean() - slope * xs.mean())
    else:
        slope, intercept = -0.3, float(y.log().max())
    slope = min(-1e-3, max(-4.99, slope))

    def residual(theta: Sequence[float]) -> list[float]:
        pred = [
            math.log(float(utility_curve_loss(float(ni), float(pi), math.exp(theta[0]), theta[1], math.exp(theta[2]))))
            for ni, pi in zip(n.tolist(), p.tolist(), strict=True)
        ]
        return [pi - yi for pi, yi in zip(pred, log_y.tolist(), strict=True)]

    start = [intercept, slope, math.log(min(max(1.0, lo), hi))]
    bounds = ([-50.0, -5.0, math.log(lo)], [50.0, 0.0, math.log(hi)])
    fit = least_squares(residual, start, bounds=bounds, x_scale=[1.0, 0.1, 1.0])
    log_a, slope, log_tau = (float(v) for v in fit.x)
    return {"a": math.exp(log_a), "b": slope, "tau": math.exp(log_tau)}
