"""A pure-PyTorch k-hop neighbour sampler usable as PyG's ``BaseSampler`` (no ``pyg-lib`` / ``torch-sparse``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.sampler import BaseSampler, EdgeSamplerInput, NegativeSampling, NodeSamplerInput, SamplerOutput
from torch_geometric.sampler.neighbor_sampler import edge_sample

from litmix.functional.link_prediction import check_edge_index
from litmix.functional.random_walks import csr_from_edge_index
from litmix.registry import register
from litmix.validation import check_int, check_type

__all__ = ["TorchNeighborSampler"]

_PAPER = "Inductive Representation Learning on Large Graphs (https://arxiv.org/abs/1706.02216)"
MAX_SEED = 2**63 - 1


def _sample_slots(rowptr: Tensor, frontier: Tensor, k: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """CSR slots of up to ``k`` distinct in-edges per frontier node (all of them when ``k < 0`` or deg <= k).

    Returns ``(slot, owner)``: the CSR positions sampled and the frontier position each belongs to. Sampling
    without replacement is vectorised with random keys: every candidate slot gets a uniform key, slots are
    sorted by ``(owner, key)`` and the first ``k`` of each segment kept. Cost and memory ``O(sum of frontier
    degrees)``, independent of the graph's size.
    """
    start = rowptr[frontier]
    deg = rowptr[frontier + 1] - start
    total = int(deg.sum())
    if total == 0:
        empty = torch.empty(0, dtype=torch.long, device=rowptr.device)
        return empty, empty
    owner = torch.repeat_interleave(torch.arange(frontier.numel(), device=rowptr.device), deg)
    seg_start = torch.cumsum(deg, 0) - deg
    local = torch.arange(total, device=rowptr.device) - seg_start[owner]
    slot = start[owner] + local
    if k < 0 or int(deg.max()) <= k:
        return slot, owner
    full = deg[owner] <= k
    key = torch.rand(total, generator=gen, device=rowptr.device).double() + owner.double()
    key = torch.where(full, owner.double(), key)  # segments kept whole need no shuffle
    order = torch.argsort(key, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(total, device=rowptr.device) - seg_start[owner[order]]
    keep = rank < k
    return slot[keep], owner[keep]


def check_fanouts(owner: str, num_neighbors: object) -> list[int]:
    """``num_neighbors`` as a list of 1 to 8 per-hop fan-outs, each ``>= 1`` or ``-1`` (all neighbours).

    Raises:
        TypeError: for a non-list or non-int entries, naming ``num_neighbors``.
        ValueError: for no or more than 8 hops, or a fan-out of 0 or below -1.

    Example:
        >>> check_fanouts("TorchNeighborSampler", (10, -1))
        [10, -1]
    """
    if isinstance(num_neighbors, str | bytes) or not isinstance(num_neighbors, list | tuple):
        raise TypeError(f"{owner}(num_neighbors={num_neighbors!r}): num_neighbors must be a list of ints")
    fanouts = [check_int(owner, "num_neighbors", k, low=-1) for k in num_neighbors]
    if not 1 <= len(fanouts) <= 8 or any(k == 0 for k in fanouts):
        raise ValueError(
            f"{owner}(num_neighbors={num_neighbors!r}): num_neighbors must hold 1 to 8 fan-outs, each >= 1 or -1"
        )
    return fanouts


@register("utility", "graph", paper=_PAPER, module="litmix.graph.neighbor_sampler")
class TorchNeighborSampler(BaseSampler):
    """Uniform k-hop neighbour sampling (GraphSAGE's fan-outs) in pure PyTorch, as a PyG ``BaseSampler``.

    Hamilton, Ying, Leskovec, "Inductive Representation Learning on Large Graphs" (NeurIPS 2017,
    https://arxiv.org/abs/1706.02216). PyG's ``NeighborSampler`` / ``NeighborLoader`` need ``pyg-lib`` or
    ``torch-sparse``; this sampler needs neither, so ``NodeLoader(data, node_sampler=TorchNeighborSampler(data,
    [10, 10]), input_nodes=..., batch_size=...)`` (or PyG's ``LightningNodeData(node_sampler=...)``) works
    anywhere. The CSR over *incoming* edges (sorted by destination) is built once at construction.

    For hop ``h`` every node of the frontier (the seeds at hop 0, then the nodes first reached at the previous
    hop) keeps all of its in-neighbours if it has at most ``num_neighbors[h]`` of them (or
    ``num_neighbors[h] == -1``), else ``num_neighbors[h]`` distinct ones drawn uniformly without replacement
    (vectorised over the frontier with random keys). The output follows PyG's conventions: ``node`` holds the
    global ids with the seeds in the first ``batch_size`` positions and the other nodes in order of first
    appearance; ``row`` / ``col`` are local source / destination ids of the sampled edges (messages flow
    ``row -> col``, towards the seeds), ``edge`` their ids in ``data.edge_index`` (so ``edge_attr`` is
    sliced by the loader), ``num_sampled_nodes`` / ``num_sampled_edges`` the counts per hop (for PyG's
    ``trim_to_layer``). Relabelling uses sorted ``searchsorted`` look-ups, never a map over all nodes, so a
    batch's memory grows with the sampled subgraph, not with the graph.

    Randomness comes from one ``torch.Generator`` seeded with ``seed``: one seed and one sequence of calls give
    one sequence of subgraphs. Under DDP give each rank its own seed nodes (e.g. the shard of a
    ``DistributedSampler``) and, for distinct draws, ``seed + rank``; with ``num_workers > 0`` every worker
    holds a copy of the generator (call :meth:`reseed` in a ``worker_init_fn`` for distinct streams).

    Args:
        data: the graph (a ``torch_geometric.data.Data`` with ``edge_index``; ``num_nodes`` is read from it).
        num_neighbors: fan-out per hop (each an int >= 1, or -1 for all neighbours; 1 to 8 hops).
        seed: seed of the sampling generator (>= 0).

    Raises:
        TypeError: if ``data`` is not a ``Data``, ``num_neighbors`` not a list of ints or ``seed`` not an int,
            naming the argument.
        ValueError: for an empty ``num_neighbors``, a fan-out of 0 or below -1, a negative ``seed``, a graph
            without ``edge_index`` or with node ids outside ``[0, num_nodes)``, naming the argument; in
            :meth:`sample_from_nodes`, seed node ids outside the graph.

    Example:
        >>> from torch_geometric.data import Data
        >>> from torch_geometric.loader import NodeLoader
        >>> ring = torch.arange(6)
        >>> ei = torch.cat([torch.stack([ring, (ring + 1) % 6]), torch.stack([(ring + 1) % 6, ring])], 1)
        >>> data = Data(x=torch.randn(6, 4), edge_index=ei)
        >>> loader = NodeLoader(data, node_sampler=TorchNeighborSampler(data, [-1, 1]), input_nodes=None, batch_size=2)
        >>> batch = next(iter(loader))
        >>> batch.n_id[:4].tolist(), batch.batch_size, batch.edge_index.shape[1], batch.num_sampled_edges
        ([0, 1, 5, 2], 2, 6, [4, 2])
    """

    def __init__(self, data: Data, num_neighbors: list[int], seed: int = 0) -> None:
        owner = type(self).__name__
        check_type(owner, "data", data, Data)
        fanouts = check_fanouts(owner, num_neighbors)
        seed = check_int(owner, "seed", seed, low=0, high=MAX_SEED)
        edge_index = getattr(data, "edge_index", None)
        if edge_index is None:
            raise ValueError(f"{owner}(data=...): data has no edge_index")
        num_nodes = int(data.num_nodes or 0)
        if num_nodes < 1:
            raise ValueError(f"{owner}(data=...): data has no nodes (num_nodes={num_nodes})")
        ei = check_edge_index(owner, edge_index, num_nodes)
        self.num_neighbors, self.seed, self.num_nodes = fanouts, seed, num_nodes
        # CSR over incoming edges: row v lists the sources j of the edges j -> v; perm maps slots to edge ids
        self.rowptr, self.col, self.perm = csr_from_edge_index(ei[1], ei[0], num_nodes)
        self.generator = torch.Generator().manual_seed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the sampling generator from ``seed`` (e.g. per worker or per rank)."""
        self.seed = check_int(type(self).__name__, "seed", seed, low=0, high=MAX_SEED)
        self.generator.manual_seed(self.seed)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["generator"] = self.generator.get_state()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        gen_state = state.pop("generator")
        self.__dict__.update(state)
        self.generator = torch.Generator()
        self.generator.set_state(gen_state)

    def sample(self, seeds: Tensor) -> SamplerOutput:
        """Sample the k-hop subgraph of ``seeds`` (1-D global node ids; duplicates allowed and kept in place)."""
        seeds = seeds.long().flatten().cpu()
        if seeds.numel() and (int(seeds.min()) < 0 or int(seeds.max()) >= self.num_nodes):
            raise ValueError(
                f"{type(self).__name__}.sample_from_nodes: seed node ids in [{int(seeds.min())}, {int(seeds.max())}] "
                f"outside [0, num_nodes={self.num_nodes})"
            )
        nodes = [seeds]
        known, known_local = torch.sort(seeds, stable=True)
        frontier, frontier_local = seeds, torch.arange(seeds.numel())
        rows, cols, edges = [], [], []
        num_nodes_hop, num_edges_hop = [int(seeds.numel())], []
        count = int(seeds.numel())
        for k in self.num_neighbors:
            slot, owner = _sample_slots(self.rowptr, frontier, k, self.generator)
            src = self.col[slot]
            # which sources are already known (binary search in the sorted known ids)
            pos = torch.searchsorted(known, src).clamp(max=max(known.numel() - 1, 0))
            hit = known[pos] == src if known.numel() else torch.zeros_like(src, dtype=torch.bool)
            local = torch.where(hit, known_local[pos], torch.full_like(src, -1))
            new = src[~hit]
            uniq, inverse = torch.unique(new, return_inverse=True)
            first = torch.full((uniq.numel(),), new.numel(), dtype=torch.long)
            first.scatter_reduce_(0, inverse, torch.arange(new.numel()), reduce="amin")
            order = torch.argsort(first)  # new nodes in order of first appearance
            rank = torch.empty_like(order)
            rank[order] = torch.arange(order.numel())
            local[~hit] = count + rank[inverse]
            fresh = uniq[order]
            fresh_local = torch.arange(count, count + fresh.numel())
            count += fresh.numel()
            nodes.append(fresh)
            rows.append(local)
            cols.append(frontier_local[owner])
            edges.append(self.perm[slot])
            num_nodes_hop.append(int(fresh.numel()))
            num_edges_hop.append(int(slot.numel()))
            known, idx = torch.sort(torch.cat([known, fresh]), stable=True)
            known_local = torch.cat([known_local, fresh_local])[idx]
            frontier, frontier_local = fresh, fresh_local
        return SamplerOutput(
            node=torch.cat(nodes),
            row=torch.cat(rows),
            col=torch.cat(cols),
            edge=torch.cat(edges),
            batch=None,
            num_sampled_nodes=num_nodes_hop,
            num_sampled_edges=num_edges_hop,
        )

    def sample_from_nodes(self, index: NodeSamplerInput, **kwargs: Any) -> SamplerOutput:
        """PyG's entry point: sample around ``index.node``; ``metadata = (input_id, time)`` as PyG sets it."""
        if index.input_type is not None:
            raise ValueError(
                f"{type(self).__name__}: heterogeneous input (input_type={index.input_type!r}) is not supported"
            )
        out = self.sample(index.node)
        out.metadata = (index.input_id, index.time)
        return out

    def sample_from_edges(self, index: EdgeSamplerInput, neg_sampling: NegativeSampling | None = None) -> SamplerOutput:
        """PyG's link entry point (``LinkLoader``): sample around both end points of the seed edges.

        Delegates the seed handling and negative sampling to PyG's ``edge_sample`` (non-disjoint, no time).
        """
        if index.input_type is not None:
            raise ValueError(
                f"{type(self).__name__}: heterogeneous input (input_type={index.input_type!r}) is not supported"
            )

        def sample_fn(seed: Tensor, seed_time: Tensor | None) -> SamplerOutput:
            return self.sample(seed)

        out = edge_sample(index, sample_fn, self.num_nodes, False, None, neg_sampling)
        assert isinstance(out, SamplerOutput)
        return out
