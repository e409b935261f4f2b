"""Keeping non-parameter state equal across DDP ranks.

DDP keeps parameters equal (gradients are averaged) but buffers only by broadcasting rank 0's at the *start* of
each forward pass: after the last step of an epoch every rank still holds the BatchNorm running statistics of its
own last batch, so checkpoints and evaluations on ranks other than 0 would differ. :func:`broadcast_buffers`
does at the end of an epoch what DDP's next forward would do anyway (rank 0's buffers win), so a run on one
process is unchanged.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn

__all__ = ["broadcast_buffers"]


def broadcast_buffers(module: nn.Module, src: int = 0) -> int:
    """Copy every floating-point or integer buffer of ``module`` from rank ``src`` to all ranks (in place).

    Returns:
        The number of buffers broadcast (0 without an initialised process group of more than one rank).

    Raises:
        RuntimeError: from ``torch.distributed`` when a rank lacks a buffer the others have.

    Example:
        >>> broadcast_buffers(nn.BatchNorm1d(3))  # one process: nothing to do
        0
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return 0
    count = 0
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)
        count += 1
    return count
