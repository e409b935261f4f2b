"""BatchNorm re-calibration of a weight-sharing subnet before evaluation (Once-for-All).

Cai et al., "Once-for-All: Train One Network and Specialize it for Efficient Deployment",
https://arxiv.org/abs/1908.09791. The running statistics of a supernet's BatchNorm layers mix the activations of
every subnet trained through them, so an extracted subnet evaluated with them is mis-normalised. OFA therefore
re-computes the statistics of each subnet on a small train subset before evaluating it (OFA's
``set_running_statistics``); :func:`recalibrate_bn` does the same with PyTorch's own machinery:
it resets the running statistics, sets ``momentum=None`` (cumulative average over the batches seen) and runs
forward passes in train mode under ``torch.no_grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from litmix.data import split_batch

__all__ = ["recalibrate_bn"]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    loader: Iterable[Any],
    num_batches: int,
    forward: Callable[[Tensor], Any] | None = None,
) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them from ``num_batches`` batches of ``loader``.

    Each ``_BatchNorm`` with ``track_running_stats`` gets ``reset_running_stats()`` and ``momentum=None``
    (exact cumulative average of the batch statistics); ``forward`` (default ``model``) then runs on the inputs
    of the first ``num_batches`` batches with the whole model in train mode (dropout is switched off: every
    ``nn.Dropout`` is kept in eval mode) and without gradients. Momenta and train/eval modes are restored
    afterwards; weights are untouched. Batches may be tensors, ``(x, y[, index])`` tuples or dicts
    (see :func:`litmix.data.split_batch`); inputs are moved to the device of the model's first parameter.

    Args:
        model: the network holding the BatchNorm layers.
        loader: iterable of training batches (a small train subset; OFA uses 2000 images).
        num_batches: batches to use, >= 1 (fewer if the loader is shorter).
        forward: callable running the subnet to calibrate (e.g. ``lambda x: supernet(x, widths)``); default
            ``model``.

    Returns:
        The number of batches used.

    Raises:
        ValueError: for ``num_batches < 1`` or an empty loader.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> x = torch.randn(64, 3) * 5 + 2
        >>> recalibrate_bn(net, [x[:32], x[32:]], num_batches=2)
        2
        >>> torch.allclose(net[1].running_mean, net[0](x).mean(0).detach(), atol=1e-5), net[1].momentum, net.training
        (True, 0.1, True)
    """
    if num_batches < 1:
        raise ValueError(f"recalibrate_bn(num_batches={num_batches}): num_batches must be >= 1")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in bns]
    modes = {m: m.training for m in model.modules()}
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    run = forward if forward is not None else model
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    used = 0
    try:
        model.train()
        for mod in model.modules():
            if isinstance(mod, nn.modules.dropout._DropoutNd):
                mod.eval()
        for batch in loader:
            if used >= num_batches:
                break
            x, _, _ = split_batch(batch)
            run(x.to(device))
            used += 1
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        for mod, mode in modes.items():
            mod.training = mode
    if used == 0:
        raise ValueError("recalibrate_bn: the loader yielded no batches")
    return used
