"""NCN / NCNC link prediction: a GCN encoder and the neural common-neighbour predictor (pure ``torch.sparse``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litmix.base import Example, LitmixModule
from litmix.data import split_batch
from litmix.functional.link_prediction import (
    NCN_PAPER,
    adjacency,
    common_neighbors,
    completion_candidates,
    remove_edges,
)
from litmix.metrics.hits_at_k import HitsAtK
from litmix.metrics.link_mrr import LinkMRR
from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_float, check_int

__all__ = ["NCNModule"]

PREDICTORS = ("ncn", "ncnc", "hadamard", "dot")


def _mlp(dims: list[int], dropout: float) -> nn.Module:
    from torch_geometric.nn import MLP

    return MLP(dims, dropout=dropout, norm=None)


@register("plugin", "graph", paper=NCN_PAPER)
class NCNModule(LitmixModule):
    r"""Neural Common Neighbour (NCN) and NCN with Completion (NCNC) link prediction on a GCN encoder.

    Wang, Yang, Zhang, "Neural Common Neighbor with Completion for Link Prediction" (ICLR 2024,
    https://arxiv.org/abs/2302.00890). "MPNN-then-SF": a GCN (PyG ``GCN`` of ``GCNConv`` layers) embeds every node
    once, ``h = GCN(x, A)``; the predictor scores a target pair ``(i, j)`` from the pair and its common
    neighbours ``N(i) ∩ N(j)``: ``s(i, j) = MLP_out(MLP_cn(sum_{k in N(i) ∩ N(j)} h_k) * beta + MLP_ij(h_i ⊙
    h_j))`` (``beta`` learnable, initialised to 1). The common neighbours are gathered with pure ``torch.sparse``
    ops (:func:`~litmix.functional.link_prediction.common_neighbors`; no ``torch-sparse``).

    ``predictor``:

    * ``"ncn"``: the NCN predictor above.
    * ``"ncnc"``: NCNC (completion, depth 1): nodes ``k`` in ``N(i) \\ N(j)`` are added to the common-neighbour
      sum with weight ``p(j, k)``, and nodes in ``N(j) \\ N(i)`` with ``p(i, k)``, the probabilities that the
      missing edge exists as predicted by the NCN predictor itself (no gradient), calibrated as in the authors'
      code: ``p0 = sigmoid(prob_scale * (s - prob_offset))``, ``p = alpha * pt * p0 / (pt * p0 + 1 - p0)``.
      No neighbour sampling of the candidates (the authors' ``trndeg`` / ``tstdeg``): exact on small graphs.
    * ``"hadamard"``: the GAE baseline (the authors' ``cn0``): ``MLP_out(MLP_ij(h_i ⊙ h_j))``.
    * ``"dot"``: a plain GCN + dot-product decoder ``h_i · h_j``.

    Training (the authors' protocol): binary cross-entropy on the batch's positive edges and its negatives
    (:class:`~litmix.datamodules.LinkDataModule` draws them fresh every epoch), ``-mean log σ(s_pos) - mean log
    σ(-s_neg)``; with ``target_link_removal`` (the authors' ``--maskinput``) the batch's positive edges are
    removed from the message-passing graph and from the common-neighbour adjacency before scoring them, so the
    model cannot read a target edge off its input. Validation / test score the split's candidates on the split's
    graph and log ``ncn/{val,test}_hits@<k>`` (:class:`~litmix.metrics.HitsAtK`) and ``ncn/{val,test}_mrr``
    (:class:`~litmix.metrics.LinkMRR`), synced over ranks; ``validation_step`` / ``test_step`` return
    ``{"scores": logits}`` (per-edge diagnostics such as
    :class:`~litmix.callbacks.TopologicalConcentration` read them). Training logs ``ncn/loss``.

    Args:
        in_channels: node feature size (>= 1; Cora 1433, CiteSeer 3703).
        hidden_channels: embedding size of the encoder and the predictor's MLPs (1..4096).
        num_layers: ``GCNConv`` layers (1..8).
        predictor: ``"ncn"``, ``"ncnc"``, ``"hadamard"`` or ``"dot"``.
        dropout: dropout of the encoder and the predictor's MLPs, in [0, 1).
        lr: Adam learning rate (> 0).
        weight_decay: Adam weight decay (>= 0).
        target_link_removal: drop the batch's positive edges from the input graph while training (train with
            mini-batches of positives, e.g. ``LinkDataModule(batch_size=1024)``: one full batch would remove every
            training edge).
        prob_scale: NCNC calibration scale (> 0).
        prob_offset: NCNC calibration offset (finite).
        pt: NCNC prior edge probability, in (0, 1).
        alpha: NCNC weight of the completed neighbours, in [0, 10].
        k: the cut-off of the logged Hits@K (>= 1).
        chunk_size: candidate edges scored at once in evaluation (>= 1).

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value out of range or an unknown ``predictor``, naming the argument; in a step, a graph
            whose features do not have ``in_channels`` columns.

    Example:
        >>> from litmix.functional.link_prediction import adjacency, common_neighbors
        >>> edge_index = torch.tensor([[0, 1, 0, 2, 1, 3], [1, 0, 2, 0, 3, 1]])  # undirected 0-1, 0-2, 1-3
        >>> pairs = torch.tensor([[0, 2], [3, 1]])  # candidate links 0-3 and 2-1
        >>> common_neighbors(adjacency(edge_index, 4), pairs).to_dense()  # what the predictor sums: node 1, node 0
        tensor([[0., 1., 0., 0.],
                [1., 0., 0., 0.]])
        >>> model = NCNModule(in_channels=3, hidden_channels=8, predictor="ncnc", dropout=0.0)
        >>> model(torch.randn(4, 3), edge_index, pairs).shape  # one logit per candidate link
        torch.Size([2])
    """

    def __init__(
        self,
        in_channels: int = 1433,
        hidden_channels: int = 64,
        num_layers: int = 1,
        predictor: str = "ncn",
        dropout: float = 0.3,
        lr: float = 0.005,
        weight_decay: float = 0.0,
        target_link_removal: bool = True,
        prob_scale: float = 4.3,
        prob_offset: float = 2.8,
        pt: float = 0.75,
        alpha: float = 1.0,
        k: int = 100,
        chunk_size: int = 8192,
    ) -> None:
        from torch_geometric.nn.models import GCN

        owner = type(self).__name__
        check_int(owner, "in_channels", in_channels, low=1, high=10**7)
        check_int(owner, "hidden_channels", hidden_channels, low=1, high=4096)
        check_int(owner, "num_layers", num_layers, low=1, high=8)
        check_choice(owner, "predictor", predictor, PREDICTORS)
        check_float(owner, "dropout", dropout, low=0.0, high=1.0, high_open=True)
        check_float(owner, "lr", lr, low=0.0, low_open=True)
        check_float(owner, "weight_decay", weight_decay, low=0.0)
        check_bool(owner, "target_link_removal", target_link_removal)
        check_float(owner, "prob_scale", prob_scale, low=0.0, low_open=True)
        check_float(owner, "prob_offset", prob_offset)
        check_float(owner, "pt", pt, low=0.0, high=1.0, low_open=True, high_open=True)
        check_float(owner, "alpha", alpha, low=0.0, high=10.0)
        check_int(owner, "k", k, low=1)
        check_int(owner, "chunk_size", chunk_size, low=1)
        super().__init__()
        self.save_hyperparameters()
        d = hidden_channels
        self.in_channels, self.predictor, self.k, self.chunk_size = in_channels, predictor, k, chunk_size
        self.lr, self.weight_decay, self.target_link_removal = float(lr), float(weight_decay), target_link_removal
        self.prob_scale, self.prob_offset, self.pt, self.alpha = float(prob_scale), float(prob_offset), pt, alpha
        self.encoder = GCN(in_channels, d, num_layers, dropout=dropout)
        if predictor != "dot":
            self.mlp_ij = _mlp([d, d, d], dropout)
            self.mlp_out = _mlp([d, d, 1], dropout)
        if predictor in ("ncn", "ncnc"):
            self.mlp_cn = _mlp([d, d, d], dropout)
            self.beta = nn.Parameter(torch.ones(1))
        self.val_hits, self.val_mrr = HitsAtK(k), LinkMRR()
        self.test_hits, self.test_mrr = HitsAtK(k), LinkMRR()

    @classmethod
    def example(cls) -> Example:
        """NCN with an 8-d one-layer GCN on a generated 40-node, 4-block graph (no dropout)."""
        from litmix.datamodules.link import LinkDataModule, _tiny_link_graph

        dm = LinkDataModule(None, data=_tiny_link_graph(), val_ratio=0.1, test_ratio=0.2, batch_size=16)
        return Example(cls(in_channels=8, hidden_channels=8, dropout=0.0, k=5), dm, [])

    # ------------------------------------------------------------------------------------------------ model
    def encode(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Node embeddings ``h = GCN(x, edge_index)``.

        Raises:
            ValueError: if ``x`` does not have ``in_channels`` columns.
        """
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}(in_channels={self.in_channels}): the graph's features have shape "
                f"{tuple(x.shape)}"
            )
        return self.encoder(x, edge_index)  # type: ignore[no-any-return]

    def _ncn(self, h: Tensor, cn_sum: Tensor, pairs: Tensor) -> Tensor:
        xij = self.mlp_ij(h[pairs[0]] * h[pairs[1]])
        return self.mlp_out(self.mlp_cn(cn_sum) * self.beta + xij).squeeze(-1)  # type: ignore[no-any-return]

    def _calibrate(self, logits: Tensor) -> Tensor:
        p0 = torch.sigmoid(self.prob_scale * (logits - self.prob_offset))
        return self.alpha * self.pt * p0 / (self.pt * p0 + 1 - p0)

    def score(self, h: Tensor, adj: Tensor | None, pairs: Tensor) -> Tensor:
        """Logits ``(P,)`` of the pairs ``(2, P)`` from embeddings ``h`` and the sparse adjacency ``adj``."""
        hi, hj = h[pairs[0]], h[pairs[1]]
        if self.predictor == "dot":
            return (hi * hj).sum(-1)
        if self.predictor == "hadamard":
            return self.mlp_out(self.mlp_ij(hi * hj)).squeeze(-1)  # type: ignore[no-any-return]
        assert adj is not None
        cn_sum = torch.sparse.mm(common_neighbors(adj, pairs), h)
        if self.predictor == "ncnc":
            only_i, only_j = completion_candidates(adj, pairs)
            for cand, other in ((only_i, pairs[1]), (only_j, pairs[0])):
                idx = cand.indices()
                if idx.shape[1] == 0:
                    continue
                missing = torch.stack([other[idx[0]], idx[1]])
                with torch.no_grad():
                    prob = self._calibrate(self._ncn(h, torch.sparse.mm(common_neighbors(adj, missing), h), missing))
                weighted = torch.sparse_coo_tensor(idx, prob, cand.shape, is_coalesced=True, check_invariants=False)
                cn_sum = cn_sum + torch.sparse.mm(weighted, h)
        return self._ncn(h, cn_sum, pairs)

    def forward(self, x: Tensor, edge_index: Tensor, pairs: Tensor) -> Tensor:
        """Logits of the candidate ``pairs`` on the graph ``(x, edge_index)``."""
        h = self.encode(x, edge_index)
        adj = adjacency(edge_index, int(x.shape[0])) if self.predictor in ("ncn", "ncnc") else None
        return torch.cat([self.score(h, adj, part) for part in pairs.split(self.chunk_size, dim=1)])

    # ------------------------------------------------------------------------------------------------ steps
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Binary cross-entropy of the batch's positives and negatives (target links removed from the input)."""
        graph, label, _ = split_batch(batch)
        assert label is not None
        x, edge_index, pairs = graph["x"], graph["edge_index"], graph["edge_label_index"]
        positive = label > 0.5
        if self.target_link_removal:
            edge_index = remove_edges(edge_index, pairs[:, positive], int(x.shape[0]))
        logits = self(x, edge_index, pairs)
        loss = -F.logsigmoid(logits[positive]).mean() - F.logsigmoid(-logits[~positive]).mean()
        if self._trainer is not None:
            self.log("ncn/loss", loss, batch_size=int(positive.sum()))
        return loss

    def _evaluate(self, batch: Any, stage: str, hits: HitsAtK, mrr: LinkMRR) -> dict[str, Tensor]:
        graph, label, index = split_batch(batch)
        assert label is not None
        assert index is not None
        logits = self(graph["x"], graph["edge_index"], graph["edge_label_index"])
        hits.update(logits, label, index)
        mrr.update(logits, label, index)
        size = int(label.numel())
        self.log(f"ncn/{stage}_hits@{self.k}", hits, batch_size=size)
        self.log(f"ncn/{stage}_mrr", mrr, batch_size=size)
        return {"scores": logits.detach()}

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Hits@K and MRR of the validation candidates."""
        return self._evaluate(batch, "val", self.val_hits, self.val_mrr)

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Hits@K and MRR of the test candidates."""
        return self._evaluate(batch, "test", self.test_hits, self.test_mrr)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the encoder and the predictor."""
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
