"""FairGNN's pure-tensor pieces: the covariance fairness penalty, group-fairness gaps and a planted-bias SBM graph.

Dai & Wang, "Say No to the Discrimination: Learning Fair Graph Neural Networks with Limited Sensitive Attribute
Information" (WSDM 2021, https://arxiv.org/abs/2009.01454); reference code EnyanDai/FairGNN. The covariance
constraint is ``L_R = |Cov(ŝ, ŷ)| = |E[(ŝ - E ŝ)(ŷ - E ŷ)]|`` with ``ŝ`` the (estimated) sensitive attribute and
``ŷ`` the predicted probability of the positive class; the paper's fairness metrics are the demographic-parity
gap ``ΔSP = |P(ŷ = 1 | s = 0) - P(ŷ = 1 | s = 1)|`` and the equal-opportunity gap
``ΔEO = |P(ŷ = 1 | y = 1, s = 0) - P(ŷ = 1 | y = 1, s = 1)|``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Data

from litmix.validation import check_float, check_int, check_type

__all__ = ["covariance_penalty", "demographic_parity_gap", "equal_opportunity_gap", "fair_sbm_graph"]


def _check_vectors(owner: str, **tensors: Tensor) -> int:
    """Every tensor is a 1-D tensor of the same length; return it."""
    n = -1
    for name, t in tensors.items():
        check_type(owner, name, t, Tensor)
        if t.dim() != 1:
            raise ValueError(f"{owner}({name}=Tensor{tuple(t.shape)}): {name} must be a vector [N]")
        if n >= 0 and t.shape[0] != n:
            raise ValueError(f"{owner}({name}=Tensor{tuple(t.shape)}): {name} must have the same length {n}")
        n = int(t.shape[0])
    return n


def covariance_penalty(y_score: Tensor, s_score: Tensor) -> Tensor:
    """FairGNN's ``|Cov(ŷ, ŝ)|``; for ``y_score`` ``[N, C]`` the mean over classes of ``|Cov(ŷ_c, ŝ)|``.

    With two-class probabilities ``[N, 2]`` both columns give the same ``|Cov|``, so this equals the paper's
    binary ``|Cov(sigmoid(logit), ŝ)|``. Differentiable in both arguments (FairGNN detaches ``ŝ``).

    Args:
        y_score: predicted probabilities ``[N]`` (positive class) or ``[N, C]``.
        s_score: sensitive attribute or its estimated probability ``[N]``.

    Raises:
        TypeError: for a non-tensor argument.
        ValueError: for shapes other than ``[N]`` / ``[N, C]`` and ``[N]``, or ``N < 1``.

    Example:
        >>> s = torch.tensor([0.0, 0.0, 1.0, 1.0])
        >>> covariance_penalty(torch.tensor([0.1, 0.3, 0.7, 0.9]), s)
        tensor(0.1500)
        >>> covariance_penalty(torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.7, 0.3], [0.1, 0.9]]), s)
        tensor(0.0500)
    """
    owner = "covariance_penalty"
    check_type(owner, "y_score", y_score, Tensor)
    check_type(owner, "s_score", s_score, Tensor)
    if s_score.dim() != 1 or s_score.shape[0] < 1:
        raise ValueError(f"{owner}(s_score=Tensor{tuple(s_score.shape)}): s_score must be a non-empty vector [N]")
    if y_score.dim() not in (1, 2) or y_score.shape[0] != s_score.shape[0]:
        raise ValueError(
            f"{owner}(y_score=Tensor{tuple(y_score.shape)}): y_score must be [N] or [N, C] with N = {s_score.shape[0]}"
        )
    y = y_score if y_score.dim() == 2 else y_score.unsqueeze(1)
    s = s_score.to(y.dtype).unsqueeze(1)
    cov = ((s - s.mean()) * (y - y.mean(0, keepdim=True))).mean(0)
    return cov.abs().mean()


def _gap(hit: Tensor, group0: Tensor, group1: Tensor) -> Tensor:
    """``|mean(hit | group0) - mean(hit | group1)|``; 0 when either group is empty (nothing to compare)."""
    n0, n1 = group0.sum(), group1.sum()
    gap = (hit & group0).sum() / n0.clamp_min(1) - (hit & group1).sum() / n1.clamp_min(1)
    return torch.where((n0 > 0) & (n1 > 0), gap.abs(), torch.zeros_like(gap))


def demographic_parity_gap(pred: Tensor, sensitive: Tensor, positive: int = 1) -> Tensor:
    """``ΔSP = |P(ŷ = positive | s = 0) - P(ŷ = positive | s = 1)|`` (statistical parity), in ``[0, 1]``.

    0 when one group is empty.

    Args:
        pred: predicted labels ``[N]`` (integers).
        sensitive: binary sensitive attribute ``[N]`` (bool or 0/1).
        positive: the favourable class.

    Raises:
        TypeError: for a non-tensor ``pred`` / ``sensitive`` or a non-integer ``positive``.
        ValueError: for vectors of different lengths or not 1-D.

    Example:
        >>> demographic_parity_gap(torch.tensor([1, 1, 0, 1]), torch.tensor([0, 0, 1, 1]))
        tensor(0.5000)
    """
    owner = "demographic_parity_gap"
    _check_vectors(owner, pred=pred, sensitive=sensitive)
    positive = check_int(owner, "positive", positive)
    hit, s = pred == positive, sensitive.bool()
    return _gap(hit, ~s, s)


def equal_opportunity_gap(pred: Tensor, target: Tensor, sensitive: Tensor, positive: int = 1) -> Tensor:
    """``ΔEO = |P(ŷ = positive | y = positive, s = 0) - P(ŷ = positive | y = positive, s = 1)|`` (TPR gap).

    0 when one group has no ``positive`` target.

    Args:
        pred: predicted labels ``[N]``.
        target: true labels ``[N]``.
        sensitive: binary sensitive attribute ``[N]`` (bool or 0/1).
        positive: the favourable class.

    Raises:
        TypeError: for a non-tensor argument or a non-integer ``positive``.
        ValueError: for vectors of different lengths or not 1-D.

    Example:
        >>> pred, target = torch.tensor([1, 0, 1, 1, 0]), torch.tensor([1, 1, 1, 1, 0])
        >>> equal_opportunity_gap(pred, target, torch.tensor([0, 0, 1, 1, 1]))
        tensor(0.5000)
    """
    owner = "equal_opportunity_gap"
    _check_vectors(owner, pred=pred, target=target, sensitive=sensitive)
    positive = check_int(owner, "positive", positive)
    hit, s, pos = pred == positive, sensitive.bool(), target == positive
    return _gap(hit, pos & ~s, pos & s)


def fair_sbm_graph(
    num_nodes: int = 1000,
    num_features: int = 16,
    label_bias: float = 0.1,
    feature_noise: float = 1.0,
    sensitive_signal: float = 2.0,
    p_in: float = 0.02,
    p_out: float = 0.002,
    known_sensitive: float = 0.1,
    seed: int = 0,
) -> Data:
    """A seeded stochastic block model with a binary label ``y`` and a planted binary sensitive attribute ``s``.

    ``s ~ Bernoulli(1/2)``; ``y ~ Bernoulli(1/2 + label_bias)`` when ``s = 1`` and ``Bernoulli(1/2 - label_bias)``
    otherwise (labels correlated with ``s``). Blocks are the four ``(y, s)`` groups; an edge joins two nodes with
    probability ``p_in`` when they share ``s`` and ``p_in / 2`` when they share only ``y``, else ``p_out`` (edges
    are homophilous in ``s``). Features: ``x = (2y - 1) u + sensitive_signal (2s - 1) v + feature_noise ε`` with
    fixed random unit directions ``u``, ``v``. Masks: 50 % train, 25 % validation, 25 % test; ``sens_mask`` marks
    the ``known_sensitive`` fraction of nodes whose ``s`` FairGNN may read (the rest must be estimated).

    Args:
        num_nodes: ``N >= 8``.
        num_features: feature width ``>= 2``.
        label_bias: ``|P(y = 1 | s = 1) - 1/2|`` in ``[0, 0.5]``.
        feature_noise: standard deviation of the feature noise, ``>= 0``.
        sensitive_signal: weight of ``s`` in the features, ``>= 0``.
        p_in: edge probability within an ``s`` group (``[0, 1]``).
        p_out: edge probability across groups (``[0, 1]``).
        known_sensitive: fraction of nodes with a known ``s``, in ``(0, 1]``.
        seed: generator seed, ``>= 0``.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value outside the ranges above, naming it.

    Example:
        >>> g = fair_sbm_graph(num_nodes=64, seed=0)
        >>> tuple(g.x.shape), int(g.sens_mask.sum()), g.sensitive.dtype, bool(g.train_mask.any())
        ((64, 16), 6, torch.int64, True)
    """
    owner = "fair_sbm_graph"
    n = check_int(owner, "num_nodes", num_nodes, low=8)
    f = check_int(owner, "num_features", num_features, low=2)
    bias = check_float(owner, "label_bias", label_bias, low=0.0, high=0.5)
    noise = check_float(owner, "feature_noise", feature_noise, low=0.0)
    signal = check_float(owner, "sensitive_signal", sensitive_signal, low=0.0)
    p_in = check_float(owner, "p_in", p_in, low=0.0, high=1.0)
    p_out = check_float(owner, "p_out", p_out, low=0.0, high=1.0)
    known = check_float(owner, "known_sensitive", known_sensitive, low=0.0, high=1.0, low_open=True)
    seed = check_int(owner, "seed", seed, low=0)
    g = torch.Generator().manual_seed(seed)
    s = (torch.rand(n, generator=g) < 0.5).long()
    y = (torch.rand(n, generator=g) < 0.5 + bias * (2 * s - 1).float()).long()
    same_s, same_y = s[:, None] == s[None, :], y[:, None] == y[None, :]
    prob = torch.full((n, n), p_out)
    prob[same_y] = p_in / 2
    prob[same_s] = p_in
    adj = torch.triu(torch.rand(n, n, generator=g) < prob, diagonal=1)
    edge_index = (adj | adj.T).nonzero().T.contiguous()
    directions = torch.nn.functional.normalize(torch.randn(2, f, generator=g), dim=1)
    x = (2 * y - 1).float()[:, None] * directions[0] + signal * (2 * s - 1).float()[:, None] * directions[1]
    x = x + noise * torch.randn(n, f, generator=g)
    order = torch.randperm(n, generator=g)
    split = torch.zeros(n, dtype=torch.long)
    split[order[n // 2 : 3 * n // 4]] = 1
    split[order[3 * n // 4 :]] = 2
    sens_mask = torch.zeros(n, dtype=torch.bool)
    sens_mask[torch.randperm(n, generator=g)[: max(1, int(known * n))]] = True
    return Data(
        x=x,
        y=y,
        edge_index=edge_index,
        sensitive=s,
        sens_mask=sens_mask,
        train_mask=split == 0,
        val_mask=split == 1,
        test_mask=split == 2,
    )
