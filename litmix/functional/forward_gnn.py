"""ForwardGNN's single-forward (SF) local loss: virtual label nodes and a per-layer similarity cross-entropy.

Park, Shin, Huang, Kim, "Forward Learning of Graph Neural Networks" (ICLR 2024,
https://arxiv.org/abs/2403.11004). Re-implemented from the paper (the reference code is CC-BY-NC; none is reused).

The single-forward variant augments the graph with one *virtual label node* per class and adds an edge from every
labelled training node to the label node of its class, so that each GNN layer embeds the label nodes as well (a
label node's embedding aggregates its class's training nodes). Each layer ``l`` is then trained alone on its own
*local* loss: the node embedding ``h_i^l`` must be closer (cosine similarity over a temperature) to the embedding of
its own label node ``v_{y_i}^l`` than to the other label nodes' -- a softmax cross-entropy over the ``C`` label
nodes. The class of a node is the label node it is most similar to (here summed over the layers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from litmix.registry import register
from litmix.validation import check_float, check_int, check_type

__all__ = ["label_node_edges", "label_similarity", "single_forward_loss"]

_PAPER = "Forward Learning of Graph Neural Networks (https://arxiv.org/abs/2403.11004)"


def _check_labels(owner: str, labels: Tensor, num_classes: int, n: int | None = None) -> None:
    check_type(owner, "labels", labels, Tensor)
    if labels.dim() != 1 or labels.is_floating_point() or (n is not None and labels.numel() != n):
        raise ValueError(f"{owner}(labels=Tensor{tuple(labels.shape)}): labels must be an integer vector of {n}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{owner}(labels=...): labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )


@register("function", "graph", paper=_PAPER)
def label_node_edges(num_nodes: int, labelled: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Edges ``labelled[k] -> num_nodes + labels[k]`` from each labelled node to its class's virtual label node.

    The label nodes get the ids ``num_nodes .. num_nodes + num_classes - 1``. The edges are directed (training
    nodes send to label nodes, never receive from them), so no node's embedding sees its own label.

    Args:
        num_nodes: number ``N`` of real nodes.
        labelled: ids ``[M]`` of the labelled (training) nodes, in ``[0, N)``.
        labels: their classes ``[M]``, in ``[0, num_classes)``.
        num_classes: number of classes ``C`` (label nodes).

    Returns:
        an integer ``(2, M)`` edge index.

    Raises:
        TypeError: for a non-tensor ``labelled`` / ``labels`` or a non-int count, naming it.
        ValueError: for ids or labels out of range or of mismatched lengths, naming them.

    Example:
        >>> label_node_edges(4, torch.tensor([0, 2]), torch.tensor([1, 0]), 2).tolist()
        [[0, 2], [5, 4]]
    """
    owner = "label_node_edges"
    num_nodes = check_int(owner, "num_nodes", num_nodes, low=1)
    num_classes = check_int(owner, "num_classes", num_classes, low=2)
    check_type(owner, "labelled", labelled, Tensor)
    if labelled.dim() != 1 or labelled.is_floating_point():
        raise ValueError(f"{owner}(labelled=Tensor{tuple(labelled.shape)}): labelled must be an integer vector")
    if labelled.numel() and (int(labelled.min()) < 0 or int(labelled.max()) >= num_nodes):
        raise ValueError(f"{owner}(labelled=...): node ids must lie in [0, {num_nodes})")
    _check_labels(owner, labels, num_classes, int(labelled.numel()))
    return torch.stack([labelled.long(), num_nodes + labels.long().to(labelled.device)])


@register("function", "graph", paper=_PAPER)
def label_similarity(h: Tensor, label_h: Tensor, temperature: float = 0.5) -> Tensor:
    """Cosine similarities ``[N, C]`` of node embeddings ``h`` ``[N, D]`` to label-node embeddings ``[C, D]`` / τ.

    Raises:
        TypeError: for non-tensor inputs or a non-float temperature, naming it.
        ValueError: for mismatched widths or ``temperature <= 0``, naming it.

    Example:
        >>> h = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> label_similarity(h, torch.eye(2), temperature=1.0).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    owner = "label_similarity"
    check_type(owner, "h", h, Tensor)
    check_type(owner, "label_h", label_h, Tensor)
    temperature = check_float(owner, "temperature", temperature, low=0.0, low_open=True)
    if h.dim() != 2 or label_h.dim() != 2 or h.shape[1] != label_h.shape[1]:
        raise ValueError(
            f"{owner}(h=Tensor{tuple(h.shape)}, label_h=Tensor{tuple(label_h.shape)}): need [N, D] and [C, D]"
        )
    return F.normalize(h, dim=-1) @ F.normalize(label_h, dim=-1).T / temperature


@register("function", "graph", paper=_PAPER)
def single_forward_loss(h: Tensor, label_h: Tensor, labels: Tensor, temperature: float = 0.5) -> Tensor:
    """One layer's local SF loss: cross-entropy of :func:`label_similarity` against the nodes' classes.

    Args:
        h: embeddings ``[M, D]`` of the labelled nodes at this layer.
        label_h: embeddings ``[C, D]`` of the ``C`` label nodes at this layer.
        labels: classes ``[M]`` of the nodes.
        temperature: softmax temperature τ > 0.

    Raises:
        TypeError: for non-tensor inputs, naming them.
        ValueError: for mismatched shapes or labels outside ``[0, C)``, naming them.

    Example:
        >>> label_h = torch.eye(3)
        >>> good = single_forward_loss(torch.eye(3), label_h, torch.tensor([0, 1, 2]))
        >>> bad = single_forward_loss(torch.eye(3), label_h, torch.tensor([1, 2, 0]))
        >>> bool(good < bad), round(float(good), 4)
        (True, 0.2395)
    """
    logits = label_similarity(h, label_h, temperature)
    _check_labels("single_forward_loss", labels, int(label_h.shape[0]), int(h.shape[0]))
    return F.cross_entropy(logits, labels.long())
