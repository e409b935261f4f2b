"""Binary layers (``BinaryLinear``, ``BinaryConv2d``) with MST compression, and :func:`to_binary`.

Paper: "MST-compression: Compressing and Accelerating Binary Neural Networks with Minimum Spanning Tree",
Vo et al., ICCV 2023 (https://arxiv.org/abs/2308.13735). The maths lives in :mod:`litmix.functional.binary`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litmix.functional.binary import PAPER, MSTTree, binarize, mst_compress, mst_conv2d, mst_linear, sign_ste
from litmix.functional.denseshift import pack_codes
from litmix.layers._shells import _ConvShell, _LinearShell, check_float_layer, replace_layers
from litmix.registry import register
from litmix.validation import check_bool, check_int, check_type

__all__ = ["BinaryConv2d", "BinaryLinear", "to_binary"]


class _BinaryMixin:
    """Shared by the binary layers: the effective weight, the tree and the one-bit export."""

    weight: Any
    bias: Any
    binary_activations: bool

    def binary_weight(self) -> tuple[Tensor, Tensor]:
        """``(signs, alpha)``: ``+-1`` weights (straight-through) and ``alpha = mean|W|`` per output channel."""
        return binarize(self.weight)

    def mst(self) -> MSTTree:
        """The minimum spanning tree of the current sign rows (:func:`litmix.functional.binary.mst_compress`)."""
        return mst_compress(self.weight)

    def export(self) -> dict[str, Any]:
        """Signs at one bit each (``1`` for ``+1``), float ``alpha`` per channel, shape and bias."""
        with torch.no_grad():
            signs = ~torch.signbit(self.weight)
            alpha = self.weight.abs().flatten(1).mean(1)
        return {
            "signs": pack_codes(signs.to(torch.uint8), 1),
            "alpha": alpha.clone(),
            "shape": tuple(self.weight.shape),
            "bias": None if self.bias is None else self.bias.detach().clone(),
        }

    def _inputs(self, x: Tensor) -> Tensor:
        return sign_ste(x) if self.binary_activations else x


@register("layer", "quantization", paper=PAPER, module="litmix.layers")
class BinaryLinear(_BinaryMixin, _LinearShell, nn.Linear):
    """A Linear layer with binary weights ``alpha_j * sign(W_j)`` (straight-through), compressible along an MST.

    Paper: "MST-compression: Compressing and Accelerating Binary Neural Networks with Minimum Spanning Tree",
    Vo et al., ICCV 2023 (https://arxiv.org/abs/2308.13735).

    The latent float ``weight`` is an ``nn.Linear`` weight (same state_dict keys, so a binarized model's
    checkpoint loads into the float class); the forward uses ``sign(W)`` (the sign bit: ``+0.0 -> +1``; clipped
    STE) times ``alpha = mean|W|`` per output channel; the bias stays float. ``binary_activations=True`` also binarizes
    the inputs (a full BNN layer; XNOR-popcount arithmetic). :meth:`mst` returns the tree of the sign rows,
    :meth:`forward_mst` computes the layer in tree order (equal to :meth:`forward` up to float summation
    order, exactly for binary activations) and :meth:`export` packs the signs at one bit each.

    Args:
        in_features: input size (>= 1).
        out_features: output size (>= 1).
        bias: add a float bias.
        binary_activations: binarize the inputs too.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for a size < 1; in :meth:`forward`, an input whose last dimension is not ``in_features``.

    Example:
        >>> torch.manual_seed(0) and None
        >>> layer = BinaryLinear(16, 8, binary_activations=True)
        >>> x = torch.randn(3, 16)
        >>> torch.equal(layer.forward_mst(x), layer(x).detach())
        True
        >>> tree = layer.mst(); tree.cost < tree.dense_cost == 128
        True
        >>> len(layer.export()["signs"])  # 128 weights at one bit each
        16
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, binary_activations: bool = False):
        owner = type(self).__name__
        check_int(owner, "in_features", in_features, low=1, high=1 << 20)
        check_int(owner, "out_features", out_features, low=1, high=1 << 20)
        check_bool(owner, "bias", bias)
        check_bool(owner, "binary_activations", binary_activations)
        super().__init__(in_features, out_features, bias)
        self.binary_activations = binary_activations

    @classmethod
    def from_float(cls, layer: nn.Linear, binary_activations: bool = False) -> BinaryLinear:
        """A BinaryLinear holding ``layer``'s weight and bias as its latents.

        Raises:
            TypeError: if ``layer`` is not an ``nn.Linear``.
            ValueError: if ``layer`` has no initialised weight.
        """
        layer = check_float_layer(cls.__name__, layer, nn.Linear)
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, binary_activations)
        new.to(layer.weight.device).load_state_dict(layer.state_dict())
        return new

    def forward(self, x: Tensor) -> Tensor:
        """``alpha * (x @ sign(W).T) + bias`` (``x`` binarized too when ``binary_activations``)."""
        self._check_input(x)
        signs, alpha = self.binary_weight()
        return F.linear(self._inputs(x), signs, None) * alpha + (0 if self.bias is None else self.bias)

    @torch.no_grad()
    def forward_mst(self, x: Tensor, tree: MSTTree | None = None) -> Tensor:
        """The same output computed in tree order (:func:`litmix.functional.binary.mst_linear`)."""
        signs, alpha = self.binary_weight()
        return mst_linear(self._inputs(x), signs, tree or self.mst(), alpha, self.bias)

    def extra_repr(self) -> str:
        """Sizes and activation mode."""
        return f"{super().extra_repr()}, binary_activations={self.binary_activations}"


