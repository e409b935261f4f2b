"""Hits@K of link prediction against one shared pool of negative edges (DDP-safe torchmetrics ``Metric``)."""

from __future__ import annotations

from torch import Tensor

from litmix.functional.link_prediction import NCN_PAPER, hits_at_k
from litmix.metrics._link_scores import LinkScores
from litmix.registry import register
from litmix.validation import check_int


@register("metric", "graph", paper=NCN_PAPER, module="litmix.metrics")
class HitsAtK(LinkScores):
    """OGB's Hits@K: the share of positive edges scored above the ``k``-th highest negative (shared negatives).

    The link-prediction metric of NCN / NCNC (Wang et al., "Neural Common Neighbor with Completion for Link
    Prediction", https://arxiv.org/abs/2302.00890) on Cora / CiteSeer (HR@100). ``update(scores, labels,
    index)`` takes one score per candidate edge, its 0/1 label and its index in the evaluation split; the
    states are concatenated across ranks and indices repeated by an evaluation ``DistributedSampler``'s padding
    count once, so 2 ranks give the value of one process. ``compute`` is
    :func:`~litmix.functional.link_prediction.hits_at_k`. torchmetrics' ``RetrievalHitRate`` does not fit: it
    ranks candidates per query, while this protocol ranks every positive against one pool of negatives.

    Args:
        k: the cut-off ``K`` (>= 1).

    Raises:
        TypeError: for a non-int ``k``.
        ValueError: for ``k < 1``; in ``update``, sizes that disagree.

    Example:
        >>> import torch
        >>> m = HitsAtK(k=2)
        >>> m.update(torch.tensor([0.9, 0.8, 0.5, 0.3]), torch.tensor([1, 0, 1, 0]), torch.tensor([0, 1, 2, 3]))
        >>> m.update(torch.tensor([0.1, 0.2]), torch.tensor([1, 0]), torch.tensor([4, 5]))
        >>> m.compute()                     # negatives 0.8, 0.3, 0.2 -> threshold 0.3; positives 0.9, 0.5, 0.1
        tensor(0.6667, dtype=torch.float64)
    """

    def __init__(self, k: int = 100, **kwargs: object) -> None:
        self.k = check_int(type(self).__name__, "k", k, low=1)
        super().__init__(**kwargs)

    def compute(self) -> Tensor:
        """Hits@K over the distinct edges of every rank (NaN without positives)."""
        pos, neg = self.scores()
        return hits_at_k(pos, neg, self.k)
