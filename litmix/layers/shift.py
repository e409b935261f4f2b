"""DenseShift layers (``ShiftLinear``, ``ShiftConv2d``) and :func:`to_denseshift`, which converts a model.

Paper: "DenseShift: Towards Accurate and Efficient Low-Bit Power-of-Two Quantization", Li et al., ICCV 2023
(https://arxiv.org/abs/2208.09708). The maths lives in :mod:`litmix.functional.denseshift`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litmix.functional.denseshift import (
    PAPER,
    denseshift_codes,
    denseshift_exponent_max,
    denseshift_weight,
    low_variance_init,
    pack_codes,
)
from litmix.layers._shells import _ConvShell, _LinearShell, check_float_layer, replace_layers
from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_int, check_type

__all__ = ["ShiftConv2d", "ShiftLinear", "to_denseshift"]

Init = Literal["kaiming", "low_variance"]


class _ShiftMixin(nn.Module):
    """Latents, effective weight, codes and export shared by the DenseShift layers."""

    sign_latent: nn.Parameter
    scale_latent: nn.Parameter
    exponent_max: Tensor
    bits: int
    init: str

    def _init_latents(self, shape: tuple[int, ...], bits: int, init: str, weight: Tensor | None) -> None:
        if weight is None:
            weight = torch.empty(shape)
            nn.init.kaiming_uniform_(weight, a=5**0.5)  # nn.Linear / nn.Conv2d default
        e_max = denseshift_exponent_max(weight)
        if init == "low_variance":
            sign, scale = low_variance_init(shape, bits, e_max)
        else:
            sign, scale = weight.detach().clone(), weight.detach().abs()
        self.sign_latent = nn.Parameter(sign.float())
        self.scale_latent = nn.Parameter(scale.float())
        self.register_buffer("exponent_max", torch.tensor(e_max, dtype=torch.int64))

    def _adopt(self, layer: nn.Linear | nn.Conv2d) -> Any:
        """Latents from ``layer``'s weight (``init="kaiming"``), its bias copied, on its device; returns ``self``."""
        weight = layer.weight
        self._init_latents(tuple(weight.shape), self.bits, self.init, None if self.init != "kaiming" else weight)
        bias = getattr(self, "bias", None)
        if layer.bias is not None and bias is not None:
            bias.data.copy_(layer.bias.detach())
        return self.to(weight.device)

    @property
    def weight(self) -> Tensor:
        """The effective weight ``sign(S) * 2**p`` (straight-through gradients to both latents)."""
        return denseshift_weight(self.sign_latent, self.scale_latent, self.bits, int(self.exponent_max))

    def codes(self) -> Tensor:
        """The ``bits``-bit integer codes of the effective weight (uint8, the weight's shape)."""
        return denseshift_codes(self.sign_latent, self.scale_latent, self.bits, int(self.exponent_max))

    def export(self) -> dict[str, Any]:
        """Packed codes (``bits`` bits per weight), ``exponent_max``, shape and the float bias."""
        codes = self.codes()
        bias = getattr(self, "bias", None)
        return {
            "codes": pack_codes(codes, self.bits),
            "bits": self.bits,
            "exponent_max": int(self.exponent_max),
            "shape": tuple(codes.shape),
            "bias": None if bias is None else bias.detach().clone(),
        }


