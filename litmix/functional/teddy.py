"""TEDDY's degree-based edge scores and one-shot edge selection (pure tensors)."""

from __future__ import annotations

import torch
from torch import Tensor

from litmix.registry import register

__all__ = ["teddy_edge_mask", "teddy_edge_scores"]

PAPER = "TEDDY: Trimming Edges with Degree-based Discrimination strategY (https://arxiv.org/abs/2402.01261)"
_MODULE = "litmix.functional.teddy"


def _check(edge_index: Tensor, num_nodes: int) -> None:
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        shape = tuple(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index).__name__
        raise ValueError(f"teddy: edge_index must be a [2, E] tensor, got {shape}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(f"teddy: edge_index has node ids outside [0, num_nodes={num_nodes})")


@register("function", "sparsity", paper=PAPER, module=_MODULE)
def teddy_edge_scores(edge_index: Tensor, num_nodes: int) -> Tensor:
    """TEDDY's edge scores, O(N + E): low scores join hubs whose neighbours are hubs too.

    With the self-loop-augmented degree ``d_i = deg_i + 1`` and ``a_i = (d_i^{-1/2} + sum_{j in N(i)} d_j^{-1/2}) /
    d_i`` (the mean inverse square-root degree over the closed neighbourhood), edge ``(i, j)`` scores
    ``(a_i / d_i) * (a_j / d_j)`` (``compute_edge_score`` of the reference code). Self-loops in ``edge_index`` get
    the largest score (they are never pruned). Degrees count incoming edges (``edge_index[1]``), self-loops
    excluded; both directions of an undirected edge get the same score.

    Args:
        edge_index: ``[2, E]`` long tensor.
        num_nodes: number of nodes.

    Returns:
        ``[E]`` float scores.

    Raises:
        ValueError: for a malformed ``edge_index``.

    Example:
        >>> ei = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])  # path 0-1-2-3
        >>> s = teddy_edge_scores(ei, 4)
        >>> bool(s[2] < s[0]), torch.allclose(s[0], s[1])  # the middle edge joins the two hubs: lowest
        (True, True)
    """
    _check(edge_index, num_nodes)
    row, col = edge_index[0], edge_index[1]
    loops = row == col
    src, dst = row[~loops], col[~loops]
    deg = torch.ones(num_nodes, dtype=torch.float64)  # the self-loop
    deg.index_add_(0, dst, torch.ones(dst.numel(), dtype=torch.float64))
    inv_sqrt = deg.pow(-0.5)
    a = inv_sqrt.clone()
    a.index_add_(0, dst, inv_sqrt[src])
    node = a / deg / deg
    score = node[row] * node[col]
    if bool(loops.any()):
        score[loops] = score.max()
    return score.float()


@register("function", "sparsity", paper=PAPER, module=_MODULE)
def teddy_edge_mask(edge_index: Tensor, num_nodes: int, sparsity: float, reverse: bool = False) -> Tensor:
    """Keep-mask over the edges removing ``round(sparsity * E')`` lowest-scored edges (``E'``: non-loop edges).

    An undirected graph (every edge present in both directions) loses both directions of an edge together
    (``E'`` then counts undirected edges); self-loops are always kept. ``reverse=True`` removes the
    highest-scored edges instead (the paper's ablation control). Ties break by edge position (deterministic).

    Args:
        edge_index: ``[2, E]`` long tensor.
        num_nodes: number of nodes.
        sparsity: fraction of edges removed, in [0, 1).
        reverse: remove the highest scores first.

    Returns:
        ``[E]`` bool tensor, ``True`` = kept.

    Raises:
        ValueError: for a sparsity outside [0, 1) or a malformed ``edge_index``.

    Example:
        >>> ei = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
        >>> teddy_edge_mask(ei, 4, 0.34).tolist()  # one of the three undirected edges: the hub-hub one
        [True, True, False, False, True, True]
    """
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"teddy_edge_mask(sparsity={sparsity}): sparsity must be in [0, 1)")
    scores = teddy_edge_scores(edge_index, num_nodes).double()
    if reverse:
        scores = -scores
    row, col = edge_index[0], edge_index[1]
    keep = torch.ones(edge_index.shape[1], dtype=torch.bool)
    loops = row == col
    key = torch.minimum(row, col) * num_nodes + torch.maximum(row, col)
    fwd, bwd = key[row < col], key[row > col]
    undirected = fwd.numel() == bwd.numel() and bool(torch.equal(fwd.sort().values, bwd.sort().values))
    idx = ((row < col) if undirected else ~loops).nonzero().flatten()
    n_remove = round(float(sparsity) * idx.numel())
    if n_remove == 0:
        return keep
    removed = idx[torch.sort(scores[idx], stable=True).indices[:n_remove]]
    keep[removed] = False
    if undirected:  # the other direction goes too (matched by the sorted pair keys)
        removed_keys = key[removed].sort().values
        pos = torch.searchsorted(removed_keys, key).clamp(max=removed_keys.numel() - 1)
        keep &= (removed_keys[pos] != key) | loops
    return keep
