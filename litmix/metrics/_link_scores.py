"""Scores of positive and negative candidate edges kept by edge index, de-duplicated under DDP (private base)."""

from __future__ import annotations

from torch import Tensor

from litmix.metrics._indexed_rows import IndexedRows


class LinkScores(IndexedRows):
    """``update(scores, labels, index)``: one score per candidate edge, its 0/1 label and its index in the split.

    Positives (label 1) and negatives (label 0) are stored apart with their index; :meth:`scores` returns both
    sets over all ranks with indices repeated by a ``DistributedSampler``'s padding counted once.
    """

    higher_is_better = True

    def update(self, scores: Tensor, labels: Tensor, index: Tensor) -> None:
        """Add a batch of candidate edges.

        Raises:
            ValueError: if ``scores``, ``labels`` and ``index`` do not hold one entry per edge.
        """
        scores, labels = scores.detach().reshape(-1), labels.detach().reshape(-1)
        if labels.numel() != scores.numel():
            raise ValueError(f"{type(self).__name__}.update: {scores.numel()} scores but {labels.numel()} labels")
        positive = labels > 0.5
        index = index.reshape(-1)
        for group, mask in ((1, positive), (0, ~positive)):
            if bool(mask.any()):
                self._add(scores[mask], index[mask], group=group)

    def scores(self) -> tuple[Tensor, Tensor]:
        """``(positive scores, negative scores)`` of distinct edges, ordered by index."""
        return self.rows(1)[0][:, 0], self.rows(0)[0][:, 0]
