"""Private shells shared by the quantized drop-in layers (:mod:`litmix.layers.binary`, :mod:`litmix.layers.shift`).

Input checks of the Linear / Conv2d shells, the Conv2d size arguments, the checks of a float layer to convert,
and the in-place replacement of a model's exact ``nn.Linear`` / ``nn.Conv2d`` layers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from litmix.validation import check_int, check_type


class _LinearShell:
    """A Linear drop-in: checks the input's last dimension against ``in_features``."""

    in_features: int

    def _check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}.forward(x=...): x has {x.shape[-1]} features in its last dimension, "
                f"expected in_features={self.in_features}"
            )


class _ConvShell:
    """A square-kernel Conv2d drop-in: its size arguments, its input check and the float layers it converts."""

    in_channels: int

    @staticmethod
    def _check_sizes(
        owner: str, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, dilation: int
    ) -> tuple[int, int, int, int, int, int]:
        """The six size arguments, validated, as ints."""
        return (
            int(check_int(owner, "in_channels", in_channels, low=1, high=1 << 16)),
            int(check_int(owner, "out_channels", out_channels, low=1, high=1 << 16)),
            int(check_int(owner, "kernel_size", kernel_size, low=1, high=64)),
            int(check_int(owner, "stride", stride, low=1, high=64)),
            int(check_int(owner, "padding", padding, low=0, high=64)),
            int(check_int(owner, "dilation", dilation, low=1, high=64)),
        )

    @staticmethod
    def _float_sizes(owner: str, layer: Any, geometry: str, groups_one: bool) -> tuple[int, int, int, int, int, int]:
        """``(in, out, kernel, stride, padding, dilation)`` of a float ``nn.Conv2d`` to convert.

        The layer needs a square kernel, equal strides, paddings and dilations, zeros padding (and ``groups == 1``
        where ``groups_one``); otherwise a ValueError saying the layer needs ``geometry``.
        """
        layer = check_float_layer(owner, layer, nn.Conv2d)
        square = all(len(set(v)) == 1 for v in (layer.kernel_size, layer.stride, layer.dilation))
        if (
            not square
            or isinstance(layer.padding, str)
            or len(set(layer.padding)) != 1
            or (groups_one and layer.groups != 1)
        ):
            raise ValueError(f"{owner}(layer={layer}): layer needs {geometry}")
        if layer.padding_mode != "zeros":
            raise ValueError(f"{owner}(layer={layer}): layer's padding_mode must be 'zeros'")
        return (
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size[0],
            layer.stride[0],
            int(layer.padding[0]),
            layer.dilation[0],
        )

    def _check_input(self, x: Tensor) -> None:
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}.forward(x=...): x of shape {tuple(x.shape)} is not "
                f"[N, in_channels={self.in_channels}, H, W]"
            )


def check_float_layer(owner: str, layer: Any, cls: type) -> Any:
    """``layer``, an initialised ``cls`` (TypeError / ValueError naming ``layer`` otherwise)."""
    check_type(owner, "layer", layer, nn.Module)
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, Tensor) or isinstance(weight, nn.parameter.UninitializedParameter):
        raise ValueError(f"{owner}(layer={type(layer).__name__}): layer has no initialised weight tensor")
    if not isinstance(layer, cls):
        raise TypeError(f"{owner}(layer={type(layer).__name__}): layer must be a {cls.__name__}")
    return layer


def replace_layers(
    owner: str, model: nn.Module, skip: list[str] | None, convert: Callable[[Any], nn.Module]
) -> nn.Module:
    """Replace (in place) every exact ``nn.Linear`` / ``nn.Conv2d`` of ``model`` by ``convert(layer)``.

    Modules named in ``skip`` are kept; returns ``model``.

    Raises:
        ValueError: for a ``skip`` name that is not a module of ``model``, a bare layer as ``model``, or a model
            with nothing to convert.
    """
    names = dict(model.named_modules())
    for name in skip or []:
        if name not in names:
            raise ValueError(f"{owner}(skip={skip}): {name!r} is not a module of the model")
    if type(model) in (nn.Linear, nn.Conv2d):
        raise ValueError(f"{owner}(model={type(model).__name__}): pass a model containing the layer, not the layer")
    targets = [n for n, m in names.items() if type(m) in (nn.Linear, nn.Conv2d) and n not in (skip or [])]
    if not targets:
        raise ValueError(f"{owner}(model={type(model).__name__}): the model has no nn.Linear or nn.Conv2d to convert")
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, convert(getattr(parent, child)))
    return model
