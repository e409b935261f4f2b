"""Graph infrastructure in pure PyTorch: a k-hop neighbour sampler usable as a PyG ``BaseSampler``, a linear probe."""

from litmix.graph.linear_probe import linear_probe
from litmix.graph.neighbor_sampler import TorchNeighborSampler

__all__ = ["TorchNeighborSampler", "linear_probe"]
