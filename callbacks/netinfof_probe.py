"""Log NetInfoF's usable-information score of the user's graph before training starts."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from litmix.base import Example, LitmixCallback
from litmix.data import split_batch
from litmix.functional.graph_proxies import COMPONENTS, netinfof_node_score, netinfof_score
from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int, check_type

_PAPER = "NetInfoF Framework: Measuring and Exploiting Network Usable Information (https://arxiv.org/abs/2402.07999)"
_SPLITS = ("train", "val", "test")


def _graph_parts(batch: Any) -> tuple[Any, Any, Tensor | None, Tensor | None, Tensor | None]:
    """``(x, edge_index, y, index, train_mask)`` of a graph batch: ``(graph_dict, y, index)`` or a PyG ``Data``."""
    if hasattr(batch, "edge_index") and not isinstance(batch, dict | tuple | list):  # a PyG Data
        return getattr(batch, "x", None), batch.edge_index, getattr(batch, "y", None), None, batch
    graph, y, index = split_batch(batch)
    if isinstance(graph, dict):
        return graph.get("x"), graph.get("edge_index"), y, index, None
    if hasattr(graph, "edge_index"):
        return getattr(graph, "x", None), graph.edge_index, getattr(graph, "y", None), None, graph
    return None, None, y, index, None


@register("callback", "proxy", paper=_PAPER)
class NetInfoFProbe(LitmixCallback):
    """NetInfoF_Probe at fit start: how much usable information the graph's structure and features carry.

    Lee et al., "NetInfoF Framework: Measuring and Exploiting Network Usable Information" (ICLR 2024,
    https://arxiv.org/abs/2402.07999). Before any training step, global rank 0 reads the user's graph from the
    datamodule (``trainer.datamodule``; else ``trainer.train_dataloader`` at train start), computes the
    NetInfoF_Score of each derived embedding (structure ``U``, neighbourhood ``R``, features ``F``, propagated
    features ``P`` / ``S``, and their ``max``) and broadcasts it to every rank; ``on_train_start`` logs
    ``<prefix>/<component>`` (prefix ``netinfof`` or ``name``) through ``pl_module.log`` (epoch-level,
    ``sync_dist=True``). No model is trained; scores near chance (``2^{-H(Y)}`` for nodes, 0.5 for links) warn
    that a GNN has little to learn from this graph.

    * ``task="node"``: :func:`~litmix.functional.graph_proxies.netinfof_node_score` with the labels of the
      ``label_splits`` nodes (default training and validation nodes; labels of other nodes are not used).
    * ``task="link"``: :func:`~litmix.functional.graph_proxies.netinfof_score` (held-out edges vs random pairs).

    Batches may be :class:`~litmix.datamodules.GraphDataModule`'s ``(graph, y, index)`` (``graph`` a dict with
    ``x`` and ``edge_index``) or a PyG ``Data`` with ``x``, ``edge_index``, ``y`` and optional
    ``train_mask`` / ``val_mask`` / ``test_mask``. The split loaders are re-read whole (without the DDP
    sampler), so every world size scores the same labels. The scores are kept in :attr:`scores` and in the
    checkpoint state: a resumed run does not score again.

    Args:
        task: ``"node"`` (node classification) or ``"link"`` (link prediction).
        probe: node task: ``"kmeans"`` (the paper's discretisation) or ``"linear"`` (out-of-sample probe).
        clusters: node task: k-means clusters (>= 2; default ``4 * num_classes``).
        hidden: embedding dimension (>= 1).
        components: subset of ``["U", "R", "F", "P", "S"]``.
        label_splits: node task: splits whose labels are used, from ``["train", "val", "test"]``.
        valid_fraction: link task: share of edges held out; node task with ``probe="linear"``: share of the
            labelled nodes held out; in (0, 1).
        seed: seed of the walks, clustering and splits.
        name: optional instance name (unique checkpoint key and log prefix).

    Raises:
        TypeError: for an argument of the wrong type (naming it).
        ValueError: for an unknown ``task``, ``probe``, component or split, ``clusters < 2``, ``hidden < 1``,
            ``valid_fraction`` outside (0, 1) or a negative ``seed``; at fit start, before any compute, for a
            batch without a graph, a graph without node features ``x``, an ``edge_index`` outside the nodes, or
            (``task="node"``) no labels.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, (cb,) = NetInfoFProbe.example()
        >>> trainer = fit_tiny([cb], module=module, datamodule=datamodule, max_steps=1)
        >>> sorted(cb.scores)
        ['F', 'P', 'R', 'S', 'U', 'max']
        >>> 0 < float(trainer.callback_metrics["netinfof/max"]) <= 1
        True
    """

    default_log_prefix = "netinfof"

    def __init__(
        self,
        task: str = "node",
        probe: str = "kmeans",
        clusters: int | None = None,
        hidden: int = 32,
        components: list[str] | tuple[str, ...] = COMPONENTS,
        label_splits: list[str] | tuple[str, ...] = ("train", "val"),
        valid_fraction: float | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        owner = type(self).__name__
        check_choice(owner, "task", task, ("node", "link"))
        check_choice(owner, "probe", probe, ("kmeans", "linear"))
        check_int(owner, "clusters", clusters, low=2, allow_none=True)
        check_int(owner, "hidden", hidden, low=1)
        for arg, value, allowed in (("components", components, COMPONENTS), ("label_splits", label_splits, _SPLITS)):
            check_type(owner, arg, value, (list, tuple))
            for item in value:
                check_type(owner, arg, item, str)
            bad = [v for v in value if v not in allowed]
            if bad or not value:
                raise ValueError(f"{owner}({arg}={list(value)!r}): must be a non-empty subset of {list(allowed)}")
        check_float(
            owner, "valid_fraction", valid_fraction, low=0.0, high=1.0, low_open=True, high_open=True, allow_none=True
        )
        check_int(owner, "seed", seed, low=0)
        super().__init__(name=name)
        self.task, self.probe, self.clusters, self.hidden = task, probe, clusters, int(hidden)
        self.components = list(dict.fromkeys(components))
        self.label_splits = list(dict.fromkeys(label_splits))
        self.valid_fraction = valid_fraction
        self.seed = int(seed)
        self.scores: dict[str, float] | None = None

    @classmethod
    def example(cls) -> Example:
        """A two-layer GCN on GraphDataModule's generated 48-node, 3-class block-model graph."""
        from litmix.datamodules.graph import GraphDataModule

        module, datamodule, _ = GraphDataModule.example()
        return Example(module, datamodule, [cls(clusters=6)])

    def _state_key_fields(self) -> dict[str, Any]:
        """Two unnamed instances differ by what they score."""
        return {"task": self.task, "probe": self.probe, "components": ",".join(self.components), "seed": self.seed}

    # ------------------------------------------------------------------------------------------------------
    @staticmethod
    def _whole(loader: Any) -> Any:
        """The loader's dataset in one batch, without a distributed sampler (every rank count sees all nodes)."""
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and not isinstance(dataset, IterableDataset) and len(dataset) > 0:
            return DataLoader(dataset, batch_size=len(dataset), shuffle=False, collate_fn=loader.collate_fn)
        return loader

    def _read_graph(self, loaders: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor | None]:
        owner = type(self).__name__
        x = edge_index = None
        y_full: Tensor | None = None
        for split, loader in loaders.items():
            if loader is None:
                continue
            for batch in self._whole(loader):
                bx, bei, by, index, data = _graph_parts(batch)
                if x is None:
                    if bei is None:
                        raise ValueError(
                            f"{owner}: the {split} batch holds no graph: expected (graph_dict, y, index) batches with "
                            "'x' and 'edge_index' (GraphDataModule) or a torch_geometric Data"
                        )
                    if bx is None:
                        raise ValueError(f"{owner}: the graph has no node features 'x'; NetInfoF needs them")
                    x, edge_index = bx, bei
                if self.task == "link" or split not in self.label_splits or not isinstance(by, Tensor):
                    continue
                if y_full is None:
                    y_full = torch.full((x.shape[0],), -1, dtype=torch.long)
                if data is not None:  # PyG Data: labels of the split's mask (all nodes without masks)
                    mask = getattr(data, f"{split}_mask", None)
                    keep = mask if isinstance(mask, Tensor) else torch.ones(len(by), dtype=torch.bool)
                    y_full[keep.cpu()] = by.cpu().long()[keep.cpu()]
                elif index is not None:
                    y_full[index.cpu().long()] = by.cpu().long()
        if x is None or edge_index is None:
            raise ValueError(f"{owner}: the datamodule yielded no batches to read the graph from")
        return x.detach().cpu(), edge_index.detach().cpu(), y_full

    def _compute(self, trainer: pl.Trainer, loaders: dict[str, Any]) -> None:
        scores: dict[str, float] | None = None
        if trainer.is_global_zero:
            x, edge_index, y = self._read_graph(loaders)
            common: dict[str, Any] = {"hidden": self.hidden, "components": self.components, "seed": self.seed}
            if self.valid_fraction is not None:
                common["valid_fraction"] = self.valid_fraction
            if self.task == "link":
                scores = netinfof_score(x, edge_index, **common)
            else:
                if y is None or int((y >= 0).sum()) == 0:
                    raise ValueError(
                        f"{type(self).__name__}(task='node', label_splits={self.label_splits}): the graph has no "
                        "node labels in these splits; node classification needs labels (or use task='link')"
                    )
                scores = netinfof_node_score(x, edge_index, y, probe=self.probe, clusters=self.clusters, **common)
            rank_zero_info(f"NetInfoFProbe ({self.task}): {', '.join(f'{k}={v:.3f}' for k, v in scores.items())}")
        scores = trainer.strategy.broadcast(scores, src=0)
        assert scores is not None
        self.scores = {k: float(v) for k, v in scores.items()}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Score the datamodule's graph on rank 0 and broadcast (unless restored from a checkpoint)."""
        dm = getattr(trainer, "datamodule", None)
        if self.scores is None and dm is not None:
            splits = ["train"] if self.task == "link" else list(dict.fromkeys(["train", *self.label_splits]))
            loaders: dict[str, Any] = {}
            for split in splits:
                getter = getattr(dm, f"{split}_dataloader", None)
                loaders[split] = getter() if callable(getter) else None
            self._compute(trainer, loaders)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Score ``trainer.train_dataloader`` if not done yet; log ``<prefix>/<component>``."""
        if self.scores is None:
            self._compute(trainer, {"train": trainer.train_dataloader})  # no datamodule: training labels only
        assert self.scores is not None
        pl_module.log_dict(
            {f"{self.log_prefix}/{k}": float(v) for k, v in self.scores.items()},
            on_step=False,
            on_epoch=True,
            sync_dist=True,
        )

    def state_dict(self) -> dict[str, Any]:
        """The scores (``None`` before the first fit)."""
        return {**super().state_dict(), "scores": self.scores}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the scores: a resumed run does not score again."""
        super().load_state_dict(state_dict)
        scores = state_dict.get("scores")
        self.scores = None if scores is None else {k: float(v) for k, v in scores.items()}
