"""Per-sample rows kept with a ``(group, index)`` key, de-duplicated under DDP (private base)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from litmix.metrics._dedup import first_occurrence


class IndexedRows(Metric):
    """Stores per-sample float64 values with an integer ``group`` and the sample ``index`` in ``cat`` states.

    :meth:`rows` returns, per group, the values of distinct indices sorted by index: the evaluation
    ``DistributedSampler`` pads by repeating items, and these rows are the same on any number of ranks.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better: bool | None = None

    row_values: list[Tensor]
    row_keys: list[Tensor]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.add_state("row_values", default=[], dist_reduce_fx="cat")
        self.add_state("row_keys", default=[], dist_reduce_fx="cat")

    def _add(self, values: Tensor, index: Tensor, group: int) -> None:
        values = values.detach().double()
        if values.dim() == 1:
            values = values.unsqueeze(-1)
        index = index.detach().reshape(-1).long().to(values.device)
        if index.numel() != values.shape[0]:
            raise ValueError(
                f"{type(self).__name__}.update: {values.shape[0]} values but {index.numel()} sample indices"
            )
        self.row_values.append(values.reshape(values.shape[0], -1))
        self.row_keys.append(torch.stack([torch.full_like(index, group), index], dim=1))

    def rows(self, group: int) -> tuple[Tensor, Tensor]:
        """``(values [N, C], index [N])`` of ``group``: distinct indices, sorted by index, gathered from all ranks.

        Outside :meth:`compute` (already synchronised) this gathers the states itself under DDP, so call it on
        every rank.
        """
        dist = torch.distributed
        if not self._is_synced and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            with self.sync_context(should_sync=True, should_unsync=True):
                return self._rows(group)
        return self._rows(group)

    def _rows(self, group: int) -> tuple[Tensor, Tensor]:
        if isinstance(self.row_values, list) and not self.row_values:
            return torch.zeros(0, 1, dtype=torch.float64, device=self.device), torch.zeros(0, dtype=torch.long)
        values, keys = dim_zero_cat(self.row_values), dim_zero_cat(self.row_keys)
        keys = keys.reshape(-1, 2)
        values = values.reshape(keys.shape[0], -1)
        keep = first_occurrence(keys)
        values, keys = values[keep], keys[keep]
        mine = keys[:, 0] == group
        values, index = values[mine], keys[mine, 1]
        order = index.argsort()
        return values[order], index[order]
