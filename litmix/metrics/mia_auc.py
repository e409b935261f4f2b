"""Loss-threshold membership-inference AUC as a torchmetrics ``Metric``."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat

from litmix.metrics._dedup import first_occurrence
from litmix.registry import register


@register(
    "metric",
    "unlearning",
    paper="MUSE: Machine Unlearning Six-Way Evaluation for Language Models (https://arxiv.org/abs/2407.06460)",
    module="litmix.metrics",
)
class MembershipInferenceAUC(Metric):
    """AUROC of the loss-threshold membership-inference attack: forget (members) vs holdout samples.

    Every sample's score is its loss (per-sample NLL; per-token mean for language models). Holdout
    (never-trained) samples are the positive class, so **1.0 = memorised** (every forget sample has a
    lower loss than every holdout sample), **0.5 = indistinguishable** (what a retrained model gives
    on a random forget set), **below 0.5 = over-unlearned** (forget losses now above holdout losses,
    itself a membership signal). Computed with torchmetrics' ``binary_auroc`` after de-duplicating
    rows by ``(is_holdout, index)``, since the evaluation ``DistributedSampler`` repeats items.
    Loss-threshold attack as in TOFU/MUSE (https://arxiv.org/abs/2407.06460).

    Raises:
        ValueError: from torchmetrics for unknown keyword arguments' values.

    Example:
        >>> m = MembershipInferenceAUC()
        >>> m.update(torch.tensor([0.1, 0.2]), torch.tensor([0, 1]), holdout=False)   # forget losses
        >>> m.update(torch.tensor([1.0, 2.0]), torch.tensor([0, 1]), holdout=True)    # holdout losses
        >>> m.compute()
        tensor(1.)
        >>> m.reset()                                  # large losses are fine (no sigmoid squashing)
        >>> m.update(torch.tensor([50.0, 70.0]), torch.tensor([0, 1]), holdout=False)
        >>> m.update(torch.tensor([60.0, 80.0]), torch.tensor([0, 1]), holdout=True)
        >>> m.compute()
        tensor(0.7500)
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    scores: list[Tensor]
    targets: list[Tensor]
    indices: list[Tensor]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")
        self.add_state("indices", default=[], dist_reduce_fx="cat")

    def update(self, losses: Tensor, index: Tensor, holdout: bool) -> None:
        """Add per-sample ``losses`` of forget (``holdout=False``) or holdout (``holdout=True``) samples."""
        losses = losses.detach().reshape(-1).float()
        self.scores.append(losses)
        self.targets.append(torch.full_like(losses, float(holdout), dtype=torch.long))
        self.indices.append(index.detach().reshape(-1).long().to(losses.device))

    def compute(self) -> Tensor:
        """The AUROC (NaN unless both forget and holdout samples were seen)."""
        scores, targets, indices = (dim_zero_cat(s) for s in (self.scores, self.targets, self.indices))
        keep = first_occurrence(torch.stack([targets, indices], dim=1))
        scores, targets = scores[keep], targets[keep]
        if targets.numel() == 0 or bool((targets == 0).all()) or bool((targets == 1).all()):
            return torch.tensor(float("nan"), device=scores.device)
        # binary_auroc applies a sigmoid to scores outside [0, 1], which ties large losses: pass dense ranks
        # in [0, 1] instead (AUROC only depends on the order, ties are kept).
        _, ranks = torch.unique(scores, return_inverse=True)
        preds = ranks.float() / max(int(ranks.max()), 1)
        return binary_auroc(preds, targets)
