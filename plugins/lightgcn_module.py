"""LightGCN on PyG's ``LightGCN`` with a pre-normalised sparse adjacency: BPR training, full-ranking evaluation."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch_geometric.nn.conv import LGConv

from litmix.base import Example
from litmix.data import split_batch
from litmix.functional.recsys import normalized_adjacency, symmetric_spmm
from litmix.plugins._recsys_base import _RecsysModule
from litmix.registry import register
from litmix.validation import check_float, check_int

__all__ = ["LightGCNModule"]


class _SymmetricLGConv(LGConv):
    """PyG's ``LGConv`` whose sparse propagation uses the symmetric adjacency's cheap backward."""

    def message_and_aggregate(self, adj_t: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        return symmetric_spmm(adj_t, x)


_PAPER = (
    "LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation (https://arxiv.org/abs/2002.02126)"
)


@register("plugin", "graph", paper=_PAPER)
class LightGCNModule(_RecsysModule):
    """LightGCN: embeddings propagated by ``num_layers`` rounds of normalised neighbour averaging, trained with BPR.

    He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation" (SIGIR 2020),
    https://arxiv.org/abs/2002.02126. Wraps :class:`torch_geometric.nn.models.LightGCN` (``num_users +
    num_items`` node embeddings, the layer outputs averaged with ``alpha = 1 / (L + 1)``). Instead of
    ``edge_index`` (which makes every ``LGConv`` recompute ``gcn_norm``), the layers get the training graph's
    ``D^-1/2 A D^-1/2`` once as a ``torch.sparse_csr`` matrix (:func:`~litmix.functional.recsys.
    normalized_adjacency`, built at ``setup`` from the data module; ``LGConv(normalize=False)``): the same
    embeddings, several times faster per step (catalogue: 4.2x on ML-100K).

    Data: :class:`~litmix.datamodules.InteractionDataModule` (or any data module with ``num_users``,
    ``num_items`` and ``train_pairs`` after ``setup``, and its batch layout). A training step propagates the whole
    graph and takes PyG's ``recommendation_loss``: ``-mean log sigmoid(s(u, i) - s(u, j))`` over the batch's
    ``[user, positive, negative]`` triplets plus ``lambda_reg`` times the squared L2 norm of the batch's distinct
    ego (layer-0) embeddings, with ``s(u, i) = e_u . e_i``. Under DDP the graph is replicated, the triplets are
    sharded by the data module and DDP averages the gradients: with ``lambda_reg=0`` 2 ranks train the model of
    1 rank with the global batch (measured max weight difference 6e-8 on the example data, vs 0.05 for half the
    batch on 1 rank); the L2 term is over each rank's own batch nodes, so with ``lambda_reg > 0`` the two differ
    slightly (0.018 at ``lambda_reg=0.01``). Validation / test score every item for each user
    of the batch (the embeddings propagated once per evaluation epoch), rank the user's training items last and
    log ``lightgcn/val_recall@<k>``, ``lightgcn/val_ndcg@<k>`` (``test_`` in ``trainer.test``) with
    :class:`~litmix.metrics.RecallAtK` / :class:`~litmix.metrics.NDCGAtK`, synced over ranks; training logs
    ``lightgcn/loss``.

    Measured on ML-100K ``u1`` (emb 64, 3 layers, Adam 5e-3, batch 4096, lambda 1e-4): see the README row and
    ``benchmarks/results/recsys.md``.

    Args:
        num_users: users ``U`` (>= 1); must match the data module.
        num_items: items ``I`` (>= 1); must match the data module.
        embedding_dim: embedding size (1..4096).
        num_layers: propagation rounds ``L`` (0..16; 0 is matrix factorisation with BPR).
        lr: Adam learning rate (> 0).
        lambda_reg: weight of the L2 penalty on the batch's ego embeddings (>= 0).
        k: the cut-off of the logged Recall@k / NDCG@k (>= 1).

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value out of range, naming the argument; at ``setup``, a data module whose
            ``num_users`` / ``num_items`` differ from the module's, or that lacks ``train_pairs``.

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> from litmix.testing import make_trainer
        >>> module, dm, _ = LightGCNModule.example()
        >>> trainer = make_trainer(max_epochs=2, limit_val_batches=None)
        >>> trainer.fit(module, datamodule=dm)
        >>> sorted(k for k in trainer.callback_metrics if k.startswith("lightgcn/val"))
        ['lightgcn/val_ndcg@5', 'lightgcn/val_recall@5']
    """

    _prefix = "lightgcn"
    _derived = ("_adj", "_eval_emb")

    def __init__(
        self,
        num_users: int = 943,
        num_items: int = 1682,
        embedding_dim: int = 64,
        num_layers: int = 3,
        lr: float = 5e-3,
        lambda_reg: float = 1e-4,
        k: int = 20,
    ) -> None:
        from torch_geometric.nn.models import LightGCN

        owner = type(self).__name__
        self._check_sizes(owner, num_users, num_items, embedding_dim, lr, k)
        check_int(owner, "num_layers", num_layers, low=0, high=16)
        check_float(owner, "lambda_reg", lambda_reg, low=0.0)
        super().__init__()
        self.save_hyperparameters()
        self.lambda_reg = float(lambda_reg)
        self.model = LightGCN(num_users + num_items, embedding_dim, num_layers, normalize=False)
        # LGConv has no parameters: the state_dict keys stay those of PyG's LightGCN
        self.model.convs = torch.nn.ModuleList(_SymmetricLGConv(normalize=False) for _ in range(num_layers))
        self._init_ranking(num_users, num_items, k, lr)
        self._adj: Tensor | None = None
        self._eval_emb: Tensor | None = None

    @classmethod
    def example(cls) -> Example:
        """2 layers, 8-d embeddings on a generated 24-user, 16-item, two-taste interaction set."""
        from litmix.datamodules.interaction import InteractionDataModule, _tiny_interactions

        train, test = _tiny_interactions()
        dm = InteractionDataModule(train=train, test=test, batch_size=32, eval_batch_size=8)
        return Example(cls(num_users=24, num_items=16, embedding_dim=8, num_layers=2, k=5), dm, [])

    # ------------------------------------------------------------------------------------------------ graph
    def set_graph(self, train_pairs: Tensor) -> None:
        """Build and cache the normalised adjacency of ``train_pairs`` (``(n, 2)`` user, item ids)."""
        self._adj = normalized_adjacency(train_pairs.cpu(), self.num_users, self.num_items)
        self._eval_emb = None

    def _has_graph(self) -> bool:
        return self._adj is not None

    def adjacency(self) -> Tensor:
        """The cached normalised adjacency on the module's device.

        Raises:
            RuntimeError: before ``setup`` / :meth:`set_graph`.
        """
        if self._adj is None:
            raise RuntimeError(f"{type(self).__name__}: no graph yet; fit with a data module or call set_graph")
        if self._adj.device != self.device:
            self._adj = self._adj.to(self.device)
        return self._adj

    def forward(self) -> Tensor:
        """Final embeddings ``(num_users + num_items, embedding_dim)`` of every node."""
        return self.model.get_embedding(self.adjacency())  # type: ignore[no-any-return]

    def scores(self, users: Tensor, embeddings: Tensor | None = None) -> Tensor:
        """``(len(users), num_items)`` scores ``e_u . e_i`` of every item for ``users``."""
        emb = self() if embeddings is None else embeddings
        return emb[users] @ emb[self.num_users :].T

    # ------------------------------------------------------------------------------------------------ steps
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """BPR loss with L2 on the batch's ego embeddings (PyG's ``recommendation_loss``)."""
        triplets, _, _ = split_batch(batch)
        emb = self()
        users = triplets[:, 0]
        pos, neg = triplets[:, 1] + self.num_users, triplets[:, 2] + self.num_users
        pos_rank = (emb[users] * emb[pos]).sum(-1)
        neg_rank = (emb[users] * emb[neg]).sum(-1)
        node_id = torch.cat([users, pos, neg]).unique()
        loss = self.model.recommendation_loss(pos_rank, neg_rank, node_id=node_id, lambda_reg=self.lambda_reg)
        if self._trainer is not None:
            self.log("lightgcn/loss", loss, batch_size=int(users.numel()))
        return loss  # type: ignore[no-any-return]

    def _eval_embeddings(self) -> Tensor:
        if self._eval_emb is None:
            with torch.no_grad():
                self._eval_emb = self()
        return self._eval_emb

    def on_validation_epoch_start(self) -> None:
        """Propagate once for the whole evaluation epoch."""
        self._eval_emb = None

    def on_test_epoch_start(self) -> None:
        """Propagate once for the whole test epoch."""
        self._eval_emb = None

    def _eval_scores(self, users: Tensor) -> Tensor:
        return self.scores(users, self._eval_embeddings())

    def on_train_epoch_start(self) -> None:
        """Drop stale evaluation embeddings (weights change during training)."""
        self._eval_emb = None
