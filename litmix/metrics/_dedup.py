"""De-duplication of per-sample metric rows by their key (private helper)."""

from __future__ import annotations

import torch
from torch import Tensor


def first_occurrence(keys: Tensor) -> Tensor:
    """Positions of the first occurrence of every distinct row of ``keys`` (``[N]`` or ``[N, K]``).

    ``DistributedSampler`` pads the evaluation set by repeating items; dropping repeated keys makes the
    metric independent of the number of ranks.

    Example:
        >>> first_occurrence(torch.tensor([3, 1, 3, 2, 1])).tolist()
        [0, 1, 3]
    """
    if keys.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=keys.device)
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)
    n = keys.shape[0]
    positions = torch.arange(n, device=keys.device)
    first = torch.full((int(inverse.max()) + 1,), n, dtype=torch.long, device=keys.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return first.sort().values
