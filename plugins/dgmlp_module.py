"""DGMLP: precomputed node-adaptive smoothing (depth D_p) + a deep residual MLP (depth D_t) for node classification."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litmix.base import Example, LitmixModule
from litmix.data import split_batch
from litmix.functional.dgmlp import dgmlp_features
from litmix.nas.sampling import step_seed
from litmix.registry import register
from litmix.validation import check_float, check_int

__all__ = ["DGMLPModule"]

_PAPER = "Model Degradation Hinders Deep Graph Neural Networks (https://arxiv.org/abs/2206.04361)"


class _ResidualMLP(nn.Module):
    """``D_t`` linear layers: input projection, ``D_t - 2`` residual blocks ``h + relu(W h)``, output layer."""

    def __init__(self, in_features: int, hidden: int, num_classes: int, depth: int, dropout: float) -> None:
        super().__init__()
        self.depth, self.dropout = depth, dropout
        if depth == 1:
            self.layers = nn.ModuleList([nn.Linear(in_features, num_classes)])
        else:
            inner = [nn.Linear(hidden, hidden) for _ in range(depth - 2)]
            self.layers = nn.ModuleList([nn.Linear(in_features, hidden), *inner, nn.Linear(hidden, num_classes)])

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[N, C]`` of smoothed features ``[N, F]``."""
        h = F.dropout(x, self.dropout, self.training)
        if self.depth == 1:
            return self.layers[0](h)  # type: ignore[no-any-return]
        h = F.relu(self.layers[0](h))
        for layer in self.layers[1:-1]:
            h = h + F.relu(layer(F.dropout(h, self.dropout, self.training)))  # skip connection
        return self.layers[-1](F.dropout(h, self.dropout, self.training))  # type: ignore[no-any-return]


