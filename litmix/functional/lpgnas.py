"""Pure-tensor search space of LPGNAS: mixed-precision GNN layers with softmax-relaxed choices.

"Learned Low Precision Graph Neural Networks" (Zhao, Wang, Shumailov, Mullins & Mullins,
https://arxiv.org/abs/2009.09232) searches, per GNN layer, the layer type and the weight / activation bits with a
DARTS relaxation: every discrete choice ``c`` with candidates ``v_1..v_k`` gets logits ``alpha_c`` and the layer
computes the ``softmax(alpha_c)``-weighted mixture of the candidates. This module holds the pieces on plain
tensors, used by :class:`litmix.plugins.MixedPrecisionGNN`:

* layer types (:data:`LAYER_OPS`): ``"gcn"`` (``Â X W``, symmetric normalisation with self-loops), ``"sage"``
  (``X W_self + mean_neighbours(X) W_nbr``), ``"gat"`` (single-head additive attention over the neighbours and
  the node itself) and ``"linear"`` (``X W``, no message passing), all from sparse adjacency matrices
  (:func:`graph_operators`; no ``torch-sparse`` needed);
* mixed fake quantization: ``sum_b p_b q_b(w)`` for weights (per output channel) and ``sum_b p_b q_b(x)`` for
  activations (per tensor, bound = ``max|x|`` of the current tensor), with the straight-through quantizers of
  :mod:`litmix.functional.quantization`; 32 bits means "not quantized";
* the expected model size in bits under the architecture distribution (:func:`expected_layer_bits`), the
  differentiable size penalty of the search.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from litmix.functional.quantization import activation_bound, bound_scale, fake_quantize, fake_quantize_per_channel

__all__ = [
    "FULL_PRECISION",
    "LAYER_OPS",
    "expected_layer_bits",
    "gat_aggregate",
    "graph_operators",
    "layer_bits",
    "mixed_activation_quant",
    "mixed_weight_quant",
    "quantize_activation",
    "quantize_weight",
]

#: Weight matrices per layer type (``"sage"`` has a self and a neighbour matrix).
LAYER_OPS: dict[str, int] = {"gcn": 1, "sage": 2, "gat": 1, "linear": 1}
#: The bit width that means "keep the tensor in float32" (no fake quantization).
FULL_PRECISION = 32


def quantize_weight(weight: Tensor, bits: int, axis: int = -1) -> Tensor:
    """Fake-quantize ``weight`` to ``bits`` (signed, symmetric, one scale per output channel on ``axis``).

    ``bits == 32`` returns ``weight`` unchanged. The gradient is the straight-through estimator.

    Example:
        >>> w = torch.tensor([[0.5, -1.0], [0.1, 0.3]])
        >>> quantize_weight(w, 2)  # one scale per column: codes -1, 0, 1
        tensor([[ 0.5000, -1.0000],
                [ 0.0000,  0.0000]])
        >>> bool(torch.equal(quantize_weight(w, 32), w))
        True
    """
    if bits == FULL_PRECISION:
        return weight
    return fake_quantize_per_channel(weight, bits, axis=axis)


def quantize_activation(x: Tensor, bits: int) -> Tensor:
    """Fake-quantize an activation tensor per tensor; unsigned codes when ``x >= 0`` (after a ReLU), else signed.

    The bound is ``max|x|`` of this tensor (for a full-batch graph, of the whole graph); ``bits == 32`` returns
    ``x``. Zeros stay zero, so the values of a sparse tensor can be quantized alone.

    Example:
        >>> quantize_activation(torch.tensor([0.0, 0.2, 0.5, 1.0]), 2)  # unsigned: levels 0, 1/3, 2/3, 1
        tensor([0.0000, 0.3333, 0.6667, 1.0000])
    """
    if bits == FULL_PRECISION or x.numel() == 0:
        return x
    signed = bool((x.detach() < 0).any())
    scale = bound_scale(activation_bound(x, signed=signed), bits, signed=signed).to(x.device)
    return fake_quantize(x, scale, bits, signed=signed)


def mixed_weight_quant(weight: Tensor, bits: Sequence[int], probs: Tensor | None, axis: int = -1) -> Tensor:
    """``sum_b p_b quantize_weight(weight, b)``: the relaxed bit choice (``probs=None``: ``bits`` holds one entry).

    Gradients reach ``weight`` (straight-through) and ``probs``.

    Example:
        >>> w = torch.tensor([[0.5, -1.0], [0.1, 0.3]])
        >>> mixed_weight_quant(w, [2, 32], torch.tensor([0.5, 0.5]))
        tensor([[ 0.5000, -1.0000],
                [ 0.0500,  0.1500]])
    """
    if probs is None:
        if len(bits) != 1:
            raise ValueError(f"mixed_weight_quant(bits={list(bits)}): probs=None needs exactly one bit width")
        return quantize_weight(weight, bits[0], axis)
    out = torch.zeros_like(weight)
    for p, b in zip(probs, bits, strict=True):
        out = out + p * quantize_weight(weight, b, axis)
    return out


def mixed_activation_quant(x: Tensor, bits: Sequence[int], probs: Tensor | None) -> Tensor:
    """``sum_b p_b quantize_activation(x, b)`` (``probs=None``: ``bits`` holds one entry).

    Example:
        >>> mixed_activation_quant(torch.tensor([0.0, 0.2, 1.0]), [2, 32], torch.tensor([0.5, 0.5]))
        tensor([0.0000, 0.2667, 1.0000])
    """
    if probs is None:
        if len(bits) != 1:
            raise ValueError(f"mixed_activation_quant(bits={list(bits)}): probs=None needs exactly one bit width")
        return quantize_activation(x, bits[0])
    out = torch.zeros_like(x)
    for p, b in zip(probs, bits, strict=True):
        out = out + p * quantize_activation(x, b)
    return out


def graph_operators(edge_index: Tensor, num_nodes: int) -> dict[str, Tensor]:
    """The propagation operators of the layer types, from a ``(2, E)`` ``edge_index`` (messages ``src -> dst``).

    Returns ``{"gcn": Â, "mean": M, "loops": edge_index with self-loops}``: ``Â = D^-1/2 (A + I) D^-1/2`` (PyG's
    ``gcn_norm``) and ``M`` the row-normalised neighbour mean (isolated nodes get 0), both sparse COO ``(N, N)``
    with rows = destinations, so ``Â @ H`` aggregates over incoming edges.

    Example:
        >>> ops = graph_operators(torch.tensor([[0, 1], [1, 0]]), 3)
        >>> ops["gcn"].to_dense()
        tensor([[0.5000, 0.5000, 0.0000],
                [0.5000, 0.5000, 0.0000],
                [0.0000, 0.0000, 1.0000]])
        >>> ops["mean"].to_dense()[2].sum().item(), ops["loops"].shape
        (0.0, torch.Size([2, 5]))
    """
    from torch_geometric.nn.conv.gcn_conv import gcn_norm
    from torch_geometric.utils import add_self_loops, degree, remove_self_loops

    edge_index = remove_self_loops(edge_index)[0]
    gcn_ei, gcn_w = gcn_norm(edge_index, None, num_nodes, add_self_loops=True)
    assert gcn_w is not None
    size = (num_nodes, num_nodes)
    gcn = torch.sparse_coo_tensor(gcn_ei.flip(0), gcn_w, size, check_invariants=False).coalesce()
    src, dst = edge_index
    deg = degree(dst, num_nodes).clamp_min(1.0)
    mean = torch.sparse_coo_tensor(torch.stack([dst, src]), 1.0 / deg[dst], size, check_invariants=False).coalesce()
    loops = add_self_loops(edge_index, num_nodes=num_nodes)[0]
    return {"gcn": gcn, "mean": mean, "loops": loops}


def gat_aggregate(h: Tensor, att: Tensor, loops: Tensor, negative_slope: float = 0.2) -> Tensor:
    """Single-head GAT aggregation: ``out_i = sum_j softmax_j(LeakyReLU(a_s.h_j + a_d.h_i)) h_j`` over ``j -> i``.

    Args:
        h: node features ``(N, C)`` (already transformed by the layer's weight).
        att: ``(2, C)`` attention vectors ``[a_s, a_d]``.
        loops: ``(2, E)`` edges (``src``, ``dst``) including self-loops.
        negative_slope: LeakyReLU slope.

    Example:
        >>> h = torch.tensor([[1.0], [3.0]])
        >>> gat_aggregate(h, torch.zeros(2, 1), torch.tensor([[0, 1, 0, 1], [0, 1, 1, 0]]))  # uniform attention
        tensor([[2.],
                [2.]])
    """
    from torch_geometric.utils import scatter, softmax

    src, dst = loops
    score = torch.nn.functional.leaky_relu((h @ att[0])[src] + (h @ att[1])[dst], negative_slope)
    weight = softmax(score, dst, num_nodes=h.shape[0])
    return scatter(weight.unsqueeze(-1) * h[src], dst, dim=0, dim_size=h.shape[0], reduce="sum")


def layer_bits(op: str, in_width: float | Tensor, out_width: float | Tensor, weight_bits: float | Tensor) -> Tensor:
    """Bits of one layer: ``(matrices * in * out + attention) * weight_bits + 32 * out`` (float32 bias).

    Works with expected (fractional) widths and bits, which gives the expectation for independent choices.

    Example:
        >>> float(layer_bits("gcn", 1433, 16, 32)) == (1433 * 16 + 16) * 32
        True
        >>> float(layer_bits("sage", 16, 7, 4)), float(layer_bits("gat", 16, 7, 4))
        (1120.0, 728.0)
    """
    if op not in LAYER_OPS:
        raise ValueError(f"layer_bits(op={op!r}): op must be one of {sorted(LAYER_OPS)}")
    in_w, out_w = torch.as_tensor(in_width, dtype=torch.float32), torch.as_tensor(out_width, dtype=torch.float32)
    weights = LAYER_OPS[op] * in_w * out_w + (2 * out_w if op == "gat" else 0.0)
    return weights * torch.as_tensor(weight_bits, dtype=torch.float32) + FULL_PRECISION * out_w


def expected_layer_bits(
    ops: Sequence[str],
    op_probs: Tensor,
    in_width: Tensor | float,
    out_width: Tensor | float,
    bits: Sequence[int],
    bit_probs: Tensor,
) -> Tensor:
    """``E[bits]`` of one layer: the op mixture of :func:`layer_bits` at the expected widths and weight bits.

    Differentiable in the probabilities (and the expected widths), so it serves as the size penalty.

    Example:
        >>> p = torch.tensor([0.5, 0.5])
        >>> float(expected_layer_bits(["gcn", "sage"], p, 10.0, 4.0, [4, 32], torch.tensor([1.0, 0.0])))
        368.0
    """
    b = (bit_probs * torch.tensor([float(x) for x in bits], device=bit_probs.device)).sum()
    per_op = torch.stack([layer_bits(o, in_width, out_width, 1.0).to(b.device) for o in ops])  # at 1 bit
    bias = FULL_PRECISION * torch.as_tensor(out_width, dtype=torch.float32, device=b.device)
    return (op_probs * ((per_op - bias) * b + bias)).sum()
