"""ForwardGNN (single-forward variant): backprop-free, layer-wise training of a GCN with virtual label nodes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from litmix.base import Example, LitmixModule
from litmix.data import split_batch
from litmix.functional.forward_gnn import label_node_edges, label_similarity, single_forward_loss
from litmix.registry import register
from litmix.validation import check_float, check_int

__all__ = ["ForwardGNNModule"]

_PAPER = "Forward Learning of Graph Neural Networks (https://arxiv.org/abs/2403.11004)"


@register("plugin", "graph", paper=_PAPER)
class ForwardGNNModule(LitmixModule):
    """ForwardGNN, single-forward (SF) variant: each GCN layer learns alone from a local loss, no end-to-end backprop.

    Paper: Park, Shin, Huang, Kim, "Forward Learning of Graph Neural Networks" (ICLR 2024,
    https://arxiv.org/abs/2403.11004). Re-implemented from the paper; the reference code (CC-BY-NC) is not used.

    **Variant.** The graph is augmented with ``C`` virtual *label nodes* (zero features), with a directed edge from
    every labelled training node to its class's label node (:func:`litmix.functional.forward_gnn.label_node_edges`;
    no node receives its own label). Layer ``l`` is ``h^l = relu(GCNConv_l(h^{l-1}.detach()))`` over the augmented
    graph, so it embeds the label nodes too, and its local loss is
    :func:`~litmix.functional.forward_gnn.single_forward_loss`: the cosine-similarity softmax cross-entropy of the
    training nodes' embeddings against the ``C`` label-node embeddings. The input of every layer is detached, so a
    layer's parameters get gradients from its own loss only. The layers' losses are summed into one
    ``manual_backward`` (the autograd graphs are disjoint, so this equals one backward per layer and lets DDP reduce
    every gradient once), then each layer's own Adam optimizer steps (``automatic_optimization = False``; one
    optimizer per layer from :meth:`configure_optimizers`). Prediction: the label node with the highest similarity
    summed over the layers. Not implemented: the paper's forward-forward (positive / negative input) variant, the
    top-down signals and link prediction.

    **Data**: :class:`~litmix.datamodules.GraphDataModule` batches ``(graph, y, index)``. The label-node edges use
    the training nodes of the step gathered from every rank (``all_gather``; so every rank builds the same graph);
    evaluation uses the DataModule's whole training split (``train_index`` / ``targets``), or else the labelled
    nodes of the last training step. Logs ``forward_gnn/loss``, ``forward_gnn/loss_layer{l}``, ``val/acc`` /
    ``test/acc``.

    Args:
        in_features: node feature width ``F`` (Cora 1433).
        num_classes: number of classes ``C`` >= 2 (Cora 7).
        hidden: width of every layer, >= 1.
        num_layers: number of GCN layers, each with its own loss and optimizer, in [1, 16].
        temperature: softmax temperature τ > 0 of the local loss.
        lr: Adam learning rate of every layer, > 0.
        weight_decay: Adam weight decay, >= 0.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value outside the ranges above, naming it; at a step, a graph without float ``x``
            ``[N, in_features]`` / ``edge_index``, or evaluation with no labelled training nodes known.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, _ = ForwardGNNModule.example()
        >>> trainer = fit_tiny(module=module, datamodule=datamodule, max_steps=2)
        >>> len(module.configure_optimizers()), "forward_gnn/loss" in trainer.callback_metrics
        (2, True)
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: int = 256,
        num_layers: int = 2,
        temperature: float = 0.5,
        lr: float = 0.01,
        weight_decay: float = 5e-4,
    ) -> None:
        owner = type(self).__name__
        in_features = check_int(owner, "in_features", in_features, low=1)
        num_classes = check_int(owner, "num_classes", num_classes, low=2)
        hidden = check_int(owner, "hidden", hidden, low=1)
        num_layers = check_int(owner, "num_layers", num_layers, low=1, high=16)
        temperature = check_float(owner, "temperature", temperature, low=0.0, low_open=True)
        lr = check_float(owner, "lr", lr, low=0.0, low_open=True)
        weight_decay = check_float(owner, "weight_decay", weight_decay, low=0.0)
        from torch_geometric.nn import GCNConv

        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.in_features, self.num_classes, self.temperature = in_features, num_classes, temperature
        self.lr, self.weight_decay = lr, weight_decay
        dims = [in_features] + [hidden] * num_layers
        self.layers = nn.ModuleList(GCNConv(dims[i], dims[i + 1]) for i in range(num_layers))
        #: (ids, classes) of the labelled nodes behind the label-node edges (not in the checkpoint)
        self._labelled: tuple[Tensor, Tensor] | None = None

    @classmethod
    def example(cls) -> Example:
        """Two layers of width 16 on the 48-node, 3-class block-model graph (full batch; no files needed)."""
        from litmix.datamodules.graph import GraphDataModule, _tiny_graph

        torch.manual_seed(0)
        return Example(cls(8, 3, hidden=16), GraphDataModule(None, data=_tiny_graph()), [])

    # ------------------------------------------------------------------------------------------------ forward
    def _check_graph(self, graph: dict[str, Any]) -> tuple[Tensor, Tensor]:
        x, edge_index = graph.get("x"), graph.get("edge_index")
        if not isinstance(x, Tensor) or not isinstance(edge_index, Tensor):
            raise ValueError(f"{type(self).__name__}: the graph needs 'x' and 'edge_index' (got {sorted(graph)})")
        if x.dim() != 2 or not x.is_floating_point() or x.shape[1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}(in_features={self.in_features}): the graph's node features x have shape "
                f"{tuple(x.shape)} ({x.dtype}); need float [N, {self.in_features}]"
            )
        return x, edge_index

    def embed(self, x: Tensor, edge_index: Tensor, labelled: Tensor, labels: Tensor) -> list[Tensor]:
        """Per-layer embeddings ``[N + C, hidden]`` of the graph augmented with label nodes (inputs detached)."""
        n = int(x.shape[0])
        edges = torch.cat([edge_index, label_node_edges(n, labelled, labels, self.num_classes)], dim=1)
        h = torch.cat([x, x.new_zeros(self.num_classes, x.shape[1])])
        out = []
        for layer in self.layers:
            h = torch.relu(layer(h.detach(), edges))  # detached input: no gradient crosses a layer
            out.append(h)
        return out

    def forward(self, x: Tensor, edge_index: Tensor, labelled: Tensor, labels: Tensor) -> Tensor:
        """Class scores ``[N, C]``: cosine similarity to the label nodes summed over the layers."""
        n = int(x.shape[0])
        return sum(  # type: ignore[return-value]
            label_similarity(h[:n], h[n:], self.temperature) for h in self.embed(x, edge_index, labelled, labels)
        )

    # ------------------------------------------------------------------------------------------------ steps
    def _gather_labelled(self, index: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self._trainer is not None and self.trainer.world_size > 1:
            index, y = self.all_gather(index).flatten(), self.all_gather(y).flatten()  # type: ignore[union-attr]
        ids, first = torch.unique(index, return_inverse=True)
        labels = torch.empty_like(ids).scatter_(0, first, y.long())
        return ids, labels

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """Sum of the layers' local losses (disjoint autograd graphs), one backward, each layer's optimizer steps."""
        graph, y, index = split_batch(batch)
        assert y is not None, f"{type(self).__name__} needs (graph, y, index) batches"
        assert index is not None
        x, edge_index = self._check_graph(graph)
        labelled = self._gather_labelled(index, y)
        self._labelled = (labelled[0].detach().cpu(), labelled[1].detach().cpu())
        n = int(x.shape[0])
        losses = [
            single_forward_loss(h[index], h[n:], y, self.temperature) for h in self.embed(x, edge_index, *labelled)
        ]
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for opt in optimizers:
            opt.zero_grad()
        total = torch.stack(losses).sum()
        self.manual_backward(total)
        for opt in optimizers:
            opt.step()
        self.log("forward_gnn/loss", total.detach(), on_step=False, on_epoch=True, batch_size=1)
        for i, loss in enumerate(losses):
            self.log(f"forward_gnn/loss_layer{i}", loss.detach(), on_step=False, on_epoch=True, batch_size=1)

    def _labelled_nodes(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """Labelled nodes for evaluation: the DataModule's training split, else the last training step's."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        ids, targets = getattr(dm, "train_index", None), getattr(dm, "targets", None)
        if isinstance(ids, Tensor) and isinstance(targets, Tensor):
            return ids.to(device), targets[ids].to(device)
        if self._labelled is None:
            raise ValueError(
                f"{type(self).__name__}: no labelled training nodes known for the label nodes (train first or "
                "evaluate with a GraphDataModule)"
            )
        return self._labelled[0].to(device), self._labelled[1].to(device)

    def _evaluate(self, batch: Any, stage: str) -> None:
        graph, y, index = split_batch(batch)
        assert y is not None
        assert index is not None
        x, edge_index = self._check_graph(graph)
        pred = self(x, edge_index, *self._labelled_nodes(x.device))[index].argmax(-1)
        self.log(f"{stage}/acc", (pred == y).float().mean(), batch_size=int(index.numel()), sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Accuracy on the validation nodes."""
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Accuracy on the test nodes."""
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """One Adam optimizer per layer."""
        return [
            torch.optim.Adam(layer.parameters(), lr=self.lr, weight_decay=self.weight_decay) for layer in self.layers
        ]
