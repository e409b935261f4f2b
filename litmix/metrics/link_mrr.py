"""Mean reciprocal rank of positive edges among one shared pool of negatives (DDP-safe torchmetrics ``Metric``)."""

from __future__ import annotations

from torch import Tensor

from litmix.functional.link_prediction import NCN_PAPER, link_mrr
from litmix.metrics._link_scores import LinkScores
from litmix.registry import register


@register("metric", "graph", paper=NCN_PAPER, module="litmix.metrics")
class LinkMRR(LinkScores):
    """MRR of link prediction: each positive edge ranked among all negative edges, ``1 / rank`` averaged.

    Reported with Hits@K by NCN / NCNC (Wang et al., "Neural Common Neighbor with Completion for Link
    Prediction", https://arxiv.org/abs/2302.00890). Ties with negatives count half (OGB's mean of the optimistic
    and pessimistic rank). ``update(scores, labels, index)`` as :class:`~litmix.metrics.HitsAtK`: one score per
    candidate edge, its 0/1 label and its index; de-duplicated and gathered across ranks.

    Raises:
        ValueError: in ``update``, sizes that disagree.

    Example:
        >>> import torch
        >>> m = LinkMRR()
        >>> m.update(torch.tensor([0.9, 0.8, 0.5, 0.5, 0.2]), torch.tensor([1, 0, 1, 0, 0]), torch.arange(5))
        >>> m.compute()                     # ranks 1 and 2.5 (one negative above, one tied)
        tensor(0.7000, dtype=torch.float64)
    """

    def compute(self) -> Tensor:
        """MRR over the distinct edges of every rank (NaN without positives)."""
        pos, neg = self.scores()
        return link_mrr(pos, neg)
