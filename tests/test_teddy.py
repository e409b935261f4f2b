"""TEDDY edge sparsification: the score formula, the selection, the transform, bad inputs, effect on Cora."""

from __future__ import annotations

import copy

import pytest
import torch
from torch_geometric.data import Data

from litmix.functional.teddy import teddy_edge_mask, teddy_edge_scores
from litmix.graph_transforms.teddy import TeddyEdgeSparsify


def _dense_reference(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    """The reference code's formula on a dense adjacency with self-loops."""
    a = torch.zeros(n, n, dtype=torch.float64)
    a[edge_index[1], edge_index[0]] = 1.0
    a += torch.eye(n, dtype=torch.float64)
    deg = a.sum(1)
    norm = (a @ deg.pow(-0.5)) / deg
    node = norm / deg
    return (node[edge_index[0]] * node[edge_index[1]]).float()


def test_scores_by_hand_on_a_path():
    ei = torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    d = torch.tensor([2.0, 3.0, 3.0, 2.0], dtype=torch.float64)
    a = torch.tensor(
        [
            (2**-0.5 + 3**-0.5) / 2,
            (3**-0.5 + 2**-0.5 + 3**-0.5) / 3,
            (3**-0.5 + 2**-0.5 + 3**-0.5) / 3,
            (2**-0.5 + 3**-0.5) / 2,
        ],
        dtype=torch.float64,
    )
    node = a / d
    expected = torch.stack([node[0] * node[1], node[1] * node[0], node[1] * node[2]]).float()
    got = teddy_edge_scores(ei, 4)
    assert torch.allclose(got[:3], expected)
    assert torch.allclose(got, _dense_reference(ei, 4))


def test_scores_match_dense_reference_on_a_random_graph():
    g = torch.Generator().manual_seed(0)
    ei = torch.randint(0, 30, (2, 120), generator=g)
    ei = ei[:, ei[0] != ei[1]]
    ei = torch.unique(torch.cat([ei, ei.flip(0)], 1), dim=1)
    assert torch.allclose(teddy_edge_scores(ei, 30), _dense_reference(ei, 30), rtol=1e-5)


def test_mask_removes_both_directions_keeps_loops_and_prefers_hub_edges():
    g = torch.Generator().manual_seed(1)
    ei = torch.randint(0, 40, (2, 200), generator=g)
    ei = ei[:, ei[0] != ei[1]]
    ei = torch.unique(torch.cat([ei, ei.flip(0)], 1), dim=1)
    loops = torch.arange(40).repeat(2, 1)
    full = torch.cat([ei, loops], 1)
    keep = teddy_edge_mask(full, 40, 0.3)
    assert bool(keep[ei.shape[1] :].all())  # self-loops kept
    kept = {tuple(e) for e in full[:, keep].t().tolist()}
    assert all((j, i) in kept for i, j in kept)  # symmetric
    n_undirected = ei.shape[1] // 2
    assert (~keep).sum() == 2 * round(0.3 * n_undirected)
    deg = torch.bincount(ei[1], minlength=40).float()
    endpoint = deg[ei[0]] + deg[ei[1]]
    k = keep[: ei.shape[1]]
    assert float(endpoint[~k].mean()) > float(endpoint[k].mean())  # hub-hub edges go first
    rev = teddy_edge_mask(full, 40, 0.3, reverse=True)
    assert float(endpoint[~rev[: ei.shape[1]]].mean()) < float(endpoint[k].mean())


def test_transform_filters_edge_attributes_and_directed_graphs():
    ei = torch.tensor([[0, 1, 2, 3, 0], [1, 2, 3, 0, 2]])  # directed
    data = Data(edge_index=ei, edge_weight=torch.arange(5.0), edge_attr=torch.arange(10.0).view(5, 2), num_nodes=4)
    mask = teddy_edge_mask(ei, 4, 0.4)
    out = TeddyEdgeSparsify(0.4)(copy.copy(data))
    assert out.edge_index.shape[1] == 3
    assert torch.equal(out.edge_index, ei[:, mask])
    assert torch.equal(out.edge_weight, data.edge_weight[mask])
    assert torch.equal(out.edge_attr, data.edge_attr[mask])
    assert "TeddyEdgeSparsify(sparsity=0.4" in repr(TeddyEdgeSparsify(0.4))
    assert TeddyEdgeSparsify(0.0)(copy.copy(data)).edge_index.shape[1] == 5


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sparsity": 1.0}, ValueError, "sparsity"),
        ({"sparsity": -0.1}, ValueError, "sparsity"),
        ({"sparsity": float("nan")}, ValueError, "sparsity"),
        ({"sparsity": "0.3"}, TypeError, "sparsity"),
        ({"reverse": 1}, TypeError, "reverse"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TeddyEdgeSparsify(**kwargs)


def test_bad_graphs():
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        teddy_edge_scores(torch.zeros(3, 4, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="outside"):
        teddy_edge_scores(torch.tensor([[0], [5]]), 4)
    with pytest.raises(ValueError, match="sparsity"):
        teddy_edge_mask(torch.tensor([[0], [1]]), 2, 1.0)
    with pytest.raises(ValueError, match="edge_index"):
        TeddyEdgeSparsify(0.3)(Data(x=torch.zeros(3, 1)))


# ----------------------------------------------------------------------------- effect on Cora


def _gcn_test_accuracy(data: Data, seed: int, epochs: int = 100) -> float:
    from torch_geometric.nn import GCNConv

    class GCN(torch.nn.Module):
        def __init__(self, i: int, h: int, o: int) -> None:
            super().__init__()
            self.c1, self.c2 = GCNConv(i, h), GCNConv(h, o)

        def forward(self, x, ei):
            x = torch.nn.functional.dropout(x, 0.5, self.training)
            x = self.c1(x, ei).relu()
            x = torch.nn.functional.dropout(x, 0.5, self.training)
            return self.c2(x, ei)

    torch.manual_seed(seed)
    model = GCN(data.num_features, 64, 7)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    for _ in range(epochs):
        model.train()
        opt.zero_grad()
        out = model(data.x, data.edge_index)
        torch.nn.functional.cross_entropy(out[data.train_mask], data.y[data.train_mask]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(data.x, data.edge_index).argmax(-1)
    return float((pred[data.test_mask] == data.y[data.test_mask]).float().mean())


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_teddy_beats_reversed_ordering_on_cora(cora128, seed):
    """2-layer GCN (64 hidden, 100 epochs, public split) on Cora with half of the undirected edges removed.

    Measured, test accuracy on seeds 0 / 1 / 2 (128-d projected features): full graph 0.730 / 0.733 / 0.729,
    TEDDY 0.625 / 0.630 / 0.625, reversed ordering 0.585 / 0.578 / 0.568, random edges 0.625 / 0.632 / 0.614
    (not asserted: TEDDY ties random here). With the raw 1433-d features (not run in the test): full 0.804 / 0.802
    / 0.799, TEDDY 0.757 / 0.745 / 0.744, reversed 0.668 / 0.661 / 0.673, random 0.726 / 0.730 / 0.715.
    Asserted: TEDDY >= reversed + 0.02.
    """
    teddy = _gcn_test_accuracy(TeddyEdgeSparsify(0.5)(copy.copy(cora128)), seed)
    reverse = _gcn_test_accuracy(TeddyEdgeSparsify(0.5, reverse=True)(copy.copy(cora128)), seed)
    assert teddy >= reverse + 0.02, (seed, teddy, reverse)
