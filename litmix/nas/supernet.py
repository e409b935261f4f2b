"""Weight-sharing NAS-Bench-201 supernet: every edge holds all candidate operations, one is active at a time.

The single-path one-shot supernet of Guo et al. ("Single Path One-Shot Neural Architecture Search with Uniform
Sampling", https://arxiv.org/abs/1904.00420) over the NB201 cell space (see :mod:`litmix.nas.nb201`). All cells
share one active code (as in NB201, where one cell is repeated); :meth:`NB201Supernet.set_active` selects it and
the forward pass then runs exactly the network :func:`~litmix.nas.nb201.build_nb201_network` would build for
that code, with weights inherited from the supernet (both share :class:`~litmix.nas.nb201.NB201Skeleton`).

Cell BNs default to ``affine=False, track_running_stats=False`` (the usual choice for NB201 supernets): every
forward pass normalises with batch statistics, so an inherited subnet needs no BN recalibration.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch  # noqa: F401  (the doctests use it)
from torch import Tensor, nn

from litmix.nas.nb201 import EDGES, OPS, LightReduction, NB201Skeleton, cell_forward, make_op
from litmix.validation import check_bool

__all__ = ["LightReduction", "MixedEdge", "NB201Supernet", "SupernetCell"]


class MixedEdge(nn.Module):
    """One cell edge holding every candidate operation; only ``self.active`` runs.

    Args:
        channels: channels of the cell.
        ops: candidate operation names (from :data:`~litmix.nas.nb201.OPS`; repeats allowed for toy spaces).
        affine: ``affine`` of the operations' BNs.
        track_running_stats: ``track_running_stats`` of the operations' BNs.

    Raises:
        ValueError: for an unknown operation name.

    Example:
        >>> edge = MixedEdge(4, OPS)
        >>> edge.active = 1  # "none"
        >>> float(edge(torch.ones(1, 4, 3, 3)).abs().sum())
        0.0
    """

    def __init__(
        self, channels: int, ops: Sequence[str] = OPS, affine: bool = False, track_running_stats: bool = False
    ) -> None:
        super().__init__()
        self.candidates = nn.ModuleList(make_op(name, channels, affine, track_running_stats) for name in ops)
        self.active = 0

    def forward(self, x: Tensor) -> Tensor:
        """Run the active candidate."""
        return self.candidates[self.active](x)


class SupernetCell(nn.Module):
    """A NB201 cell whose 6 edges are :class:`MixedEdge` s; node ``j`` sums the active ops on its inputs."""

    def __init__(
        self, channels: int, ops: Sequence[str] = OPS, affine: bool = False, track_running_stats: bool = False
    ) -> None:
        super().__init__()
        self.edges = nn.ModuleList(MixedEdge(channels, ops, affine, track_running_stats) for _ in EDGES)

    def set_active(self, code: Sequence[int]) -> None:
        """Select one op index per edge."""
        for edge, c in zip(self.edges, code, strict=True):
            edge.active = int(c)  # type: ignore[assignment]

    def forward(self, x: Tensor) -> Tensor:
        """Evaluate nodes 2, 3, 4 in order."""
        return cell_forward(self.edges, x)


class NB201Supernet(NB201Skeleton):
    """The NB201 macro network (:class:`~litmix.nas.nb201.NB201Skeleton`) with weight-sharing :class:`SupernetCell` s.

    Args:
        C: channels of the first stage (> 0).
        N: cells per stage (> 0).
        num_classes: classifier outputs.
        in_channels: image channels.
        reduction: ``"resnet"`` (NB201's ResNet basic block) or ``"light"`` (:class:`~litmix.nas.nb201.LightReduction`).
        ops: candidate operation names per edge (default all 5 NB201 ops, in code order).
        cell_bn_affine: ``affine`` of the cell BNs.
        cell_bn_track_running_stats: ``track_running_stats`` of the cell BNs.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for ``C``/``N`` < 1, an unknown reduction or operation.

    Example:
        >>> net = NB201Supernet(C=4, N=1, in_channels=1, reduction="light")
        >>> net.set_active((2, 2, 4, 3, 0, 0))
        >>> net(torch.randn(3, 1, 8, 8)).shape, net.active_code
        (torch.Size([3, 10]), (2, 2, 4, 3, 0, 0))
    """

    def __init__(
        self,
        C: int = 16,
        N: int = 5,
        num_classes: int = 10,
        in_channels: int = 3,
        reduction: Literal["resnet", "light"] = "resnet",
        ops: Sequence[str] = OPS,
        cell_bn_affine: bool = False,
        cell_bn_track_running_stats: bool = False,
    ) -> None:
        owner = "NB201Supernet"
        if isinstance(ops, str) or not isinstance(ops, Sequence):
            raise TypeError(f"{owner}(ops={ops!r}): ops must be a list of operation names from {OPS}")
        unknown = [o for o in ops if o not in OPS]
        if unknown or len(ops) == 0:
            raise ValueError(f"{owner}(ops={list(ops)!r}): unknown operations {unknown}; allowed {OPS}")
        check_bool(owner, "cell_bn_affine", cell_bn_affine)
        check_bool(owner, "cell_bn_track_running_stats", cell_bn_track_running_stats)
        super().__init__(
            lambda c: SupernetCell(c, ops, cell_bn_affine, cell_bn_track_running_stats),
            C,
            N,
            num_classes,
            in_channels,
            reduction,
            owner=owner,
        )
        self.ops: tuple[str, ...] = tuple(ops)
        self._code: tuple[int, ...] = (0,) * len(EDGES)
        self.set_active(self._code)

    @property
    def num_ops(self) -> int:
        """Candidates per edge."""
        return len(self.ops)

    @property
    def active_code(self) -> tuple[int, ...]:
        """The code selected by the last :meth:`set_active`."""
        return self._code

    def supernet_cells(self) -> list[SupernetCell]:
        """Every :class:`SupernetCell`, in forward order."""
        return [m for m in self.cells if isinstance(m, SupernetCell)]

    def set_active(self, code: Sequence[int]) -> None:
        """Activate one candidate per edge in every cell.

        Raises:
            ValueError: for a code of the wrong length or out-of-range indices.
        """
        code = tuple(int(c) for c in code)
        if len(code) != len(EDGES) or any(not 0 <= c < self.num_ops for c in code):
            raise ValueError(f"set_active(code={code}): need {len(EDGES)} indices in [0, {self.num_ops})")
        for cell in self.supernet_cells():
            cell.set_active(code)
        self._code = code

    def edge_parameters(self, edge: int, op: int | None = None) -> list[nn.Parameter]:
        """Parameters of edge ``edge`` (all candidates, or candidate ``op``) across every cell."""
        params: list[nn.Parameter] = []
        for cell in self.supernet_cells():
            mixed = cell.edges[edge]
            assert isinstance(mixed, MixedEdge)
            mods = mixed.candidates if op is None else [mixed.candidates[op]]
            for m in mods:
                params.extend(m.parameters())
        return params
