"""Graph proxy scores on plain tensors: NetInfoF (usable information in a graph) and LeBeD (test-time GNN error).

* NetInfoF: Lee et al., "NetInfoF Framework: Measuring and Exploiting Network Usable Information"
  (ICLR 2024, https://arxiv.org/abs/2402.07999). Reference: amazon-science/Network-Usable-Info-Framework
  ``src/models/{nui.py, cm.py, proposed.py}`` (link-prediction probe, :func:`netinfof_score`). The reference
  code covers link prediction only; the node-classification probe (:func:`netinfof_node_score`) follows the
  paper's description (discretise each derived embedding, ``2^{-H(Y | bin)}`` on labelled nodes).
* LeBeD: Zheng et al., "Online GNN Evaluation Under Test-time Graph Distribution Shifts"
  (ICLR 2024, https://arxiv.org/abs/2403.09953). Reference: Amanda-Zheng/LEBED
  ``LEBED-cora-amz/evaluator_lebed_cora-amz.py``.

Robust fidelity lives in :mod:`litmix.functional.robust_fidelity`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int, check_str

__all__ = [
    "LebedResult",
    "compatibility_matrix",
    "lebed_score",
    "netinfof_embeddings",
    "netinfof_node_score",
    "netinfof_score",
    "random_walk_cooccurrence",
    "structure_metric",
]

COMPONENTS = ("U", "R", "F", "P", "S")


# --------------------------------------------------------------------------------------------- NetInfoF
def _undirected_pairs(edge_index: Tensor) -> Tensor:
    """Unique ``row < col`` pairs of an edge list, shape ``(2, m)``."""
    row, col = edge_index
    lo, hi = torch.minimum(row, col), torch.maximum(row, col)
    keep = lo != hi
    return torch.unique(torch.stack([lo[keep], hi[keep]]), dim=1)


def _sym(pairs: Tensor) -> Tensor:
    return torch.cat([pairs, pairs.flip(0)], dim=1)


def _adjacency(edge_index: Tensor, n: int, self_loops: bool = False) -> Tensor:
    """Dense 0/1 adjacency (float32)."""
    adj = torch.zeros(n, n)
    adj[edge_index[0], edge_index[1]] = 1.0
    if self_loops:
        adj.fill_diagonal_(1.0)
    return adj


def _row_normalised(edge_index: Tensor, n: int, self_loops: bool = False) -> Tensor:
    """Sparse ``D^-1 A`` of the 0/1 adjacency (duplicates merged; rows of isolated nodes stay zero)."""
    ei = edge_index
    if self_loops:
        loops = torch.arange(n).repeat(2, 1)
        ei = torch.cat([ei[:, ei[0] != ei[1]], loops], dim=1)
    ei = torch.unique(ei, dim=1)
    deg = torch.bincount(ei[0], minlength=n).float()
    vals = 1.0 / deg[ei[0]]
    return torch.sparse_coo_tensor(ei, vals, (n, n), check_invariants=False).coalesce()


def random_walk_cooccurrence(
    edge_index: Tensor, num_nodes: int, walks_per_node: int = 50, walk_length: int = 3, seed: int = 0
) -> Tensor:
    """Counts of ``(start, visited)`` pairs over uniform random walks (a sampled PPR-like matrix).

    Pure-torch replacement of the reference's compiled walker (``rwcpp.random_walks``): from every node
    ``walks_per_node`` walks of ``walk_length`` steps; entry ``(i, j)`` counts how often a walk from ``i``
    visits ``j`` at steps ``1..walk_length``. Isolated nodes stay in place.

    Example:
        >>> ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
        >>> m = random_walk_cooccurrence(ei, 3, walks_per_node=4, walk_length=2)
        >>> m.shape, float(m.sum())
        (torch.Size([3, 3]), 24.0)
    """
    gen = torch.Generator().manual_seed(seed)
    row, col = edge_index
    order = torch.argsort(row * num_nodes + col)
    row, col = row[order], col[order]
    deg = torch.bincount(row, minlength=num_nodes)
    rowptr = torch.cat([torch.zeros(1, dtype=torch.long), deg.cumsum(0)])
    start = torch.arange(num_nodes).repeat_interleave(walks_per_node)
    cur = start.clone()
    counts = torch.zeros(num_nodes * num_nodes)
    for _ in range(walk_length):
        d = deg[cur]
        offs = (torch.rand(len(cur), generator=gen) * d).long()
        nxt = col[(rowptr[cur] + offs).clamp_max(max(len(col) - 1, 0))] if len(col) else cur
        cur = torch.where(d > 0, nxt, cur)
        counts.index_add_(0, start * num_nodes + cur, torch.ones(len(cur)))
    return counts.view(num_nodes, num_nodes)


def _preprocess(z: Tensor) -> Tensor:
    """``StandardScaler(with_mean=False)`` then L2 row normalisation (reference ``preprocess``)."""
    std = z.std(dim=0, unbiased=False)
    z = z / torch.where(std > 0, std, torch.ones_like(std))
    return F.normalize(z, dim=1)


def _pca(z: Tensor, d: int) -> Tensor:
    u, s, _ = torch.pca_lowrank(z, q=d, center=True, niter=4)
    return u * s


def netinfof_embeddings(
    x: Tensor,
    edge_index: Tensor,
    num_nodes: int,
    hidden: int = 32,
    components: Sequence[str] = COMPONENTS,
    walks_per_node: int = 50,
    walk_length: int = 3,
    seed: int = 0,
) -> dict[str, Tensor]:
    """The five closed-form NetInfoF node embeddings (each scaled and L2-row-normalised).

    ``U``: low-rank SVD of the adjacency (``u * sqrt(s)``); ``R``: same for the random-walk co-occurrence
    matrix; ``F``: PCA of the features; ``P``: PCA of ``A_row^2 X`` (row-normalised adjacency without
    self-loops); ``S``: same with self-loops.

    Example:
        >>> ei = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
        >>> embs = netinfof_embeddings(torch.eye(4), ei, 4, hidden=2)
        >>> sorted(embs), tuple(embs["U"].shape)
        (['F', 'P', 'R', 'S', 'U'], (4, 2))
    """
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"netinfof_embeddings(components={list(components)}): unknown {sorted(unknown)}")
    torch.manual_seed(seed)
    d = min(hidden, x.shape[1], num_nodes)
    x = x.float()
    out: dict[str, Tensor] = {}
    if "U" in components:
        u, s, _ = torch.svd_lowrank(_adjacency(edge_index, num_nodes), q=d)
        out["U"] = u * s.sqrt()
    if "R" in components:
        m = random_walk_cooccurrence(edge_index, num_nodes, walks_per_node, walk_length, seed)
        u, s, _ = torch.svd_lowrank(m, q=d)
        out["R"] = u * s.sqrt()
    if "F" in components:
        out["F"] = _pca(x, d)
    for name, loops in (("P", False), ("S", True)):
        if name in components:
            adj = _row_normalised(edge_index, num_nodes, self_loops=loops)
            out[name] = _pca(adj @ (adj @ x), d)
    return {k: _preprocess(v) for k, v in out.items()}


def compatibility_matrix(
    z: Tensor, edge_index: Tensor, max_edges: int = 200_000, prune_mass: float = 0.05, seed: int = 0
) -> Tensor:
    """Symmetric ``H`` with ``z_i^T H z_j`` ~ 1 on edges and ~ 0 on random pairs (reference ``cm.compatibility``).

    Ridge initialisation (``y = z[col]`` on ``z[row]``), upper-triangular coefficients below ``prune_mass``
    of the absolute mass dropped, 2-core edges only, at most ``max_edges`` positives and twice as many
    uniform negatives, then ``scipy.sparse.linalg.lsqr(damp=1, atol=btol=1e-2)`` from the Ridge start.

    Example:
        >>> z = torch.eye(3)
        >>> ei = torch.tensor([[0, 1, 1, 2, 0, 2], [1, 0, 2, 1, 2, 0]])
        >>> h = compatibility_matrix(z, ei)
        >>> h.shape, bool(torch.allclose(h, h.T))
        (torch.Size([3, 3]), True)
    """
    from scipy.sparse.linalg import lsqr

    gen = np.random.default_rng(seed)
    n, d = z.shape
    zd = z.double()
    row, col = edge_index
    xr, yr = zd[row], zd[col]
    ridge = torch.linalg.solve(xr.T @ xr + torch.eye(d, dtype=torch.float64), xr.T @ yr).T  # sklearn coef_
    deg = torch.bincount(row, minlength=n)
    core = deg >= 2
    keep = core[row] & core[col] & (row < col)
    pos = edge_index[:, keep].numpy()
    if pos.shape[1] > max_edges:
        pos = pos[:, gen.choice(pos.shape[1], max_edges, replace=False)]
    neg = gen.integers(0, n, size=(2, 2 * pos.shape[1]))
    r0, c0 = np.triu_indices(d)
    x0 = ridge.numpy()[r0, c0]
    mass = np.sort(np.abs(x0))
    below = np.where(np.cumsum(mass) / max(mass.sum(), 1e-300) < prune_mass)[0]
    eps = mass[below[-1]] if len(below) else -1.0
    kept = np.abs(x0) >= eps
    r, c = r0[kept], c0[kept]
    diag = r == c
    zn = zd.numpy()
    pairs = np.concatenate([pos, neg], axis=1)
    zi, zj = zn[pairs[0]], zn[pairs[1]]
    design = zi[:, r] * zj[:, c] + zi[:, c] * zj[:, r]
    design[:, diag] /= 2
    target = np.concatenate([np.ones(pos.shape[1]), np.zeros(neg.shape[1])])
    coef = lsqr(design, target, damp=1, atol=1e-2, btol=1e-2, x0=x0[kept])[0]
    h = np.zeros((d, d))
    h[r, c] = coef
    h = h + h.T - np.diag(np.diag(h))
    return torch.from_numpy(h).to(z.dtype)


def _check_components(owner: str, components: object) -> None:
    if isinstance(components, str) or not isinstance(components, (list, tuple)):
        raise TypeError(f"{owner}(components={components!r}): components must be a list of names from {COMPONENTS}")
    if not all(isinstance(c, str) for c in components):
        raise TypeError(f"{owner}(components={components!r}): components must be a list of names from {COMPONENTS}")
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown or not components:
        raise ValueError(
            f"{owner}(components={list(components)!r}): unknown components {unknown}; components must be a "
            f"non-empty subset of {COMPONENTS}"
        )


def _check_embedding_args(
    owner: str,
    x: Tensor,
    edge_index: Tensor,
    num_nodes: int | None,
    hidden: int,
    components: Sequence[str],
    walks_per_node: int,
    walk_length: int,
    seed: int,
) -> int:
    """Check the arguments of :func:`netinfof_embeddings` given to a score; return the number of nodes."""
    check_int(owner, "hidden", hidden, low=1)
    check_int(owner, "walks_per_node", walks_per_node, low=1)
    check_int(owner, "walk_length", walk_length, low=1)
    check_int(owner, "seed", seed, low=0)
    check_int(owner, "num_nodes", num_nodes, low=1, allow_none=True)
    _check_components(owner, components)
    return _check_graph_inputs(owner, x, edge_index, num_nodes)


def _conditional_entropy_bits(table: Tensor) -> float:
    n = table.sum()
    p_ij = table / n
    p_i = table.sum(1, keepdim=True) / n
    mask = p_ij > 0
    return float(-(p_ij[mask] * torch.log2(p_ij[mask] / p_i.expand_as(p_ij)[mask])).sum())


@register(
    "function",
    "proxy",
    paper="NetInfoF Framework: Measuring and Exploiting Network Usable Information (https://arxiv.org/abs/2402.07999)",
    module="litmix.functional.graph_proxies",
)
def netinfof_score(
    x: Tensor,
    edge_index: Tensor,
    num_nodes: int | None = None,
    valid_fraction: float = 0.1,
    hidden: int = 32,
    bins: int = 8,
    components: Sequence[str] = COMPONENTS,
    walks_per_node: int = 50,
    walk_length: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """NetInfoF_Score for link prediction: ``2^{-H(Y | S_bin)}`` per embedding component.

    A ``valid_fraction`` of the undirected edges is held out as positives, with as many uniform random
    node pairs as negatives (``Y``). On the remaining graph each component's embedding ``z`` and its
    compatibility matrix ``H`` give similarities ``s_ij = (z H)_i . z_j``; 8 quantile bins are fitted on
    training edges plus twice as many random pairs; the score is ``2^{-H(Y | bin(s))}`` on the held-out
    pairs (0.5: no usable information, 1: perfectly predictive). ``"max"`` is the best component.

    Args:
        x: node features ``(n, f)``.
        edge_index: ``(2, E)`` edges (both directions or one; made undirected).
        num_nodes: ``n`` (default ``x.shape[0]``).
        valid_fraction: share of undirected edges held out, in (0, 1).
        hidden: embedding dimension (the reference uses ``min(f, args.hidden)``).
        bins: quantile bins of the similarity.
        components: subset of ``("U", "R", "F", "P", "S")``.
        walks_per_node: walks per node for ``R``.
        walk_length: steps per walk for ``R``.
        seed: seed of the split, walks, negatives.

    Returns:
        ``{component: score, ..., "max": best score}``.

    Raises:
        TypeError: for scalar arguments of the wrong type (e.g. ``bins=2.5``), naming them.
        ValueError: for ``valid_fraction`` outside (0, 1), ``bins < 2``, ``hidden``, ``walks_per_node`` or
            ``walk_length`` below 1, a negative ``seed``, a ``num_nodes`` below the largest node id + 1, or
            unknown components.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> blocks = torch.arange(60) // 30
        >>> prob = torch.where(blocks[:, None] == blocks[None], 0.3, 0.01)
        >>> adj = torch.triu(torch.rand(60, 60, generator=g) < prob, 1)
        >>> ei = torch.stack(torch.nonzero(adj | adj.T, as_tuple=True))
        >>> s = netinfof_score(torch.randn(60, 8, generator=g), ei, hidden=4, components=["U"])
        >>> s["U"] > 0.52  # two planted blocks; random pairs give 0.5
        True
    """
    owner = "netinfof_score"
    check_float(owner, "valid_fraction", valid_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    check_int(owner, "bins", bins, low=2)
    n = _check_embedding_args(owner, x, edge_index, num_nodes, hidden, components, walks_per_node, walk_length, seed)
    gen = torch.Generator().manual_seed(seed)
    pairs = _undirected_pairs(edge_index)
    perm = torch.randperm(pairs.shape[1], generator=gen)
    n_valid = max(1, round(valid_fraction * pairs.shape[1]))
    valid_pos, train_pairs = pairs[:, perm[:n_valid]], pairs[:, perm[n_valid:]]
    valid_neg = torch.randint(0, n, (2, n_valid), generator=gen)
    valid = torch.cat([valid_pos, valid_neg], dim=1)
    y_valid = torch.cat([torch.ones(n_valid), torch.zeros(n_valid)]).long()
    train_ei = _sym(train_pairs)
    embs = netinfof_embeddings(x, train_ei, n, hidden, components, walks_per_node, walk_length, seed)
    train_neg = torch.randint(0, n, (2, 2 * train_pairs.shape[1]), generator=gen)
    fit_pairs = torch.cat([train_pairs, train_neg], dim=1)
    scores: dict[str, float] = {}
    for name, z in embs.items():
        zc = z @ compatibility_matrix(z, train_ei, seed=seed)
        sim_fit = (zc[fit_pairs[0]] * z[fit_pairs[1]]).sum(1).double()
        edges = torch.quantile(sim_fit, torch.linspace(0, 1, bins + 1, dtype=torch.float64))
        sim_valid = (zc[valid[0]] * z[valid[1]]).sum(1).double()
        idx = torch.bucketize(sim_valid, edges[1:-1], right=True)
        table = torch.zeros(bins, 2, dtype=torch.float64)
        table.index_put_((idx, y_valid), torch.ones(len(idx), dtype=torch.float64), accumulate=True)
        scores[name] = 2.0 ** (-_conditional_entropy_bits(table))
    scores["max"] = max(scores.values())
    return scores


def _check_graph_inputs(owner: str, x: object, edge_index: object, num_nodes: int | None) -> int:
    """Refuse a graph without node features or with malformed / out-of-range edges; return ``n``."""
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] < 1:
        got = type(x).__name__ if not isinstance(x, Tensor) else f"shape {tuple(x.shape)}"
        raise ValueError(f"{owner}(x=...): needs node features x as an (n, f) tensor with f >= 1, got {got}")
    if not bool(torch.isfinite(x.float()).all()):
        raise ValueError(f"{owner}(x=...): node features hold NaN or infinite values")
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        got = type(edge_index).__name__ if not isinstance(edge_index, Tensor) else f"shape {tuple(edge_index.shape)}"
        raise ValueError(f"{owner}(edge_index=...): needs an integer (2, E) tensor, got {got}")
    if edge_index.is_floating_point() or edge_index.dtype == torch.bool:
        raise ValueError(f"{owner}(edge_index=...): needs an integer (2, E) tensor, got dtype {edge_index.dtype}")
    n = int(num_nodes if num_nodes is not None else x.shape[0])
    if n != x.shape[0]:
        raise ValueError(f"{owner}(num_nodes={n}): x has {x.shape[0]} rows")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise ValueError(
            f"{owner}(edge_index=...): node ids in [{int(edge_index.min())}, {int(edge_index.max())}] lie outside "
            f"[0, {n}) (num_nodes={n})"
        )
    return n


def _kmeans_labels(z: Tensor, k: int, seed: int) -> Tensor:
    from sklearn.cluster import KMeans

    k = min(k, z.shape[0])
    km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(z.double().numpy())
    return torch.from_numpy(km.labels_).long()


def _linear_probe_predictions(z: Tensor, y: Tensor, fit: Tensor, seed: int) -> Tensor:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=300, random_state=seed).fit(z[fit].double().numpy(), y[fit].numpy())
    return torch.from_numpy(clf.predict(z.double().numpy())).long()


def _entropy_score(bins: Tensor, y: Tensor, num_bins: int, num_classes: int) -> float:
    table = torch.zeros(num_bins, num_classes, dtype=torch.float64)
    table.index_put_((bins, y), torch.ones(len(y), dtype=torch.float64), accumulate=True)
    return 2.0 ** (-_conditional_entropy_bits(table))


def netinfof_node_scores_from_embeddings(
    embeddings: dict[str, Tensor],
    y: Tensor,
    probe: str = "kmeans",
    clusters: int | None = None,
    valid_fraction: float = 0.5,
    seed: int = 0,
) -> dict[str, float]:
    """Node-classification NetInfoF_Score of precomputed embeddings (see :func:`netinfof_node_score`).

    Args:
        embeddings: ``{component: (n, d) embedding}``, e.g. from :func:`netinfof_embeddings`.
        y: ``(n,)`` integer labels; entries below 0 are unlabelled and ignored.
        probe: ``"kmeans"`` or ``"linear"``.
        clusters: k-means clusters (default ``4 * num_classes``).
        valid_fraction: share of the labelled nodes the linear probe is scored on (the rest fit it).
        seed: seed of k-means and of the linear probe's split.

    Returns:
        ``{component: score, ..., "max": best score}``.

    Example:
        >>> z = torch.cat([torch.zeros(20, 2), torch.ones(20, 2)]) + 0.01 * torch.randn(40, 2)
        >>> y = torch.arange(40) // 20
        >>> netinfof_node_scores_from_embeddings({"F": z}, y, clusters=2)["F"]
        1.0
    """
    labelled = (y >= 0).nonzero().flatten()
    yl = y[labelled].long()
    num_classes = int(yl.max()) + 1
    k = clusters if clusters is not None else 4 * num_classes
    scores: dict[str, float] = {}
    if probe == "linear":
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(labelled), generator=gen)
        n_valid = max(1, min(len(labelled) - 1, round(valid_fraction * len(labelled))))
        valid, fit = perm[:n_valid], perm[n_valid:]
    for name, z in embeddings.items():
        if probe == "kmeans":
            bins = _kmeans_labels(z, k, seed)[labelled]
            scores[name] = _entropy_score(bins, yl, int(bins.max()) + 1, num_classes)
        else:
            if len(torch.unique(yl[fit])) < 2:
                pred = torch.full_like(yl, int(yl[fit][0]))
            else:
                pred = _linear_probe_predictions(z[labelled], yl, fit, seed)
            scores[name] = _entropy_score(pred[valid], yl[valid], num_classes, num_classes)
    scores["max"] = max(scores.values())
    return scores


@register(
    "function",
    "proxy",
    paper="NetInfoF Framework: Measuring and Exploiting Network Usable Information (https://arxiv.org/abs/2402.07999)",
    module="litmix.functional.graph_proxies",
)
def netinfof_node_score(
    x: Tensor,
    edge_index: Tensor,
    y: Tensor,
    label_mask: Tensor | None = None,
    num_nodes: int | None = None,
    probe: str = "kmeans",
    clusters: int | None = None,
    valid_fraction: float = 0.5,
    hidden: int = 32,
    components: Sequence[str] = COMPONENTS,
    walks_per_node: int = 50,
    walk_length: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """NetInfoF_Score for node classification: ``2^{-H(Y | bin(z))}`` per derived embedding ``z``.

    The five closed-form embeddings of :func:`netinfof_embeddings` (structure ``U``, neighbourhood ``R``,
    features ``F``, propagated features ``P`` / ``S``) are computed on the whole graph, no model is trained.
    Each embedding is discretised and the score is ``2^{-H(Y | bin)}`` over the labelled nodes: a lower
    bound of the accuracy of the best classifier of the bins (the paper's guarantee; by Jensen; chance is
    ``2^{-H(Y)}``, 1 means the bins determine the label). ``"max"`` is the best component.

    * ``probe="kmeans"`` (default, the paper's probe: embeddings discretised without labels): k-means with
      ``clusters`` centres (default ``4 * num_classes``) on all nodes; the clusters x labels table is counted on
      the labelled nodes. The plug-in entropy is biased low when there are few labelled nodes per cluster, so
      compare graphs at equal ``clusters`` and label counts.
    * ``probe="linear"`` (our addition, out-of-sample): a logistic-regression probe fitted on
      ``1 - valid_fraction`` of the labelled nodes; the table of its predictions x labels on the held-out
      ``valid_fraction`` gives the score.

    Args:
        x: node features ``(n, f)``.
        edge_index: ``(2, E)`` edges (both directions or one).
        y: ``(n,)`` integer labels; entries below 0 are unlabelled.
        label_mask: optional bool ``(n,)``: only these nodes' labels count (e.g. ``train_mask | val_mask``).
        num_nodes: ``n`` (default ``x.shape[0]``).
        probe: ``"kmeans"`` or ``"linear"``.
        clusters: k-means clusters (>= 2; default ``4 * num_classes``).
        valid_fraction: share of labelled nodes held out for the linear probe, in (0, 1).
        hidden: embedding dimension.
        components: subset of ``("U", "R", "F", "P", "S")``.
        walks_per_node: walks per node for ``R``.
        walk_length: steps per walk for ``R``.
        seed: seed of the walks, k-means and the probe split.

    Returns:
        ``{component: score, ..., "max": best score}``.

    Raises:
        TypeError: for scalar arguments of the wrong type (e.g. ``clusters=2.5``), naming them.
        ValueError: before any compute, for a graph without node features ``x``, an ``edge_index`` that is
            not an integer ``(2, E)`` tensor or refers to nodes outside ``[0, n)``, missing labels (``y`` not an
            integer vector of ``n`` entries, or fewer than 2 labelled nodes), a bad ``label_mask``, an unknown
            ``probe`` or component, or out-of-range numbers.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(60) // 30
        >>> prob = torch.where(y[:, None] == y[None], 0.3, 0.01)
        >>> adj = torch.triu(torch.rand(60, 60, generator=g) < prob, 1)
        >>> ei = torch.stack(torch.nonzero(adj | adj.T, as_tuple=True))
        >>> s = netinfof_node_score(torch.randn(60, 8, generator=g), ei, y, hidden=4, clusters=4)
        >>> s["U"] > 0.9, s["F"] < 0.8  # the blocks are the classes; the features are noise
        (True, True)
    """
    owner = "netinfof_node_score"
    check_choice(owner, "probe", probe, ("kmeans", "linear"))
    check_int(owner, "clusters", clusters, low=2, allow_none=True)
    check_float(owner, "valid_fraction", valid_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    n = _check_embedding_args(owner, x, edge_index, num_nodes, hidden, components, walks_per_node, walk_length, seed)
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != n or y.is_floating_point() or y.dtype == torch.bool:
        got = type(y).__name__ if not isinstance(y, Tensor) else f"{y.dtype} of shape {tuple(y.shape)}"
        raise ValueError(f"{owner}(y=...): needs integer node labels of shape ({n},) (-1: unlabelled), got {got}")
    y = y.long().clone()
    if label_mask is not None:
        if not isinstance(label_mask, Tensor) or label_mask.dtype != torch.bool or tuple(label_mask.shape) != (n,):
            raise ValueError(f"{owner}(label_mask=...): needs a bool tensor of shape ({n},)")
        y[~label_mask] = -1
    if int((y >= 0).sum()) < 2:
        raise ValueError(
            f"{owner}(y=...): no labels: needs at least 2 labelled nodes (y >= 0), got {int((y >= 0).sum())}"
        )
    embs = netinfof_embeddings(x, edge_index, n, hidden, components, walks_per_node, walk_length, seed)
    return netinfof_node_scores_from_embeddings(embs, y, probe, clusters, valid_fraction, seed)


# --------------------------------------------------------------------------------------------- LeBeD
def structure_metric(emb: Tensor, pos_edge_index: Tensor, neg_edge_index: Tensor) -> Tensor:
    """LeBeD's parameter-free structure reconstruction: BCE-with-logits of cosine similarities.

    Positive pairs are labelled 1, negative pairs 0 (reference: ``F.cosine_similarity`` fed to
    ``binary_cross_entropy_with_logits``).

    Example:
        >>> emb = torch.tensor([[1.0, 0.0], [1.0, 0.1], [-1.0, 0.0]])
        >>> pos, neg = torch.tensor([[0], [1]]), torch.tensor([[0], [2]])
        >>> round(float(structure_metric(emb, pos, neg)), 4)
        0.3139
    """
    ei = torch.cat([pos_edge_index, neg_edge_index], dim=1)
    label = torch.cat([torch.ones(pos_edge_index.shape[1]), torch.zeros(neg_edge_index.shape[1])]).to(emb)
    logits = F.cosine_similarity(emb[ei[0]], emb[ei[1]], dim=-1)
    return F.binary_cross_entropy_with_logits(logits, label)


@dataclass(frozen=True)
class LebedResult:
    """Output of :func:`lebed_score`.

    Attributes:
        score: ``||theta* - theta_test||_2`` (larger means larger estimated test error).
        epochs: re-training epochs run.
        reference_metric: structure metric of the trained model on the test graph.
        final_metric: structure metric of the re-trained model when stopped.
        pseudo_fit: accuracy of the re-trained model on the pseudo-labels when stopped.
    """

    score: float
    epochs: int
    reference_metric: float
    final_metric: float
    pseudo_fit: float


def _flat(module: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def _forward_with_embedding(model: nn.Module, embed_module: str | None, x: Tensor, ei: Tensor) -> tuple[Tensor, Tensor]:
    if embed_module is None:
        logits = model(x, ei)
        return logits, logits
    captured: list[Tensor] = []
    handle = dict(model.named_modules())[embed_module].register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        logits = model(x, ei)
    finally:
        handle.remove()
    return logits, captured[-1]


@register(
    "function",
    "proxy",
    paper="Online GNN Evaluation Under Test-time Graph Distribution Shifts (https://arxiv.org/abs/2403.09953)",
    module="litmix.functional.graph_proxies",
)
def lebed_score(
    model: nn.Module,
    init_state: dict[str, Tensor],
    x: Tensor,
    edge_index: Tensor,
    embed_module: str | None = None,
    neg_edge_index: Tensor | None = None,
    lr: float = 1e-3,
    weight_decay: float = 5e-4,
    max_epochs: int = 200,
    min_epochs: int = 5,
    margin: float = 1e-2,
    seed: int = 0,
) -> LebedResult:
    """LeBeD score of a trained GNN on an unlabeled test graph (larger: larger estimated test error).

    1. Pseudo-labels = the trained model's predictions on the test graph (eval mode); reference structure
       metric = :func:`structure_metric` of its embeddings on test edges vs ``neg_edge_index``.
    2. A copy of ``model`` reset to ``init_state`` (its theta_0, see :class:`~litmix.callbacks.save_init.
       SaveInit`) is re-trained full-batch on the pseudo-labels (Adam, NLL of log-softmax); after
       each step (from ``min_epochs`` on) training stops once the structure metric of the training forward
       pass is within ``margin`` of the reference value, else after ``max_epochs``.
    3. Score = L2 distance between the trained and the re-trained flattened parameters.

    Args:
        model: trained model, called as ``model(x, edge_index) -> logits``; left unchanged.
        init_state: the model's ``state_dict`` at initialisation.
        x: test-graph node features.
        edge_index: test-graph edges.
        embed_module: name (``model.named_modules()``) of the submodule whose output is the embedding
            (``None``: the logits).
        neg_edge_index: negative pairs (default: PyG ``negative_sampling``, as many as edges).
        lr: Adam learning rate (reference 1e-3).
        weight_decay: Adam weight decay (reference 5e-4).
        max_epochs: re-training cap (reference 200).
        min_epochs: epochs before the stopping rule applies (reference ``atleastepoch`` 5).
        margin: stopping margin on the structure metric (reference 1e-2).
        seed: seed of the negatives and the re-training.

    Raises:
        TypeError: for scalar arguments of the wrong type (e.g. ``max_epochs=2.5``), naming them.
        ValueError: for ``min_epochs > max_epochs``, non-positive ``max_epochs``, negative ``min_epochs``,
            ``margin``, ``weight_decay`` or ``seed``, a non-positive ``lr``, NaN or infinite numbers, or an
            ``embed_module`` that is not a submodule of ``model``.

    Example:
        >>> from torch_geometric.nn import GCN
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = GCN(4, 8, 2, out_channels=3)
        >>> theta0 = {k: v.clone() for k, v in net.state_dict().items()}
        >>> ei = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
        >>> res = lebed_score(net, theta0, torch.randn(4, 4), ei, max_epochs=3, min_epochs=1)
        >>> res.score >= 0, res.epochs <= 3
        (True, True)
    """
    owner = "lebed_score"
    check_int(owner, "max_epochs", max_epochs, low=1)
    check_int(owner, "min_epochs", min_epochs, low=0)
    if min_epochs > max_epochs:
        raise ValueError(
            f"lebed_score(min_epochs={min_epochs}, max_epochs={max_epochs}): need 0 <= min_epochs <= max_epochs, "
            "max_epochs >= 1"
        )
    check_float(owner, "margin", margin, low=0.0)
    check_float(owner, "lr", lr, low=0.0, low_open=True)
    check_float(owner, "weight_decay", weight_decay, low=0.0)
    check_int(owner, "seed", seed, low=0)
    check_str(owner, "embed_module", embed_module, allow_none=True)
    if embed_module is not None and embed_module not in dict(model.named_modules()):
        raise ValueError(f"{owner}(embed_module={embed_module!r}): no such submodule of the model")
    from torch_geometric.utils import negative_sampling

    torch.manual_seed(seed)
    if neg_edge_index is None:
        neg_edge_index = negative_sampling(edge_index, num_nodes=x.shape[0], num_neg_samples=edge_index.shape[1])
    theta_star = _flat(model)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits, emb = _forward_with_embedding(model, embed_module, x, edge_index)
        pseudo = logits.argmax(-1)
        ref = float(structure_metric(emb, edge_index, neg_edge_index))
    model.train(was_training)
    net = copy.deepcopy(model)
    net.load_state_dict(init_state)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    metric, fit, epoch = math.nan, math.nan, 0
    for epoch in range(1, max_epochs + 1):
        logits, emb = _forward_with_embedding(net, embed_module, x, edge_index)
        loss = F.nll_loss(F.log_softmax(logits, dim=-1), pseudo)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            metric = float(structure_metric(emb, edge_index, neg_edge_index))
            fit = float((logits.argmax(-1) == pseudo).float().mean())
        if epoch - 1 >= min_epochs and abs(metric - ref) < margin:
            break
    score = float(torch.linalg.vector_norm(theta_star - _flat(net)))
    return LebedResult(score=score, epochs=epoch, reference_metric=ref, final_metric=metric, pseudo_fit=fit)