@register("layer", "quantization", paper=PAPER, module="litmix.layers")
class BinaryConv2d(_BinaryMixin, _ConvShell, nn.Conv2d):
    """A Conv2d layer with binary weights ``alpha_j * sign(W_j)`` (straight-through), compressible along an MST.

    Paper: "MST-compression: Compressing and Accelerating Binary Neural Networks with Minimum Spanning Tree",
    Vo et al., ICCV 2023 (https://arxiv.org/abs/2308.13735). Same behaviour as :class:`BinaryLinear`; the
    sign vector of an output channel is its flattened ``C_in * k * k`` kernel.

    Args:
        in_channels: input channels (>= 1).
        out_channels: output channels (>= 1).
        kernel_size: square kernel size (>= 1).
        stride: stride (>= 1).
        padding: zero padding (>= 0).
        dilation: dilation (>= 1).
        bias: add a float bias.
        binary_activations: binarize the inputs too.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for a bad size; in :meth:`forward`, an input that is not ``[N, in_channels, H, W]``.

    Example:
        >>> torch.manual_seed(0) and None
        >>> conv = BinaryConv2d(2, 4, 3, padding=1, binary_activations=True)
        >>> x = torch.randn(1, 2, 5, 5)
        >>> torch.allclose(conv.forward_mst(x), conv(x).detach(), atol=1e-5)
        True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
        binary_activations: bool = False,
    ):
        owner = type(self).__name__
        self._check_sizes(owner, in_channels, out_channels, kernel_size, stride, padding, dilation)
        check_bool(owner, "bias", bias)
        check_bool(owner, "binary_activations", binary_activations)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, 1, bias)
        self.binary_activations = binary_activations

    @classmethod
    def from_float(cls, layer: nn.Conv2d, binary_activations: bool = False) -> BinaryConv2d:
        """A BinaryConv2d holding ``layer``'s weight and bias (square kernel, equal strides/paddings, groups=1).

        Raises:
            TypeError: if ``layer`` is not an ``nn.Conv2d``.
            ValueError: if ``layer`` has no initialised weight, or unsupported geometry.
        """
        sizes = cls._float_sizes(cls.__name__, layer, "a square kernel, equal strides/paddings, groups=1", True)
        new = cls(*sizes, layer.bias is not None, binary_activations)
        new.to(layer.weight.device).load_state_dict(layer.state_dict())
        return new

    def forward(self, x: Tensor) -> Tensor:
        """``alpha * conv2d(x, sign(W)) + bias`` (``x`` binarized too when ``binary_activations``)."""
        self._check_input(x)
        signs, alpha = self.binary_weight()
        y = F.conv2d(self._inputs(x), signs, None, self.stride, self.padding, self.dilation)
        y = y * alpha.view(-1, 1, 1)
        return y if self.bias is None else y + self.bias.view(-1, 1, 1)

    @torch.no_grad()
    def forward_mst(self, x: Tensor, tree: MSTTree | None = None) -> Tensor:
        """The same output computed in tree order (:func:`litmix.functional.binary.mst_conv2d`)."""
        signs, alpha = self.binary_weight()
        unbatched = x.dim() == 3
        xb = self._inputs(x.unsqueeze(0) if unbatched else x)
        pad, stride, dil = int(self.padding[0]), int(self.stride[0]), int(self.dilation[0])  # type: ignore[index]
        y = mst_conv2d(xb, signs, tree or self.mst(), alpha, self.bias, stride, pad, dil)
        return y[0] if unbatched else y


@register("function", "quantization", paper=PAPER, module="litmix.layers")
def to_binary(model: nn.Module, binary_activations: bool = False, skip: list[str] | None = None) -> nn.Module:
    """Replace every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` (exact types, in place) by the binary layers.

    The latent weights are the current weights; parameter names and shapes are unchanged, so checkpoints of
    the converted model load strictly into the float model and vice versa.

    Args:
        model: the model to convert.
        binary_activations: binarize the converted layers' inputs too.
        skip: qualified module names to keep in float (e.g. the first and last layers).

    Returns:
        ``model`` itself.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: for a ``skip`` name that is not a module of the model, or a model with nothing to convert.

    Example:
        >>> net = to_binary(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), skip=["2"])
        >>> [type(m).__name__ for m in net]
        ['BinaryLinear', 'ReLU', 'Linear']
    """
    owner = "to_binary"
    check_type(owner, "model", model, nn.Module)
    check_bool(owner, "binary_activations", binary_activations)
    check_type(owner, "skip", skip, list, allow_none=True)
    return replace_layers(
        owner,
        model,
        skip,
        lambda layer: (BinaryLinear if isinstance(layer, nn.Linear) else BinaryConv2d).from_float(
            layer, binary_activations
        ),
    )
