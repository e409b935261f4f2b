"""Binary weights and MST compression of binary layers, on plain tensors.

Paper: "MST-compression: Compressing and Accelerating Binary Neural Networks with Minimum Spanning Tree",
Vo et al., ICCV 2023 (https://arxiv.org/abs/2308.13735).

A binary layer computes ``y_j = alpha_j * <b_j, x> + bias_j`` with sign rows ``b_j`` in ``{-1, +1}^K``. Two
rows ``i``, ``j`` differ in a set ``D`` of ``Hamming(b_i, b_j)`` positions, so
``<b_j, x> = <b_i, x> + 2 * sum_{k in D} b_jk x_k``: output channel ``j`` is channel ``i``'s output plus a
correction that reads only the differing inputs. :func:`mst_compress` builds the complete graph over output
channels with Hamming distances, takes its minimum spanning tree (``scipy.sparse.csgraph``) and roots it at a
centre (minimum depth, which the paper prefers for latency); :func:`mst_linear` / :func:`mst_conv2d` then
compute the channels in tree order and reproduce the binary layer. The tree cost ``K + sum of edge distances``
(root computed densely) replaces ``C_out * K`` weight reads / XNOR-adds. :func:`mst_regularizer` is a loss
that lowers the tree cost during training (our surrogate; the paper's exact loss is not verified).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, minimum_spanning_tree, shortest_path
from torch import Tensor

from litmix.registry import register

__all__ = [
    "MSTTree",
    "binarize",
    "hamming_distances",
    "mst_compress",
    "mst_conv2d",
    "mst_linear",
    "mst_regularizer",
    "sign_ste",
]

PAPER = (
    "MST-compression: Compressing and Accelerating Binary Neural Networks with Minimum Spanning Tree "
    "(https://arxiv.org/abs/2308.13735)"
)


class _SignSTE(torch.autograd.Function):
    """Sign-bit forward (``+0.0 -> +1``, ``-0.0 -> -1``); gradient passed where ``|x| <= 1`` (hardtanh STE).

    ``copysign`` on ones: a few times faster on the CPU than ``torch.where`` with scalars.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.ones_like(x).copysign_(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def _check_float(owner: str, name: str, value: Any, min_dim: int = 1) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{owner}({name}=...): {name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{owner}({name}=...): {name} must be a floating-point tensor, got {value.dtype}")
    if value.dim() < min_dim:
        raise ValueError(f"{owner}({name}=...): {name} must have at least {min_dim} dimensions, got {value.dim()}")
    return value


@register("function", "quantization", paper=PAPER, module="litmix.functional.binary")
def sign_ste(x: Tensor) -> Tensor:
    """``+-1`` signs of ``x`` (its sign bit: ``+0.0 -> +1``) with the clipped straight-through gradient (``|x| <= 1``).

    Raises:
        TypeError: if ``x`` is not a floating-point tensor.

    Example:
        >>> x = torch.tensor([-2.0, -0.5, 0.0, 0.5], requires_grad=True)
        >>> y = sign_ste(x); y.sum().backward()
        >>> y.tolist(), x.grad.tolist()
        ([-1.0, -1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0])
    """
    _check_float("sign_ste", "x", x, min_dim=0)
    out: Tensor = _SignSTE.apply(x)
    return out


@register("function", "quantization", paper=PAPER, module="litmix.functional.binary")
def binarize(weight: Tensor) -> tuple[Tensor, Tensor]:
    """``(signs, alpha)``: the ``+-1`` weight (straight-through) and ``alpha = mean|W|`` per output channel.

    The effective binary weight is ``alpha[:, None, ...] * signs``; ``alpha`` keeps its gradient.

    Raises:
        TypeError: if ``weight`` is not a floating-point tensor.
        ValueError: if ``weight`` has fewer than 2 dimensions ``[C_out, ...]``.

    Example:
        >>> s, a = binarize(torch.tensor([[0.5, -1.5], [-0.2, -0.2]]))
        >>> s.tolist(), a.tolist()
        ([[1.0, -1.0], [-1.0, -1.0]], [1.0, 0.20000000298023224])
    """
    _check_float("binarize", "weight", weight, min_dim=2)
    alpha = weight.abs().flatten(1).mean(1)
    return sign_ste(weight), alpha


class MSTTree(NamedTuple):
    """A rooted minimum spanning tree over the output channels of a binary layer.

    Attributes:
        parent: int64 ``[C_out]``, each channel's parent (``-1`` at the root).
        order: int64 ``[C_out]``, root first, every channel after its parent (breadth first).
        root: the root channel (computed densely).
        cost: ``K + sum_j Hamming(b_j, b_parent(j))``: the weight bits read in tree order.
        dense_cost: ``C_out * K``: the weight bits a dense binary layer reads.
        depth: the number of edges on the longest root-to-leaf path.
    """

    parent: Tensor
    order: Tensor
    root: int
    cost: int
    dense_cost: int
    depth: int


def _signs(owner: str, weight_sign: Any) -> Tensor:
    """``[C_out, K]`` bool (True for ``+1``) from a sign, latent or bool tensor of at least 2 dimensions."""
    if not isinstance(weight_sign, Tensor):
        raise TypeError(f"{owner}(weight_sign=...): weight_sign must be a torch.Tensor")
    if weight_sign.dim() < 2 or weight_sign.shape[0] < 1 or weight_sign[0].numel() < 1:
        raise ValueError(
            f"{owner}(weight_sign=...): weight_sign must be [C_out, C_in, ...] with C_out, C_in >= 1, "
            f"got shape {tuple(weight_sign.shape)}"
        )
    w = weight_sign.detach().flatten(1)
    if w.dtype == torch.bool:
        return w
    return ~torch.signbit(w) if w.is_floating_point() else w >= 0


@register("function", "quantization", paper=PAPER, module="litmix.functional.binary")
def hamming_distances(weight_sign: Tensor) -> Tensor:
    """``[C_out, C_out]`` int64 Hamming distances between the output channels' sign vectors.

    ``weight_sign`` may hold signs, latent weights (a clear sign bit, ``+0.0`` included, counts as ``+1``) or
    bools.

    Raises:
        TypeError: if ``weight_sign`` is not a tensor.
        ValueError: if it is not ``[C_out, C_in, ...]``.

    Example:
        >>> hamming_distances(torch.tensor([[1.0, 1, -1], [1, -1, 1], [1, 1, -1]])).tolist()
        [[0, 2, 0], [2, 0, 2], [0, 2, 0]]
    """
    b = _signs("hamming_distances", weight_sign).to(torch.float64)
    s = 2 * b - 1
    k = b.shape[1]
    return ((k - s @ s.T) / 2).round().to(torch.int64)


@register("function", "quantization", paper=PAPER, module="litmix.functional.binary")
def mst_compress(weight_sign: Tensor) -> MSTTree:
    """Minimum spanning tree of the output channels under Hamming distance, rooted at a centre.

    Uses ``scipy.sparse.csgraph.minimum_spanning_tree`` on distances ``+ 1`` (scipy drops zero-weight edges;
    identical channels must stay connected, and a constant shift leaves the tree unchanged), then roots the tree
    at the channel of smallest eccentricity (minimum depth).

    Args:
        weight_sign: ``[C_out, C_in, ...]`` signs, latent weights (a clear sign bit is ``+1``) or bools.

    Returns:
        An :class:`MSTTree`; ``cost <= dense_cost`` always (a star of dense rows costs ``C_out * K``).

    Raises:
        TypeError: if ``weight_sign`` is not a tensor.
        ValueError: if it is not ``[C_out, C_in, ...]``.

    Example:
        >>> tree = mst_compress(torch.tensor([[1.0, 1, -1, 1], [1, -1, -1, 1], [1, 1, -1, -1]]))
        >>> tree.root, tree.parent.tolist(), tree.cost, tree.dense_cost, tree.depth
        (0, [-1, 0, 0], 6, 12, 1)
    """
    b = _signs("mst_compress", weight_sign)
    c_out, k = b.shape
    if c_out == 1:
        zero = torch.zeros(1, dtype=torch.int64)
        return MSTTree(zero - 1, zero, 0, k, k, 0)
    dist = hamming_distances(b).numpy()
    graph = dist.astype(np.float64) + 1.0
    np.fill_diagonal(graph, 0.0)
    tree = minimum_spanning_tree(csr_matrix(graph))
    hops = shortest_path(tree, directed=False, unweighted=True)
    root = int(np.argmin(hops.max(axis=1)))
    order, pred = breadth_first_order(tree, root, directed=False, return_predecessors=True)
    parent = torch.from_numpy(pred.astype(np.int64))
    parent[root] = -1
    children = torch.arange(c_out)[parent >= 0]
    cost = k + int(dist[children.numpy(), parent[children].numpy()].sum())
    depth = int(hops[root].max())
    return MSTTree(parent, torch.from_numpy(order.astype(np.int64)), root, cost, c_out * k, depth)


def _check_tree(owner: str, tree: Any, c_out: int) -> MSTTree:
    if not isinstance(tree, MSTTree):
        raise TypeError(f"{owner}(tree=...): tree must be an MSTTree from mst_compress, got {type(tree).__name__}")
    if tree.parent.numel() != c_out:
        raise ValueError(f"{owner}(tree=...): tree has {tree.parent.numel()} channels, weight_sign has {c_out}")
    return tree


def _affine(owner: str, y: Tensor, alpha: Tensor | None, bias: Tensor | None, c_out: int, dim: int) -> Tensor:
    shape = [1] * y.dim()
    shape[dim] = c_out
    for name, value in (("alpha", alpha), ("bias", bias)):
        if value is not None and value.numel() != c_out:
            raise ValueError(f"{owner}({name}=...): {name} must hold C_out={c_out} values, got {value.numel()}")
    if alpha is not None:
        y = y * alpha.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


@register("function", "quantization", paper=PAPER, module="litmix.functional.binary")
def mst_linear(
    x: Tensor, weight_sign: Tensor, tree: MSTTree, alpha: Tensor | None = None, bias: Tensor | None = None
) -> Tensor:
    """A binary linear layer computed in tree order: ``y_child = y_parent + 2 * x[:, D] @ b_child[D]``.

    Equals ``F.linear(x, alpha[:, None] * sign, bias)`` up to float summation order (exactly for ``+-1`` or
    integer inputs). The root is a dense dot product; every other channel reads only the ``Hamming`` inputs
    where its signs differ from its parent's, so the adds per sample are ``tree.cost`` (plus one per channel).

    Args:
        x: ``[..., C_in]`` inputs.
        weight_sign: ``[C_out, C_in]`` signs (or latent weights; a clear sign bit is ``+1``).
        tree: :func:`mst_compress` of ``weight_sign``.
        alpha: optional ``[C_out]`` scales.
        bias: optional ``[C_out]`` bias.

    Raises:
        TypeError: for a non-tensor argument or a tree that is not an :class:`MSTTree`.
        ValueError: if ``x``'s last dimension is not ``C_in``, ``weight_sign`` is not 2-D, or ``tree``/
            ``alpha``/``bias`` do not match ``C_out``.

    Example:
        >>> w = torch.tensor([[1.0, 1, -1, 1], [1, -1, -1, 1], [1, 1, -1, -1]])
        >>> x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
        >>> mst_linear(x, w, mst_compress(w)).tolist(), (x @ w.T).tolist()
        ([[4.0, 0.0, -4.0]], [[4.0, 0.0, -4.0]])
    """
    owner = "mst_linear"
    b = _signs(owner, weight_sign)
    if weight_sign.dim() != 2:
        raise ValueError(f"{owner}(weight_sign=...): weight_sign must be [C_out, C_in], got {tuple(weight_sign.shape)}")
    _check_float(owner, "x", x)
    c_out, k = b.shape
    if x.shape[-1] != k:
        raise ValueError(f"{owner}(x=...): x has {x.shape[-1]} features in its last dimension, expected C_in={k}")
    tree = _check_tree(owner, tree, c_out)
    s = (2 * b.to(x.dtype) - 1).to(x.device)
    out = x.new_empty((*x.shape[:-1], c_out))
    order = tree.order.tolist()
    parent = tree.parent.tolist()
    out[..., order[0]] = x @ s[order[0]]
    for j in order[1:]:
        p = parent[j]
        diff = (b[j] != b[p]).nonzero().flatten().to(x.device)
        out[..., j] = out[..., p] + 2 * (x.index_select(-1, diff) @ s[j, diff])
    return _affine(owner, out, alpha, bias, c_out, -1)


@register("function", "quantization", paper=PAPER, module="litmix.functional.binary")
def mst_conv2d(
    x: Tensor,
    weight_sign: Tensor,
    tree: MSTTree,
    alpha: Tensor | None = None,
    bias: Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
) -> Tensor:
    """A binary 2-D convolution computed in tree order (``groups=1``).

    Each child channel is its parent's output plus ``conv2d(x, 2 * b_child * [b_child != b_parent])``: a kernel
    that is non-zero only at the ``Hamming`` differing taps. Torch runs each correction as a (mostly zero) dense
    conv, so the saving is counted (``tree.cost``) rather than realised on a CPU.

    Raises:
        TypeError: for a non-tensor argument or a tree that is not an :class:`MSTTree`.
        ValueError: if ``weight_sign`` is not ``[C_out, C_in, kH, kW]``, ``x`` is not ``[N, C_in, H, W]``, or
            ``tree``/``alpha``/``bias`` do not match ``C_out``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> w = torch.randn(4, 2, 3, 3, generator=g).sign()
        >>> x = torch.randn(1, 2, 5, 5, generator=g).sign()
        >>> torch.equal(mst_conv2d(x, w, mst_compress(w), padding=1), F.conv2d(x, w, padding=1))
        True
    """
    owner = "mst_conv2d"
    b = _signs(owner, weight_sign)
    if weight_sign.dim() != 4:
        raise ValueError(f"{owner}(weight_sign=...): weight_sign must be [C_out, C_in, kH, kW]")
    _check_float(owner, "x", x)
    if x.dim() != 4 or x.shape[1] != weight_sign.shape[1]:
        raise ValueError(f"{owner}(x=...): x of shape {tuple(x.shape)} is not [N, C_in={weight_sign.shape[1]}, H, W]")
    c_out = b.shape[0]
    tree = _check_tree(owner, tree, c_out)
    kernel_shape = weight_sign.shape[1:]
    s = (2 * b.to(x.dtype) - 1).to(x.device)
    order, parent = tree.order.tolist(), tree.parent.tolist()
    root = F.conv2d(x, s[order[0]].view(1, *kernel_shape), None, stride, padding, dilation)
    out = x.new_empty((root.shape[0], c_out, *root.shape[2:]))
    out[:, order[0]] = root[:, 0]
    for j in order[1:]:
        p = parent[j]
        kernel = (2 * s[j] * (b[j] != b[p]).to(x.device, x.dtype)).view(1, *kernel_shape)
        out[:, j] = out[:, p] + F.conv2d(x, kernel, None, stride, padding, dilation)[:, 0]
    return _affine(owner, out, alpha, bias, c_out, 1)


@register("function", "quantization", paper=PAPER, module="litmix.functional.binary")
def mst_regularizer(weight: Tensor, parent: Tensor) -> Tensor:
    """A loss that lowers the tree cost: for every tree edge, the cheaper flip of each differing bit.

    ``sum over edges (j, parent j) and positions k where the signs differ of min(|W_jk|, |W_pk|)``, divided
    by ``mean|W|`` (detached) and by ``C_out * K``. Its gradient pushes the smaller-magnitude latent of every
    differing pair towards zero (and across it, with the optimizer's momentum), so children drift towards their
    parents' signs and the Hamming distances along the tree shrink. Zero when every edge has distance 0.
    This is our surrogate: the paper's own loss is not verified.

    Args:
        weight: latent weight ``[C_out, C_in, ...]``.
        parent: int64 ``[C_out]`` parents (``-1`` at the root), e.g. ``mst_compress(weight).parent``.

    Raises:
        TypeError: if ``weight`` is not a floating-point tensor or ``parent`` not an integer tensor.
        ValueError: if ``parent`` does not hold ``C_out`` entries in ``[-1, C_out)``.

    Example:
        >>> w = torch.tensor([[0.5, -0.1], [0.4, 0.3]], requires_grad=True)
        >>> loss = mst_regularizer(w, mst_compress(w).parent); round(loss.item(), 4)
        0.0769
        >>> loss.backward(); w.grad.abs().sum().item() > 0
        True
    """
    owner = "mst_regularizer"
    _check_float(owner, "weight", weight, min_dim=2)
    if not isinstance(parent, Tensor) or parent.is_floating_point() or parent.dtype == torch.bool:
        raise TypeError(f"{owner}(parent=...): parent must be an integer tensor")
    c_out = weight.shape[0]
    if parent.numel() != c_out or int(parent.min()) < -1 or int(parent.max()) >= c_out:
        raise ValueError(f"{owner}(parent=...): parent must hold {c_out} entries in [-1, {c_out})")
    flat = weight.flatten(1)
    child = (parent >= 0).nonzero().flatten().to(weight.device)
    if child.numel() == 0:
        return flat.sum() * 0.0
    a = flat.index_select(0, child)
    b = flat.index_select(0, parent.to(weight.device).index_select(0, child))
    differ = torch.signbit(a) != torch.signbit(b)
    cheaper = torch.minimum(a.abs(), b.abs()) * differ
    scale = flat.detach().abs().mean().clamp_min(1e-12)
    return cheaper.sum() / (scale * flat.numel())
