"""NAS-Bench-201 cell space: encodings, the offline ground-truth file and the network builder.

NAS-Bench-201 (Dong & Yang, "NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture
Search", https://arxiv.org/abs/2001.00326) is a cell space of 5 operations on the 6 edges of a 4-node
DAG, 5**6 = 15,625 cells. Three encodings are used here:

* the **code**: a tuple of 6 integers in ``range(5)``, one per edge in :data:`EDGES` order, each an index
  into :data:`OPS` (the order of NASLib's ``conversions.py`` and of the shared ``nb201_zen.zip`` file);
* the official **arch string** ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (node ``j``'s incoming edges,
  ``op~i`` = operation on edge ``i -> j``, nodes numbered 0..3);
* the network built by :func:`build_nb201_network` (the NB201 macro skeleton of
  SamsungLabs/zero-cost-nas ``foresight/models/nasbench2.py``).

The cell operations (:class:`ReLUConvBN`, :class:`Zero`, :class:`Pooling`, :func:`make_op`) and
:class:`NB201Cell` are public so that supernets can reuse them.
"""

from __future__ import annotations

import itertools
import json
import os
import zipfile
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_int

__all__ = [
    "DATASETS",
    "EDGES",
    "NB201_PAPER",
    "NUM_CELLS",
    "OPS",
    "REDUCTIONS",
    "LightReduction",
    "NB201Cell",
    "NB201Network",
    "NB201Record",
    "NB201Skeleton",
    "Pooling",
    "ReLUConvBN",
    "ResNetBasicBlock",
    "Zero",
    "all_codes",
    "arch_to_code",
    "build_nb201_network",
    "code_to_arch",
    "count_ops",
    "load_nb201",
    "make_op",
    "nb201_param_count",
    "parse_code",
]

OPS: tuple[str, ...] = ("skip_connect", "none", "nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3")
"""Operation names in the order of the integer codes (NASLib ``OP_NAMES``)."""

EDGES: tuple[tuple[int, int], ...] = ((1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4))
"""Edges ``(from, to)`` of the code positions; node 1 is the cell input, node 4 the output."""

NUM_CELLS = len(OPS) ** len(EDGES)
NB201_PAPER = (
    "NAS-Bench-201: Extending the Scope of Reproducible Neural Architecture Search (https://arxiv.org/abs/2001.00326)"
)
DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "ImageNet16-120")

# Position of each code entry in the arch string: edges sorted (stably) by their target node.
_STRING_ORDER: tuple[int, ...] = tuple(sorted(range(len(EDGES)), key=lambda k: EDGES[k][1]))


def _check_code(code: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(c) for c in code)
    if len(out) != len(EDGES) or any(not 0 <= c < len(OPS) for c in out):
        raise ValueError(f"NB201 code must be {len(EDGES)} integers in [0, {len(OPS)}), got {code!r}")
    return out


def code_to_arch(code: Sequence[int]) -> str:
    """Official arch string of an integer code.

    Raises:
        ValueError: if ``code`` is not 6 integers in ``[0, 5)``.

    Example:
        >>> code_to_arch((2, 2, 4, 3, 0, 0))
        '|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|avg_pool_3x3~0|skip_connect~1|skip_connect~2|'
    """
    code = _check_code(code)
    parts = [f"{OPS[code[k]]}~{EDGES[k][0] - 1}" for k in _STRING_ORDER]
    return "|{}|+|{}|{}|+|{}|{}|{}|".format(*parts)


def arch_to_code(arch: str) -> tuple[int, ...]:
    """Integer code of an official arch string (inverse of :func:`code_to_arch`).

    Raises:
        ValueError: for a malformed string or an unknown operation.

    Example:
        >>> arch_to_code(code_to_arch((4, 3, 2, 1, 0, 4)))
        (4, 3, 2, 1, 0, 4)
    """
    nodes = arch.strip().split("+")
    if len(nodes) != 3:
        raise ValueError(f"NB201 arch string must have 3 '+'-separated nodes, got {arch!r}")
    by_edge: dict[tuple[int, int], int] = {}
    for j, node in enumerate(nodes, start=2):
        tokens = [t for t in node.strip().split("|") if t]
        if len(tokens) != j - 1:
            raise ValueError(f"NB201 arch string: node {j - 1} needs {j - 1} inputs in {arch!r}")
        for token in tokens:
            name, _, src = token.partition("~")
            if name not in OPS or not src.isdigit() or int(src) >= j - 1:
                raise ValueError(f"NB201 arch string: bad token {token!r} in {arch!r}; operations are {OPS}")
            by_edge[(int(src) + 1, j)] = OPS.index(name)
    return tuple(by_edge[e] for e in EDGES)


