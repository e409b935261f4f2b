"""The shell shared by the recommendation LightningModules: the training graph from the data module, full ranking.

:class:`LightGCNModule <litmix.plugins.LightGCNModule>` and :class:`UltraGCNModule <litmix.plugins.UltraGCNModule>`
take the training graph from an :class:`~litmix.datamodules.InteractionDataModule` at ``setup`` and evaluate by
full ranking with :class:`~litmix.metrics.RecallAtK` / :class:`~litmix.metrics.NDCGAtK`. Private: not a plugin.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from litmix.base import LitmixModule
from litmix.data import split_batch
from litmix.metrics.ndcg_at_k import NDCGAtK
from litmix.metrics.recall_at_k import RecallAtK
from litmix.validation import check_float, check_int


class _RecsysModule(LitmixModule):
    """Base of the user-item recommenders: sizes, graph setup, full-ranking validation / test, Adam.

    Subclasses call :meth:`_check_sizes` first in ``__init__`` and :meth:`_init_ranking` where the metrics are
    created, and implement ``set_graph(train_pairs)``, ``_has_graph()`` and ``scores(users)`` (or
    ``_eval_scores``). Metrics are logged as ``<prefix>/<stage>_recall@<k>`` and ``<prefix>/<stage>_ndcg@<k>``.
    """

    #: logging prefix (``"lightgcn"``, ``"ultragcn"``)
    _prefix: ClassVar[str] = "recsys"
    #: attributes holding derived tensors (graph constants, cached embeddings), dropped when pickled
    _derived: ClassVar[tuple[str, ...]] = ()

    @staticmethod
    def _check_sizes(owner: str, num_users: int, num_items: int, embedding_dim: int, lr: float, k: int) -> None:
        """Validate the arguments every recommender takes (naming them)."""
        check_int(owner, "num_users", num_users, low=1, high=10**8)
        check_int(owner, "num_items", num_items, low=1, high=10**8)
        check_int(owner, "embedding_dim", embedding_dim, low=1, high=4096)
        check_float(owner, "lr", lr, low=0.0, low_open=True)
        check_int(owner, "k", k, low=1)

    def _init_ranking(self, num_users: int, num_items: int, k: int, lr: float) -> None:
        """Sizes, learning rate and the validation / test Recall@k and NDCG@k metrics."""
        self.num_users, self.num_items, self.k, self.lr = num_users, num_items, k, float(lr)
        self.val_recall, self.val_ndcg = RecallAtK(k), NDCGAtK(k)
        self.test_recall, self.test_ndcg = RecallAtK(k), NDCGAtK(k)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the derived tensors."""
        state = super().__getstate__()
        for name in self._derived:
            state[name] = None
        return state

    def set_graph(self, train_pairs: Tensor) -> None:
        """Derive the model's graph constants from ``train_pairs`` (``(n, 2)`` user, item ids)."""
        raise NotImplementedError

    def _has_graph(self) -> bool:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        """Take the training graph from the data module (sizes checked).

        Raises:
            ValueError: if the data module's sizes differ from the module's or it has no ``train_pairs``.
        """
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "train_pairs"):
            if self._has_graph():
                return
            raise ValueError(
                f"{type(self).__name__}: needs a data module with num_users, num_items and train_pairs after setup "
                "(e.g. InteractionDataModule), or call set_graph(train_pairs) first"
            )
        for name in ("num_users", "num_items"):
            if int(getattr(dm, name)) != getattr(self, name):
                raise ValueError(
                    f"{type(self).__name__}({name}={getattr(self, name)}): the data module has {name}="
                    f"{int(getattr(dm, name))}"
                )
        self.set_graph(dm.train_pairs)

    def scores(self, users: Tensor) -> Tensor:
        """``(len(users), num_items)`` scores of every item for ``users``."""
        raise NotImplementedError

    def _eval_scores(self, users: Tensor) -> Tensor:
        return self.scores(users)

    def _evaluate(self, batch: Any, stage: str, recall: RecallAtK, ndcg: NDCGAtK) -> None:
        inputs, targets, users = split_batch(batch)
        assert targets is not None
        assert users is not None
        scores = self._eval_scores(inputs["users"])
        recall.update(scores, targets, users, inputs["exclude"])
        ndcg.update(scores, targets, users, inputs["exclude"])
        size = int(users.numel())
        self.log(f"{self._prefix}/{stage}_recall@{self.k}", recall, batch_size=size)
        self.log(f"{self._prefix}/{stage}_ndcg@{self.k}", ndcg, batch_size=size)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Full-ranking Recall@k / NDCG@k of the batch's users."""
        self._evaluate(batch, "val", self.val_recall, self.val_ndcg)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Full-ranking Recall@k / NDCG@k of the batch's users."""
        self._evaluate(batch, "test", self.test_recall, self.test_ndcg)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam on the embeddings."""
        return torch.optim.Adam(self.parameters(), lr=self.lr)
