"""Membership-inference AUC with the loss, zlib, min-k %, min-k++ and reference attacks (torchmetrics)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from litmix.functional.unlearning import sequence_nll
from litmix.functional.unlearning_metrics import min_k_plus_plus_score, min_k_score, rank_auroc, zlib_score
from litmix.metrics._indexed_rows import IndexedRows
from litmix.registry import register
from litmix.validation import check_choice, check_float

ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "reference")


def mia_attack_scores(
    attack: str,
    logits: Tensor,
    labels: Tensor,
    k: float = 0.4,
    ref_logits: Tensor | None = None,
    texts: Sequence[str] | Sequence[Sequence[int]] | Tensor | None = None,
) -> Tensor:
    """Per-sample attack scores (higher = looks unseen) from classifier ``[B, C]`` or LM ``[B, T, V]`` logits."""
    if attack == "min_k":
        return min_k_score(logits, labels, k)
    if attack == "min_k_plus_plus":
        return min_k_plus_plus_score(logits, labels, k)
    if logits.dim() == 2:
        nll = F.cross_entropy(logits.float(), labels, reduction="none")
    else:
        nll = sequence_nll(logits, labels, reduction="mean")
    if attack == "loss":
        return nll
    if attack == "zlib":
        if texts is None:
            texts = labels.reshape(labels.shape[0], -1)  # token ids (-100 dropped); classifiers: the label
        return zlib_score(nll, texts)
    if ref_logits is None:
        raise ValueError("MIAScoreAUC(attack='reference'): update needs ref_logits, the reference model's logits")
    if ref_logits.dim() == 2:
        ref_nll = F.cross_entropy(ref_logits.float(), labels, reduction="none")
    else:
        ref_nll = sequence_nll(ref_logits, labels, reduction="mean")
    return nll - ref_nll


@register(
    "metric",
    "unlearning",
    paper="MUSE: Machine Unlearning Six-Way Evaluation for Language Models (https://arxiv.org/abs/2407.06460)",
    module="litmix.metrics",
)
class MIAScoreAUC(IndexedRows):
    """Membership-inference AUROC of forget (members) vs holdout samples under a chosen attack score.

    Attacks (open-unlearning / MUSE; every score is higher for samples that look unseen):

    - ``"loss"``: per-token mean NLL (classifier: cross-entropy);
    - ``"zlib"``: that NLL divided by the zlib-compressed length of the text (token ids if no ``texts``);
    - ``"min_k"``: Min-K% Prob (https://arxiv.org/abs/2310.16789), minus the mean of the lowest ``k`` share of
      token log-probabilities;
    - ``"min_k_plus_plus"``: Min-K%++ (https://arxiv.org/abs/2404.02936), on token log-probabilities
      standardised by the model's own next-token distribution;
    - ``"reference"``: target NLL minus a reference model's NLL (``ref_logits``).

    Holdout = positive class, so **1 = memorised, 0.5 = indistinguishable, < 0.5 = over-unlearned**
    (the orientation of :class:`~litmix.metrics.MembershipInferenceAUC`). Rows are de-duplicated by
    ``(holdout, index)`` (DDP padding). The AUROC is computed from average ranks (ties count one half), equal to
    ``sklearn.metrics.roc_auc_score``.

    Args:
        attack: one of ``"loss"``, ``"zlib"``, ``"min_k"``, ``"min_k_plus_plus"``, ``"reference"``.
        k: share of lowest tokens for the min-k attacks, in ``(0, 1]``.
        **kwargs: torchmetrics ``Metric`` options.

    Raises:
        TypeError: arguments of the wrong type.
        ValueError: an unknown ``attack`` or ``k`` outside ``(0, 1]``; in ``update``, ``attack="reference"``
            without ``ref_logits``.

    Example:
        >>> m = MIAScoreAUC("loss")
        >>> member, unseen = torch.tensor([[4.0, 0.0], [0.0, 4.0]]), torch.tensor([[0.5, 0.0], [0.0, 0.2]])
        >>> m.update(member, torch.tensor([0, 1]), torch.tensor([0, 1]), holdout=False)
        >>> m.update(unseen, torch.tensor([0, 1]), torch.tensor([0, 1]), holdout=True)
        >>> m.compute()
        tensor(1.)
    """

    def __init__(
        self,
        attack: Literal["loss", "zlib", "min_k", "min_k_plus_plus", "reference"] = "loss",
        k: float = 0.4,
        **kwargs: object,
    ) -> None:
        name = type(self).__name__
        check_choice(name, "attack", attack, ATTACKS)
        check_float(name, "k", k, low=0.0, high=1.0, low_open=True)
        super().__init__(**kwargs)
        self.attack, self.k = attack, float(k)

    def update(
        self,
        logits: Tensor,
        labels: Tensor,
        index: Tensor,
        holdout: bool,
        ref_logits: Tensor | None = None,
        texts: Sequence[str] | Sequence[Sequence[int]] | Tensor | None = None,
    ) -> None:
        """Score a batch of forget (``holdout=False``) or holdout (``holdout=True``) samples."""
        scores = mia_attack_scores(self.attack, logits.detach(), labels, self.k, ref_logits, texts)
        self._add(scores.reshape(-1), index, int(bool(holdout)))

    def update_scores(self, scores: Tensor, index: Tensor, holdout: bool) -> None:
        """Add precomputed per-sample attack scores (higher = looks unseen)."""
        self._add(scores.reshape(-1), index, int(bool(holdout)))

    def compute(self) -> Tensor:
        """The AUROC (NaN unless both forget and holdout samples were seen)."""
        forget, holdout = self.rows(0)[0].reshape(-1), self.rows(1)[0].reshape(-1)
        scores = torch.cat([forget, holdout])
        labels = torch.cat([torch.zeros_like(forget), torch.ones_like(holdout)]).long()
        return rank_auroc(scores, labels)
