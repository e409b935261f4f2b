"""Evaluating weight-sharing subnets: accuracy with inherited weights and BatchNorm re-calibration.

The running statistics of a supernet's BatchNorm layers mix the activations of every subnet trained through
them, so an extracted subnet evaluated with them is mis-normalised. Two remedies, used by
:class:`litmix.plugins.NB201SupernetModule` and :class:`litmix.plugins.OFASupernetModule`:

* :func:`subnet_accuracy` with ``batch_stats=True``: every BatchNorm normalises with the evaluation batch's
  statistics (running statistics untouched; use large evaluation batches);
* :func:`recalibrate_bn`: Once-for-All's BN re-calibration (Cai et al., "Once-for-All: Train One Network and
  Specialize it for Efficient Deployment", https://arxiv.org/abs/1908.09791; OFA's ``set_running_statistics``):
  reset the running statistics, set ``momentum=None`` (cumulative average over the batches seen) and run forward
  passes in train mode under ``torch.no_grad``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from litmix.data import split_batch
from litmix.registry import register
from litmix.validation import check_bool, check_int

__all__ = ["recalibrate_bn", "subnet_accuracy"]

OFA_PAPER = (
    "Once-for-All: Train One Network and Specialize it for Efficient Deployment (https://arxiv.org/abs/1908.09791)"
)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@register("function", "nas", paper=OFA_PAPER, module="litmix.nas")
@torch.no_grad()
def subnet_accuracy(
    model: nn.Module,
    dataloader: Iterable[Any],
    forward: Callable[[Tensor], Tensor] | None = None,
    batch_stats: bool = False,
) -> float:
    """Top-1 accuracy of a subnet on ``(x, y[, index])`` batches, in eval mode, without gradients.

    Args:
        model: the module holding the weights (put in eval mode for the evaluation, then restored).
        dataloader: iterable of batches (tuples or dicts, see :func:`litmix.data.split_batch`); inputs and
            targets are moved to the device of ``model``'s first parameter.
        forward: ``forward(x) -> logits`` running the subnet (e.g. ``lambda x: supernet(x, widths)``);
            default ``model``.
        batch_stats: every BatchNorm normalises with the evaluation batch's statistics instead of its running
            statistics (which are left exactly as they were, ``num_batches_tracked`` included).

    Returns:
        Correct predictions over all samples (0.0 for an empty loader).

    Raises:
        TypeError: for a non-bool ``batch_stats``.
        ValueError: for a batch without targets.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.eye(2)), net[0].bias.zero_()
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> subnet_accuracy(net, [(x, torch.tensor([0, 1]))], batch_stats=True)
        1.0
        >>> float(net[1].running_mean.abs().sum()), net.training
        (0.0, True)
    """
    check_bool("subnet_accuracy", "batch_stats", batch_stats)
    run = forward if forward is not None else model
    device = _device_of(model)
    was_training = model.training
    model.eval()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if batch_stats else []
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.train()
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    correct = total = 0
    try:
        for batch in dataloader:
            x, y, _ = split_batch(batch)
            if y is None:
                raise ValueError("subnet_accuracy: batches must carry targets ((x, y) tuples or dicts with 'y')")
            y = y.to(device)
            correct += int((run(x.to(device)).argmax(-1) == y).sum())
            total += len(y)
    finally:
        for m, (momentum, tracked) in zip(bns, saved, strict=True):
            m.momentum = momentum
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        model.train(was_training)
    return correct / max(total, 1)


@register("function", "nas", paper=OFA_PAPER, module="litmix.nas")
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
        TypeError: for a non-integer ``num_batches``.
        ValueError: for ``num_batches < 1`` or an empty loader.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        >>> x = torch.randn(64, 3) * 5 + 2
        >>> recalibrate_bn(net, [x[:32], x[32:]], num_batches=2)
        2
        >>> torch.allclose(net[1].running_mean, net[0](x).mean(0).detach(), atol=1e-5), net[1].momentum, net.training
        (True, 0.1, True)
    """
    check_int("recalibrate_bn", "num_batches", num_batches, low=1)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in bns]
    modes = {m: m.training for m in model.modules()}
    device = _device_of(model)
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