@register("layer", "quantization", paper=PAPER, module="litmix.layers")
class ShiftLinear(_ShiftMixin, _LinearShell):
    """A Linear layer with DenseShift weights ``+-2**p`` (no zero), trained by sign-scale decomposition.

    Paper: "DenseShift: Towards Accurate and Efficient Low-Bit Power-of-Two Quantization", Li et al., ICCV 2023
    (https://arxiv.org/abs/2208.09708).

    Parameters: ``sign_latent`` and ``scale_latent`` (the decomposition, see
    :func:`litmix.functional.denseshift.denseshift_weight`), ``bias`` (float, not quantized); buffer
    ``exponent_max`` (the layer's largest exponent, from the initial weight). :attr:`weight` is the effective
    weight, :meth:`codes` its integer codes and :meth:`export` the packed ``bits``-bit codes.

    Args:
        in_features: input size (>= 1).
        out_features: output size (>= 1).
        bias: add a float bias.
        bits: bits per weight in [2, 8]: 1 sign bit and ``bits - 1`` exponent bits (``2**(bits-1)`` levels).
        init: ``"kaiming"`` (latents from nn.Linear's default init) or ``"low_variance"`` (random signs, every
            magnitude at the smallest level; see :func:`litmix.functional.denseshift.low_variance_init`).

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for ``bits < 2`` (or > 8), a size < 1 or an unknown ``init``; in :meth:`forward`, an input
            whose last dimension is not ``in_features``.

    Example:
        >>> torch.manual_seed(0) and None
        >>> layer = ShiftLinear(8, 4, bits=3)
        >>> y = layer(torch.randn(2, 8)); y.shape
        torch.Size([2, 4])
        >>> w = layer.weight.detach()
        >>> bool((w != 0).all()), bool((torch.frexp(w).mantissa.abs() == 0.5).all())  # all +-2**p, none zero
        (True, True)
        >>> len(layer.export()["codes"])  # 32 weights x 3 bits = 12 bytes
        12
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, bits: int = 3, init: Init = "kaiming"
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.in_features = int(check_int(owner, "in_features", in_features, low=1, high=1 << 20))
        self.out_features = int(check_int(owner, "out_features", out_features, low=1, high=1 << 20))
        check_bool(owner, "bias", bias)
        self.bits = int(check_int(owner, "bits", bits, low=2, high=8))
        self.init = check_choice(owner, "init", init, ("kaiming", "low_variance"))
        self._init_latents((self.out_features, self.in_features), self.bits, self.init, None)
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None
        if self.bias is not None:
            bound = self.in_features**-0.5
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_float(cls, layer: nn.Linear, bits: int = 3, init: Init = "kaiming") -> ShiftLinear:
        """A ShiftLinear whose latents start from ``layer``'s weight (``init="kaiming"``) and copies its bias.

        Raises:
            TypeError: if ``layer`` is not an ``nn.Linear``.
            ValueError: if ``layer`` has no initialised weight, or for a bad ``bits``/``init``.
        """
        layer = check_float_layer(cls.__name__, layer, nn.Linear)
        new = cls(layer.in_features, layer.out_features, layer.bias is not None, bits, init)
        return new._adopt(layer)

    def forward(self, x: Tensor) -> Tensor:
        """``x @ weight.T + bias`` with the effective DenseShift weight."""
        self._check_input(x)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        """Sizes and bits."""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"


@register("layer", "quantization", paper=PAPER, module="litmix.layers")
class ShiftConv2d(_ShiftMixin, _ConvShell):
    """A Conv2d layer with DenseShift weights ``+-2**p`` (no zero), trained by sign-scale decomposition.

    Paper: "DenseShift: Towards Accurate and Efficient Low-Bit Power-of-Two Quantization", Li et al., ICCV 2023
    (https://arxiv.org/abs/2208.09708). Same parameters and methods as :class:`ShiftLinear`.

    Args:
        in_channels: input channels (>= 1, divisible by ``groups``).
        out_channels: output channels (>= 1, divisible by ``groups``).
        kernel_size: square kernel size (>= 1).
        stride: stride (>= 1).
        padding: zero padding (>= 0).
        dilation: dilation (>= 1).
        groups: groups (>= 1).
        bias: add a float bias.
        bits: bits per weight in [2, 8].
        init: ``"kaiming"`` or ``"low_variance"``.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for ``bits < 2`` (or > 8), a bad size or an unknown ``init``; in :meth:`forward`, an input
            that is not ``[N, in_channels, H, W]`` (or ``[in_channels, H, W]``).

    Example:
        >>> torch.manual_seed(0) and None
        >>> conv = ShiftConv2d(3, 4, kernel_size=3, padding=1, bits=3)
        >>> conv(torch.randn(1, 3, 5, 5)).shape
        torch.Size([1, 4, 5, 5])
        >>> bool((conv.weight != 0).all())
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
        groups: int = 1,
        bias: bool = True,
        bits: int = 3,
        init: Init = "kaiming",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        sizes = self._check_sizes(owner, in_channels, out_channels, kernel_size, stride, padding, dilation)
        self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation = sizes
        self.groups = int(check_int(owner, "groups", groups, low=1, high=1 << 16))
        for name, value in (("in_channels", self.in_channels), ("out_channels", self.out_channels)):
            if value % self.groups:
                raise ValueError(f"{owner}({name}={value}): {name} must be divisible by groups={self.groups}")
        check_bool(owner, "bias", bias)
        self.bits = int(check_int(owner, "bits", bits, low=2, high=8))
        self.init = check_choice(owner, "init", init, ("kaiming", "low_variance"))
        shape = (self.out_channels, self.in_channels // self.groups, self.kernel_size, self.kernel_size)
        self._init_latents(shape, self.bits, self.init, None)
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None
        if self.bias is not None:
            bound = (shape[1] * self.kernel_size**2) ** -0.5
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_float(cls, layer: nn.Conv2d, bits: int = 3, init: Init = "kaiming") -> ShiftConv2d:
        """A ShiftConv2d from a square-kernel, symmetric-stride/padding ``nn.Conv2d`` (weights and bias copied).

        Raises:
            TypeError: if ``layer`` is not an ``nn.Conv2d``.
            ValueError: if ``layer`` has no initialised weight, a non-square kernel, unequal strides, paddings
                or dilations, a string padding or a non-zeros padding mode.
        """
        sizes = cls._float_sizes(cls.__name__, layer, "a square kernel and equal strides/paddings", False)
        new = cls(*sizes, layer.groups, layer.bias is not None, bits, init)
        return new._adopt(layer)

    def forward(self, x: Tensor) -> Tensor:
        """``conv2d(x, weight) + bias`` with the effective DenseShift weight."""
        self._check_input(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        """Sizes and bits."""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, bits={self.bits}"
        )


@register("function", "quantization", paper=PAPER, module="litmix.layers")
def to_denseshift(model: nn.Module, bits: int = 3, init: Init = "kaiming", skip: list[str] | None = None) -> nn.Module:
    """Replace every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` (in place) by the DenseShift layers.

    Only layers whose type is exactly ``nn.Linear`` / ``nn.Conv2d`` are converted (subclasses such as
    attention's ``NonDynamicallyQuantizableLinear``, whose weight is read directly, are left alone). The latents
    start from the current weights (``init="kaiming"``) or from the low-variance init; biases are copied. Call
    it before building the optimizer (the parameters change).

    Args:
        model: the model to convert.
        bits: bits per weight in [2, 8].
        init: ``"kaiming"`` (start from the layer's weights) or ``"low_variance"``.
        skip: qualified module names to keep in float (e.g. ``["net.0"]`` for the first layer).

    Returns:
        ``model`` itself.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``.
        ValueError: for a bad ``bits``/``init``, a ``skip`` name that is not a module of ``model``, or a model
            with no layer to convert.

    Example:
        >>> net = to_denseshift(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), bits=3, skip=["2"])
        >>> [type(m).__name__ for m in net]
        ['ShiftLinear', 'ReLU', 'Linear']
    """
    owner = "to_denseshift"
    check_type(owner, "model", model, nn.Module)
    bits = int(check_int(owner, "bits", bits, low=2, high=8))
    init = check_choice(owner, "init", init, ("kaiming", "low_variance"))
    check_type(owner, "skip", skip, list, allow_none=True)
    return replace_layers(
        owner,
        model,
        skip,
        lambda layer: (ShiftLinear if isinstance(layer, nn.Linear) else ShiftConv2d).from_float(layer, bits, init),
    )