def parse_code(arch: str | Sequence[int]) -> tuple[int, ...]:
    """Code from an arch string, a code tuple or the file's ``"(i0, ..., i5)"`` text.

    Example:
        >>> parse_code("(1, 1, 2, 0, 2, 3)")
        (1, 1, 2, 0, 2, 3)
    """
    if not isinstance(arch, str | Sequence):
        raise TypeError(f"NB201 arch must be an arch string or a code of {len(EDGES)} integers, got {arch!r}")
    if isinstance(arch, str):
        if arch.strip().startswith("|"):
            return arch_to_code(arch)
        return _check_code([int(t) for t in arch.strip("()[] ").split(",")])
    return _check_code(arch)


def all_codes() -> list[tuple[int, ...]]:
    """Every one of the 15,625 codes, in ``itertools.product`` order.

    Example:
        >>> codes = all_codes()
        >>> len(codes), codes[0], codes[-1]
        (15625, (0, 0, 0, 0, 0, 0), (4, 4, 4, 4, 4, 4))
    """
    return list(itertools.product(range(len(OPS)), repeat=len(EDGES)))


def count_ops(arch: str | Sequence[int]) -> dict[str, int]:
    """How often each operation appears in a cell.

    Example:
        >>> count_ops((2, 2, 4, 3, 0, 0))["nor_conv_3x3"]
        2
    """
    code = parse_code(arch)
    return {name: code.count(i) for i, name in enumerate(OPS)}


class NB201Record(NamedTuple):
    """One cell of the ground-truth file: validation accuracy (percent, 200 epochs) and stored Zen-score."""

    val_accuracy: float
    zen: float
    idx: int
    code: tuple[int, ...]


def load_nb201(zip_path: str | os.PathLike[str], dataset: str = "cifar10") -> dict[str, NB201Record]:
    """Read NASLib's ``nb201_zen.zip``: arch string -> :class:`NB201Record` for all 15,625 cells.

    Args:
        zip_path: path of ``nb201_zen.zip`` (JSON files ``zen/benchmark--nasbench201--<dataset>--<start>.json``).
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"ImageNet16-120"``.

    Raises:
        ValueError: for an unknown dataset, or when the file does not hold exactly the 15,625 cells.
    """
    if dataset not in DATASETS:
        raise ValueError(f"load_nb201(dataset={dataset!r}): dataset must be one of {DATASETS}")
    out: dict[str, NB201Record] = {}
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            if f"--{dataset}--" not in name or not name.endswith(".json"):
                continue
            for row in json.loads(zf.read(name)):
                code = parse_code(row["arch"])
                zen = row.get("zen", {})
                out[code_to_arch(code)] = NB201Record(
                    val_accuracy=float(row["val_accuracy"]),
                    zen=float(zen.get("score", float("nan"))) if isinstance(zen, dict) else float(zen),
                    idx=int(row["idx"]),
                    code=code,
                )
    if len(out) != NUM_CELLS:
        raise ValueError(f"load_nb201: expected {NUM_CELLS} cells for {dataset!r} in {zip_path}, found {len(out)}")
    return out


# ----------------------------------------------------------------------------------------------------------
# Operations and network


