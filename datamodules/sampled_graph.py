"""Node classification with mini-batches of sampled k-hop subgraphs (pure-PyTorch sampler), sharded under DDP."""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler
from torch_geometric.data import Data

from litmix.base import Example
from litmix.data import split_batch
from litmix.datamodules.graph import GraphDataModule, _NodeIds, _tiny_graph
from litmix.graph.neighbor_sampler import TorchNeighborSampler, check_fanouts
from litmix.registry import register
from litmix.validation import check_int

__all__ = ["SampledGraphDataModule"]

_PAPER = "Inductive Representation Learning on Large Graphs (https://arxiv.org/abs/1706.02216)"
_SEED_MOD = 2**62


class _SampledCollate:
    """Node ids -> ``(subgraph dict, y[ids], ids)``; the draw is seeded by ``(seed, ids)``: stateless, resumable."""

    def __init__(self, sampler: TorchNeighborSampler, inputs: dict[str, Tensor], y: Tensor, seed: int) -> None:
        self.sampler, self.y, self.seed = sampler, y, seed
        n, e = sampler.num_nodes, int(sampler.perm.numel())
        self.node_level = {k: v for k, v in inputs.items() if k != "edge_index" and v.dim() > 0 and v.shape[0] == n}
        self.edge_level = {k: v for k, v in inputs.items() if k != "edge_index" and k not in self.node_level
                           and v.dim() > 0 and v.shape[0] == e}  # fmt: skip

    def __call__(self, ids: list[int]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        index = torch.tensor(ids, dtype=torch.long)
        self.sampler.reseed(hash((self.seed, tuple(ids))) % _SEED_MOD)
        out = self.sampler.sample(index)
        graph = {k: v[out.node] for k, v in self.node_level.items()}
        graph.update({k: v[out.edge] for k, v in self.edge_level.items()})
        graph["edge_index"] = torch.stack([out.row, out.col])
        graph["n_id"] = out.node
        return graph, self.y[index], index


class _TinySAGE(pl.LightningModule):
    """Two ``SAGEConv`` layers; predictions of a sampled batch are the first ``len(index)`` rows (the seeds)."""

    def __init__(self, in_features: int = 8, hidden: int = 16, num_classes: int = 3, lr: float = 0.05) -> None:
        from torch_geometric.nn import SAGEConv

        super().__init__()
        self.conv1, self.conv2, self.lr = SAGEConv(in_features, hidden), SAGEConv(hidden, num_classes), lr

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.conv2(F.relu(self.conv1(x, edge_index)), edge_index)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        graph, y, index = split_batch(batch)
        assert y is not None
        assert index is not None
        return F.cross_entropy(self(graph["x"], graph["edge_index"])[: index.numel()], y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        graph, y, index = split_batch(batch)
        assert y is not None
        assert index is not None
        acc = (self(graph["x"], graph["edge_index"])[: index.numel()].argmax(-1) == y).float().mean()
        self.log("val_acc", acc, batch_size=int(index.numel()), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


@register("datamodule", "graph", paper=_PAPER)
class SampledGraphDataModule(GraphDataModule):
    """Mini-batch node classification on sampled k-hop subgraphs (GraphSAGE-style), without ``pyg-lib``.

    Hamilton, Ying, Leskovec, "Inductive Representation Learning on Large Graphs" (NeurIPS 2017,
    https://arxiv.org/abs/1706.02216). Loads the graph exactly like :class:`~litmix.datamodules.GraphDataModule`
    (Planetoid from ``root`` or a given ``Data``) and serves batches of ``batch_size`` seed nodes with their
    subgraph drawn by :class:`~litmix.graph.TorchNeighborSampler` (``num_neighbors`` fan-outs per hop).

    **Batch convention.** ``(graph, y, index)``: ``graph`` is a dict with the *subgraph*'s ``x`` (and any other
    node-level tensor, rows ordered as ``n_id``), its local ``edge_index`` (messages flow towards the seeds),
    edge-level tensors such as ``edge_attr`` sliced to the sampled edges and ``n_id`` (global node ids); the
    seeds are the first ``len(index)`` subgraph nodes, so a module computes
    ``cross_entropy(model(graph["x"], graph["edge_index"])[:len(index)], y)``; ``index`` holds the seeds' global
    ids and ``y`` their labels. **Under DDP** each rank gets a disjoint shard of the seed nodes (a
    ``DistributedSampler``, reshuffled per epoch with ``seed``); every draw is seeded by ``(seed, seed ids)``,
    so batches are the same on every run and after a resume, and ranks draw independent subgraphs. The graph is
    replicated on every rank (its CSR is built once per rank, at ``setup``). Validation / test batches are
    sampled the same way (no shuffling).

    Args:
        root: folder with ``<name>/raw`` Planetoid files, or ``None`` with ``data``.
        name: ``"Cora"``, ``"CiteSeer"`` or ``"PubMed"``.
        split: ``"public"`` or ``"full"`` (every node outside validation / test trains).
        num_neighbors: fan-out per hop (each >= 1 or -1 for all; 1 to 8 hops); default ``[10, 10]``.
        batch_size: seed nodes per batch and rank (>= 1).
        seed: shuffling and sampling seed (>= 0).
        data: a ``Data`` with ``x``, ``y``, ``edge_index`` and bool masks, instead of ``root``.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a bad value (empty ``num_neighbors``, ``batch_size < 1``, both or neither of ``root`` and
            ``data``, a malformed graph), naming the argument.
        FileNotFoundError: if ``root`` lacks the Planetoid raw files (at ``setup``).

    Example:
        >>> dm = SampledGraphDataModule(None, data=_tiny_graph(), num_neighbors=[3, 2], batch_size=6)
        >>> dm.setup("fit")
        >>> graph, y, index = next(iter(dm.train_dataloader()))
        >>> sorted(graph), len(index), bool((graph["n_id"][:6] == index).all()), len(dm.train_dataloader())
        (['edge_index', 'n_id', 'x'], 6, True, 3)
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        name: str = "Cora",
        split: str = "public",
        num_neighbors: list[int] | None = None,
        batch_size: int = 32,
        seed: int = 0,
        data: Data | None = None,
    ) -> None:
        owner = type(self).__name__
        fanouts = check_fanouts(owner, [10, 10] if num_neighbors is None else num_neighbors)
        batch_size = check_int(owner, "batch_size", batch_size, low=1)
        super().__init__(root, name=name, split=split, batch_size=batch_size, seed=seed, data=data)
        self.num_neighbors = fanouts
        self.sampler: TorchNeighborSampler | None = None

    @classmethod
    def example(cls) -> Example:
        """A two-layer GraphSAGE on the generated 48-node block-model graph, 6 seeds per batch, fan-outs [3, 2]."""
        return Example(_TinySAGE(), cls(None, data=_tiny_graph(), num_neighbors=[3, 2], batch_size=6), [])

    def setup(self, stage: str | None = None) -> None:
        """Load the graph (see :class:`GraphDataModule`) and build the sampler's CSR once."""
        super().setup(stage)
        if self.sampler is None:
            assert self.graph is not None
            self.sampler = TorchNeighborSampler(self.graph, self.num_neighbors, seed=self.seed)

    def _loader(self, index: Tensor, train: bool) -> DataLoader:
        assert self.sampler is not None
        assert self.batch_size is not None
        world, rank = self._world()
        dataset = _NodeIds(index)
        sampler: DistributedSampler[int] = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=train, seed=self.seed
        )
        collate = _SampledCollate(self.sampler, self.inputs, self.targets, self.seed)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=collate)
