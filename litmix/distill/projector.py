"""A learned projector between feature widths: a linear map, applied as a 1x1 convolution to image features."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litmix.registry import register
from litmix.validation import check_int


@register(
    "layer",
    "distillation",
    paper="FitNets: Hints for Thin Deep Nets (https://arxiv.org/abs/1412.6550)",
    module="litmix.distill",
)
class FeatureProjector(nn.Module):
    """Map features from ``in_features`` to ``out_features`` wide: Linear on ``[..., D]``, 1x1 conv on ``[B, C, H, W]``.

    One weight ``[out_features, in_features]`` and a bias serve both layouts: 4-D inputs are convolved with the
    weight as a ``1x1`` kernel over their channel dimension (dim 1), every other input is mapped along its last
    dimension. Initialised like ``nn.Linear``. The FitNets regressor (Romero et al.,
    https://arxiv.org/abs/1412.6550) and the embedding heads of the contrastive term are projectors.

    Args:
        in_features: input width (channels), >= 1.
        out_features: output width, >= 1.

    Raises:
        TypeError: for a width that is not an int.
        ValueError: for a width < 1, or (in ``forward``) an input whose width is not ``in_features``.

    Example:
        >>> p = FeatureProjector(8, 16)
        >>> p(torch.randn(2, 8)).shape, p(torch.randn(2, 5, 8)).shape, p(torch.randn(2, 8, 3, 3)).shape
        (torch.Size([2, 16]), torch.Size([2, 5, 16]), torch.Size([2, 16, 3, 3]))
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        owner = type(self).__name__
        in_features = check_int(owner, "in_features", in_features, low=1)
        out_features = check_int(owner, "out_features", out_features, low=1)
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        """Project ``x`` (channels in dim 1 for 4-D inputs, else the last dim)."""
        width = x.shape[1] if x.dim() == 4 else x.shape[-1]
        if width != self.in_features:
            raise ValueError(
                f"{type(self).__name__}(in_features={self.in_features}): got a feature of shape {tuple(x.shape)} "
                f"(width {width})"
            )
        x = x.to(self.weight.dtype)
        if x.dim() == 4:
            return F.conv2d(x, self.weight[:, :, None, None], self.bias)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        """Widths."""
        return f"in_features={self.in_features}, out_features={self.out_features}"
