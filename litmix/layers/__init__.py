"""Layers: quantized layers (DenseShift, binary with MST compression) and continual-inference layers.

* :class:`ShiftLinear`, :class:`ShiftConv2d` and :func:`to_denseshift` (DenseShift, arXiv 2208.09708);
* :class:`BinaryLinear`, :class:`BinaryConv2d` and :func:`to_binary` (binary weights with MST compression,
  arXiv 2308.13735);
* :class:`ContinualConv1d`, :class:`ContinualAttention`: causal temporal layers that also run one time step at a
  time (Continual Inference Networks, arXiv 2306.13474).
"""

from litmix.layers.binary import BinaryConv2d, BinaryLinear, to_binary
from litmix.layers.continual_attention import ContinualAttention
from litmix.layers.continual_conv import ContinualConv1d
from litmix.layers.lcm_conv import LCMConv
from litmix.layers.moe_plus_plus import MoEPlusPlus
from litmix.layers.nonparametric_head import NonParametricHead
from litmix.layers.phatgoose import PHATGOOSELinear, import_expert, phatgoose_mode, to_phatgoose
from litmix.layers.shift import ShiftConv2d, ShiftLinear, to_denseshift
from litmix.layers.ssvi import SparseVariationalConv2d, SparseVariationalLinear, mc_predict, to_sparse_variational

__all__ = [
    "BinaryConv2d",
    "BinaryLinear",
    "ContinualAttention",
    "ContinualConv1d",
    "LCMConv",
    "MoEPlusPlus",
    "NonParametricHead",
    "PHATGOOSELinear",
    "ShiftConv2d",
    "ShiftLinear",
    "SparseVariationalConv2d",
    "SparseVariationalLinear",
    "import_expert",
    "mc_predict",
    "phatgoose_mode",
    "to_binary",
    "to_denseshift",
    "to_phatgoose",
    "to_sparse_variational",
]
