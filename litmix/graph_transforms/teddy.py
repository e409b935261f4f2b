"""TEDDY one-shot edge sparsification as a PyG ``BaseTransform``."""

from __future__ import annotations

from typing import Any

from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from litmix.functional.teddy import PAPER, teddy_edge_mask
from litmix.registry import register
from litmix.validation import check_bool, check_float

__all__ = ["TeddyEdgeSparsify"]


@register("utility", "sparsity", paper=PAPER, module="litmix.graph_transforms.teddy")
class TeddyEdgeSparsify(BaseTransform):
    """Remove a fraction of a graph's edges by TEDDY's degree-based scores, in one shot, before training.

    Implements the edge sparsification of Seo et al., "TEDDY: Trimming Edges with Degree-based Discrimination
    strategY" (ICLR 2024, https://arxiv.org/abs/2402.01261): every edge gets the score of
    :func:`~litmix.functional.teddy.teddy_edge_scores` (computed in O(N + E) from degrees only: edges between
    high-degree nodes whose neighbours are high-degree too score lowest) and the ``sparsity`` fraction with the
    lowest scores is removed (both directions of an undirected edge together; self-loops kept). Edge-level
    attributes (``edge_attr``, ``edge_weight``, ...) are filtered with the edges. ``reverse=True`` removes the
    highest-scored edges instead (the ablation control). The paper's one-shot weight sparsification and
    distillation regulariser are not part of this transform.

    Args:
        sparsity: fraction of (non-loop) edges removed, in [0, 1).
        reverse: remove the highest-scored edges first.

    Raises:
        ValueError: for a sparsity outside [0, 1) (in ``__init__``) or a graph without ``edge_index``.
        TypeError: for arguments of the wrong type.

    Example:
        >>> import torch
        >>> from torch_geometric.data import Data
        >>> ei = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])  # path 0-1-2-3
        >>> out = TeddyEdgeSparsify(sparsity=0.34)(Data(edge_index=ei, num_nodes=4))
        >>> out.edge_index.tolist()  # the edge between the two hubs is gone
        [[0, 1, 2, 3], [1, 0, 3, 2]]
    """

    def __init__(self, sparsity: float = 0.3, reverse: bool = False) -> None:
        cls = type(self).__name__
        self.sparsity: float = check_float(cls, "sparsity", sparsity, low=0.0, high=1.0, high_open=True)
        self.reverse: bool = check_bool(cls, "reverse", reverse)

    def forward(self, data: Any) -> Any:
        """Return ``data`` with the removed edges (and their attributes) filtered out."""
        if not isinstance(data, Data) or data.edge_index is None:
            raise ValueError(f"{type(self).__name__}: expects a torch_geometric Data with edge_index")
        num_edges = data.edge_index.shape[1]
        keep = teddy_edge_mask(data.edge_index.cpu(), int(data.num_nodes), self.sparsity, self.reverse)
        keep = keep.to(data.edge_index.device)
        edge_keys = [k for k, v in data.items() if k != "edge_index" and data.is_edge_attr(k) and len(v) == num_edges]
        data.edge_index = data.edge_index[:, keep]
        for key in edge_keys:
            data[key] = data[key][keep]
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sparsity={self.sparsity}, reverse={self.reverse})"
