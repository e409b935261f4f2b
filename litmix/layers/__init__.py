"""Quantized layers: DenseShift power-of-two layers and binary layers with MST compression.

* :class:`ShiftLinear`, :class:`ShiftConv2d` and :func:`to_denseshift` (DenseShift, arXiv 2208.09708);
* :class:`BinaryLinear`, :class:`BinaryConv2d` and :func:`to_binary` (binary weights with MST compression,
  arXiv 2308.13735).
"""

from litmix.layers.binary import BinaryConv2d, BinaryLinear, to_binary
from litmix.layers.shift import ShiftConv2d, ShiftLinear, to_denseshift

__all__ = ["BinaryConv2d", "BinaryLinear", "ShiftConv2d", "ShiftLinear", "to_binary", "to_denseshift"]
