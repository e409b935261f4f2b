"""Pure-PyTorch random walks (uniform and node2vec p/q), skip-gram pairs and the CSR they run on.

Replaces ``torch_geometric.nn.Node2Vec`` (which needs ``pyg-lib``) for DeepWalk and node2vec:

* Perozzi, Al-Rfou, Skiena, "DeepWalk: Online Learning of Social Representations" (KDD 2014,
  https://arxiv.org/abs/1403.6652): uniform truncated random walks + skip-gram.
* Grover, Leskovec, "node2vec: Scalable Feature Learning for Networks" (KDD 2016,
  https://arxiv.org/abs/1607.00653): second-order walks biased by the return parameter ``p`` and the in-out
  parameter ``q``.

Every walk step is vectorised over all walkers; node2vec's second-order bias is drawn by rejection sampling
(propose a uniform neighbour, accept with probability ``w / max(w)`` where ``w`` is ``1/p`` for a return,
``1`` for a neighbour of the previous node and ``1/q`` otherwise), with the membership test done by
``searchsorted`` on the sorted CSR: no per-edge transition table is stored (memory ``O(E)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from litmix.functional.link_prediction import check_edge_index
from litmix.registry import register
from litmix.validation import check_float, check_int, check_type

__all__ = ["csr_from_edge_index", "random_walks", "skipgram_pairs"]

_MAX_REJECTION_ROUNDS = 100


def csr_from_edge_index(index: Tensor, other: Tensor, num_nodes: int) -> tuple[Tensor, Tensor, Tensor]:
    """Compressed rows grouped by ``index``: ``(rowptr, col, perm)`` with ``col = other[perm]``.

    Row ``v`` holds ``col[rowptr[v]:rowptr[v + 1]]``, sorted ascending within the row (so ``searchsorted``
    tests membership); ``perm`` maps each CSR slot to its edge id. ``index = edge_index[0]`` gives
    out-neighbours (walks), ``index = edge_index[1]`` in-neighbours (message-passing samplers).

    Example:
        >>> rowptr, col, perm = csr_from_edge_index(torch.tensor([1, 0, 1]), torch.tensor([2, 1, 0]), 3)
        >>> rowptr.tolist(), col.tolist(), perm.tolist()
        ([0, 1, 3, 3], [1, 0, 2], [1, 2, 0])
    """
    key = index * max(num_nodes, 1) + other
    perm = torch.argsort(key, stable=True)
    counts = torch.bincount(index, minlength=num_nodes)
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=index.device)
    torch.cumsum(counts, 0, out=rowptr[1:])
    return rowptr, other[perm], perm


def _is_neighbor(keys: Tensor, n: int, u: Tensor, x: Tensor) -> Tensor:
    """``x[i]`` is a neighbour of ``u[i]``: binary search of ``u * n + x`` in the sorted CSR keys ``row * n + col``."""
    if keys.numel() == 0:
        return torch.zeros_like(u, dtype=torch.bool)
    query = u * n + x
    pos = torch.searchsorted(keys, query).clamp(max=keys.numel() - 1)
    return keys[pos] == query


@register(
    "function",
    "graph",
    paper="node2vec: Scalable Feature Learning for Networks (https://arxiv.org/abs/1607.00653)",
    module="litmix.functional.random_walks",
)
def random_walks(
    edge_index: Tensor,
    num_nodes: int,
    walk_length: int = 20,
    walks_per_node: int = 10,
    p: float = 1.0,
    q: float = 1.0,
    start: Tensor | None = None,
    seed: int = 0,
) -> Tensor:
    """Random walks ``(num_walks, walk_length + 1)`` over ``edge_index``: uniform (DeepWalk) or node2vec p/q.

    Each walk starts at a node (every node ``walks_per_node`` times, or the ids in ``start``) and takes
    ``walk_length`` steps along directed edges ``i -> j`` (pass both directions of undirected edges, PyG's
    convention); a node without out-edges stays in place. With ``p = q = 1`` the next node is a uniform
    out-neighbour (DeepWalk); otherwise (node2vec, from the second step on) the unnormalised probability of
    going from ``cur`` (coming from ``prev``) to ``x`` is ``1/p`` if ``x == prev``, ``1`` if ``x`` is a
    neighbour of ``prev`` and ``1/q`` otherwise, drawn by vectorised rejection sampling (exact; a walker
    still rejected after 100 rounds takes its last uniform proposal). Duplicate edges count with their
    multiplicity.

    Args:
        edge_index: ``(2, E)`` integer tensor, node ids in ``[0, num_nodes)``.
        num_nodes: number of nodes (>= 1).
        walk_length: steps per walk (>= 1).
        walks_per_node: walks started at each node when ``start`` is ``None`` (>= 1).
        p: return parameter (> 0; small ``p``: walks return often).
        q: in-out parameter (> 0; small ``q``: walks move outward, DFS-like).
        start: optional 1-D integer tensor of start nodes (overrides ``walks_per_node``).
        seed: seed of the walk's generator (>= 0): one seed, one set of walks.

    Returns:
        A ``long`` tensor of node ids; row ``i`` is walk ``i`` (starts ordered as ``arange(n).repeat(w)``).

    Raises:
        TypeError: for an argument of the wrong type (a float ``edge_index``, ``walk_length=2.5``), naming it.
        ValueError: for a malformed ``edge_index`` or node ids outside ``[0, num_nodes)``, non-positive
            sizes, ``p``/``q`` not finite and > 0, or ``start`` ids out of range, naming the argument.

    Example:
        >>> ring = torch.arange(5)
        >>> ei = torch.cat([torch.stack([ring, (ring + 1) % 5]), torch.stack([(ring + 1) % 5, ring])], 1)
        >>> walks = random_walks(ei, 5, walk_length=4, walks_per_node=2, seed=0)
        >>> walks.shape, walks[:, 0].tolist()
        (torch.Size([10, 5]), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
        >>> bool((((walks[:, 1:] - walks[:, :-1]) % 5 == 1) | ((walks[:, 1:] - walks[:, :-1]) % 5 == 4)).all())
        True
    """
    owner = "random_walks"
    num_nodes = check_int(owner, "num_nodes", num_nodes, low=1)
    walk_length = check_int(owner, "walk_length", walk_length, low=1)
    walks_per_node = check_int(owner, "walks_per_node", walks_per_node, low=1)
    p = check_float(owner, "p", p, low=0.0, low_open=True)
    q = check_float(owner, "q", q, low=0.0, low_open=True)
    seed = check_int(owner, "seed", seed, low=0)
    ei = check_edge_index(owner, edge_index, num_nodes)
    if start is not None:
        check_type(owner, "start", start, Tensor)
        if start.is_floating_point() or start.dim() != 1:
            raise ValueError(f"{owner}(start=...): start must be a 1-D integer tensor, got {start.dtype}")
        if start.numel() and (int(start.min()) < 0 or int(start.max()) >= num_nodes):
            raise ValueError(f"{owner}(start=...): start holds node ids outside [0, num_nodes={num_nodes})")
        cur = start.long().to(ei.device)
    else:
        cur = torch.arange(num_nodes, device=ei.device).repeat(walks_per_node)
    gen = torch.Generator(device=ei.device).manual_seed(seed)
    rowptr, col, _ = csr_from_edge_index(ei[0], ei[1], num_nodes)
    deg = rowptr[1:] - rowptr[:-1]
    out = torch.empty(cur.numel(), walk_length + 1, dtype=torch.long, device=ei.device)
    out[:, 0] = cur

    def propose(nodes: Tensor) -> Tensor:
        d = deg[nodes]
        off = (torch.rand(nodes.numel(), generator=gen, device=nodes.device) * d).long().clamp(max=(d - 1).clamp(min=0))
        nxt = col[(rowptr[nodes] + off).clamp(max=max(col.numel() - 1, 0))] if col.numel() else nodes
        return torch.where(d > 0, nxt, nodes)

    biased = p != 1.0 or q != 1.0
    # rows sorted, columns sorted within rows: the keys row * n + col are globally sorted
    keys = torch.repeat_interleave(torch.arange(num_nodes, device=ei.device), deg) * num_nodes + col if biased else col
    w_max = max(1.0 / p, 1.0, 1.0 / q)
    prev = cur
    for step in range(walk_length):
        nxt = propose(cur)
        if biased and step > 0:
            todo = torch.ones_like(cur, dtype=torch.bool)
            for _ in range(_MAX_REJECTION_ROUNDS):
                idx = todo.nonzero().flatten()
                if idx.numel() == 0:
                    break
                x = propose(cur[idx])
                nxt[idx] = x
                pv = prev[idx]
                w = torch.where(
                    x == pv,
                    torch.tensor(1.0 / p),
                    torch.where(_is_neighbor(keys, num_nodes, pv, x), torch.tensor(1.0), torch.tensor(1.0 / q)),
                )
                accept = torch.rand(idx.numel(), generator=gen, device=cur.device) * w_max < w
                todo[idx[accept]] = False
        prev, cur = cur, nxt
        out[:, step + 1] = cur
    return out


def skipgram_pairs(walks: Tensor, window: int = 5) -> Tensor:
    """All ``(center, context)`` pairs ``(P, 2)`` within ``window`` steps of each other in every walk.

    Example:
        >>> skipgram_pairs(torch.tensor([[0, 1, 2]]), window=1).tolist()
        [[0, 1], [1, 2], [1, 0], [2, 1]]

    Raises:
        ValueError: for ``window < 1`` or walks that are not a 2-D tensor.
    """
    window = check_int("skipgram_pairs", "window", window, low=1)
    if walks.dim() != 2:
        raise ValueError(f"skipgram_pairs(walks=...): walks must be 2-D (num_walks, length), got {walks.dim()}-D")
    parts = []
    for off in range(1, min(window, walks.shape[1] - 1) + 1):
        a, b = walks[:, :-off], walks[:, off:]
        parts.append(torch.stack([a.reshape(-1), b.reshape(-1)], 1))
        parts.append(torch.stack([b.reshape(-1), a.reshape(-1)], 1))
    if not parts:
        return torch.empty(0, 2, dtype=torch.long)
    return torch.cat(parts, 0)
