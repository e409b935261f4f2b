"""Link prediction in pure ``torch.sparse``: common neighbours (NCN / NCNC), ranking metrics, topological concentration.

Wang, Yang, Zhang, "Neural Common Neighbor with Completion for Link Prediction" (ICLR 2024,
https://arxiv.org/abs/2302.00890): :func:`common_neighbors` and :func:`completion_candidates` gather the
common neighbours of target pairs as sparse ``(pairs, nodes)`` indicator rows (``A[i] * A[j]`` on a
``torch.sparse_coo`` adjacency; no ``torch-sparse``), so ``torch.sparse.mm(cn, h)`` sums their embeddings.

Wang, Yang, Tang, Derr, Shah, "A Topological Perspective on Demystifying GNN-Based Link Prediction Performance"
(ICLR 2024, https://arxiv.org/abs/2310.04612): :func:`topological_concentration` is the per-node TC.

:func:`hits_at_k` and :func:`link_mrr` are OGB's link-prediction metrics with one shared pool of negatives.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from litmix.registry import register
from litmix.validation import check_float, check_int, check_type

__all__ = [
    "NCN_PAPER",
    "TC_PAPER",
    "adjacency",
    "common_neighbors",
    "completion_candidates",
    "hits_at_k",
    "link_mrr",
    "node_link_performance",
    "node_reciprocal_ranks",
    "remove_edges",
    "topological_concentration",
]

NCN_PAPER = "Neural Common Neighbor with Completion for Link Prediction (https://arxiv.org/abs/2302.00890)"
TC_PAPER = (
    "A Topological Perspective on Demystifying GNN-Based Link Prediction Performance (https://arxiv.org/abs/2310.04612)"
)


def check_edge_index(owner: str, edge_index: object, num_nodes: int, name: str = "edge_index") -> Tensor:
    """``edge_index`` as a long ``(2, E)`` tensor with ids in ``[0, num_nodes)``.

    Raises:
        TypeError: for a non-tensor or a non-integer tensor.
        ValueError: for a wrong shape or ids outside the nodes, naming ``name``.

    Example:
        >>> check_edge_index("f", torch.tensor([[0, 1], [1, 2]]), 3).dtype
        torch.int64
    """
    check_type(owner, name, edge_index, Tensor)
    assert isinstance(edge_index, Tensor)
    if edge_index.is_floating_point() or edge_index.is_complex() or edge_index.dtype == torch.bool:
        raise TypeError(f"{owner}({name}=...): {name} must be an integer tensor, got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"{owner}({name}=...): {name} must have shape (2, E), got {tuple(edge_index.shape)}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(
            f"{owner}({name}=...): {name} holds node ids in [{int(edge_index.min())}, {int(edge_index.max())}], "
            f"outside [0, num_nodes={num_nodes})"
        )
    return edge_index.long()


def adjacency(edge_index: Tensor, num_nodes: int) -> Tensor:
    """The 0/1 adjacency ``(num_nodes, num_nodes)`` of ``edge_index`` as a coalesced ``torch.sparse_coo`` tensor.

    Duplicate edges count once; the direction is kept (pass both directions for an undirected graph).

    Example:
        >>> adjacency(torch.tensor([[0, 0, 1], [1, 1, 2]]), 3).to_dense()
        tensor([[0., 1., 0.],
                [0., 0., 1.],
                [0., 0., 0.]])
    """
    num_nodes = check_int("adjacency", "num_nodes", num_nodes, low=1)
    edge_index = check_edge_index("adjacency", edge_index, num_nodes)
    values = torch.ones(edge_index.shape[1], device=edge_index.device)
    adj = torch.sparse_coo_tensor(edge_index, values, (num_nodes, num_nodes), check_invariants=False).coalesce()
    return torch.sparse_coo_tensor(
        adj.indices(), adj.values().clamp(max=1.0), adj.shape, is_coalesced=True, check_invariants=False
    )


def _rows(adj: Tensor, index: Tensor) -> Tensor:
    return adj.index_select(0, index).coalesce()


@register("function", "graph", paper=NCN_PAPER, module="litmix.functional.link_prediction")
def common_neighbors(adj: Tensor, pairs: Tensor) -> Tensor:
    """Sparse ``(P, N)`` indicator rows of the common neighbours ``N(i) ∩ N(j)`` of each pair ``(i, j)``.

    NCN (Wang et al., https://arxiv.org/abs/2302.00890) sums the GNN embeddings of these nodes:
    ``torch.sparse.mm(common_neighbors(adj, pairs), h)`` (differentiable in ``h``). Pure ``torch.sparse``:
    ``adj.index_select(0, i) * adj.index_select(0, j)`` on the coalesced COO adjacency of :func:`adjacency`.

    Args:
        adj: a 0/1 ``torch.sparse_coo`` adjacency ``(N, N)`` (:func:`adjacency`).
        pairs: long ``(2, P)`` target pairs.

    Raises:
        TypeError: for a dense ``adj`` or non-integer ``pairs``.
        ValueError: for ``pairs`` not of shape ``(2, P)`` or outside the nodes.

    Example:
        >>> adj = adjacency(torch.tensor([[0, 1, 0, 2, 1, 2, 2, 3], [1, 0, 2, 0, 2, 1, 3, 2]]), 4)
        >>> common_neighbors(adj, torch.tensor([[0, 0], [1, 3]])).to_dense()
        tensor([[0., 0., 1., 0.],
                [0., 0., 1., 0.]])
    """
    _check_adj("common_neighbors", adj, pairs)
    return (_rows(adj, pairs[0]) * _rows(adj, pairs[1])).coalesce()


def completion_candidates(adj: Tensor, pairs: Tensor) -> tuple[Tensor, Tensor]:
    r"""NCNC's completion candidates: sparse ``(P, N)`` indicators of ``N(i) \\ N(j)`` and ``N(j) \\ N(i)``.

    A node ``k`` of the first is a common neighbour if the edge ``(j, k)`` exists (NCNC predicts it), of the
    second if ``(i, k)`` exists. Target nodes themselves are excluded (``k`` never equals ``i`` or ``j``).

    Raises:
        TypeError: for a dense ``adj`` or non-integer ``pairs``.
        ValueError: for ``pairs`` not of shape ``(2, P)`` or outside the nodes.

    Example:
        >>> adj = adjacency(torch.tensor([[0, 1, 0, 2, 2, 3], [1, 0, 2, 0, 3, 2]]), 4)
        >>> only_i, only_j = completion_candidates(adj, torch.tensor([[0], [3]]))
        >>> only_i.to_dense().tolist(), only_j.to_dense().tolist()
        ([[0.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]])
    """
    _check_adj("completion_candidates", adj, pairs)
    ai, aj = _rows(adj, pairs[0]), _rows(adj, pairs[1])
    both = ai * aj
    out = []
    for rows, other in ((ai, pairs[1]), (aj, pairs[0])):
        diff = (rows - both).coalesce()
        idx, val = diff.indices(), diff.values()
        keep = (val > 0) & (idx[1] != other[idx[0]]) & (idx[1] != pairs[0][idx[0]]) & (idx[1] != pairs[1][idx[0]])
        out.append(
            torch.sparse_coo_tensor(idx[:, keep], val[keep], diff.shape, is_coalesced=True, check_invariants=False)
        )
    return out[0], out[1]


def _check_adj(owner: str, adj: object, pairs: object) -> None:
    check_type(owner, "adj", adj, Tensor)
    assert isinstance(adj, Tensor)
    if adj.layout != torch.sparse_coo or adj.dim() != 2:
        raise TypeError(
            f"{owner}(adj=...): adj must be a 2-D torch.sparse_coo tensor (see adjacency), got {adj.layout}"
        )
    check_edge_index(owner, pairs, int(adj.shape[0]), name="pairs")


def remove_edges(edge_index: Tensor, pairs: Tensor, num_nodes: int) -> Tensor:
    """``edge_index`` without the edges of ``pairs`` in either direction (NCN's target-link removal).

    Example:
        >>> ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
        >>> remove_edges(ei, torch.tensor([[1], [0]]), 3).tolist()
        [[1, 2], [2, 1]]
    """
    edge_index = check_edge_index("remove_edges", edge_index, num_nodes)
    pairs = check_edge_index("remove_edges", pairs, num_nodes, name="pairs")
    lo, hi = torch.minimum(edge_index[0], edge_index[1]), torch.maximum(edge_index[0], edge_index[1])
    plo, phi = torch.minimum(pairs[0], pairs[1]), torch.maximum(pairs[0], pairs[1])
    drop = torch.isin(lo * num_nodes + hi, plo * num_nodes + phi)
    return edge_index[:, ~drop]


def _scores(owner: str, pos: object, neg: object) -> tuple[Tensor, Tensor]:
    for name, value in (("pos", pos), ("neg", neg)):
        check_type(owner, name, value, Tensor)
        assert isinstance(value, Tensor)
        if value.dim() != 1:
            raise ValueError(f"{owner}({name}=...): {name} must be a vector of scores, got {tuple(value.shape)}")
    assert isinstance(pos, Tensor)
    assert isinstance(neg, Tensor)
    return pos.double(), neg.double()


@register("function", "graph", paper=NCN_PAPER, module="litmix.functional.link_prediction")
def hits_at_k(pos: Tensor, neg: Tensor, k: int) -> Tensor:
    """OGB's Hits@K: the share of positive edges scored above the ``k``-th highest negative score.

    With fewer than ``k`` negatives every positive counts as a hit (OGB's rule). NaN without positives.

    Raises:
        TypeError: for non-tensor scores or a non-int ``k``.
        ValueError: for ``k < 1`` or scores that are not vectors.

    Example:
        >>> hits_at_k(torch.tensor([0.9, 0.5, 0.1]), torch.tensor([0.8, 0.3, 0.2]), k=2)
        tensor(0.6667, dtype=torch.float64)
    """
    k = check_int("hits_at_k", "k", k, low=1)
    pos, neg = _scores("hits_at_k", pos, neg)
    if pos.numel() == 0:
        return torch.tensor(float("nan"), dtype=torch.float64)
    if neg.numel() < k:
        return torch.tensor(1.0, dtype=torch.float64)
    threshold = torch.topk(neg, k).values[-1]
    return (pos > threshold).double().mean()


def node_reciprocal_ranks(pos: Tensor, neg: Tensor) -> Tensor:
    """Per positive edge ``1 / rank`` among the negatives; ties count half (OGB's optimistic/pessimistic mean).

    Example:
        >>> node_reciprocal_ranks(torch.tensor([0.9, 0.5]), torch.tensor([0.8, 0.5, 0.2]))
        tensor([1.0000, 0.4000], dtype=torch.float64)
    """
    pos, neg = _scores("node_reciprocal_ranks", pos, neg)
    sorted_neg = torch.sort(neg).values
    above = neg.numel() - torch.searchsorted(sorted_neg, pos, right=True)
    at_least = neg.numel() - torch.searchsorted(sorted_neg, pos, right=False)
    return 1.0 / (1.0 + 0.5 * (above + at_least).double())


@register("function", "graph", paper=NCN_PAPER, module="litmix.functional.link_prediction")
def link_mrr(pos: Tensor, neg: Tensor) -> Tensor:
    """Mean reciprocal rank of each positive edge among all negatives (shared pool; ties count half).

    Raises:
        TypeError: for non-tensor scores.
        ValueError: for scores that are not vectors.

    Example:
        >>> link_mrr(torch.tensor([0.9, 0.5]), torch.tensor([0.8, 0.5, 0.2]))
        tensor(0.7000, dtype=torch.float64)
    """
    rr = node_reciprocal_ranks(pos, neg)
    return rr.mean() if rr.numel() else torch.tensor(float("nan"), dtype=torch.float64)


@register("function", "graph", paper=TC_PAPER, module="litmix.functional.link_prediction")
def topological_concentration(
    edge_index: Tensor, num_nodes: int, hops: int = 2, beta: float | None = None, pairs: Tensor | None = None
) -> Tensor:
    """Per-node topological concentration (TC) over the training neighbours (Wang et al., ICLR 2024).

    Wang, Yang, Tang, Derr, Shah, "A Topological Perspective on Demystifying GNN-Based Link Prediction
    Performance" (https://arxiv.org/abs/2310.04612), Eq. (1) as in the authors' ``cal_tc``: with ``W_k = A^k``
    (``k``-step walk counts from node ``i``; ``H_i^k`` its support),

    ``TC_i = mean_{j in N(i)} [sum_{k1,k2 <= K} beta^(k1+k2-2) sum_{v in H_i^k1 ∩ H_j^k2} W_k1[i, v]]
    / [sum_{k1,k2 <= K} beta^(k1+k2-2) sum_v W_k1[i, v]]``,

    the average (walk-weighted) overlap of node ``i``'s ``K``-hop computation tree with those of its neighbours
    ``N(i)`` in ``edge_index`` (the training graph), in ``[0, 1]``. ``beta`` defaults to ``1 / mean degree``
    (the authors' choice). ``pairs`` replaces ``N(i)`` by the given ``(i, j)`` pairs (e.g. validation edges: the
    paper's TC^Val); nodes without a neighbour (pair) get 0. Pure ``torch.sparse``: ``A^k`` by sparse products,
    the overlaps by sparse row products.

    Args:
        edge_index: the training graph ``(2, E)`` (give both directions for an undirected graph).
        num_nodes: number of nodes.
        hops: ``K`` (1..4).
        beta: hop decay (> 0), or ``None`` for ``1 / mean degree``.
        pairs: ``(2, P)`` pairs to average over instead of the edges of ``edge_index``.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for ``hops`` outside 1..4, ``beta <= 0``, or edges / pairs outside the nodes.

    Example:
        >>> ring = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 0], [1, 0, 2, 1, 3, 2, 0, 3]])
        >>> topological_concentration(ring, 4, hops=1).tolist()      # 4-cycle: neighbours share no 1-hop node
        [0.0, 0.0, 0.0, 0.0]
        >>> tri = torch.tensor([[0, 1, 1, 2, 2, 0], [1, 0, 2, 1, 0, 2]])
        >>> topological_concentration(tri, 3, hops=1).tolist()       # triangle: one of two neighbours shared
        [0.5, 0.5, 0.5]
    """
    owner = "topological_concentration"
    num_nodes = check_int(owner, "num_nodes", num_nodes, low=1)
    hops = check_int(owner, "hops", hops, low=1, high=4)
    beta = check_float(owner, "beta", beta, low=0.0, low_open=True, allow_none=True)
    edge_index = check_edge_index(owner, edge_index, num_nodes)
    adj = adjacency(edge_index, num_nodes)
    if beta is None:
        deg = torch.sparse.sum(adj, dim=1).to_dense() if adj._nnz() else torch.zeros(num_nodes)
        beta = 1.0 / max(float(deg.mean()), 1e-12)
    pairs = adj.indices() if pairs is None else check_edge_index(owner, pairs, num_nodes, name="pairs")
    walks = [adj]
    for _ in range(hops - 1):
        with warnings.catch_warnings():  # torch routes COO @ COO through beta CSR kernels and says so
            warnings.simplefilter("ignore", UserWarning)
            walks.append(torch.sparse.mm(walks[-1], adj).coalesce())
    support = [
        torch.sparse_coo_tensor(
            w.indices(), torch.ones_like(w.values()), w.shape, is_coalesced=True, check_invariants=False
        )
        for w in walks
    ]
    src, dst = pairs[0], pairs[1]
    num = torch.zeros(pairs.shape[1], dtype=torch.float64)
    for k1, w in enumerate(walks):
        wi = _rows(w, src)
        for k2, s in enumerate(support):
            inter = (wi * _rows(s, dst)).coalesce()
            per_pair = torch.zeros(pairs.shape[1], dtype=torch.float64)
            per_pair.index_add_(0, inter.indices()[0], inter.values().double())
            num += beta ** (k1 + k2) * per_pair
    total = torch.stack([torch.sparse.sum(w, dim=1).to_dense() if w._nnz() else torch.zeros(num_nodes)
                         for w in walks]).double()  # fmt: skip
    decay = torch.tensor([beta**k for k in range(hops)], dtype=torch.float64)
    den = (decay.sum() * (decay[:, None] * total).sum(0))[src]
    ratio = torch.where(den > 0, num / den.clamp(min=1e-300), torch.zeros_like(num))
    tc = torch.zeros(num_nodes, dtype=torch.float64).index_add_(0, src, ratio)
    count = torch.zeros(num_nodes, dtype=torch.float64).index_add_(0, src, torch.ones_like(ratio))
    return torch.where(count > 0, tc / count.clamp(min=1), torch.zeros_like(tc))


def node_link_performance(pairs: Tensor, pos: Tensor, neg: Tensor, num_nodes: int) -> Tensor:
    """Per-node MRR: the mean reciprocal rank (:func:`node_reciprocal_ranks`) of the positive edges at each node.

    ``pairs`` ``(2, P)`` are the positive edges scored ``pos``; each edge counts for both endpoints; ``neg`` is
    the shared pool of negative scores. Nodes without a positive edge get NaN. The per-node performance that
    Wang et al. (https://arxiv.org/abs/2310.04612) relate to topological concentration.

    Example:
        >>> node_link_performance(torch.tensor([[0, 0], [1, 2]]), torch.tensor([0.9, 0.1]),
        ...                       torch.tensor([0.5, 0.2]), 4).tolist()
        [0.6666666666666666, 1.0, 0.3333333333333333, nan]
    """
    num_nodes = check_int("node_link_performance", "num_nodes", num_nodes, low=1)
    pairs = check_edge_index("node_link_performance", pairs, num_nodes, name="pairs")
    rr = node_reciprocal_ranks(pos, neg)
    if rr.numel() != pairs.shape[1]:
        raise ValueError(f"node_link_performance: {pairs.shape[1]} pairs but {rr.numel()} positive scores")
    nodes = torch.cat([pairs[0], pairs[1]])
    total = torch.zeros(num_nodes, dtype=torch.float64).index_add_(0, nodes, torch.cat([rr, rr]))
    count = torch.zeros(num_nodes, dtype=torch.float64).index_add_(
        0, nodes, torch.ones(2 * rr.numel(), dtype=torch.float64)
    )
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))
