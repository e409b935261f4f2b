"""Shared state and update of the full-ranking recommendation metrics (private)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from litmix.metrics._dedup import first_occurrence
from litmix.validation import check_int


class _UserRankingMetric(Metric):
    """Per-user values of a top-``k`` ranking metric, averaged over distinct users that have test items."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    values: list[Tensor]
    users: list[Tensor]
    _per_user: Callable[..., Tensor]

    def __init__(self, k: int = 20, **kwargs: object) -> None:
        check_int(type(self).__name__, "k", k, low=1)
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.k = k
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("users", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, targets: Tensor, users: Tensor, exclude: Tensor | None = None) -> None:
        """Add a batch of users (training items in ``exclude`` are ranked last).

        ``scores`` and bool ``targets`` are ``(B, items)``, ``users`` the ``(B,)`` user ids, ``exclude`` a bool
        ``(B, items)`` mask or ``None``.

        Raises:
            ValueError: if the shapes disagree.
        """
        if users.dim() != 1 or users.shape[0] != scores.shape[0]:
            raise ValueError(
                f"{type(self).__name__}.update: users {tuple(users.shape)} must be a vector of one id per row of "
                f"scores {tuple(scores.shape)}"
            )
        value = type(self)._per_user(scores, targets, self.k, exclude)
        keep = ~torch.isnan(value)
        self.values.append(value[keep].double())
        self.users.append(users.detach()[keep].long().to(value.device))

    def compute(self) -> Tensor:
        """The mean over distinct users with at least one test item (NaN when there is none)."""
        values, users = dim_zero_cat(self.values), dim_zero_cat(self.users)
        if values.numel() == 0:
            return torch.tensor(float("nan"), dtype=torch.float64, device=values.device)
        return values[first_occurrence(users)].mean()
