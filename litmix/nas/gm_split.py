"""GM-NAS: split a weight-sharing supernet into sub-supernets by gradient matching."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from litmix.data import split_batch
from litmix.functional.nas_sampling import gradient_match_distance, make_generator, mincut_partition, sample_path
from litmix.nas.nb201 import EDGES
from litmix.nas.supernet import NB201Supernet

__all__ = ["EdgeSplit", "GradientMatchingSplitter"]


@dataclass(frozen=True)
class EdgeSplit:
    """The best partition of one edge's candidate ops.

    Attributes:
        edge: edge index (position in :data:`~litmix.nas.nb201.EDGES`).
        groups: op indices per group.
        cut: min-cut score (summed cross-group gradient similarity; lower = cleaner split).
        distance: ``[O, O]`` gradient distances between the edge's ops (rows/cols follow ``ops``).
        ops: the candidate op indices the distances refer to.
    """

    edge: int
    groups: list[list[int]]
    cut: float
    distance: Tensor
    ops: list[int]


class GradientMatchingSplitter:
    """Few-shot NAS split by gradient matching (Hu et al., https://arxiv.org/abs/2203.15207).

    For an edge ``e`` and each allowed op ``o``: activate ``o`` on ``e`` (the other edges follow a random
    path, shared by all ``o`` within a repeat), back-propagate a batch and collect the gradient of the
    **shared** weights (every parameter except edge ``e``'s candidates), averaged over ``repeat`` batches.
    Ops are compared by ``d(o, o') = 1 - cos(g_o, g_o')`` (or MSE) and partitioned by exhaustive min-cut
    (:func:`~litmix.functional.nas_sampling.mincut_partition`). :meth:`split` chooses the edge with the lowest
    cut score and returns sub-supernets (deep copies inheriting the weights) restricted to each group.

    Works with :class:`~litmix.nas.supernet.NB201Supernet` (or any module with ``set_active(code)``,
    ``edge_parameters(edge)`` and ``num_ops``).

    Args:
        num_groups: groups per split (2 or 3 in GM-NAS).
        repeat: batches averaged per op (GM-NAS uses 100).
        distance: ``"cos"`` or ``"mse"``.
        balanced: only near-equal group sizes (GM-NAS).
        seed: seed of the random paths on the other edges.

    Raises:
        ValueError: for ``num_groups < 2``, ``repeat < 1`` or an unknown distance.

    Example:
        >>> net = NB201Supernet(C=4, N=1, in_channels=1, reduction="light")
        >>> batches = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))]
        >>> s = GradientMatchingSplitter(repeat=1).edge_split(net, batches, edge=0)
        >>> sorted(i for g in s.groups for i in g), len(s.groups)
        ([0, 1, 2, 3, 4], 2)
    """

    def __init__(
        self,
        num_groups: int = 2,
        repeat: int = 8,
        distance: Literal["cos", "mse"] = "cos",
        balanced: bool = True,
        seed: int = 0,
    ) -> None:
        if num_groups < 2:
            raise ValueError(f"GradientMatchingSplitter(num_groups={num_groups}): num_groups must be >= 2")
        if repeat < 1:
            raise ValueError(f"GradientMatchingSplitter(repeat={repeat}): repeat must be >= 1")
        if distance not in ("cos", "mse"):
            raise ValueError(f"GradientMatchingSplitter(distance={distance!r}): distance must be 'cos' or 'mse'")
        self.num_groups, self.repeat, self.distance = num_groups, repeat, distance
        self.balanced, self.seed = balanced, seed

    def edge_gradients(
        self,
        net: nn.Module,
        batches: Iterable[Any],
        edge: int,
        allowed: Sequence[Sequence[int]] | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
    ) -> tuple[list[int], Tensor]:
        """Mean shared-weight gradient ``[len(ops), P]`` for each allowed op of ``edge``.

        Raises:
            ValueError: when ``batches`` is empty.
        """
        num_ops = int(net.num_ops)  # type: ignore[arg-type]
        allowed = allowed or [list(range(num_ops))] * len(EDGES)
        ops = list(allowed[edge])
        excluded = {id(p) for p in net.edge_parameters(edge)}  # type: ignore[operator]
        shared = [p for p in net.parameters() if p.requires_grad and id(p) not in excluded]
        mask = torch.zeros(len(EDGES), num_ops, dtype=torch.float64)
        for e, row in enumerate(allowed):
            mask[e, list(row)] = 1.0
        batch_list = list(batches)
        if not batch_list:
            raise ValueError("GradientMatchingSplitter: batches is empty")
        sums = torch.zeros(len(ops), sum(p.numel() for p in shared), dtype=torch.float64)
        was_training = net.training
        net.train()
        for r in range(self.repeat):
            x, y, _ = split_batch(batch_list[r % len(batch_list)])
            path = list(sample_path(mask, make_generator(self.seed, r, edge)))
            for i, op in enumerate(ops):
                path[edge] = op
                net.set_active(path)  # type: ignore[operator]
                assert y is not None, "GradientMatchingSplitter needs (x, y) batches"
                grads = torch.autograd.grad(loss_fn(net(x), y), shared, allow_unused=True)
                flat = [
                    (g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, shared, strict=False)
                ]
                sums[i] += torch.cat(flat).double()
        net.train(was_training)
        return ops, (sums / self.repeat).float()

    def edge_split(
        self,
        net: nn.Module,
        batches: Iterable[Any],
        edge: int,
        allowed: Sequence[Sequence[int]] | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
    ) -> EdgeSplit:
        """Gradient distances and the min-cut partition of ``edge``'s allowed ops."""
        ops, grads = self.edge_gradients(net, batches, edge, allowed, loss_fn)
        dist = gradient_match_distance(grads, self.distance)
        groups, cut = mincut_partition(dist, min(self.num_groups, len(ops)), self.balanced)
        return EdgeSplit(edge, [[ops[i] for i in g] for g in groups], cut, dist, ops)

    def best_split(
        self,
        net: nn.Module,
        batches: Iterable[Any],
        allowed: Sequence[Sequence[int]] | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
    ) -> EdgeSplit:
        """The edge (with at least ``num_groups`` allowed ops) whose partition has the lowest cut.

        Raises:
            ValueError: when no edge has enough ops left to split.
        """
        batch_list = list(batches)
        num_ops = int(net.num_ops)  # type: ignore[arg-type]
        allowed = allowed or [list(range(num_ops))] * len(EDGES)
        splits = [
            self.edge_split(net, batch_list, e, allowed, loss_fn)
            for e in range(len(EDGES))
            if len(allowed[e]) >= self.num_groups
        ]
        if not splits:
            raise ValueError(f"GradientMatchingSplitter: no edge has {self.num_groups} ops left to split")
        return min(splits, key=lambda s: s.cut)

    def split(
        self,
        net: NB201Supernet,
        batches: Iterable[Any],
        allowed: Sequence[Sequence[int]] | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
    ) -> list[tuple[NB201Supernet, list[list[int]]]]:
        """Split on the best edge: one ``(sub-supernet, allowed_ops)`` per group; weights are inherited copies.

        The ``allowed_ops`` lists can be passed to :class:`litmix.plugins.NB201SupernetModule` to train each
        sub-supernet (load the copy's state_dict into the module's ``net``).
        """
        allowed = [list(r) for r in (allowed or [list(range(net.num_ops))] * len(EDGES))]
        best = self.best_split(net, batches, allowed, loss_fn)
        children = []
        for group in best.groups:
            child_allowed = [list(r) for r in allowed]
            child_allowed[best.edge] = list(group)
            children.append((copy.deepcopy(net), child_allowed))
        return children