class ReLUConvBN(nn.Sequential):
    """``ReLU -> Conv2d(bias=False) -> BatchNorm2d``: NB201's ``nor_conv_kxk`` (and the reduction convs)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int = 1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(c_out, affine=affine, track_running_stats=track_running_stats),
        )


class Zero(nn.Module):
    """The ``none`` operation: multiplies by zero (keeps shape and graph connectivity)."""

    def forward(self, x: Tensor) -> Tensor:
        """``x * 0``."""
        return x.mul(0.0)


class Pooling(nn.AvgPool2d):
    """``avg_pool_3x3``: 3x3 average pooling, stride 1, padding 1, ``count_include_pad=False``."""

    def __init__(self) -> None:
        super().__init__(3, stride=1, padding=1, count_include_pad=False)


def make_op(name: str, channels: int, affine: bool = True, track_running_stats: bool = True) -> nn.Module:
    """A shape-preserving NB201 cell operation on ``channels`` channels.

    Raises:
        ValueError: for an unknown operation name.

    Example:
        >>> make_op("nor_conv_1x1", 4)(torch.ones(1, 4, 5, 5)).shape
        torch.Size([1, 4, 5, 5])
    """
    if name == "skip_connect":
        return nn.Identity()
    if name == "none":
        return Zero()
    if name == "nor_conv_3x3":
        return ReLUConvBN(channels, channels, 3, 1, affine, track_running_stats)
    if name == "nor_conv_1x1":
        return ReLUConvBN(channels, channels, 1, 1, affine, track_running_stats)
    if name == "avg_pool_3x3":
        return Pooling()
    raise ValueError(f"make_op(name={name!r}): name must be one of {OPS}")


def cell_forward(edges: nn.ModuleList, x: Tensor) -> Tensor:
    """Evaluate an NB201 cell: node ``j`` (2, 3, 4) sums the ops of its incoming edges; returns node 4.

    ``edges`` holds one module per edge of :data:`EDGES`, in that order.
    """
    nodes: dict[int, Tensor] = {1: x}
    for j in (2, 3, 4):
        nodes[j] = sum(  # type: ignore[assignment]
            (edges[k](nodes[i]) for k, (i, t) in enumerate(EDGES) if t == j),
            start=torch.zeros((), dtype=x.dtype, device=x.device),
        )
    return nodes[4]


class NB201Cell(nn.Module):
    """A NB201 cell: node ``j`` is the sum of the operations on its incoming edges; output = node 4."""

    def __init__(
        self, channels: int, code: Sequence[int], affine: bool = True, track_running_stats: bool = True
    ) -> None:
        super().__init__()
        self.code = _check_code(code)
        self.edges = nn.ModuleList(make_op(OPS[c], channels, affine, track_running_stats) for c in self.code)

    def forward(self, x: Tensor) -> Tensor:
        """Evaluate nodes 2, 3, 4 in order."""
        return cell_forward(self.edges, x)


class ResNetBasicBlock(nn.Module):
    """NB201 reduction: ``ReLUConvBN(3x3, stride 2) -> ReLUConvBN(3x3)`` + shortcut ``AvgPool2d(2) -> Conv1x1``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 2) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0), nn.Conv2d(c_in, c_out, 1, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Residual sum."""
        return self.downsample(x) + self.conv_b(self.conv_a(x))


class LightReduction(nn.Sequential):
    """``AvgPool2d(2) -> Conv1x1(c_in -> c_out) -> BN``: the cheap reduction of the digits recipe (catalogue §0.6).

    Example:
        >>> LightReduction(4, 8)(torch.ones(1, 4, 8, 8)).shape
        torch.Size([1, 8, 4, 4])
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.AvgPool2d(2), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))


REDUCTIONS: tuple[str, ...] = ("resnet", "light")
"""Reduction blocks between the stages: NB201's ResNet basic block, or :class:`LightReduction`."""


class NB201Skeleton(nn.Module):
    """The NB201 macro network around any cell: stem, 3 stages of ``N`` cells at ``C, 2C, 4C`` with reductions, head.

    The one skeleton shared by :class:`NB201Network` (one fixed cell) and
    :class:`~litmix.nas.supernet.NB201Supernet` (weight-sharing cells). Module names (``stem``, ``cells``,
    ``lastact``, ``global_pooling``, ``classifier``) are those of SamsungLabs/zero-cost-nas ``nasbench2.py``.

    Args:
        make_cell: ``make_cell(channels)`` returns one cell of that width.
        C: channels of the first stage (>= 1).
        N: cells per stage (>= 1).
        num_classes: classifier outputs (>= 1).
        in_channels: image channels (>= 1).
        reduction: ``"resnet"`` (:class:`ResNetBasicBlock`, NB201) or ``"light"`` (:class:`LightReduction`).
        owner: class name used in error messages.

    Raises:
        TypeError: for non-integer sizes or a non-string ``reduction``.
        ValueError: for sizes < 1 or an unknown ``reduction``.

    Example:
        >>> net = NB201Skeleton(lambda c: nn.Identity(), C=4, N=1, in_channels=1, reduction="light")
        >>> net(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        make_cell: Callable[[int], nn.Module],
        C: int = 16,
        N: int = 5,
        num_classes: int = 10,
        in_channels: int = 3,
        reduction: str = "resnet",
        owner: str = "NB201Skeleton",
    ) -> None:
        super().__init__()
        for arg, value in (("C", C), ("N", N), ("num_classes", num_classes), ("in_channels", in_channels)):
            check_int(owner, arg, value, low=1)
        check_choice(owner, "reduction", reduction, REDUCTIONS)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        layers: list[nn.Module] = []
        c_prev = C
        for stage in range(3):
            c = C * 2**stage
            if stage > 0:
                layers.append(ResNetBasicBlock(c_prev, c, 2) if reduction == "resnet" else LightReduction(c_prev, c))
            layers.extend(make_cell(c) for _ in range(N))
            c_prev = c
        self.cells = nn.Sequential(*layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=False))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward_pre_gap(self, x: Tensor) -> Tensor:
        """Feature map before global average pooling (after the final BN-ReLU), as Zen-score needs."""
        return self.lastact(self.cells(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.classifier(self.global_pooling(self.forward_pre_gap(x)).flatten(1))


class NB201Network(NB201Skeleton):
    """The NB201 network of one cell: :class:`NB201Skeleton` with :class:`NB201Cell` s of code ``arch``.

    Args:
        arch: arch string or code of the (shared) cell.
        C: channels of the first stage.
        N: cells per stage.
        num_classes: classifier outputs.
        in_channels: image channels.
        cell_bn_affine: ``affine`` of the BNs inside the cells.
        cell_bn_track_running_stats: ``track_running_stats`` of the BNs inside the cells.
        reduction: ``"resnet"`` (NB201) or ``"light"`` (the digits recipe).

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for a malformed ``arch``, sizes < 1 or an unknown ``reduction``.

    Example:
        >>> NB201Network((2, 2, 4, 3, 0, 0), C=4, N=1, in_channels=1, reduction="light")(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        arch: str | Sequence[int],
        C: int = 16,
        N: int = 5,
        num_classes: int = 10,
        in_channels: int = 3,
        cell_bn_affine: bool = True,
        cell_bn_track_running_stats: bool = True,
        reduction: str = "resnet",
    ) -> None:
        code = parse_code(arch)
        check_bool("NB201Network", "cell_bn_affine", cell_bn_affine)
        check_bool("NB201Network", "cell_bn_track_running_stats", cell_bn_track_running_stats)
        super().__init__(
            lambda c: NB201Cell(c, code, cell_bn_affine, cell_bn_track_running_stats),
            C,
            N,
            num_classes,
            in_channels,
            reduction,
            owner="NB201Network",
        )
        self.code = code
        self.arch = code_to_arch(code)


