"""Task-agnostic value of a seller's graph for a buyer: structural disparity and featural relevance / diversity.

Falahati & Mohammadi Amiri, "Disentangled Structural and Featural Representation for Task-Agnostic Graph
Valuation" (arXiv 2408.12659, https://arxiv.org/abs/2408.12659). No reference code is public; this module follows
the paper's description (read at abstract / summary level; the exact formulas below are our reading and are
marked as such):

* **Blind message passing**: buyer and seller agree on a *proxy graph* (an Erdős–Rényi graph drawn from a shared
  seed; only sizes and densities are exchanged). Each side matches its own graph to the proxy
  (:func:`scipy.optimize.quadratic_assignment`, FAQ), which gives both graphs one shared node order without either
  side seeing the other's data, and propagates its features over its own graph (``Â^hops X``, ``Â`` the
  symmetrically normalised adjacency with self-loops).
* **Structural disparity**: the graph Wasserstein distance of the aligned graphs (GOT, Maretic et al., NeurIPS
  2019): the 2-Wasserstein distance between the graph-signal distributions ``N(0, L_b^+)`` and ``N(0, L_s^+)``
  (``L^+`` the pseudo-inverse of the combinatorial Laplacian); reported also as a similarity in [0, 1],
  ``1 - W / (sqrt(tr L_b^+) + sqrt(tr L_s^+))``.
* **Featural relevance and diversity** (covariance statistics, as in Amiri et al.'s task-agnostic data
  valuation): with ``lambda_i`` the buyer's variances of the message-passed features along its top principal
  directions ``u_i`` and ``mu_i = u_i^T C_s u_i`` the seller's variances along the same directions, relevance
  ``R = geomean_i min(lambda_i, mu_i) / max(lambda_i, mu_i)`` and diversity
  ``D = geomean_i |lambda_i - mu_i| / max(lambda_i, mu_i)``; both in [0, 1]. Only the buyer's directions and
  the seller's projected variances need to be exchanged.
* **Value** (our combination; the paper combines the three measures into one score): ``((1 - w) R + w D)`` times
  the structural similarity, ``w = diversity_weight`` (default 0: relevance only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from litmix.registry import register
from litmix.validation import check_float, check_int

__all__ = [
    "GraphValue",
    "blind_alignment",
    "featural_relevance_diversity",
    "graph_dataset_value",
    "graph_wasserstein",
    "message_passed_features",
]


@dataclass(frozen=True)
class GraphValue:
    """Output of :func:`graph_dataset_value`.

    Attributes:
        value: combined value (higher: the seller's graph is worth more to the buyer).
        relevance: featural relevance in [0, 1].
        diversity: featural diversity in [0, 1].
        structural_disparity: graph Wasserstein distance of the aligned graphs (>= 0).
        structural_similarity: ``1 - W / (sqrt(tr L_b^+) + sqrt(tr L_s^+))`` in [0, 1].
    """

    value: float
    relevance: float
    diversity: float
    structural_disparity: float
    structural_similarity: float


def _parts(owner: str, name: str, graph: Any) -> tuple[Tensor, Tensor]:
    """``(x, edge_index)`` of a PyG ``Data`` or a mapping, checked before any compute."""
    if isinstance(graph, Mapping):
        x, ei = graph.get("x"), graph.get("edge_index")
    else:
        x, ei = getattr(graph, "x", None), getattr(graph, "edge_index", None)
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        got = type(x).__name__ if not isinstance(x, Tensor) else f"shape {tuple(x.shape)}"
        raise ValueError(f"{owner}({name}=...): the graph needs node features x as an (n >= 2, f) tensor, got {got}")
    if not bool(torch.isfinite(x.float()).all()):
        raise ValueError(f"{owner}({name}=...): node features hold NaN or infinite values")
    if not isinstance(ei, Tensor) or ei.dim() != 2 or ei.shape[0] != 2 or ei.is_floating_point():
        got = type(ei).__name__ if not isinstance(ei, Tensor) else f"{ei.dtype} of shape {tuple(ei.shape)}"
        raise ValueError(f"{owner}({name}=...): edge_index must be an integer (2, E) tensor, got {got}")
    n = x.shape[0]
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= n):
        raise ValueError(
            f"{owner}({name}=...): edge_index holds node ids in [{int(ei.min())}, {int(ei.max())}], outside [0, {n})"
        )
    return x, ei


def _dense_adjacency(edge_index: Tensor, n: int, size: int | None = None) -> Tensor:
    m = size or n
    adj = torch.zeros(m, m, dtype=torch.float64)
    adj[edge_index[0], edge_index[1]] = 1.0
    adj[edge_index[1], edge_index[0]] = 1.0
    adj.fill_diagonal_(0.0)
    return adj


def message_passed_features(x: Tensor, edge_index: Tensor, hops: int = 2) -> Tensor:
    """``Â^hops X`` with ``Â = D^-1/2 (A + I) D^-1/2`` of the undirected graph (float64).

    Example:
        >>> ei = torch.tensor([[0, 1], [1, 2]])
        >>> message_passed_features(torch.eye(3), ei, hops=1).sum(1).round(decimals=3).tolist()
        [0.908, 1.15, 0.908]
    """
    n = x.shape[0]
    adj = _dense_adjacency(edge_index, n) + torch.eye(n, dtype=torch.float64)
    d = adj.sum(1).rsqrt()
    a_hat = (d[:, None] * adj * d[None]).to_sparse()
    h = x.double()
    for _ in range(hops):
        h = torch.sparse.mm(a_hat, h)
    return h


def blind_alignment(adj: Tensor, proxy: Tensor, iters: int = 30, seed: int = 0) -> Tensor:
    """Node order that matches ``adj`` to the shared ``proxy`` graph (FAQ graph matching, maximising overlap).

    ``adj`` (``n x n``, ``n <= N``) is padded with isolated nodes to the proxy's ``N``; the result ``perm`` has
    ``N`` entries and ``adj_padded[perm][:, perm]`` is aligned with ``proxy``.

    Example:
        >>> proxy = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.float64)
        >>> mine = torch.tensor([[0, 1, 1], [1, 0, 0], [1, 0, 0]], dtype=torch.float64)  # node 0 is the hub
        >>> perm = blind_alignment(mine, proxy)
        >>> int(perm[1])  # the proxy's hub (node 1) is matched to my hub (node 0)
        0
    """
    from scipy.optimize import quadratic_assignment

    big = proxy.shape[0]
    padded = torch.zeros(big, big, dtype=torch.float64)
    padded[: adj.shape[0], : adj.shape[0]] = adj
    res = quadratic_assignment(
        proxy.numpy(),
        padded.numpy(),
        method="faq",
        options={"maximize": True, "maxiter": iters, "rng": np.random.default_rng(seed)},
    )
    return torch.as_tensor(res.col_ind, dtype=torch.long)


def _psd_sqrt(m: Tensor) -> Tensor:
    evals, evecs = torch.linalg.eigh((m + m.T) / 2)
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def _laplacian_pinv(adj: Tensor) -> Tensor:
    lap = torch.diag(adj.sum(1)) - adj
    evals, evecs = torch.linalg.eigh(lap)
    tol = 1e-9 * max(float(evals.abs().max()), 1.0)
    inv = torch.where(evals > tol, 1.0 / evals.clamp_min(tol), torch.zeros_like(evals))
    return (evecs * inv) @ evecs.T


def graph_wasserstein(adj_a: Tensor, adj_b: Tensor) -> tuple[float, float]:
    """GOT 2-Wasserstein distance between ``N(0, L_a^+)`` and ``N(0, L_b^+)`` of two aligned graphs.

    Returns:
        ``(W, similarity)`` with ``similarity = 1 - W / (sqrt(tr L_a^+) + sqrt(tr L_b^+))`` in [0, 1].

    Example:
        >>> path = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]], dtype=torch.float64)
        >>> graph_wasserstein(path, path)[0] < 1e-6
        True
    """
    s_a, s_b = _laplacian_pinv(adj_a.double()), _laplacian_pinv(adj_b.double())
    root = _psd_sqrt(s_a)
    cross = torch.linalg.eigvalsh(root @ s_b @ root).clamp_min(0).sqrt().sum()
    tr_a, tr_b = float(torch.trace(s_a)), float(torch.trace(s_b))
    w = math.sqrt(max(tr_a + tr_b - 2 * float(cross), 0.0))
    scale = math.sqrt(max(tr_a, 0.0)) + math.sqrt(max(tr_b, 0.0))
    return w, (1.0 - w / scale) if scale > 0 else 1.0


def featural_relevance_diversity(h_buyer: Tensor, h_seller: Tensor, components: int = 16) -> tuple[float, float]:
    """Relevance and diversity of the seller's features along the buyer's top principal directions.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> h = torch.randn(200, 5, generator=g) * torch.tensor([3.0, 2.0, 1.0, 0.5, 0.2])
        >>> same = featural_relevance_diversity(h, h[torch.randperm(200, generator=g)], components=5)
        >>> other = featural_relevance_diversity(h, torch.randn(200, 5, generator=g), components=5)
        >>> same[0] > 0.99, other[0] < 0.6, other[1] > same[1]
        (True, True, True)
    """
    hb = h_buyer.double() - h_buyer.double().mean(0)
    hs = h_seller.double() - h_seller.double().mean(0)
    _, s, vh = torch.linalg.svd(hb, full_matrices=False)
    k = min(components, int((s > 1e-12 * s.max()).sum()))
    lam = s[:k] ** 2 / len(hb)
    mu = (hs @ vh[:k].T).pow(2).sum(0) / len(hs)
    hi = torch.maximum(lam, mu).clamp_min(1e-300)
    rel = torch.exp(torch.log((torch.minimum(lam, mu) / hi).clamp_min(1e-12)).mean())
    div = torch.exp(torch.log(((lam - mu).abs() / hi).clamp_min(1e-12)).mean())
    return float(rel), float(div)


def _proxy_graph(size: int, density: float, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    upper = torch.triu(torch.rand(size, size, generator=gen, dtype=torch.float64) < density, 1)
    return (upper | upper.T).double()


@register(
    "function",
    "proxy",
    paper="Disentangled Structural and Featural Representation for Task-Agnostic Graph Valuation "
    "(https://arxiv.org/abs/2408.12659)",
    module="litmix.functional.graph_valuation",
)
def graph_dataset_value(
    buyer: Any,
    seller: Any,
    hops: int = 2,
    components: int = 16,
    diversity_weight: float = 0.0,
    proxy_nodes: int | None = None,
    match_iters: int = 30,
    seed: int = 0,
) -> GraphValue:
    """Task-agnostic value of ``seller``'s graph for ``buyer`` (no labels, no downstream task).

    See the module docstring for the three measures (blind message passing with a shared proxy graph, structural
    disparity as a graph Wasserstein distance, featural relevance / diversity from covariance statistics) and how
    they combine.

    Args:
        buyer: the buyer's graph: a PyG ``Data`` (or mapping) with ``x`` ``(n_b, f)`` and ``edge_index``.
        seller: the seller's graph, same feature dimension ``f``.
        hops: message-passing steps for the features (>= 0).
        components: buyer principal directions used for relevance / diversity (>= 1).
        diversity_weight: ``w`` in ``value = ((1 - w) R + w D) * structural_similarity``, in [0, 1].
        proxy_nodes: size of the shared proxy graph (default: the larger graph's node count; graphs larger than
            this keep their first ``proxy_nodes`` nodes for the structural part).
        match_iters: FAQ iterations of the graph matching (>= 1).
        seed: seed of the proxy graph and the matching.

    Returns:
        A :class:`GraphValue`.

    Raises:
        TypeError: for scalar arguments of the wrong type (e.g. ``hops=1.5``), naming them.
        ValueError: before any compute, for a graph without node features ``x``, an ``edge_index`` that is not an
            integer ``(2, E)`` tensor or refers to nodes outside the graph, feature dimensions that differ, or
            out-of-range numbers.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> centers = 2 * torch.randn(3, 6, generator=g)
        >>> def graph(n, noise):
        ...     y = torch.arange(n) % 3
        ...     adj = torch.triu(torch.rand(n, n, generator=g) < torch.where(y[:, None] == y, 0.2, 0.02), 1)
        ...     x = (1 - noise) * centers[y] + torch.randn(n, 6, generator=g) * (0.3 + 2 * noise)
        ...     return {"x": x, "edge_index": torch.stack(torch.nonzero(adj, as_tuple=True))}
        >>> buyer = graph(40, 0.0)
        >>> good, bad = graph_dataset_value(buyer, graph(30, 0.1)), graph_dataset_value(buyer, graph(30, 1.0))
        >>> good.value > bad.value, good.relevance > bad.relevance
        (True, True)
    """
    owner = "graph_dataset_value"
    check_int(owner, "hops", hops, low=0)
    check_int(owner, "components", components, low=1)
    check_float(owner, "diversity_weight", diversity_weight, low=0.0, high=1.0)
    check_int(owner, "proxy_nodes", proxy_nodes, low=2, allow_none=True)
    check_int(owner, "match_iters", match_iters, low=1)
    check_int(owner, "seed", seed, low=0)
    xb, eb = _parts(owner, "buyer", buyer)
    xs, es = _parts(owner, "seller", seller)
    if xb.shape[1] != xs.shape[1]:
        raise ValueError(
            f"{owner}(seller=...): seller features have {xs.shape[1]} dimensions, the buyer's {xb.shape[1]}"
        )
    nb, ns = xb.shape[0], xs.shape[0]
    big = proxy_nodes if proxy_nodes is not None else max(nb, ns)

    # featural part: each side propagates over its own graph; only buyer directions / seller variances meet
    rel, div = featural_relevance_diversity(
        message_passed_features(xb, eb, hops), message_passed_features(xs, es, hops), components
    )

    # structural part: both sides align to the shared proxy graph, then compare Laplacian distributions
    def aligned(ei: Tensor, n: int) -> tuple[Tensor, int]:
        keep = min(n, big)
        ei = ei[:, (ei[0] < keep) & (ei[1] < keep)]
        adj = _dense_adjacency(ei, keep)
        return adj, keep

    adj_b, kb = aligned(eb, nb)
    adj_s, ks = aligned(es, ns)
    density = (float(adj_b.sum()) / max(kb * (kb - 1), 1) + float(adj_s.sum()) / max(ks * (ks - 1), 1)) / 2
    proxy = _proxy_graph(big, density, seed)
    out = []
    for adj in (adj_b, adj_s):
        perm = blind_alignment(adj, proxy, match_iters, seed)
        padded = torch.zeros(big, big, dtype=torch.float64)
        padded[: adj.shape[0], : adj.shape[0]] = adj
        out.append(padded[perm][:, perm])
    w, similarity = graph_wasserstein(out[0], out[1])
    value = ((1 - diversity_weight) * rel + diversity_weight * div) * similarity
    return GraphValue(
        value=float(value),
        relevance=rel,
        diversity=div,
        structural_disparity=w,
        structural_similarity=float(similarity),
    )
