"""A causal temporal convolution that also runs one time step at a time (Continual Inference Networks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litmix.registry import register
from litmix.validation import check_bool, check_int, check_type

__all__ = ["ContinualConv1d"]

PAPER = "Efficient Online Processing with Deep Neural Networks (Hedegaard, 2023; https://arxiv.org/abs/2306.13474)"


@register("layer", "optimization", paper=PAPER, module="litmix.layers")
class ContinualConv1d(nn.Conv1d):
    """A causal ``nn.Conv1d`` with a step-wise mode that reuses past inputs instead of recomputing a window.

    Hedegaard, "Efficient Online Processing with Deep Neural Networks" (2023, https://arxiv.org/abs/2306.13474),
    Continual Inference Networks: an online model that re-runs a clip-based network on the last ``T`` frames
    every time a frame arrives does ``T`` times the work it needs. :meth:`forward` is the batch (offline) layer:
    a convolution over ``(batch, channels, time)`` with ``(kernel_size - 1) * dilation`` zeros on the left, so
    output ``t`` sees inputs ``t - (k - 1) d, ..., t``. :meth:`step` takes one frame ``(batch, channels)``,
    keeps the last ``(k - 1) d`` frames in a buffer and returns output ``t`` with one ``k``-tap product: the
    outputs of consecutive steps equal :meth:`forward` on the whole stream (test: float64 equality). The weights
    are an ``nn.Conv1d``'s (same names, so a trained ``Conv1d`` state dict loads strictly;
    :meth:`from_conv1d` converts a module); the buffer is not part of the state dict. Stride 1, no groups.

    Args:
        in_channels: input channels, >= 1.
        out_channels: output channels, >= 1.
        kernel_size: taps, >= 1.
        dilation: spacing of the taps, >= 1.
        bias: learn an additive bias.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for a size below 1; in :meth:`step`, a frame of the wrong shape or a batch size that changed
            without :meth:`reset`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> conv = ContinualConv1d(2, 3, kernel_size=3, dilation=2)
        >>> x = torch.randn(1, 2, 10)
        >>> offline = conv(x)
        >>> online = torch.stack([conv.step(x[:, :, t]) for t in range(10)], dim=-1)
        >>> torch.allclose(online, offline, atol=1e-6)
        True
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, bias: bool = True
    ) -> None:
        owner = type(self).__name__
        in_channels = check_int(owner, "in_channels", in_channels, low=1)
        out_channels = check_int(owner, "out_channels", out_channels, low=1)
        kernel_size = check_int(owner, "kernel_size", kernel_size, low=1)
        dilation = check_int(owner, "dilation", dilation, low=1)
        check_bool(owner, "bias", bias)
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)
        self.receptive = (kernel_size - 1) * dilation
        self.register_buffer("_memory", torch.zeros(0), persistent=False)

    @classmethod
    def from_conv1d(cls, conv: nn.Conv1d) -> ContinualConv1d:
        """A continual layer with ``conv``'s weights (its padding is replaced by causal left padding).

        Raises:
            TypeError: if ``conv`` is not an ``nn.Conv1d``.
            ValueError: for a strided or grouped convolution.
        """
        check_type(cls.__name__, "conv", conv, nn.Conv1d)
        if conv.stride != (1,) or conv.groups != 1:
            raise ValueError(
                f"{cls.__name__}.from_conv1d(conv=...): stride {conv.stride} / groups {conv.groups} are not "
                "supported (stride 1, groups 1)"
            )
        out = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.dilation[0], conv.bias is not None)
        out.load_state_dict(conv.state_dict())
        return out.to(conv.weight.device, conv.weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Offline: the causal convolution of a whole sequence ``(batch, in_channels, time)``."""
        return super().forward(F.pad(x, (self.receptive, 0)))

    def reset(self) -> None:
        """Forget the past frames (start a new stream)."""
        self._memory = torch.zeros(0, device=self.weight.device, dtype=self.weight.dtype)

    def step(self, frame: Tensor) -> Tensor:
        """Online: output of the newest time step for one frame ``(batch, in_channels)``."""
        if frame.dim() != 2 or frame.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}.step(frame): expected (batch, {self.in_channels}), got {tuple(frame.shape)}"
            )
        if self._memory.numel() == 0:
            self._memory = frame.new_zeros((frame.shape[0], self.in_channels, self.receptive))
        elif self._memory.shape[0] != frame.shape[0]:
            raise ValueError(
                f"{type(self).__name__}.step(frame): batch size {frame.shape[0]} differs from the stream's "
                f"{self._memory.shape[0]}; call reset() to start a new stream"
            )
        window = torch.cat([self._memory, frame.unsqueeze(-1)], dim=-1)  # (B, C_in, receptive + 1)
        self._memory = window[:, :, 1:]
        taps = window[:, :, :: self.dilation[0]]  # (B, C_in, k)
        out = torch.einsum("bik,oik->bo", taps, self.weight)
        return out + self.bias if self.bias is not None else out

    def extra_repr(self) -> str:
        """Adds the causal receptive field."""
        return super().extra_repr() + f", receptive={self.receptive}"