@register("plugin", "graph", paper=_PAPER)
class DGMLPModule(LitmixModule):
    """DGMLP: decoupled propagation depth ``D_p`` (precomputed, parameter-free) and transformation depth ``D_t``.

    Paper: Zhang, Sheng, Yin, Jiang, Yang, Cui, "Model Degradation Hinders Deep Graph Neural Networks"
    (KDD 2022, https://arxiv.org/abs/2206.04361); reference code PKU-DAIR/DGMLP. The paper's finding: deep GNNs
    fail mainly through *model degradation* (many transformation layers), not over-smoothing (many propagation
    steps); so propagate deeply once, without parameters, and train an MLP whose depth is chosen separately and
    kept trainable by skip connections.

    **Propagation** (once, before the first training step; never in the checkpoint: a pure function of the
    graph): :func:`litmix.functional.dgmlp.dgmlp_features` -- ``Â^k X`` for ``k = 0..D_p`` with PyG's
    ``gcn_norm`` operator as a ``torch.sparse`` matrix, combined per node with weights from its distance to the
    over-smoothed stationary state, each node stopping at its own smoothing step (``smoothing_threshold``).
    **Transformation**: a ``D_t``-layer MLP (input layer, ``D_t - 2`` residual blocks ``h + relu(W h)``,
    output layer) on the smoothed features; training costs the same for ``D_p = 2`` and ``D_p = 100``.

    **Data**: :class:`~litmix.datamodules.GraphDataModule` batches ``(graph, y, index)``. Under DDP the graph is
    replicated and the training nodes sharded by the DataModule; the MLP runs on every node with dropout masks
    drawn from ``(seed, global_step)``, so every rank (and a resumed run) uses the masks of a 1-rank run.
    Logs ``dgmlp/loss`` and ``val/acc`` / ``test/acc`` (``sync_dist``).

    Args:
        in_features: node feature width ``F`` (Cora 1433).
        num_classes: number of classes ``C`` (Cora 7).
        propagation_depth: ``D_p >= 0`` smoothing steps (precomputed).
        transformation_depth: ``D_t >= 1`` linear layers of the MLP.
        hidden: width of the hidden layers, >= 1.
        dropout: dropout probability in ``[0, 1)``.
        smoothing_threshold: per-node stop threshold in ``[0, 1]`` on the relative distance to the stationary
            state (0: every node uses all ``D_p`` steps).
        lr: Adam learning rate, > 0.
        weight_decay: Adam weight decay, >= 0.
        seed: seed of the dropout masks (per ``(seed, global_step)``), >= 0.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value outside the ranges above, naming it; at fit start (before any training compute),
            a graph without float node features ``x`` / ``edge_index``, or whose feature width is not
            ``in_features``.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, _ = DGMLPModule.example()
        >>> trainer = fit_tiny(module=module, datamodule=datamodule, max_steps=2)
        >>> tuple(module.smoothed.shape), "dgmlp/loss" in trainer.callback_metrics
        ((48, 8), True)
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        propagation_depth: int = 8,
        transformation_depth: int = 4,
        hidden: int = 64,
        dropout: float = 0.5,
        smoothing_threshold: float = 0.0,
        lr: float = 0.01,
        weight_decay: float = 5e-4,
        seed: int = 0,
    ) -> None:
        owner = type(self).__name__
        in_features = check_int(owner, "in_features", in_features, low=1)
        num_classes = check_int(owner, "num_classes", num_classes, low=2)
        propagation_depth = check_int(owner, "propagation_depth", propagation_depth, low=0, high=1000)
        transformation_depth = check_int(owner, "transformation_depth", transformation_depth, low=1, high=1000)
        hidden = check_int(owner, "hidden", hidden, low=1)
        dropout = check_float(owner, "dropout", dropout, low=0.0, high=1.0, high_open=True)
        smoothing_threshold = check_float(owner, "smoothing_threshold", smoothing_threshold, low=0.0, high=1.0)
        lr = check_float(owner, "lr", lr, low=0.0, low_open=True)
        weight_decay = check_float(owner, "weight_decay", weight_decay, low=0.0)
        seed = check_int(owner, "seed", seed, low=0, high=2**31 - 1)
        super().__init__()
        self.save_hyperparameters()
        self.in_features, self.propagation_depth, self.smoothing_threshold = (
            in_features,
            propagation_depth,
            (smoothing_threshold),
        )
        self.lr, self.weight_decay, self.seed = lr, weight_decay, seed
        self.mlp = _ResidualMLP(in_features, hidden, num_classes, transformation_depth, dropout)
        #: the smoothed node features [N, F] (computed once from the graph; not in the state_dict)
        self.smoothed: Tensor | None = None
        self._source: tuple[int, int] | None = None

    @classmethod
    def example(cls) -> Example:
        """``D_p = 4``, ``D_t = 3`` on the 48-node, 3-class block-model graph (full batch; no files needed)."""
        from litmix.datamodules.graph import GraphDataModule, _tiny_graph

        torch.manual_seed(0)
        module = cls(8, 3, propagation_depth=4, transformation_depth=3, hidden=16)
        return Example(module, GraphDataModule(None, data=_tiny_graph()), [])

    # ------------------------------------------------------------------------------------------------ graph
    def precompute(self, graph: dict[str, Any]) -> Tensor:
        """Check the graph and compute (once per graph) the smoothed features ``[N, F]``.

        Raises:
            ValueError: for a graph without float ``x`` ``[N, in_features]`` or without ``edge_index``.
        """
        owner = type(self).__name__
        x, edge_index = graph.get("x"), graph.get("edge_index")
        if not isinstance(x, Tensor) or not isinstance(edge_index, Tensor):
            raise ValueError(
                f"{owner}: the graph needs node features 'x' and an 'edge_index' (got {sorted(graph)}); DGMLP "
                "smooths the features over the edges"
            )
        if x.dim() != 2 or not x.is_floating_point() or x.shape[1] != self.in_features:
            raise ValueError(
                f"{owner}(in_features={self.in_features}): the graph's node features x have shape "
                f"{tuple(x.shape)} ({x.dtype}); need float [N, {self.in_features}]"
            )
        source = (x.data_ptr(), edge_index.data_ptr())
        if self.smoothed is None or self._source != source or self.smoothed.shape[0] != x.shape[0]:
            with torch.no_grad():
                self.smoothed = dgmlp_features(
                    x.detach().float(), edge_index, self.propagation_depth, self.smoothing_threshold
                )
            self._source = source
        return self.smoothed

    def on_fit_start(self) -> None:
        """Precompute the smoothing from the DataModule's graph (``inputs``) before the first step."""
        graph = getattr(getattr(self.trainer, "datamodule", None), "inputs", None)
        if isinstance(graph, dict):
            self.precompute({k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in graph.items()})

    # ------------------------------------------------------------------------------------------------ steps
    def forward(self, smoothed: Tensor) -> Tensor:
        """Logits ``[N, C]`` of smoothed features (see :meth:`precompute`)."""
        return self.mlp(smoothed)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Cross-entropy of the batch's nodes; the MLP runs on all nodes with step-seeded dropout masks."""
        graph, y, index = split_batch(batch)
        assert y is not None
        assert index is not None
        feats = self.precompute(graph)
        with torch.random.fork_rng(devices=[feats.device.index or 0] if feats.device.type == "cuda" else []):
            torch.manual_seed(step_seed(self.seed, self.global_step))
            logits = self.mlp(feats)
        loss = F.cross_entropy(logits[index], y)
        sync = self._trainer is not None and self.trainer.world_size > 1
        self.log("dgmlp/loss", loss.detach(), on_step=False, on_epoch=True, batch_size=1, sync_dist=sync)
        return loss

    def _evaluate(self, batch: Any, stage: str) -> None:
        graph, y, index = split_batch(batch)
        assert y is not None
        assert index is not None
        pred = self.mlp(self.precompute(graph)[index]).argmax(-1)
        self.log(f"{stage}/acc", (pred == y).float().mean(), batch_size=int(index.numel()), sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Accuracy on the validation nodes."""
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Accuracy on the test nodes."""
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the MLP."""
        return torch.optim.Adam(self.mlp.parameters(), lr=self.lr, weight_decay=self.weight_decay)
