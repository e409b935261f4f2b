"""Link prediction on one graph (Cora, CiteSeer or a PyG ``Data``): a seeded ``RandomLinkSplit``, sharded under DDP."""

from __future__ import annotations

import math
import os
import random
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler
from torch_geometric.data import Data

from litmix.base import Example
from litmix.datamodules._graph_base import IdRange, SizeCheckedDataModule, check_root_or_data
from litmix.datamodules.graph import MAX_SEED, PLANETOID_NAMES, GraphDataModule
from litmix.functional.link_prediction import NCN_PAPER, check_edge_index
from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int

__all__ = ["LinkDataModule"]

_SEED_MOD = 2**62


def _seeded(seed: int) -> Any:
    """A context in which torch's and Python's global RNGs are seeded with ``seed`` and restored afterwards.

    PyG's ``RandomLinkSplit`` draws with ``torch.randperm`` and ``negative_sampling`` with ``random.sample``.

    Example:
        >>> with _seeded(3):
        ...     a = torch.rand(1)
        >>> with _seeded(3):
        ...     b = torch.rand(1)
        >>> bool(a == b)
        True
    """
    import contextlib

    @contextlib.contextmanager
    def _ctx() -> Any:
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                yield
            finally:
                random.setstate(state)

    return _ctx()


