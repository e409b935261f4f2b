"""Recall@K under full ranking, averaged over users with test items (DDP-safe torchmetrics ``Metric``)."""

from __future__ import annotations

from litmix.functional.recsys import recall_at_k
from litmix.metrics._recsys import _UserRankingMetric
from litmix.registry import register


@register(
    "metric",
    "graph",
    paper="LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation "
    "(https://arxiv.org/abs/2002.02126)",
    module="litmix.metrics",
)
class RecallAtK(_UserRankingMetric):
    """Recall@K of full-ranking recommendation: per user ``hits in the top K / |test items|``, averaged over users.

    The protocol of LightGCN (He et al., https://arxiv.org/abs/2002.02126) and of the litmix catalogue: every
    item is scored, the user's training items (``exclude``) are ranked last and never count, ties are broken by
    item index (stable sort), and the mean is over the users that have at least one test item. Each update
    stores one value per user with the user's id; ``compute`` keeps the first value of each id, so users
    repeated by an evaluation ``DistributedSampler``'s padding count once, and the states are concatenated
    across ranks: 2 ranks give exactly the value of one process. torchmetrics' ``RetrievalRecall`` is not used
    because it breaks score ties with an unstable ``argsort`` (not by item index) and needs every
    ``(user, item)`` score flattened into its states.

    Args:
        k: the cut-off ``K`` (>= 1; capped at the number of items).

    Raises:
        TypeError: for a non-int ``k``.
        ValueError: for ``k < 1``; in ``update``, shapes that disagree.

    Example:
        >>> import torch
        >>> m = RecallAtK(k=2)
        >>> scores = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.4, 0.3, 0.2, 0.1], [0.5, 0.5, 0.5, 0.5]])
        >>> targets = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]]).bool()
        >>> exclude = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]).bool()
        >>> m.update(scores, targets, torch.tensor([0, 1, 2]), exclude)   # user 1 has no test item
        >>> m.compute()                                                     # (1/2 + 1/1) / 2
        tensor(0.7500, dtype=torch.float64)
    """

    _per_user = staticmethod(recall_at_k)
