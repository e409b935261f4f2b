"""MUSE privleak: the MIA AUC gap to the retrained model, relative (torchmetrics)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from litmix.functional.unlearning_metrics import privleak
from litmix.metrics.mia_variants import MIAScoreAUC
from litmix.registry import register
from litmix.validation import check_float


@register(
    "metric",
    "unlearning",
    paper="MUSE: Machine Unlearning Six-Way Evaluation for Language Models (https://arxiv.org/abs/2407.06460)",
    module="litmix.metrics",
)
class PrivLeak(MIAScoreAUC):
    """MUSE privleak ``((1 - AUC) - (1 - AUC_RT)) / (1 - AUC_RT) * 100`` of a membership-inference attack.

    ``AUC`` is :class:`~litmix.metrics.MIAScoreAUC`'s (forget vs holdout, 1 = memorised) for this model and
    ``retrain_auc`` the same attack's AUC for the model retrained without the forget set. In MUSE's orientation
    (``A = 1 - AUC``, forget = positive) it is ``(A - A_RT) / A_RT * 100``: **about 0 = like retraining,
    -100 = memorised, > 0 = over-unlearned**. MUSE uses the min-k % attack (the default here).

    Args:
        retrain_auc: the retrained model's AUC for the same attack and data, in ``[0, 1)``.
        attack: the attack (see :class:`~litmix.metrics.MIAScoreAUC`).
        k: share of lowest tokens for the min-k attacks, in ``(0, 1]``.
        **kwargs: torchmetrics ``Metric`` options.

    Raises:
        TypeError: arguments of the wrong type.
        ValueError: ``retrain_auc`` outside ``[0, 1)``, an unknown attack or ``k`` outside ``(0, 1]``.

    Example:
        >>> m = PrivLeak(retrain_auc=0.5, attack="loss")
        >>> m.update_scores(torch.tensor([0.1, 0.2]), torch.tensor([0, 1]), holdout=False)
        >>> m.update_scores(torch.tensor([1.0, 2.0]), torch.tensor([0, 1]), holdout=True)
        >>> m.compute()                                 # AUC 1: memorised
        tensor(-100.)
    """

    def __init__(
        self,
        retrain_auc: float,
        attack: Literal["loss", "zlib", "min_k", "min_k_plus_plus", "reference"] = "min_k",
        k: float = 0.4,
        **kwargs: object,
    ) -> None:
        check_float(type(self).__name__, "retrain_auc", retrain_auc, low=0.0, high=1.0, high_open=True)
        super().__init__(attack=attack, k=k, **kwargs)
        self.retrain_auc = float(retrain_auc)

    def compute(self) -> Tensor:
        """The privleak in percent (NaN unless both forget and holdout samples were seen)."""
        auc = super().compute()
        if torch.isnan(auc):
            return auc
        return privleak(auc, self.retrain_auc)
