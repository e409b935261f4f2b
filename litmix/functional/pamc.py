"""PamC: the proxy-approximated meta-node contrastive loss, linear in the number of nodes.

From "Efficient block contrastive learning via parameter-free meta-node approximation" (Kulatilleke, Portmann,
Chandra, 2022, https://arxiv.org/abs/2209.14067; reference code gayanku/PAMC). Graph-MLP-style node contrast
pulls each node towards its graph neighbours and pushes it from *every* other node, an ``(N, N)`` similarity
matrix. PamC keeps the positive term on the edges only (``O(E)``) and replaces the ``N²`` negative pairs by the
``K²`` pairs of meta-nodes, the additive (soft-)cluster sums ``c_k = sum_i q_ik z_i``: time and memory
``O((N + E) d + N K + K² d)``, linear in ``N`` for a fixed number of clusters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from litmix.functional.link_prediction import check_edge_index
from litmix.registry import register
from litmix.validation import check_float, check_type

__all__ = ["PAMC_PAPER", "meta_nodes", "node_infonce_loss", "pamc_loss", "soft_assignment"]

PAMC_PAPER = (
    "Efficient block contrastive learning via parameter-free meta-node approximation (https://arxiv.org/abs/2209.14067)"
)
_EPS = 1e-10


def meta_nodes(z: Tensor, assignment: Tensor) -> Tensor:
    """The meta-nodes ``(K, d)``: cluster sums ``assignment.T @ z`` (``assignment`` soft ``(N, K)`` or hard ``(N,)``).

    A hard assignment (integer cluster ids) counts as its one-hot matrix; ``K`` is then ``max id + 1``.

    Raises:
        TypeError: if ``assignment`` is neither a float ``(N, K)`` nor an integer ``(N,)`` tensor.
        ValueError: for a row count other than ``z``'s, or negative cluster ids.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
        >>> meta_nodes(z, torch.tensor([0, 0, 1]))
        tensor([[4., 0.],
                [0., 2.]])
    """
    owner = "pamc_loss"
    check_type(owner, "assignment", assignment, Tensor)
    if assignment.is_floating_point():
        if assignment.dim() != 2 or assignment.shape[0] != z.shape[0]:
            raise ValueError(
                f"{owner}(assignment=...): a soft assignment must be (N={z.shape[0]}, K), got {tuple(assignment.shape)}"
            )
        return assignment.to(z.dtype).T @ z
    if assignment.dtype == torch.bool or assignment.is_complex() or assignment.dim() != 1:
        raise TypeError(
            f"{owner}(assignment=...): assignment must be a float (N, K) soft assignment or an integer (N,) "
            f"vector of cluster ids, got {assignment.dtype} of shape {tuple(assignment.shape)}"
        )
    if assignment.shape[0] != z.shape[0] or (assignment.numel() and int(assignment.min()) < 0):
        raise ValueError(f"{owner}(assignment=...): need {z.shape[0]} cluster ids >= 0, got {assignment.shape[0]} ids")
    k = int(assignment.max()) + 1 if assignment.numel() else 1
    out = z.new_zeros(k, z.shape[1])
    return out.index_add_(0, assignment.long(), z)


def soft_assignment(z: Tensor, centres: Tensor, alpha: float = 1.0) -> Tensor:
    """DEC's Student-t soft cluster assignment ``(N, K)`` of embeddings to (learnable) cluster centres.

    ``q_ik ∝ (1 + ||z_i - mu_k||² / alpha)^(-(alpha + 1) / 2)``, rows summing to 1: the learnt soft assignment the
    paper builds its meta-nodes from (the reference code passes ``q.detach().argmax(1)``, its hard version).

    Raises:
        ValueError: for centres of another width than ``z`` or a non-positive ``alpha``.

    Example:
        >>> q = soft_assignment(torch.tensor([[0.0, 0.0], [4.0, 4.0]]), torch.tensor([[0.0, 0.0], [4.0, 4.0]]))
        >>> q.argmax(1).tolist(), [round(float(r), 4) for r in q.sum(1)]
        ([0, 1], [1.0, 1.0])
    """
    owner = "soft_assignment"
    check_type(owner, "z", z, Tensor)
    check_type(owner, "centres", centres, Tensor)
    alpha = check_float(owner, "alpha", alpha, low=0.0, low_open=True)
    if z.dim() != 2 or centres.dim() != 2 or z.shape[1] != centres.shape[1]:
        raise ValueError(
            f"{owner}(z=..., centres=...): need z (N, d) and centres (K, d), got {tuple(z.shape)} and "
            f"{tuple(centres.shape)}"
        )
    q = (1.0 + torch.cdist(z, centres).pow(2) / alpha).pow(-(alpha + 1.0) / 2.0)
    return q / q.sum(1, keepdim=True)


@register("loss", "graph", paper=PAMC_PAPER, module="litmix.functional.pamc")
def pamc_loss(
    z: Tensor,
    edge_index: Tensor,
    assignment: Tensor,
    tau: float = 1.0,
    edge_weight: Tensor | None = None,
) -> Tensor:
    """The PamC loss: neighbours as positives, all other nodes approximated by meta-node pairs.

    With cosine similarities ``s(a, b)``, ``pos_i = sum_{(i, j) in E, j != i} w_ij exp(tau s(z_i, z_j))`` and the
    meta-nodes ``c = assignment.T @ z`` (:func:`meta_nodes`),

    ``loss = -mean_{i: pos_i > 0} log pos_i + mean_k log(1 + sum_{l != k} exp(tau s(c_k, c_l)))``

    (the reference ``NcontrastCCSP``: the meta-node similarity matrix has a zeroed diagonal, so each row adds
    ``exp(0) = 1``). Nodes without a positive edge are left out of the positive mean (the reference averages a
    constant ``log 1e-10`` for them). Use it as the training loss of any GNN encoder, e.g. in ``training_step``:
    ``z = self.encoder(x, edge_index); return pamc_loss(z, edge_index, q.detach().argmax(1))`` with ``q`` a
    DEC-style soft cluster assignment (the paper) or k-means ids of the embeddings.

    Args:
        z: ``(N, d)`` float node embeddings.
        edge_index: ``(2, E)`` integer positive pairs (graph edges, or edges of ``A^r``), ids in ``[0, N)``.
        assignment: soft cluster assignment ``(N, K)`` (float) or hard cluster ids ``(N,)`` (integer).
        tau: temperature multiplier of the cosine similarities (> 0; the reference's ``tau``, default 1).
        edge_weight: optional ``(E,)`` non-negative weights of the positive pairs (the values of ``A^r``).

    Returns:
        The scalar loss.

    Raises:
        TypeError: for a non-tensor or non-float ``z``, a float ``edge_index`` or a wrong ``assignment`` kind.
        ValueError: for a non-positive or non-finite ``tau``, a wrongly shaped ``z`` / ``edge_index`` /
            ``assignment`` / ``edge_weight``, node ids outside ``[0, N)``, or no positive pair at all.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> near = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
        >>> far = torch.tensor([[0, 2, 1, 3], [2, 0, 3, 1]])
        >>> ids = torch.tensor([0, 0, 1, 1])
        >>> bool(pamc_loss(z, near, ids) < pamc_loss(z, far, ids))
        True
    """
    owner = "pamc_loss"
    check_type(owner, "z", z, Tensor)
    if not z.is_floating_point() or z.dim() != 2 or z.shape[0] < 1:
        raise (TypeError if not z.is_floating_point() else ValueError)(
            f"{owner}(z=...): z must be a float (N, d) tensor of node embeddings, got {z.dtype} of shape "
            f"{tuple(z.shape)}"
        )
    tau = check_float(owner, "tau", tau, low=0.0, low_open=True)
    n = int(z.shape[0])
    ei = check_edge_index(owner, edge_index, n)
    centres = meta_nodes(z, assignment)
    if edge_weight is not None:
        check_type(owner, "edge_weight", edge_weight, Tensor)
        if tuple(edge_weight.shape) != (ei.shape[1],) or not bool((edge_weight >= 0).all()):
            raise ValueError(
                f"{owner}(edge_weight=...): need {ei.shape[1]} non-negative weights, got shape "
                f"{tuple(edge_weight.shape)}"
            )
    keep = ei[0] != ei[1]
    src, dst = ei[0][keep], ei[1][keep]
    if src.numel() == 0:
        raise ValueError(f"{owner}(edge_index=...): needs at least one positive pair between two different nodes")
    unit = F.normalize(z, dim=1)
    sim = torch.exp(tau * (unit[src] * unit[dst]).sum(1))
    if edge_weight is not None:
        sim = sim * edge_weight[keep].to(sim.dtype)
    pos = torch.zeros(n, dtype=sim.dtype, device=z.device).index_add_(0, src, sim)
    has = torch.zeros(n, dtype=torch.bool, device=z.device)
    has[src] = True
    c = F.normalize(centres, dim=1)
    cc = tau * (c @ c.T)
    cc = cc - torch.diag_embed(torch.diagonal(cc))  # the reference zeroes the diagonal similarity
    negative = torch.logsumexp(cc, dim=1).mean()
    return -torch.log(pos[has] + _EPS).mean() + negative


def node_infonce_loss(z: Tensor, edge_index: Tensor, tau: float = 1.0) -> Tensor:
    """The exact node-level contrast PamC approximates: every node a negative, an ``(N, N)`` similarity matrix.

    ``-mean_i log sum_{(i, j) in E} exp(tau s(z_i, z_j)) + mean_i log sum_j exp(tau s(z_i, z_j))`` (Graph-MLP's
    ``Ncontrast`` with sparse positives); quadratic in time and memory, the baseline of the PamC tests and
    benchmark.

    Raises:
        ValueError: for a non-positive ``tau`` or ``edge_index`` ids outside ``[0, N)``.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> bool(node_infonce_loss(z, torch.tensor([[0, 1], [1, 0]])) < node_infonce_loss(z, torch.tensor([[0, 2], [2, 0]])))
        True
    """  # noqa: E501
    owner = "node_infonce_loss"
    check_type(owner, "z", z, Tensor)
    tau = check_float(owner, "tau", tau, low=0.0, low_open=True)
    ei = check_edge_index(owner, edge_index, int(z.shape[0]))
    unit = F.normalize(z, dim=1)
    sim = tau * (unit @ unit.T)
    pos = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device).index_add_(0, ei[0], torch.exp(sim[ei[0], ei[1]]))
    return -torch.log(pos[pos > 0]).mean() + torch.logsumexp(sim, dim=1).mean()
