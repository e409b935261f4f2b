"""NDCG@K under full ranking, averaged over users with test items (DDP-safe torchmetrics ``Metric``)."""

from __future__ import annotations

from litmix.functional.recsys import ndcg_at_k
from litmix.metrics._recsys import _UserRankingMetric
from litmix.registry import register


@register(
    "metric",
    "graph",
    paper="LightGCN: Simplifying and Powering Graph Convolution Network for Recommendation "
    "(https://arxiv.org/abs/2002.02126)",
    module="litmix.metrics",
)
class NDCGAtK(_UserRankingMetric):
    """NDCG@K of full-ranking recommendation: per user ``DCG / IDCG`` with binary gains, averaged over users.

    ``DCG = sum over the top-K positions p (1-based) of hit_p / log2(p + 1)``; ``IDCG`` is the DCG of the
    user's test items in the first ``min(|test items|, K)`` positions. Same protocol as :class:`RecallAtK`
    (LightGCN, https://arxiv.org/abs/2002.02126): training items (``exclude``) ranked last, ties broken by item
    index, the mean over distinct users with test items, states concatenated across DDP ranks. torchmetrics'
    ``RetrievalNormalizedDCG`` is not used because it averages the gain over tied scores (sklearn's tie rule)
    instead of breaking ties by index, which changes the value whenever scores tie (e.g. GTE's integer counts).

    Args:
        k: the cut-off ``K`` (>= 1; capped at the number of items).

    Raises:
        TypeError: for a non-int ``k``.
        ValueError: for ``k < 1``; in ``update``, shapes that disagree.

    Example:
        >>> import torch
        >>> m = NDCGAtK(k=2)
        >>> scores = torch.tensor([[0.9, 0.8, 0.7], [0.5, 0.5, 0.5]])
        >>> targets = torch.tensor([[0, 1, 0], [1, 1, 0]]).bool()
        >>> m.update(scores, targets, torch.tensor([0, 1]))
        >>> round(float(m.compute()), 4)              # (1/log2(3) + 1) / 2
        0.8155
    """

    _per_user = staticmethod(ndcg_at_k)
