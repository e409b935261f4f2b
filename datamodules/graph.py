"""Node classification on one graph (Cora, CiteSeer or any PyG ``Data``): full-batch by default, sharded under DDP."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torch_geometric.data import Data

from litmix.base import Example
from litmix.data import split_batch
from litmix.datamodules._graph_base import ShardedGraphDataModule, check_root_or_data
from litmix.registry import register
from litmix.validation import MissingPathError, check_choice, check_int

__all__ = ["GraphDataModule"]

PLANETOID_NAMES = ("Cora", "CiteSeer", "PubMed")
PLANETOID_SUFFIXES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
SPLITS = ("public", "full")
MAX_SEED = 2**32 - 1
#: Node-level attributes that are targets or split masks, not model inputs.
_NOT_INPUTS = ("y", "train_mask", "val_mask", "test_mask")


def planetoid_files(name: str) -> list[str]:
    """The raw file names PyG's ``Planetoid`` reads for ``name`` (looked for in ``root/name/raw``).

    Example:
        >>> planetoid_files("Cora")[:2]
        ['ind.cora.x', 'ind.cora.tx']
    """
    return [f"ind.{name.lower()}.{suffix}" for suffix in PLANETOID_SUFFIXES]


class _NodeIds(Dataset):
    """Item ``i`` is the node id ``index[i]``; ``len`` is the number of nodes in the split."""

    def __init__(self, index: Tensor) -> None:
        self.index = index

    def __len__(self) -> int:
        return int(self.index.numel())

    def __getitem__(self, i: int) -> int:
        return int(self.index[i])


class _GraphCollate:
    """Collate node ids into ``(graph, y[ids], ids)``: the whole graph and the targets of the batch's nodes."""

    def __init__(self, graph: dict[str, Tensor], y: Tensor) -> None:
        self.graph, self.y = graph, y

    def __call__(self, ids: list[int]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        index = torch.tensor(ids, dtype=torch.long)
        return dict(self.graph), self.y[index], index


def _check_graph(owner: str, data: Data, where: str) -> None:
    """Cheap structural checks of a node-classification graph (no compute beyond min/max of the edges)."""
    for key in ("x", "y", "edge_index", "train_mask", "val_mask", "test_mask"):
        if not isinstance(getattr(data, key, None), Tensor):
            raise ValueError(f"{owner}: {where} has no tensor attribute {key!r} (needs x, y, edge_index and masks)")
    n = data.x.shape[0]
    if data.y.shape[0] != n or data.y.dim() != 1 or data.y.is_floating_point():
        raise ValueError(f"{owner}: {where}.y must be an integer vector of {n} labels, got {tuple(data.y.shape)}")
    for key in ("train_mask", "val_mask", "test_mask"):
        mask = getattr(data, key)
        if mask.dtype != torch.bool or tuple(mask.shape) != (n,):
            raise ValueError(f"{owner}: {where}.{key} must be a bool vector of {n} entries")
    ei = data.edge_index
    if ei.dim() != 2 or ei.shape[0] != 2 or ei.is_floating_point():
        raise ValueError(f"{owner}: {where}.edge_index must be an integer (2, E) tensor, got {tuple(ei.shape)}")
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= n):
        raise ValueError(
            f"{owner}: {where}.edge_index holds node ids in [{int(ei.min())}, {int(ei.max())}], outside [0, {n})"
        )


