"""DGMLP's precomputed, node-adaptive feature smoothing (propagation depth decoupled from transformation depth).

Zhang, Sheng, Yin, Jiang, Yang, Cui, "Model Degradation Hinders Deep Graph Neural Networks" (KDD 2022,
https://arxiv.org/abs/2206.04361); reference code PKU-DAIR/DGMLP. Propagation is parameter-free and done once:
``X^(k) = Â^k X`` for ``k = 0..D_p`` with PyG's ``gcn_norm`` operator ``Â = D̃^-1/2 (A + I) D̃^-1/2`` as a
``torch.sparse`` matrix (never a dense power). Each node then combines *its own* propagated features with
weights that depend on how far each step is from the over-smoothed stationary state
``X^(∞) = v vᵀ X / vᵀv`` (``v = sqrt(d̃)``, the limit of ``Â^k``): steps at which the node is still far from
``X^(∞)`` weigh more, and a node stops at its own smoothing step -- the first ``k`` at which its relative
distance ``‖X_i^(k) - X_i^(∞)‖ / ‖X_i^(0) - X_i^(∞)‖`` falls below ``threshold`` -- so highly connected nodes
that smooth quickly stop early while sparse nodes propagate further (the node-adaptive smoothing the DGMLP
authors also use in NAFS, https://arxiv.org/abs/2206.08583).
"""

from __future__ import annotations

import torch
from torch import Tensor

from litmix.functional.lpgnas import graph_operators
from litmix.registry import register
from litmix.validation import check_float, check_int, check_type

__all__ = ["dgmlp_features", "node_adaptive_weights", "propagate_features", "stationary_state"]

_PAPER = "Model Degradation Hinders Deep Graph Neural Networks (https://arxiv.org/abs/2206.04361)"


def _check_graph(owner: str, x: Tensor, edge_index: Tensor) -> int:
    """Validate ``x`` ``[N, F]`` float and ``edge_index`` ``(2, E)`` integer within ``[0, N)``; return ``N``."""
    check_type(owner, "x", x, Tensor)
    check_type(owner, "edge_index", edge_index, Tensor)
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"{owner}(x=Tensor{tuple(x.shape)}): x must be float node features [N, F]")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{owner}(x=...): x holds NaN or inf")
    n = int(x.shape[0])
    if edge_index.dim() != 2 or edge_index.shape[0] != 2 or edge_index.is_floating_point():
        raise ValueError(
            f"{owner}(edge_index=Tensor{tuple(edge_index.shape)}): edge_index must be an integer (2, E) tensor"
        )
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= n):
        raise ValueError(
            f"{owner}(edge_index=...): node ids in [{int(edge_index.min())}, {int(edge_index.max())}] are outside "
            f"[0, {n}) for x with {n} nodes"
        )
    return n


def propagate_features(x: Tensor, edge_index: Tensor, num_steps: int) -> Tensor:
    """``[X, ÂX, Â²X, ..., Â^K X]`` stacked ``[K + 1, N, F]`` with ``Â`` PyG's ``gcn_norm`` (self-loops added).

    Args:
        x: node features ``[N, F]``.
        edge_index: ``(2, E)`` edges (messages ``src -> dst``).
        num_steps: the propagation depth ``K = D_p >= 0``.

    Raises:
        TypeError: for a non-tensor ``x`` / ``edge_index`` or a non-integer ``num_steps``.
        ValueError: for features that are not a finite float ``[N, F]`` tensor, an edge index that is not
            ``(2, E)`` integer or holds ids outside ``[0, N)``, or ``num_steps < 0``.

    Example:
        >>> x = torch.tensor([[1.0], [0.0], [0.0]])
        >>> propagate_features(x, torch.tensor([[0, 1], [1, 0]]), 2)[:, :, 0]
        tensor([[1.0000, 0.0000, 0.0000],
                [0.5000, 0.5000, 0.0000],
                [0.5000, 0.5000, 0.0000]])
    """
    owner = "propagate_features"
    num_steps = check_int(owner, "num_steps", num_steps, low=0)
    n = _check_graph(owner, x, edge_index)
    adj = graph_operators(edge_index.long(), n)["gcn"].to(x.dtype)
    steps = [x]
    for _ in range(num_steps):
        steps.append(adj @ steps[-1])
    return torch.stack(steps)


def stationary_state(x: Tensor, edge_index: Tensor) -> Tensor:
    """The over-smoothed limit ``X^(∞) = v vᵀ X / vᵀv`` of ``Â^k X`` (``v = sqrt(deg + 1)``, one component).

    Example:
        >>> x = torch.tensor([[1.0], [0.0], [0.0]])
        >>> stationary_state(x, torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]))[:, 0]
        tensor([0.2857, 0.3499, 0.2857])
    """
    n = _check_graph("stationary_state", x, edge_index)
    deg = torch.bincount(edge_index[1][edge_index[0] != edge_index[1]].long(), minlength=n).to(x.dtype)
    v = (deg + 1.0).sqrt()
    return v.unsqueeze(1) * (v @ x).unsqueeze(0) / (v @ v)