@register("function", "nas", paper=NB201_PAPER, module="litmix.nas")
def build_nb201_network(
    arch: str | Sequence[int],
    C: int = 16,
    N: int = 5,
    num_classes: int = 10,
    in_channels: int = 3,
    cell_bn_affine: bool = True,
    cell_bn_track_running_stats: bool = True,
    reduction: str = "resnet",
) -> NB201Network:
    """Build the NB201 network of a cell (see :class:`NB201Network` for the arguments).

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for a malformed ``arch``, sizes < 1 or an unknown ``reduction``.

    Example:
        >>> net = build_nb201_network("|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_1x1~2|", N=1)
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> sum(p.numel() for p in net.parameters()) == nb201_param_count(net.arch, N=1)
        True
    """
    return NB201Network(
        arch, C, N, num_classes, in_channels, cell_bn_affine, cell_bn_track_running_stats, reduction=reduction
    )


@register("function", "nas", paper=NB201_PAPER, module="litmix.nas")
def nb201_param_count(
    arch: str | Sequence[int],
    C: int = 16,
    N: int = 5,
    num_classes: int = 10,
    in_channels: int = 3,
    cell_bn_affine: bool = True,
    reduction: str = "resnet",
) -> int:
    """Analytic parameter count of :func:`build_nb201_network` (no network is built).

    Raises:
        ValueError: for a malformed ``arch`` or an unknown ``reduction``.

    Example:
        >>> nb201_param_count((1,) * 6) < nb201_param_count((3,) * 6) < nb201_param_count((2,) * 6)
        True
        >>> net = build_nb201_network((2,) * 6, C=4, N=1, in_channels=1, reduction="light")
        >>> count = nb201_param_count((2,) * 6, 4, 1, in_channels=1, reduction="light")
        >>> sum(p.numel() for p in net.parameters()) == count
        True
    """
    check_choice("nb201_param_count", "reduction", reduction, REDUCTIONS)
    ops = count_ops(arch)
    bn = 2 if cell_bn_affine else 0
    total = in_channels * C * 9 + 2 * C  # stem
    c_prev = C
    for stage in range(3):
        c = C * 2**stage
        if stage > 0 and reduction == "resnet":  # reduction block: conv_a, conv_b (+BN each), shortcut 1x1
            total += c_prev * c * 9 + 2 * c + c * c * 9 + 2 * c + c_prev * c
        elif stage > 0:  # light reduction: conv 1x1 + BN
            total += c_prev * c + 2 * c
        per_cell = ops["nor_conv_3x3"] * (9 * c * c + bn * c) + ops["nor_conv_1x1"] * (c * c + bn * c)
        total += N * per_cell
        c_prev = c
    return total + 2 * c_prev + c_prev * num_classes + num_classes
