"""UltraGCN: user/item embeddings trained with the infinite-layer constraint loss, no message passing."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from litmix.base import Example
from litmix.data import split_batch
from litmix.functional.recsys import hash32
from litmix.plugins._recsys_base import _RecsysModule
from litmix.registry import register
from litmix.validation import check_bool, check_float, check_int

__all__ = ["UltraGCNModule"]

_PAPER = (
    "UltraGCN: Ultra Simplification of Graph Convolutional Networks for Recommendation "
    "(https://arxiv.org/abs/2110.15114)"
)


def _degree_betas(pairs: Tensor, num_users: int, num_items: int) -> tuple[Tensor, Tensor]:
    """``beta_u = sqrt(d_u + 1) / d_u`` (0 for degree-0 users) and ``beta_i = 1 / sqrt(d_i + 1)``."""
    du = torch.bincount(pairs[:, 0], minlength=num_users).double()
    di = torch.bincount(pairs[:, 1], minlength=num_items).double()
    beta_u = torch.where(du > 0, (du + 1).sqrt() / du.clamp(min=1), torch.zeros_like(du))
    return beta_u.float(), (1.0 / (di + 1).sqrt()).float()


def _item_neighbours(
    pairs: Tensor, num_users: int, num_items: int, k: int, zero_diagonal: bool
) -> tuple[Tensor, Tensor]:
    """Top-``k`` item neighbours of each item from ``G = A^T A`` with weights ``G_ij beta_i(g) beta_j(g)``.

    ``beta`` as in :func:`_degree_betas` on ``G``'s row sums ``g`` (the reference's ``ii_constraint_mat``);
    vectorised (a sparse ``A^T A``, then one ``topk`` over the dense ``(I, I)`` matrix). Returns ``(I, k)`` item
    ids and weights.
    """
    import numpy as np
    from scipy.sparse import csr_matrix

    p = pairs.numpy()
    a = csr_matrix((np.ones(len(p), dtype=np.float32), (p[:, 0], p[:, 1])), shape=(num_users, num_items))
    a.data[:] = 1.0  # duplicate pairs count once
    g = torch.from_numpy((a.T @ a).toarray().astype(np.float32))
    if zero_diagonal:
        g.fill_diagonal_(0.0)
    deg = g.sum(1).double()
    row = torch.where(deg > 0, (deg + 1).sqrt() / deg.clamp(min=1), torch.zeros_like(deg)).float()
    col = (1.0 / (g.sum(0).double() + 1).sqrt()).float()
    weights = g * row[:, None] * col[None, :]
    sims, ids = torch.topk(weights, min(k, num_items), dim=1)
    return ids, sims


@register("plugin", "graph", paper=_PAPER)
class UltraGCNModule(_RecsysModule):
    """UltraGCN: matrix factorisation with the constraint loss of infinite-layer LightGCN, no message passing.

    Mao et al., "UltraGCN: Ultra Simplification of Graph Convolutional Networks for Recommendation" (CIKM 2021),
    https://arxiv.org/abs/2110.15114; follows the reference code (reczoo/RecZoo ``UltraGCN/main.py``). A step
    takes the batch's ``(user, positive)`` pairs (the data module's own negative column is ignored) and draws
    ``negative_num`` uniform negatives per pair (``hash32(seed, epoch, interaction id, j) % I``: a function of
    the interaction, not of the batch or rank). With ``beta_u = sqrt(d_u + 1) / d_u`` and
    ``beta_i = 1 / sqrt(d_i + 1)`` from the training degrees (degree-0 users get 0), the loss is

    * ``L_main = sum_(u,i) [w_+ BCE(e_u.e_i, 1) + negative_weight * mean_j w_- BCE(e_u.e_j, 0)]`` with
      ``w_+ = w1 + w2 beta_u beta_i``, ``w_- = w3 + w4 beta_u beta_j`` (the constraint loss ``L_C`` folded into
      the weighted BCE of the negatives-sampled objective, as in the reference);
    * ``L_I = -sum_(u,i) sum_(j in topK(i)) w_ij log sigmoid(e_u.e_j)``, the item-item constraint graph: ``G =
      A^T A`` with ``w_ij = G_ij sqrt(g_i + 1) / g_i / sqrt(g_j + 1)``, top ``ii_neighbor_num`` per item,
      computed once at ``setup`` (vectorised; ``zero_diagonal=False`` keeps the reference's diagonal, so an item
      is usually its own top neighbour);
    * total ``L_main + gamma / 2 * ||theta||^2 + lambda_i * L_I``.

    The data terms are sums over the batch; under DDP they are multiplied by the world size so that DDP's
    gradient average gives the one-process gradient of the global batch (the L2 term is the same on every rank).
    Scores are ``e_u . e_i``; validation / test are full-ranking (training items ranked last), logged as
    ``ultragcn/val_recall@<k>``, ``ultragcn/val_ndcg@<k>`` (``test_`` in ``trainer.test``); training logs
    ``ultragcn/loss``. Defaults: the reference's ML-1M configuration scaled to ML-100K (64-d, 100 negatives).

    Args:
        num_users: users ``U`` (>= 1); must match the data module.
        num_items: items ``I`` (>= 1); must match the data module.
        embedding_dim: embedding size (1..4096).
        lr: Adam learning rate (> 0).
        negative_num: uniform negatives per positive (1..100000).
        negative_weight: weight of the negatives' mean BCE (>= 0).
        w1: constant part of the positives' weight (>= 0).
        w2: degree part of the positives' weight (>= 0).
        w3: constant part of the negatives' weight (>= 0).
        w4: degree part of the negatives' weight (>= 0).
        gamma: L2 weight on all parameters (>= 0).
        lambda_i: weight of the item-item constraint loss ``L_I`` (>= 0; 0 skips it).
        ii_neighbor_num: item neighbours kept per item (1..1000).
        zero_diagonal: drop ``G``'s diagonal (an item is not its own neighbour).
        init_std: standard deviation of the normal initial embeddings (> 0).
        k: the cut-off of the logged Recall@k / NDCG@k (>= 1).
        seed: seed of the negative draws (>= 0).

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value out of range, naming the argument; at ``setup``, a data module with other
            ``num_users`` / ``num_items`` or without ``train_pairs``.

    Example:
        >>> from litmix.datamodules.interaction import _tiny_interactions
        >>> module = UltraGCNModule(num_users=24, num_items=16, embedding_dim=8, negative_num=4, ii_neighbor_num=3)
        >>> train, _ = _tiny_interactions()
        >>> module.set_graph(train)  # what setup does with the data module's train_pairs
        >>> neg = module.negatives(torch.arange(5), epoch=0)  # 4 uniform negatives per interaction
        >>> terms = module.loss_terms(train[:5, 0], train[:5, 1], neg)
        >>> tuple(neg.shape), sorted(terms), tuple(module.scores(torch.tensor([0, 1])).shape)
        ((5, 4), ['item', 'l2', 'main'], (2, 16))
    """

    _prefix = "ultragcn"
    _derived = ("_graph",)

    def __init__(
        self,
        num_users: int = 943,
        num_items: int = 1682,
        embedding_dim: int = 64,
        lr: float = 1e-3,
        negative_num: int = 100,
        negative_weight: float = 100.0,
        w1: float = 1e-7,
        w2: float = 1.0,
        w3: float = 1e-7,
        w4: float = 1.0,
        gamma: float = 1e-4,
        lambda_i: float = 1e-3,
        ii_neighbor_num: int = 10,
        zero_diagonal: bool = False,
        init_std: float = 1e-4,
        k: int = 20,
        seed: int = 0,
    ) -> None:
        owner = type(self).__name__
        self._check_sizes(owner, num_users, num_items, embedding_dim, lr, k)
        check_int(owner, "negative_num", negative_num, low=1, high=100000)
        for name, value in (
            ("negative_weight", negative_weight),
            ("w1", w1),
            ("w2", w2),
            ("w3", w3),
            ("w4", w4),
            ("gamma", gamma),
            ("lambda_i", lambda_i),
        ):
            check_float(owner, name, value, low=0.0)
        check_int(owner, "ii_neighbor_num", ii_neighbor_num, low=1, high=1000)
        check_bool(owner, "zero_diagonal", zero_diagonal)
        check_float(owner, "init_std", init_std, low=0.0, low_open=True, high=10.0)
        check_int(owner, "seed", seed, low=0, high=2**31 - 1)
        super().__init__()
        self.save_hyperparameters()
        self.seed, self.negative_num, self.negative_weight = seed, negative_num, float(negative_weight)
        self.w1, self.w2, self.w3, self.w4 = float(w1), float(w2), float(w3), float(w4)
        self.gamma, self.lambda_i = float(gamma), float(lambda_i)
        self.ii_neighbor_num, self.zero_diagonal = ii_neighbor_num, zero_diagonal
        self.user_embedding = torch.nn.Embedding(num_users, embedding_dim)
        self.item_embedding = torch.nn.Embedding(num_items, embedding_dim)
        torch.nn.init.normal_(self.user_embedding.weight, std=init_std)
        torch.nn.init.normal_(self.item_embedding.weight, std=init_std)
        self._init_ranking(num_users, num_items, k, lr)
        self._graph: dict[str, Tensor] | None = None

    @classmethod
    def example(cls) -> Example:
        """8-d embeddings, 4 negatives on a generated 24-user, 16-item, two-taste interaction set."""
        from litmix.datamodules.interaction import InteractionDataModule, _tiny_interactions

        train, test = _tiny_interactions()
        dm = InteractionDataModule(train=train, test=test, batch_size=32, eval_batch_size=8)
        module = cls(num_users=24, num_items=16, embedding_dim=8, lr=1e-2, negative_num=4, ii_neighbor_num=3, k=5)
        return Example(module, dm, [])

    # ------------------------------------------------------------------------------------------------ graph
    def set_graph(self, train_pairs: Tensor) -> None:
        """Compute the degree weights and the item-item constraint graph of ``train_pairs`` (``(n, 2)`` ids)."""
        pairs = train_pairs.long().cpu()
        beta_u, beta_i = _degree_betas(pairs, self.num_users, self.num_items)
        ids, sims = _item_neighbours(pairs, self.num_users, self.num_items, self.ii_neighbor_num, self.zero_diagonal)
        self._graph = {"beta_u": beta_u, "beta_i": beta_i, "ii_ids": ids, "ii_weights": sims}

    def _has_graph(self) -> bool:
        return self._graph is not None

    def graph(self) -> dict[str, Tensor]:
        """The cached degree weights and item-item graph on the module's device.

        Raises:
            RuntimeError: before ``setup`` / :meth:`set_graph`.
        """
        if self._graph is None:
            raise RuntimeError(f"{type(self).__name__}: no graph yet; fit with a data module or call set_graph")
        if self._graph["beta_u"].device != self.device:
            self._graph = {k: v.to(self.device) for k, v in self._graph.items()}
        return self._graph

    def scores(self, users: Tensor) -> Tensor:
        """``(len(users), num_items)`` scores ``e_u . e_i`` of every item for ``users``."""
        return self.user_embedding(users) @ self.item_embedding.weight.T

    def negatives(self, index: Tensor, epoch: int) -> Tensor:
        """``(len(index), negative_num)`` uniform negatives of the interactions ``index`` in ``epoch``."""
        j = torch.arange(self.negative_num, device=index.device)
        return hash32(self.seed, epoch, index[:, None].long(), j[None, :]) % self.num_items

    def loss_terms(self, users: Tensor, pos: Tensor, neg: Tensor) -> dict[str, Tensor]:
        """``main`` (weighted BCE), ``item`` (``L_I``) and ``l2`` (``||theta||^2 / 2``) of a batch."""
        g = self.graph()
        bu = g["beta_u"][users]
        w_pos = self.w1 + self.w2 * bu * g["beta_i"][pos]
        w_neg = self.w3 + self.w4 * bu[:, None] * g["beta_i"][neg]
        eu = self.user_embedding(users)
        pos_scores = (eu * self.item_embedding(pos)).sum(-1)
        neg_scores = (eu[:, None, :] * self.item_embedding(neg)).sum(-1)
        pos_loss = F.binary_cross_entropy_with_logits(
            pos_scores, torch.ones_like(pos_scores), weight=w_pos, reduction="none"
        )
        neg_loss = F.binary_cross_entropy_with_logits(
            neg_scores, torch.zeros_like(neg_scores), weight=w_neg, reduction="none"
        ).mean(-1)
        main = (pos_loss + self.negative_weight * neg_loss).sum()
        if self.lambda_i > 0:
            nb = self.item_embedding(g["ii_ids"][pos])
            sim = (eu[:, None, :] * nb).sum(-1)
            item = -(g["ii_weights"][pos] * F.logsigmoid(sim)).sum()
        else:
            item = main.new_zeros(())
        l2 = sum((p**2).sum() for p in self.parameters()) / 2
        return {"main": main, "item": item, "l2": l2}  # type: ignore[dict-item]

    # ------------------------------------------------------------------------------------------------ steps
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Weighted BCE with sampled negatives + ``lambda_i L_I`` (sums, times the world size) + ``gamma`` L2."""
        triplets, _, index = split_batch(batch)
        users, pos = triplets[:, 0], triplets[:, 1]
        if index is None:
            index = torch.arange(users.numel(), device=users.device)
        epoch = int(self.current_epoch) if self._trainer is not None else 0
        terms = self.loss_terms(users, pos, self.negatives(index, epoch))
        world = int(self.trainer.world_size) if self._trainer is not None else 1
        loss = world * (terms["main"] + self.lambda_i * terms["item"]) + self.gamma * terms["l2"]
        if self._trainer is not None:
            self.log("ultragcn/loss", loss, batch_size=int(users.numel()))
        return loss