def node_adaptive_weights(steps: Tensor, stationary: Tensor, threshold: float = 0.0) -> Tensor:
    """Per-node weights ``[K + 1, N]`` of the propagation steps (columns sum to 1).

    ``d_i(k) = ‖X_i^(k) - X_i^(∞)‖ / ‖X_i^(0) - X_i^(∞)‖`` (relative distance to the stationary state);
    node ``i`` stops at ``K_i`` = the first ``k`` with ``d_i(k) < threshold`` (``K`` if none) and weighs the
    steps ``k <= K_i`` by ``softmax_k(d_i(k))`` -- less smoothed steps weigh more; later steps get 0.

    Args:
        steps: ``[K + 1, N, F]`` from :func:`propagate_features`.
        stationary: ``[N, F]`` from :func:`stationary_state`.
        threshold: the smoothing threshold in ``[0, 1]``; 0 never stops early.

    Raises:
        ValueError: for shapes that do not match or a threshold outside ``[0, 1]``.

    Example:
        >>> steps = torch.tensor([[[2.0]], [[1.0]], [[0.1]]])  # K = 2, one node
        >>> node_adaptive_weights(steps, torch.zeros(1, 1), threshold=0.6)[:, 0]
        tensor([0.6225, 0.3775, 0.0000])
    """
    owner = "node_adaptive_weights"
    threshold = check_float(owner, "threshold", threshold, low=0.0, high=1.0)
    if steps.dim() != 3 or tuple(stationary.shape) != tuple(steps.shape[1:]):
        raise ValueError(
            f"{owner}(steps=Tensor{tuple(steps.shape)}, stationary=Tensor{tuple(stationary.shape)}): need steps "
            "[K + 1, N, F] and stationary [N, F]"
        )
    dist = (steps - stationary.unsqueeze(0)).norm(dim=-1)  # [K + 1, N]
    rel = dist / dist[0].clamp_min(torch.finfo(dist.dtype).tiny)
    below = rel < threshold
    below[0] = False  # the raw features always count
    # K_i: first step below the threshold (inclusive) or K
    k = torch.arange(steps.shape[0], device=steps.device).unsqueeze(1)
    first = torch.where(below, k, torch.full_like(k, steps.shape[0] - 1)).min(dim=0).values
    logits = rel.masked_fill(k > first.unsqueeze(0), float("-inf"))
    return torch.softmax(logits, dim=0)


@register("function", "graph", paper=_PAPER, module="litmix.functional.dgmlp")
def dgmlp_features(x: Tensor, edge_index: Tensor, num_steps: int, threshold: float = 0.0) -> Tensor:
    """DGMLP's node-adaptively smoothed features ``[N, F]``: ``sum_k w_ik Â^k X_i`` over ``k = 0..D_p``.

    Paper: Zhang et al., "Model Degradation Hinders Deep Graph Neural Networks" (KDD 2022,
    https://arxiv.org/abs/2206.04361). Parameter-free and computed once (before training), so the propagation
    depth ``D_p = num_steps`` costs nothing per training step and is decoupled from the MLP's depth ``D_t``.
    Weights: :func:`node_adaptive_weights` (each node stops at its own smoothing step).

    Args:
        x: node features ``[N, F]``.
        edge_index: ``(2, E)`` edges.
        num_steps: propagation depth ``D_p >= 0`` (0 returns ``x``).
        threshold: per-node smoothing threshold in ``[0, 1]`` (0: every node uses all ``D_p`` steps).

    Raises:
        TypeError: for a non-tensor ``x`` / ``edge_index`` or a wrongly typed number, naming it.
        ValueError: for features that are not finite float ``[N, F]``, an edge index that is not ``(2, E)``
            integer within ``[0, N)``, ``num_steps < 0`` or ``threshold`` outside ``[0, 1]``.

    Example:
        >>> x = torch.eye(4)
        >>> ring = torch.tensor([[0, 1, 2, 3, 1, 2, 3, 0], [1, 2, 3, 0, 0, 1, 2, 3]])
        >>> out = dgmlp_features(x, ring, num_steps=3)
        >>> tuple(out.shape), torch.allclose(out.sum(1), torch.ones(4))
        ((4, 4), True)
    """
    check_float("dgmlp_features", "threshold", threshold, low=0.0, high=1.0)
    steps = propagate_features(x, edge_index, num_steps)
    weights = node_adaptive_weights(steps, stationary_state(x, edge_index), threshold)
    return (weights.unsqueeze(-1) * steps).sum(0)
