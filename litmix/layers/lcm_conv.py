"""A message-passing layer aggregating neighbours with PyG's Learnable Commutative Monoid (LCM) aggregation."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.aggr import LCMAggregation
from torch_geometric.utils import sort_edge_index

from litmix.registry import register
from litmix.validation import check_bool, check_int, check_type

__all__ = ["LCMConv"]

_PAPER = "Learnable Commutative Monoids for Graph Neural Networks (https://arxiv.org/abs/2212.08541)"


@register("layer", "graph", paper=_PAPER, module="litmix.layers")
class LCMConv(MessagePassing):
    """``out_i = W_root x_i + LCM({x_j : j -> i})``: a GNN layer whose aggregator is a learned binary operator.

    Paper: Ong and Veličković, "Learnable Commutative Monoids for Graph Neural Networks" (LoG 2022,
    https://arxiv.org/abs/2212.08541). The neighbour messages ``x_j`` (projected by ``Linear + ReLU`` when
    ``project``) are reduced by PyG's :class:`~torch_geometric.nn.aggr.LCMAggregation`: a balanced binary tree
    whose every internal node applies a learned binary operator (a ``GRUCell`` made commutative by averaging
    ``g(a, b)`` and ``g(b, a)``), so a node of in-degree ``d`` is reduced in ``ceil(log2 d)`` sequential levels
    (``O(log d)`` depth instead of an RNN's ``O(d)``). PyG pads every node's messages with zero vectors up to
    the largest in-degree, and the learned operator need not treat 0 as its identity: a node's output can depend
    on the largest degree of the graph (with addition as the operator the padding is exact).

    **Sorting handled here**: ``LCMAggregation`` needs the edges sorted by destination; :meth:`forward` sorts
    ``edge_index`` with :func:`torch_geometric.utils.sort_edge_index` (``sort_by_row=False``: by destination,
    then source) unless ``sorted_by_destination=True`` promises it is already sorted (then the given order of
    each node's incoming edges is used as is). After the sort the output does not depend on the order of the
    edge list.

    **Not permutation invariant**: the learned operator is commutative per pair but not associative, so a
    node's output depends on the order of its incoming messages -- here the order of the source ids, so
    relabelling the nodes can change the outputs (a GNN built on it is not exactly permutation equivariant).

    Args:
        in_channels: input feature width, >= 1.
        out_channels: output width, >= 1.
        project: project messages with ``Linear + ReLU`` before the reduction (required when the widths differ).
        root_weight: add ``W_root x_i`` (a linear map of the node's own features).

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for widths < 1 or ``project=False`` with ``in_channels != out_channels``; in :meth:`forward`,
            features that are not float ``[N, in_channels]`` or an ``edge_index`` that is not integer ``(2, E)``
            with ids in ``[0, N)``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> conv = LCMConv(4, 8)
        >>> x = torch.randn(5, 4)
        >>> edge_index = torch.tensor([[0, 1, 2, 3, 4, 0], [1, 0, 1, 1, 0, 4]])  # unsorted: sorted inside
        >>> tuple(conv(x, edge_index).shape)
        (5, 8)
    """

    def __init__(self, in_channels: int, out_channels: int, project: bool = True, root_weight: bool = True) -> None:
        owner = type(self).__name__
        in_channels = check_int(owner, "in_channels", in_channels, low=1)
        out_channels = check_int(owner, "out_channels", out_channels, low=1)
        project = check_bool(owner, "project", project)
        root_weight = check_bool(owner, "root_weight", root_weight)
        if not project and in_channels != out_channels:
            raise ValueError(
                f"{owner}(project=False, in_channels={in_channels}, out_channels={out_channels}): without a "
                "projection the messages must already have out_channels features"
            )
        super().__init__(aggr=LCMAggregation(in_channels, out_channels, project=project))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.lin_root = torch.nn.Linear(in_channels, out_channels) if root_weight else None

    def forward(self, x: Tensor, edge_index: Tensor, sorted_by_destination: bool = False) -> Tensor:
        """Node outputs ``[N, out_channels]`` (``edge_index`` sorted by destination here unless promised)."""
        owner = type(self).__name__
        check_type(owner, "x", x, Tensor)
        check_type(owner, "edge_index", edge_index, Tensor)
        if x.dim() != 2 or not x.is_floating_point() or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{owner}(in_channels={self.in_channels}): x must be float [N, {self.in_channels}], got "
                f"{tuple(x.shape)} ({x.dtype})"
            )
        n = int(x.shape[0])
        if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.is_floating_point():
            raise ValueError(f"{owner}: edge_index must be an integer (2, E) tensor, got {tuple(edge_index.shape)}")
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
            raise ValueError(
                f"{owner}: edge_index holds node ids in [{int(edge_index.min())}, {int(edge_index.max())}], "
                f"outside [0, {n})"
            )
        if edge_index.shape[1] == 0:
            out = x.new_zeros(n, self.out_channels)
        else:
            if not sorted_by_destination:
                edge_index = sort_edge_index(edge_index, num_nodes=n, sort_by_row=False)  # type: ignore[assignment]
            out = self.propagate(edge_index, x=x, size=(n, n))
        if self.lin_root is not None:
            out = out + self.lin_root(x)
        return out  # type: ignore[no-any-return]

    def message(self, x_j: Tensor) -> Tensor:
        """The neighbour's features (projected inside the aggregation)."""
        return x_j

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels})"