class _TrainCollate:
    """Positive edge ids -> ``(graph + edge_label_index, edge_label, ids)`` with fresh negatives per epoch.

    The negatives of a batch are PyG ``negative_sampling`` draws seeded by ``(seed, epoch, ids)``.
    """

    def __init__(self, dm: LinkDataModule, sampler: DistributedSampler[int]) -> None:
        self.graph, self.pos = dm.train_graph, dm.train_pos
        self.num_nodes, self.ratio, self.seed = dm.num_nodes, dm.num_negatives, dm.seed
        self.sampler = sampler

    def __call__(self, ids: list[int]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        from torch_geometric.utils import negative_sampling

        index = torch.tensor(ids, dtype=torch.long)
        pos = self.pos[:, index]
        epoch = int(getattr(self.sampler, "epoch", 0))
        with _seeded(hash((self.seed, epoch, tuple(ids))) % _SEED_MOD):
            neg = negative_sampling(
                self.graph["edge_index"], num_nodes=self.num_nodes, num_neg_samples=index.numel() * self.ratio
            )
        label = torch.cat([torch.ones(pos.shape[1]), torch.zeros(neg.shape[1])])
        return {**self.graph, "edge_label_index": torch.cat([pos, neg], 1)}, label, index


class _EvalCollate:
    """Candidate ids -> ``(graph + edge_label_index, edge_label, ids)`` over a split's fixed candidates."""

    def __init__(self, graph: dict[str, Tensor], candidates: Tensor, labels: Tensor) -> None:
        self.graph, self.candidates, self.labels = graph, candidates, labels

    def __call__(self, ids: list[int]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        index = torch.tensor(ids, dtype=torch.long)
        return {**self.graph, "edge_label_index": self.candidates[:, index]}, self.labels[index], index


def _check_link_graph(owner: str, data: Data, where: str) -> None:
    x = getattr(data, "x", None)
    if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"{owner}: {where} needs float node features x of shape (num_nodes, features)")
    if not isinstance(getattr(data, "edge_index", None), Tensor):
        raise ValueError(f"{owner}: {where} has no edge_index")
    check_edge_index(owner, data.edge_index, int(x.shape[0]), name=f"{where}.edge_index")


def _tiny_link_graph(seed: int = 0, n: int = 40, features: int = 8, blocks: int = 4) -> Data:
    """A block-model graph (dense blocks, few edges across) with block-dependent features."""
    g = torch.Generator().manual_seed(seed)
    block = torch.arange(n) % blocks
    same = block.unsqueeze(0) == block.unsqueeze(1)
    adj = torch.rand(n, n, generator=g) < torch.where(same, torch.tensor(0.5), torch.tensor(0.02))
    adj = torch.triu(adj, diagonal=1)
    adj = adj | adj.T
    x = torch.randn(blocks, features, generator=g)[block] + 0.5 * torch.randn(n, features, generator=g)
    return Data(x=x, edge_index=adj.nonzero().T.contiguous())


@register("datamodule", "graph", paper=NCN_PAPER)
class LinkDataModule(SizeCheckedDataModule):
    """Link prediction on one graph: a seeded PyG ``RandomLinkSplit`` with explicit negative sampling.

    The data protocol of NCN / NCNC (Wang, Yang, Zhang, "Neural Common Neighbor with Completion for Link
    Prediction", ICLR 2024, https://arxiv.org/abs/2302.00890) on Cora / CiteSeer: the undirected edges are split
    at random (seeded by ``seed``) into training, validation (``val_ratio``) and test (``test_ratio``) edges with
    :class:`torch_geometric.transforms.RandomLinkSplit`; validation and test get fixed negatives (``eval_negatives``
    per positive, drawn once by the split); training negatives are drawn fresh every epoch with PyG's
    ``negative_sampling`` (``num_negatives`` per positive, avoiding training edges). Loads Cora / CiteSeer /
    PubMed from ``root`` exactly like :class:`~litmix.datamodules.GraphDataModule` (raw Planetoid files in
    ``root/<name>/raw``; never downloads), or serves the ``data`` given (``x`` and ``edge_index``).

    **Batch convention.** ``(graph, edge_label, index)``: ``graph`` is a dict with ``x``, the message-passing
    ``edge_index`` (both directions; training and validation batches see the training edges, test batches the
    training and validation edges, as ``RandomLinkSplit`` gives them) and ``edge_label_index`` ``(2, B)``, the
    candidate edges to score; ``edge_label`` their 0/1 labels. In training batches the first entries of
    ``edge_label_index`` are the batch's positive edges (one direction each), then their negatives, and
    ``index`` holds the positives' ids in :attr:`train_pos`. In evaluation batches ``index`` is each candidate's
    id in the split (positives first, then negatives).

    **Under DDP** the graph is replicated and the training positives are sharded: a ``DistributedSampler``
    (shuffled per ``(seed, epoch)``) deals rank ``r`` its ``1/W`` share, disjoint and together complete (padded
    by repetition when ``W`` does not divide them); each batch's negatives are seeded by ``(seed, epoch, ids)``,
    so runs and resumes are reproducible and ranks draw different negatives. Evaluation candidates are sharded
    the same way without shuffling; :class:`~litmix.metrics.HitsAtK` / :class:`~litmix.metrics.LinkMRR` count
    padded repeats once.

    After ``setup``: ``num_nodes``, ``num_features``, ``train_graph`` (dict ``x``, ``edge_index``),
    ``train_pos`` ``(2, P)``, ``val_candidates`` / ``test_candidates`` and ``val_labels`` / ``test_labels``.

    Args:
        root: folder holding ``<name>/raw/ind.<name>.*`` (Planetoid layout), or ``None`` when ``data`` is given.
        name: ``"Cora"``, ``"CiteSeer"`` or ``"PubMed"``.
        val_ratio: share of the edges held out for validation, in (0, 1).
        test_ratio: share held out for test, in (0, 1); ``val_ratio + test_ratio < 1``.
        num_negatives: training negatives per positive edge (1..100), drawn fresh every epoch.
        eval_negatives: fixed validation / test negatives per positive (1..100).
        batch_size: training positives per batch and rank, or ``None`` for one batch per epoch and rank.
        eval_batch_size: candidate edges per evaluation batch and rank, or ``None`` for one batch.
        seed: seed of the split, the shuffling and the negatives, in [0, 2**32 - 1].
        data: a ``torch_geometric.data.Data`` with float ``x`` and ``edge_index``, instead of ``root``.

    Raises:
        TypeError: for an argument of the wrong type (e.g. ``batch_size=2.5``), naming it.
        ValueError: for an unknown ``name``, ratios outside (0, 1) or summing to 1 or more, sizes out of range,
            a negative ``seed``, neither or both of ``root`` and ``data``, or a ``data`` graph without float
            ``x`` or with edges outside its nodes; at ``setup``, an empty training, validation or test split.
        FileNotFoundError: (also a ``ValueError``) for a missing ``root`` or, at ``setup``, missing raw files.

    Example:
        >>> from litmix.datamodules.link import _tiny_link_graph
        >>> dm = LinkDataModule(None, data=_tiny_link_graph(), val_ratio=0.1, test_ratio=0.2)
        >>> dm.setup("fit")
        >>> graph, label, index = next(iter(dm.train_dataloader()))
        >>> sorted(graph), graph["edge_label_index"].shape[1] == 2 * len(index), int(label.sum()) == len(index)
        (['edge_index', 'edge_label_index', 'x'], True, True)
    """

    state_version = 1
    _other = "another split"

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        name: str = "Cora",
        val_ratio: float = 0.05,
        test_ratio: float = 0.1,
        num_negatives: int = 1,
        eval_negatives: int = 1,
        batch_size: int | None = 1024,
        eval_batch_size: int | None = None,
        seed: int = 0,
        data: Data | None = None,
    ) -> None:
        owner = type(self).__name__
        val_ratio = check_float(owner, "val_ratio", val_ratio, low=0.0, high=1.0, low_open=True, high_open=True)
        test_ratio = check_float(owner, "test_ratio", test_ratio, low=0.0, high=1.0, low_open=True, high_open=True)
        if val_ratio + test_ratio >= 1.0:
            raise ValueError(
                f"{owner}(val_ratio={val_ratio!r}, test_ratio={test_ratio!r}): the ratios must sum to less than 1"
            )
        num_negatives = check_int(owner, "num_negatives", num_negatives, low=1, high=100)
        eval_negatives = check_int(owner, "eval_negatives", eval_negatives, low=1, high=100)
        batch_size = check_int(owner, "batch_size", batch_size, low=1, allow_none=True)
        eval_batch_size = check_int(owner, "eval_batch_size", eval_batch_size, low=1, allow_none=True)
        seed = check_int(owner, "seed", seed, low=0, high=MAX_SEED)
        path = check_root_or_data(owner, root, data)
        name = check_choice(owner, "name", name, PLANETOID_NAMES)
        # the Planetoid loader of GraphDataModule (never downloads)
        self._source = None if path is None else GraphDataModule(path, name=name)
        if data is not None:
            _check_link_graph(owner, data, "data")
        super().__init__()
        self.root, self.dataset_name = path, name
        self.val_ratio, self.test_ratio = val_ratio, test_ratio
        self.num_negatives, self.eval_negatives = num_negatives, eval_negatives
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.data = data
        self._expected: dict[str, int] | None = None
        self._ready = False

    @classmethod
    def example(cls) -> Example:
        """NCN (8-d GCN encoder) on a generated 40-node, 4-block graph; 16 positives per batch."""
        from litmix.plugins.ncn_module import NCNModule

        dm = cls(None, data=_tiny_link_graph(), val_ratio=0.1, test_ratio=0.2, batch_size=16)
        return Example(NCNModule(in_channels=8, hidden_channels=8, dropout=0.0, k=5), dm, [])

    # ------------------------------------------------------------------------------------------------ loading
    def prepare_data(self) -> None:
        """Process the raw Planetoid files once (rank 0) so that every rank's ``setup`` only reads them."""
        if self._source is not None:
            self._source.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Load the graph and split its edges (seeded; idempotent).

        Raises:
            FileNotFoundError: (a ``ValueError`` too) if ``root`` lacks the raw files, naming them.
            ValueError: if a split is empty or the data differ from a loaded checkpoint's.
        """
        if self._ready:
            return
        from torch_geometric.transforms import RandomLinkSplit

        owner = type(self).__name__
        graph = self.data if self._source is None else self._source._planetoid()
        assert graph is not None
        _check_link_graph(owner, graph, "the graph")
        base = Data(x=graph.x, edge_index=graph.edge_index, num_nodes=int(graph.x.shape[0]))
        split = RandomLinkSplit(
            num_val=self.val_ratio,
            num_test=self.test_ratio,
            is_undirected=True,
            add_negative_train_samples=False,
            neg_sampling_ratio=float(self.eval_negatives),
        )
        with _seeded(self.seed):
            train, val, test = split(base)
        self.num_nodes, self.num_features = int(graph.x.shape[0]), int(graph.x.shape[1])
        self.train_graph = {"x": graph.x, "edge_index": train.edge_index}
        self.test_graph = {"x": graph.x, "edge_index": test.edge_index}
        self.train_pos = train.edge_label_index
        self.val_candidates, self.val_labels = val.edge_label_index, val.edge_label.float()
        self.test_candidates, self.test_labels = test.edge_label_index, test.edge_label.float()
        for part, labels in (("training", train.edge_label), ("validation", val.edge_label), ("test", test.edge_label)):
            if int((labels > 0).sum()) == 0:
                raise ValueError(
                    f"{owner}(val_ratio={self.val_ratio}, test_ratio={self.test_ratio}): the {part} split has no "
                    f"positive edge (the graph has {base.edge_index.shape[1]} directed edges)"
                )
        self._mark_ready()

    # ------------------------------------------------------------------------------------------------ state
    def _sizes_now(self) -> dict[str, int]:
        return {
            "num_nodes": self.num_nodes,
            "num_train": int(self.train_pos.shape[1]),
            "num_val": int(self.val_labels.numel()),
            "num_test": int(self.test_labels.numel()),
        }

    # ------------------------------------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        """Shuffled, sharded training batches: the positives of the batch and fresh negatives."""
        world, rank = self._world()
        dataset = IdRange(int(self.train_pos.shape[1]))
        sampler: DistributedSampler[int] = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
        )
        batch = self.batch_size or math.ceil(len(dataset) / world)
        return DataLoader(dataset, batch_size=batch, sampler=sampler, collate_fn=_TrainCollate(self, sampler))

    def _eval_loader(self, graph: dict[str, Tensor], candidates: Tensor, labels: Tensor) -> DataLoader:
        world, rank = self._world()
        dataset = IdRange(int(labels.numel()))
        sampler: DistributedSampler[int] = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        full = math.ceil(len(dataset) / world)
        batch = min(self.eval_batch_size or full, full)
        return DataLoader(
            dataset, batch_size=batch, sampler=sampler, collate_fn=_EvalCollate(graph, candidates, labels)
        )

    def val_dataloader(self) -> DataLoader:
        """The validation candidates (positives and fixed negatives) on the training graph."""
        return self._eval_loader(self.train_graph, self.val_candidates, self.val_labels)

    def test_dataloader(self) -> DataLoader:
        """The test candidates on the training + validation graph."""
        return self._eval_loader(self.test_graph, self.test_candidates, self.test_labels)
