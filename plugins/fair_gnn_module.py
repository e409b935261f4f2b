"""FairGNN: a fair GCN classifier from few known sensitive attributes (estimator + adversary + covariance)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GCNConv

from litmix.base import Example, LitmixModule
from litmix.data import split_batch
from litmix.functional.fair_gnn import covariance_penalty, demographic_parity_gap, equal_opportunity_gap
from litmix.nas.sampling import step_seed
from litmix.registry import register
from litmix.validation import check_float, check_int

__all__ = ["FairGNNModule"]

_PAPER = (
    "Say No to the Discrimination: Learning Fair Graph Neural Networks with Limited Sensitive Attribute "
    "Information (https://arxiv.org/abs/2009.01454)"
)


class _GCNHead(nn.Module):
    """One ``GCNConv`` + ReLU + dropout body (``h``) and a linear head (``out``), as FairGNN's ``GCN_Body``."""

    def __init__(self, in_features: int, hidden: int, out: int, dropout: float) -> None:
        super().__init__()
        self.conv, self.head, self.dropout = GCNConv(in_features, hidden), nn.Linear(hidden, out), dropout

    def body(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return F.dropout(F.relu(self.conv(x, edge_index)), self.dropout, self.training)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.head(self.body(x, edge_index))  # type: ignore[no-any-return]


@register("plugin", "graph", paper=_PAPER)
class FairGNNModule(LitmixModule):
    """FairGNN: a GCN classifier kept fair by an adversary and a covariance constraint, with few known ``s``.

    Paper: Dai & Wang, "Say No to the Discrimination: Learning Fair Graph Neural Networks with Limited Sensitive
    Attribute Information" (WSDM 2021, https://arxiv.org/abs/2009.01454); reference code EnyanDai/FairGNN.
    Three parts: a GCN **estimator** ``f_E`` trained (BCE, ``L_E``) on the few nodes whose binary sensitive
    attribute ``s`` is known predicts ``ŝ`` for every node (known nodes keep their true ``s``); a GCN
    **classifier** ``f_G`` (embedding ``h``, linear head) trained by cross-entropy ``L_C`` on the labelled nodes;
    a linear **adversary** ``f_A`` predicts ``ŝ`` from ``h`` (``L_A``, BCE). The classifier and estimator
    minimise ``L_C + L_E - alpha L_A + beta L_R`` with ``L_R = |Cov(ŷ, ŝ)|``
    (:func:`litmix.functional.fair_gnn.covariance_penalty`; ``ŝ`` detached); the adversary minimises ``L_A`` on
    the detached ``h``. ``alpha = beta = 0`` is a plain GCN.

    **Optimisation** (Lightning manual optimisation, two Adam optimisers): one forward pass and one
    ``manual_backward`` of ``L_G + L_A`` in which ``L_G`` sees the adversary's weights detached and ``L_A`` sees
    ``h`` detached, so each optimiser receives exactly its own gradient; then the classifier/estimator step,
    then the adversary step -- the same updates as the reference's two backward passes (its adversary step
    also uses the pre-step ``h``), with one DDP gradient reduction per step. Dropout masks are drawn from
    ``(seed, global_step)``, so DDP ranks and a resumed run reproduce a 1-rank run.

    **Data**: :class:`~litmix.datamodules.GraphDataModule` given a ``Data`` (e.g.
    :func:`litmix.functional.fair_gnn.fair_sbm_graph`) with node attributes ``sensitive`` (0/1) and
    ``sens_mask`` (bool: ``s`` known); both travel in the batch's graph dict. Under DDP the labelled nodes are
    sharded; ``L_E``, ``L_A`` and ``L_R`` use every node and are identical on every rank. Logs
    ``fairgnn/loss_cls``, ``fairgnn/loss_est``, ``fairgnn/loss_adv``, ``fairgnn/cov`` and, per stage,
    ``{val,test}/acc``, ``/dp_gap`` (ΔSP) and ``/eo_gap`` (ΔEO, positive class 1), ``sync_dist`` (under DDP the
    gaps are averaged over the ranks' node shards).

    Args:
        in_features: node feature width.
        num_classes: number of classes (>= 2; the fairness gaps use class 1 as the favourable outcome).
        hidden: width of the GCN embeddings, >= 1.
        alpha: weight of the adversarial term ``L_A``, >= 0.
        beta: weight of the covariance constraint ``L_R``, >= 0.
        dropout: dropout probability in ``[0, 1)``.
        lr: Adam learning rate of both optimisers, > 0.
        weight_decay: Adam weight decay, >= 0.
        seed: seed of the dropout masks, >= 0.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value outside the ranges above, naming it; at fit start and in every step (before any
            compute), a graph without ``x`` ``[N, in_features]``, ``edge_index``, an integer 0/1 ``sensitive``
            ``[N]`` or a bool ``sens_mask`` ``[N]`` marking at least one node.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, _ = FairGNNModule.example()
        >>> trainer = fit_tiny(module=module, datamodule=datamodule, max_steps=2)
        >>> "fairgnn/cov" in trainer.callback_metrics, len(module.optimizers())
        (True, 2)
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 2,
        hidden: int = 32,
        alpha: float = 1.0,
        beta: float = 4.0,
        dropout: float = 0.5,
        lr: float = 0.01,
        weight_decay: float = 1e-5,
        seed: int = 0,
    ) -> None:
        owner = type(self).__name__
        in_features = check_int(owner, "in_features", in_features, low=1)
        num_classes = check_int(owner, "num_classes", num_classes, low=2)
        hidden = check_int(owner, "hidden", hidden, low=1)
        alpha = check_float(owner, "alpha", alpha, low=0.0)
        beta = check_float(owner, "beta", beta, low=0.0)
        dropout = check_float(owner, "dropout", dropout, low=0.0, high=1.0, high_open=True)
        lr = check_float(owner, "lr", lr, low=0.0, low_open=True)
        weight_decay = check_float(owner, "weight_decay", weight_decay, low=0.0)
        seed = check_int(owner, "seed", seed, low=0, high=2**31 - 1)
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.in_features, self.alpha, self.beta = in_features, alpha, beta
        self.lr, self.weight_decay, self.seed = lr, weight_decay, seed
        self.estimator = _GCNHead(in_features, hidden, 1, dropout)
        self.classifier = _GCNHead(in_features, hidden, num_classes, dropout)
        self.adversary = nn.Linear(hidden, 1)

    @classmethod
    def example(cls) -> Example:
        """A 64-node planted-bias SBM graph (:func:`~litmix.functional.fair_gnn.fair_sbm_graph`), full batch."""
        from litmix.datamodules.graph import GraphDataModule
        from litmix.functional.fair_gnn import fair_sbm_graph

        torch.manual_seed(0)
        graph = fair_sbm_graph(num_nodes=64, num_features=8, p_in=0.1, p_out=0.01, known_sensitive=0.25)
        return Example(cls(8, 2, hidden=16), GraphDataModule(None, data=graph), [])

    # ------------------------------------------------------------------------------------------------ graph
    def check_graph(self, graph: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x, edge_index, sensitive, sens_mask)`` of a batch's graph dict, checked (no model compute).

        Raises:
            ValueError: for a missing key or a wrong shape / dtype, naming it.
        """
        owner = type(self).__name__
        parts = [graph.get(k) for k in ("x", "edge_index", "sensitive", "sens_mask")]
        if not all(isinstance(p, Tensor) for p in parts):
            raise ValueError(
                f"{owner}: the graph needs tensors 'x', 'edge_index', 'sensitive' and 'sens_mask' (got "
                f"{sorted(graph)}); build it e.g. with litmix.functional.fair_gnn.fair_sbm_graph"
            )
        x, edge_index, sensitive, sens_mask = parts
        assert isinstance(x, Tensor)
        assert isinstance(edge_index, Tensor)
        assert isinstance(sensitive, Tensor)
        assert isinstance(sens_mask, Tensor)
        if x.dim() != 2 or not x.is_floating_point() or x.shape[1] != self.in_features:
            raise ValueError(
                f"{owner}(in_features={self.in_features}): the graph's x has shape {tuple(x.shape)} ({x.dtype}); "
                f"need float [N, {self.in_features}]"
            )
        n = int(x.shape[0])
        if sensitive.shape != (n,) or sensitive.is_floating_point():
            raise ValueError(f"{owner}: the graph's 'sensitive' must be an integer 0/1 vector of {n} nodes")
        if sens_mask.shape != (n,) or sens_mask.dtype != torch.bool or not bool(sens_mask.any()):
            raise ValueError(f"{owner}: the graph's 'sens_mask' must be a bool vector of {n} nodes marking >= 1 node")
        return x, edge_index, sensitive, sens_mask

    def on_fit_start(self) -> None:
        """Check the DataModule's graph (keys, shapes, binary ``sensitive``) before the first step."""
        graph = getattr(getattr(self.trainer, "datamodule", None), "inputs", None)
        if isinstance(graph, dict):
            sensitive = self.check_graph(graph)[2]
            if sensitive.numel() and (int(sensitive.min()) < 0 or int(sensitive.max()) > 1):
                raise ValueError(f"{type(self).__name__}: the graph's 'sensitive' must hold only 0 and 1")

    # ------------------------------------------------------------------------------------------------ steps
    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Class logits ``[N, C]``."""
        return self.classifier(x, edge_index)  # type: ignore[no-any-return]

    def losses(self, graph: dict[str, Any], y: Tensor, index: Tensor) -> dict[str, Tensor]:
        """``L_C``, ``L_E``, ``L_A`` (adversary on detached ``h``), ``L_A`` for ``f_G`` and ``L_R`` of one step."""
        x, edge_index, sensitive, sens_mask = self.check_graph(graph)
        s_logit = self.estimator(x, edge_index).squeeze(1)
        h = self.classifier.body(x, edge_index)
        logits = self.classifier.head(h)
        s_true = sensitive.to(s_logit.dtype)
        s_score = torch.where(sens_mask, s_true, torch.sigmoid(s_logit.detach()))
        adv_for_g = F.linear(h, self.adversary.weight.detach(), self.adversary.bias.detach()).squeeze(1)
        return {
            "cls": F.cross_entropy(logits[index], y),
            "est": F.binary_cross_entropy_with_logits(s_logit[sens_mask], s_true[sens_mask]),
            "adv_g": F.binary_cross_entropy_with_logits(adv_for_g, s_score),
            "adv": F.binary_cross_entropy_with_logits(self.adversary(h.detach()).squeeze(1), s_score),
            "cov": covariance_penalty(torch.softmax(logits, -1), s_score),
        }

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One forward; one backward of ``L_C + L_E - alpha L_A + beta L_R`` + ``L_A``; step G/E, then A."""
        opt_g, opt_a = self.optimizers()  # type: ignore[misc, attr-defined]
        graph, y, index = split_batch(batch)
        assert y is not None, f"{type(self).__name__} needs (graph, y, index) batches"
        assert index is not None
        x = graph.get("x")
        device = x.device if isinstance(x, Tensor) else torch.device("cpu")
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(step_seed(self.seed, self.global_step))
            parts = self.losses(graph, y, index)
        loss_g = parts["cls"] + parts["est"] - self.alpha * parts["adv_g"] + self.beta * parts["cov"]
        opt_g.zero_grad()
        opt_a.zero_grad()
        self.manual_backward(loss_g + parts["adv"])
        opt_g.step()
        opt_a.step()
        sync = self._trainer is not None and self.trainer.world_size > 1
        for key, name in (("cls", "loss_cls"), ("est", "loss_est"), ("adv", "loss_adv"), ("cov", "cov")):
            self.log(f"fairgnn/{name}", parts[key].detach(), on_step=False, on_epoch=True, batch_size=1, sync_dist=sync)

    def _evaluate(self, batch: Any, stage: str) -> None:
        graph, y, index = split_batch(batch)
        assert y is not None
        assert index is not None
        x, edge_index, sensitive, _ = self.check_graph(graph)
        pred = self(x, edge_index)[index].argmax(-1)
        s = sensitive[index]
        n = int(index.numel())
        self.log(f"{stage}/acc", (pred == y).float().mean(), batch_size=n, sync_dist=True)
        self.log(f"{stage}/dp_gap", demographic_parity_gap(pred, s), batch_size=n, sync_dist=True)
        self.log(f"{stage}/eo_gap", equal_opportunity_gap(pred, y, s), batch_size=n, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Accuracy, ΔSP and ΔEO on the validation nodes."""
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Accuracy, ΔSP and ΔEO on the test nodes."""
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam over the classifier and estimator; Adam over the adversary."""
        g_params = [*self.classifier.parameters(), *self.estimator.parameters()]
        opt_g = torch.optim.Adam(g_params, lr=self.lr, weight_decay=self.weight_decay)
        opt_a = torch.optim.Adam(self.adversary.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return [opt_g, opt_a]
