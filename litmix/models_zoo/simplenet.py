"""SimpleNet: a plain stack of 3x3 convolutions (Hasanpour et al., 2016) as a model-zoo builder."""

from __future__ import annotations

from torch import nn

from litmix.registry import register
from litmix.validation import check_float, check_int

__all__ = ["simplenet"]

PAPER = (
    "Lets keep it simple, Using simple architectures to outperform deeper and more complex architectures "
    "(Hasanpour et al., 2016; https://arxiv.org/abs/1608.06037)"
)

# The 13-layer SimpleNet layout: (channels, kernel) per convolution, "M" a 2x2 max pool.
LAYOUT: tuple[tuple[int, int] | str, ...] = (
    (64, 3), (128, 3), (128, 3), (128, 3), "M",
    (128, 3), (128, 3), (256, 3), "M",
    (256, 3), (256, 3), "M",
    (512, 3), "M",
    (2048, 1), (256, 1), "M",
    (256, 3),
)  # fmt: skip


@register("function", "optimization", paper=PAPER, module="litmix.models_zoo")
def simplenet(
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    input_size: int = 32,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Build SimpleNet: 13 convolutions (3x3, two 1x1 near the end) with BN and ReLU, max pools, global pooling.

    Hasanpour, Rouhani, Fayyaz and Sabokrou, "Lets keep it simple, Using simple architectures to outperform deeper
    and more complex architectures" (2016, https://arxiv.org/abs/1608.06037): a homogeneous, plain (no branches, no
    skips) network of small convolutions with batch norm, 2x2 max pooling in a few places, the 1x1 convolutions
    only at the end, global max pooling and one linear classifier. ``width`` scales every channel count (at least
    one channel), so ``width=1`` is the paper's 13-layer CIFAR network (~5.5M parameters) and ``width=0.125`` a
    digits-sized model. A pool is skipped once the feature map is 1x1, so small inputs (8x8 digits, 28x28 MNIST)
    keep all 13 convolutions. For the proxies and pruning families: plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` /
    ``nn.Linear`` modules only.

    Args:
        num_classes: output classes, >= 2.
        in_channels: input channels, >= 1 (1 for MNIST/digits).
        width: channel multiplier, in (0, 4].
        input_size: side of the (square) input in pixels, >= 1; decides which pools fit.
        dropout: dropout probability before the classifier, in [0, 1).

    Returns:
        An ``nn.Sequential`` mapping ``(N, in_channels, input_size, input_size)`` to logits ``(N, num_classes)``.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for a value outside its range.

    Example:
        >>> import torch
        >>> net = simplenet(num_classes=10, in_channels=1, width=0.125, input_size=8)
        >>> net(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
        >>> sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
        13
    """
    owner = "simplenet"
    num_classes = check_int(owner, "num_classes", num_classes, low=2)
    in_channels = check_int(owner, "in_channels", in_channels, low=1)
    width = check_float(owner, "width", width, low=0.0, high=4.0, low_open=True)
    input_size = check_int(owner, "input_size", input_size, low=1)
    dropout = check_float(owner, "dropout", dropout, low=0.0, high=1.0, high_open=True)
    layers: list[nn.Module] = []
    channels, size = in_channels, input_size
    for item in LAYOUT:
        if isinstance(item, str):
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            continue
        out, kernel = max(1, round(item[0] * width)), item[1]
        layers += [
            nn.Conv2d(channels, out, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out),
            nn.ReLU(inplace=True),
        ]
        channels = out
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)
