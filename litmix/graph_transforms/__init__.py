"""PyG graph transforms (``torch_geometric.transforms.BaseTransform``) of the sparsity family."""

from litmix.graph_transforms.teddy import TeddyEdgeSparsify

__all__ = ["TeddyEdgeSparsify"]