def _tiny_graph(seed: int = 0, n: int = 48, features: int = 8, classes: int = 3) -> Data:
    """A small stochastic-block-model graph with class-dependent features and planetoid-style masks."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    same = y.unsqueeze(0) == y.unsqueeze(1)
    prob = torch.where(same, torch.tensor(0.3), torch.tensor(0.02))
    adj = torch.rand(n, n, generator=g) < prob
    adj = torch.triu(adj, diagonal=1)
    adj = adj | adj.T
    edge_index = adj.nonzero().T.contiguous()
    centers = torch.randn(classes, features, generator=g)
    x = centers[y] + torch.randn(n, features, generator=g)
    ids = torch.arange(n)
    return Data(
        x=x,
        y=y,
        edge_index=edge_index,
        train_mask=ids < 18,
        val_mask=(ids >= 18) & (ids < 32),
        test_mask=ids >= 32,
    )


class _TinyGCN(pl.LightningModule):
    """Two ``GCNConv`` layers trained on the batch's node shard (the example module of :class:`GraphDataModule`)."""

    def __init__(self, in_features: int = 8, hidden: int = 16, num_classes: int = 3, lr: float = 0.05) -> None:
        from torch_geometric.nn import GCNConv

        super().__init__()
        self.conv1, self.conv2, self.lr = GCNConv(in_features, hidden), GCNConv(hidden, num_classes), lr

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.conv2(F.relu(self.conv1(x, edge_index)), edge_index)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        graph, y, index = split_batch(batch)
        assert index is not None
        assert y is not None
        out = self(graph["x"], graph["edge_index"])
        return F.cross_entropy(out[index], y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        graph, y, index = split_batch(batch)
        assert index is not None
        assert y is not None
        acc = (self(graph["x"], graph["edge_index"])[index].argmax(-1) == y).float().mean()
        self.log("val_acc", acc, batch_size=int(index.numel()), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


@register("datamodule", "graph", paper="")
class GraphDataModule(ShardedGraphDataModule):
    """Node classification on one graph: Cora / CiteSeer / PubMed from a local folder, or any PyG ``Data``.

    Loads the Planetoid graph ``name`` with :class:`torch_geometric.datasets.Planetoid` from ``root`` (raw files
    in ``root/<name>/raw``; PyG writes ``processed/`` beside them, so ``root`` must be writable) and never
    downloads; or serves the ``data`` given (``x``, ``y``, ``edge_index`` and bool ``train_mask`` /
    ``val_mask`` / ``test_mask``).

    **Batch convention.** Every batch is a tuple ``(graph, y, index)``, so :func:`litmix.data.split_batch`
    gives ``(inputs, targets, indices)``: ``graph`` is a dict of the graph's tensors (``x``, ``edge_index``
    and any other attribute such as ``edge_attr``, but not ``y`` nor the masks) -- the *whole* graph in every
    batch; ``index`` holds the ids of the nodes this batch is about and ``y`` their labels. A module computes
    the loss as ``cross_entropy(model(graph["x"], graph["edge_index"])[index], y)``.

    **Full batch** (``batch_size=None``, the default): one training batch per epoch holding every training
    node. **Under DDP** the graph is replicated on every rank and the training nodes are sharded: rank ``r``
    of ``W`` gets the nodes ``r, r + W, ...`` of the split (a ``DistributedSampler`` without shuffling, padded
    by repetition to equal sizes when ``W`` does not divide the split), still one batch per epoch. DDP's mean
    of the ranks' gradients is then the gradient of the mean loss over all training nodes, so 2 ranks train the
    same model as 1 rank (exactly in exact arithmetic when ``W`` divides the split; the tests measure the float
    difference). With ``batch_size=b`` the training nodes are shuffled per ``(seed, epoch)`` and dealt out in
    batches of ``b`` nodes per rank (each batch still carries the whole graph). Validation and test batches
    hold the ``val_mask`` / ``test_mask`` nodes, sharded the same way (log metrics with ``sync_dist=True``).
    Lightning's own sampler injection is not needed: the loaders already carry a ``DistributedSampler``.

    Args:
        root: folder holding ``<name>/raw/ind.<name>.*`` (PyG's Planetoid layout), or ``None`` when ``data`` is
            given.
        name: ``"Cora"``, ``"CiteSeer"`` or ``"PubMed"``.
        split: ``"public"`` (the Planetoid masks: Cora 140 / 500 / 1000) or ``"full"`` (every node outside the
            validation and test masks trains, as PyG's ``split="full"``).
        batch_size: training nodes per batch and rank, or ``None`` for full-batch training.
        seed: seed of the node shuffling in mini-batch mode, in [0, 2**32 - 1].
        data: a ``torch_geometric.data.Data`` to serve instead of loading from ``root``.

    Raises:
        TypeError: for an argument of the wrong type (e.g. ``batch_size=2.5``), naming it.
        ValueError: for an unknown ``name`` or ``split``, ``batch_size < 1``, a negative ``seed``, neither or
            both of ``root`` and ``data``, or a ``data`` graph without ``x``, ``y``, ``edge_index`` or the masks
            (or with edges outside its nodes); at ``setup``, an empty training, validation or test split.
        FileNotFoundError: (also a ``ValueError``) for a ``root`` that does not exist or, at ``setup``, lacks
            the raw Planetoid files; the message names ``root`` and the expected files.

    Example:
        >>> from litmix.datamodules.graph import _tiny_graph
        >>> dm = GraphDataModule(None, data=_tiny_graph())
        >>> dm.setup("fit")
        >>> graph, y, index = next(iter(dm.train_dataloader()))
        >>> sorted(graph), tuple(graph["x"].shape), len(index), len(dm.train_dataloader())
        (['edge_index', 'x'], (48, 8), 18, 1)
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        name: str = "Cora",
        split: str = "public",
        batch_size: int | None = None,
        seed: int = 0,
        data: Data | None = None,
    ) -> None:
        owner = type(self).__name__
        name = check_choice(owner, "name", name, PLANETOID_NAMES)
        split = check_choice(owner, "split", split, SPLITS)
        batch_size = check_int(owner, "batch_size", batch_size, low=1, allow_none=True)
        seed = check_int(owner, "seed", seed, low=0, high=MAX_SEED)
        path = check_root_or_data(owner, root, data)
        if data is not None:
            _check_graph(owner, data, "data")
        super().__init__()
        self.root, self.dataset_name, self.split = path, name, split
        self.batch_size, self.seed, self.data = batch_size, seed, data
        self.graph: Data | None = None

    @classmethod
    def example(cls) -> Example:
        """A two-layer GCN on a generated 48-node, 3-class block-model graph (full batch; no files needed)."""
        return Example(_TinyGCN(), cls(None, data=_tiny_graph()), [])

    # ------------------------------------------------------------------------------------------------ loading
    def _raw_dir(self) -> Path:
        assert self.root is not None
        return self.root / self.dataset_name / "raw"

    def _check_files(self) -> None:
        missing = [f for f in planetoid_files(self.dataset_name) if not (self._raw_dir() / f).is_file()]
        if missing:
            raise MissingPathError(
                f"{type(self).__name__}(root={str(self.root)!r}, name={self.dataset_name!r}): root lacks the Planetoid "
                f"raw files {missing} in {self._raw_dir()}; expected all of {planetoid_files(self.dataset_name)} there "
                "(GraphDataModule never downloads)"
            )

    def _planetoid(self) -> Data:
        from torch_geometric.datasets import Planetoid

        self._check_files()
        return Planetoid(str(self.root), self.dataset_name, split="public")[0]

    def prepare_data(self) -> None:
        """Process the raw files once (rank 0) so that every rank's ``setup`` only reads ``processed/``."""
        if self.data is None:
            self._planetoid()

    def setup(self, stage: str | None = None) -> None:
        """Load the graph and build the split indices (idempotent).

        Raises:
            FileNotFoundError: (a ``ValueError`` too) if ``root`` lacks the raw files, naming them.
            ValueError: if the training, validation or test split is empty.
        """
        if self.graph is not None:
            return
        graph = self.data if self.data is not None else self._planetoid()
        _check_graph(type(self).__name__, graph, "the graph")
        train_mask = graph.train_mask
        if self.split == "full":
            train_mask = ~(graph.val_mask | graph.test_mask)
        self.train_index = train_mask.nonzero().flatten()
        self.val_index = graph.val_mask.nonzero().flatten()
        self.test_index = graph.test_mask.nonzero().flatten()
        for part, index in (("training", self.train_index), ("validation", self.val_index), ("test", self.test_index)):
            if index.numel() == 0:
                raise ValueError(f"{type(self).__name__}(split={self.split!r}): the {part} split is empty")
        self.inputs = {k: v for k, v in graph.to_dict().items() if isinstance(v, Tensor) and k not in _NOT_INPUTS}
        self.targets = graph.y
        self.num_features = int(graph.x.shape[1])
        self.num_classes = int(graph.y.max()) + 1
        self.graph = graph

    # ------------------------------------------------------------------------------------------------ loaders
    def _loader(self, index: Tensor, train: bool) -> DataLoader:
        world, rank = self._world()
        dataset = _NodeIds(index)
        shuffle = train and self.batch_size is not None
        sampler: DistributedSampler[int] = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed
        )
        full = math.ceil(len(dataset) / world)
        batch_size = full if (self.batch_size is None or not train) else self.batch_size
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, collate_fn=_GraphCollate(self.inputs, self.targets)
        )

    def train_dataloader(self) -> DataLoader:
        """``(graph, y, index)`` batches over the training nodes (one per epoch and rank in full-batch mode)."""
        return self._loader(self.train_index, train=True)

    def val_dataloader(self) -> DataLoader:
        """One ``(graph, y, index)`` batch per rank over the validation nodes."""
        return self._loader(self.val_index, train=False)

    def test_dataloader(self) -> DataLoader:
        """One ``(graph, y, index)`` batch per rank over the test nodes."""
        return self._loader(self.test_index, train=False)
