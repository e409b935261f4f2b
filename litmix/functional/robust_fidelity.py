"""Robust fidelity (Fid_alpha) of GNN explanations on plain tensors.

Zheng et al., "Towards Robust Fidelity for Evaluating Explainability of Graph Neural Networks"
(ICLR 2024, https://arxiv.org/abs/2310.01820). Reference: AslanDing/Robust-Fidelity ``tools/fidelity_pyg.py``.

Reading of the definitions used here (resolving the reference's ``alpha2 = 1 - alpha2``):

* ``E_a(S)`` is a random sub-set of the edge set ``S`` in which every edge is drawn independently with
  probability ``a``.
* ``Fid_{a1,+} = f(G)_y - E[f(G - E_{a1}(G_exp))_y]``: remove a small random share ``a1`` (default 0.1)
  of the *explanation* edges, keep everything else.
* ``Fid_{a2,-} = f(G)_y - E[f(G_exp + E_{a2}(G - G_exp))_y]``: keep the whole explanation plus every
  *non-explanation* edge with probability ``a2`` (default 0.9), i.e. remove each non-explanation edge with
  probability ``1 - a2``.
* ``Fid_Delta = Fid_+ - Fid_-``.

Both perturbations therefore stay close to ``G`` (the paper's point: the classic ``Fid_+`` / ``Fid_-``
remove the whole explanation or everything else and leave the training distribution). The reference code
agrees with this reading: its edge-dropping routine takes the *removal* probability, so for ``Fid_-`` it
passes ``1 - alpha2`` and applies it to non-explanation edges only. Edges ``(u, v)`` and ``(v, u)`` share one
draw when ``undirected=True``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from litmix.validation import check_bool, check_choice, check_float, check_int

__all__ = ["check_fidelity_args", "robust_fidelity"]


def _score(logits: Tensor, target: int, mode: str) -> Tensor:
    if mode == "prob":
        return logits.softmax(-1)[..., target]
    return (logits.argmax(-1) == target).to(logits.dtype)


def _edge_groups(edge_index: Tensor, undirected: bool) -> tuple[Tensor, int]:
    if not undirected:
        return torch.arange(edge_index.shape[1]), edge_index.shape[1]
    n = int(edge_index.max()) + 1 if edge_index.numel() else 1
    key = torch.minimum(edge_index[0], edge_index[1]) * n + torch.maximum(edge_index[0], edge_index[1])
    _, inv = torch.unique(key, return_inverse=True)
    return inv, int(inv.max()) + 1 if inv.numel() else 0


def check_fidelity_args(
    owner: str, alpha1: Any, alpha2: Any, num_samples: Any, mode: Any, undirected: Any = True
) -> None:
    """Validate the shared robust-fidelity arguments; errors name ``owner``, the argument and the value.

    Raises:
        TypeError: for arguments of the wrong type (e.g. ``alpha1="0.1"``, ``num_samples=2.5``).
        ValueError: for ``alpha1``/``alpha2`` outside [0, 1] or NaN, ``num_samples < 1`` or an unknown ``mode``.

    Example:
        >>> check_fidelity_args("RobustFidelity", 0.1, 0.9, 50, "prob")
        >>> check_fidelity_args("RobustFidelity", 1.5, 0.9, 50, "prob")
        Traceback (most recent call last):
        ...
        ValueError: RobustFidelity(alpha1=1.5): alpha1 must be a finite number >= 0.0 and <= 1.0
    """
    check_float(owner, "alpha1", alpha1, low=0.0, high=1.0)
    check_float(owner, "alpha2", alpha2, low=0.0, high=1.0)
    check_int(owner, "num_samples", num_samples, low=1)
    check_choice(owner, "mode", mode, ("prob", "acc"))
    check_bool(owner, "undirected", undirected)


@torch.no_grad()
def robust_fidelity(
    model: nn.Module,
    x: Tensor,
    edge_index: Tensor,
    edge_mask: Tensor,
    target: int,
    index: int | None = None,
    alpha1: float = 0.1,
    alpha2: float = 0.9,
    num_samples: int = 50,
    mode: Literal["prob", "acc"] = "prob",
    undirected: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """``(Fid_{alpha1,+}, Fid_{alpha2,-})`` of one explanation, each averaged over ``num_samples`` masks.

    Args:
        model: called as ``model(x, edge_index) -> logits`` (``(N, C)`` node logits or ``(1, C)`` graph logits).
        x: node features.
        edge_index: ``(2, E)`` edges of the graph (e.g. a node's 3-hop subgraph).
        edge_mask: ``(E,)`` bool, True on explanation edges.
        target: class ``y`` (the label, or the model's prediction for model-level fidelity).
        index: node whose prediction is explained (``None``: row 0, for graph classification).
        alpha1: share of explanation edges removed for ``Fid_+``, in [0, 1].
        alpha2: share of non-explanation edges kept for ``Fid_-``, in [0, 1].
        num_samples: random masks per expectation (>= 1).
        mode: ``"prob"`` (probability of ``target``) or ``"acc"`` (indicator of predicting it).
        undirected: draw one Bernoulli per undirected edge.
        generator: random source (default: a fresh generator seeded 0).

    Returns:
        ``(fid_plus, fid_minus)``; ``Fid_Delta = fid_plus - fid_minus``.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for alphas outside [0, 1], ``num_samples < 1``, an unknown ``mode`` or a mask of the
            wrong length.

    Example:
        >>> class Sum(nn.Module):  # predicts class 1 with a probability growing with node 0's in-degree
        ...     def forward(self, x, ei):
        ...         d = (ei[1] == 0).sum().float()
        ...         return torch.stack([torch.zeros(()), d]).unsqueeze(0)
        >>> ei = torch.tensor([[1, 2, 3], [0, 0, 0]])
        >>> mask = torch.tensor([True, True, False])  # the edges the model uses ... all of them, really
        >>> fp, fm = robust_fidelity(Sum(), torch.zeros(4, 1), ei, mask, target=1, alpha1=0.5, undirected=False)
        >>> fp > 0, fm > 0
        (True, True)
    """
    check_fidelity_args("robust_fidelity", alpha1, alpha2, num_samples, mode, undirected)
    if edge_mask.shape != (edge_index.shape[1],):
        raise ValueError(
            f"robust_fidelity: edge_mask has shape {tuple(edge_mask.shape)}, expected ({edge_index.shape[1]},)"
        )
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    exp = edge_mask.bool()
    group, n_groups = _edge_groups(edge_index, undirected)
    was_training = model.training
    model.eval()
    try:

        def f(ei: Tensor) -> float:
            out = model(x, ei)
            row = out[index] if index is not None else out.reshape(-1, out.shape[-1])[0]
            return float(_score(row, target, mode))

        full = f(edge_index)
        plus, minus = 0.0, 0.0
        for _ in range(num_samples):
            u = torch.rand(n_groups, generator=gen)[group]
            keep_plus = ~(exp & (u < alpha1))  # drop explanation edges with probability alpha1
            keep_minus = exp | (u < alpha2)  # keep explanation + non-explanation edges with probability alpha2
            plus += f(edge_index[:, keep_plus])
            minus += f(edge_index[:, keep_minus])
    finally:
        model.train(was_training)
    return full - plus / num_samples, full - minus / num_samples
