"""TorchNeighborSampler (litmix.graph): exact subgraphs, fan-outs, determinism, PyG loaders, GraphSAGE on Cora."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import Data
from torch_geometric.loader import NodeLoader
from torch_geometric.sampler import NodeSamplerInput
from torch_geometric.utils import k_hop_subgraph

from litmix.graph import TorchNeighborSampler
from litmix.registry import get_plugin


def _graph(n: int = 40, e: int = 200, seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    ei = ei[:, ei[0] != ei[1]]
    ei = torch.unique(torch.cat([ei, ei.flip(0)], 1), dim=1)  # simple undirected graph
    return Data(x=torch.randn(n, 3, generator=g), edge_index=ei, edge_attr=torch.arange(ei.shape[1]).float())


def _check_output(data: Data, seeds: torch.Tensor, fanouts: list[int], out) -> None:
    ei = data.edge_index
    node, row, col, edge = out.node, out.row, out.col, out.edge
    assert torch.equal(node[: seeds.numel()], seeds), "seed nodes come first"
    assert node.unique().numel() == node.numel(), "every sampled node once"
    # every sampled edge is the edge of the graph it names, pointing towards the frontier
    assert torch.equal(ei[0, edge], node[row])
    assert torch.equal(ei[1, edge], node[col])
    assert sum(out.num_sampled_nodes) == node.numel()
    assert sum(out.num_sampled_edges) == edge.numel()
    deg_in = torch.bincount(ei[1], minlength=data.num_nodes)
    start, bound = 0, seeds.numel()
    hop_nodes = torch.arange(0, bound)
    for hop, k in enumerate(fanouts):
        e = out.num_sampled_edges[hop]
        hop_col, hop_edge = col[start : start + e], edge[start : start + e]
        assert set(hop_col.tolist()) <= set(hop_nodes.tolist()), "hop edges end in that hop's frontier"
        counts = torch.bincount(hop_col, minlength=node.numel())[hop_nodes]
        want = deg_in[node[hop_nodes]] if k < 0 else deg_in[node[hop_nodes]].clamp(max=k)
        assert torch.equal(counts, want), "min(degree, fan-out) in-edges per frontier node"
        assert hop_edge.unique().numel() == hop_edge.numel(), "sampling without replacement"
        start += e
        hop_nodes = torch.arange(bound, bound + out.num_sampled_nodes[hop + 1])
        bound += out.num_sampled_nodes[hop + 1]


@pytest.mark.parametrize("fanouts", [[3, 2], [1], [5, 5, 5], [-1, 2]])
def test_edges_exist_fanouts_respected_and_seeds_first(fanouts):
    data = _graph()
    sampler = TorchNeighborSampler(data, fanouts, seed=1)
    for seeds in (torch.tensor([3, 17, 5]), torch.arange(40), torch.tensor([0])):
        _check_output(data, seeds, fanouts, sampler.sample(seeds))


def test_full_fanout_is_the_exact_k_hop_subgraph():
    data = _graph(60, 150)
    seeds = torch.tensor([4, 9])
    out = TorchNeighborSampler(data, [-1, -1]).sample(seeds)
    subset, _, _, _ = k_hop_subgraph(seeds, 2, data.edge_index, num_nodes=60)
    assert set(out.node.tolist()) == set(subset.tolist())
    # directional: all in-edges of the seeds and of the 1-hop nodes, each once
    frontier = out.node[: out.num_sampled_nodes[0] + out.num_sampled_nodes[1]]
    want = torch.isin(data.edge_index[1], frontier).nonzero().flatten()
    assert torch.equal(out.edge.sort().values, want)


def test_seed_determinism_and_uniform_draws():
    data = _graph(30, 400)
    seeds = torch.tensor([1, 2, 3])
    a = [TorchNeighborSampler(data, [2, 2], seed=5).sample(seeds) for _ in range(2)]
    b = TorchNeighborSampler(data, [2, 2], seed=6).sample(seeds)
    assert torch.equal(a[0].node, a[1].node)
    assert torch.equal(a[0].edge, a[1].edge)
    assert not torch.equal(a[0].edge, b.edge)
    # 4000 fan-out-1 draws from node 0's in-neighbours (node 0 repeated as seed): uniform
    sampler = TorchNeighborSampler(data, [1], seed=0)
    picks = data.edge_index[0, sampler.sample(torch.zeros(4000, dtype=torch.long)).edge]
    nbrs = data.edge_index[0, data.edge_index[1] == 0]
    counts = torch.bincount(picks, minlength=30)
    assert int(counts[nbrs].sum()) == 4000
    assert (counts[nbrs].float() / 4000 - 1 / nbrs.numel()).abs().max() < 0.03, counts[nbrs]
    # reseed restarts the stream; pickling keeps it
    sampler.reseed(3)
    import pickle

    clone = pickle.loads(pickle.dumps(sampler))
    assert torch.equal(clone.sample(seeds).edge, sampler.sample(seeds).edge)


def test_pyg_node_loader_slices_features_and_edge_attributes():
    data = _graph()
    data.y = torch.arange(40)
    loader = NodeLoader(data, node_sampler=TorchNeighborSampler(data, [4, 3]), input_nodes=torch.arange(10),
                        batch_size=4)  # fmt: skip
    batches = list(loader)
    assert [b.batch_size for b in batches] == [4, 4, 2]
    for b in batches:
        assert torch.equal(b.x, data.x[b.n_id])
        assert torch.equal(b.y, b.n_id)
        assert torch.equal(b.edge_attr, data.edge_attr[b.e_id])
        assert torch.equal(data.edge_index[:, b.e_id], b.n_id[b.edge_index])
    assert torch.cat([b.n_id[: b.batch_size] for b in batches]).tolist() == list(range(10))


def test_link_loader_samples_around_both_end_points():
    from torch_geometric.loader import LinkLoader

    data = _graph()
    loader = LinkLoader(data, link_sampler=TorchNeighborSampler(data, [2]), edge_label_index=data.edge_index[:, :6],
                        batch_size=3)  # fmt: skip
    batch = next(iter(loader))
    assert torch.equal(batch.n_id[batch.edge_label_index], data.edge_index[:, :3])


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"data": torch.zeros(2, 3)}, TypeError, "data"),
        ({"data": Data(x=torch.randn(3, 2))}, ValueError, "edge_index"),
        ({"data": Data(x=torch.randn(3, 2), edge_index=torch.tensor([[0], [5]]))}, ValueError, "edge_index"),
        ({"data": Data(x=torch.randn(3, 2), edge_index=torch.tensor([[0.0], [1.0]]))}, TypeError, "edge_index"),
        ({"num_neighbors": []}, ValueError, "num_neighbors"),
        ({"num_neighbors": [0]}, ValueError, "num_neighbors"),
        ({"num_neighbors": [-2]}, ValueError, "num_neighbors"),
        ({"num_neighbors": "10"}, TypeError, "num_neighbors"),
        ({"num_neighbors": [2.5]}, TypeError, "num_neighbors"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 1.0}, TypeError, "seed"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, name):
    args = {"data": _graph(), "num_neighbors": [2], **kwargs}
    with pytest.raises(error, match=name):
        TorchNeighborSampler(**args)


def test_bad_seed_nodes_are_refused():
    sampler = TorchNeighborSampler(_graph(), [2])
    with pytest.raises(ValueError, match="seed node ids"):
        sampler.sample_from_nodes(NodeSamplerInput(None, torch.tensor([0, 40])))
    with pytest.raises(ValueError, match="heterogeneous"):
        sampler.sample_from_nodes(NodeSamplerInput(None, torch.tensor([0]), input_type="paper"))


def test_registered_as_graph_utility():
    info = get_plugin("TorchNeighborSampler")
    assert (info.kind, info.family) == ("utility", "graph")


@pytest.mark.slow
def test_graphsage_minibatch_training_on_cora(cora):
    """GraphSAGE (2 layers, 64 hidden) trained on mini-batches of 32 Cora training nodes with fan-outs [10, 10].

    Full-graph inference on the public test split. Measured (30 epochs, seeds 0/1/2): mini-batch 0.774 / 0.778 /
    0.803 vs full-batch (50 epochs) 0.796 / 0.794 / 0.790; with 20 epochs (this test) 0.791 / 0.811 / 0.794.
    Asserted: >= 0.76 (full batch - 0.03, the catalogue's margin) on seeds 0, 1, 2.
    """
    from torch_geometric.nn import GraphSAGE

    d = cora
    accs = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        model = GraphSAGE(d.num_features, 64, 2, 7, dropout=0.5)
        opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
        loader = NodeLoader(d, node_sampler=TorchNeighborSampler(d, [10, 10], seed=seed), input_nodes=d.train_mask,
                            batch_size=32, shuffle=True)  # fmt: skip
        for _ in range(20):
            model.train()
            for b in loader:
                opt.zero_grad()
                F.cross_entropy(model(b.x, b.edge_index)[: b.batch_size], b.y[: b.batch_size]).backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            pred = model(d.x, d.edge_index).argmax(-1)
        accs.append(float((pred[d.test_mask] == d.y[d.test_mask]).float().mean()))
    assert min(accs) >= 0.76, accs


def test_sampled_graph_datamodule_batches_are_subgraphs_of_the_seeds():
    from litmix.datamodules.graph import _tiny_graph
    from litmix.datamodules.sampled_graph import SampledGraphDataModule

    data = _tiny_graph()
    data.edge_attr = torch.arange(data.edge_index.shape[1]).float()
    dm = SampledGraphDataModule(None, data=data, num_neighbors=[3, 2], batch_size=5, seed=3)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    seen = []
    for graph, y, index in batches:
        n_id = graph["n_id"]
        assert torch.equal(n_id[: index.numel()], index)
        assert torch.equal(y, data.y[index])
        assert torch.equal(graph["x"], data.x[n_id])
        edges = graph["edge_attr"].long()  # edge ids, since edge_attr = arange(E)
        assert torch.equal(data.edge_index[:, edges], n_id[graph["edge_index"]])
        seen += index.tolist()
    assert sorted(seen) == data.train_mask.nonzero().flatten().tolist()
    other = SampledGraphDataModule(None, data=data, num_neighbors=[3, 2], batch_size=5, seed=3)
    other.setup("fit")
    for (g1, _, i1), (g2, _, i2) in zip(batches, other.train_dataloader(), strict=True):
        assert torch.equal(i1, i2)
        assert torch.equal(g1["edge_index"], g2["edge_index"])


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"num_neighbors": []}, ValueError, "num_neighbors"),
        ({"num_neighbors": [0, 2]}, ValueError, "num_neighbors"),
        ({"num_neighbors": "3"}, TypeError, "num_neighbors"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": None}, TypeError, "batch_size"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_sampled_graph_datamodule_bad_arguments_are_named(kwargs, error, name):
    from litmix.datamodules.graph import _tiny_graph
    from litmix.datamodules.sampled_graph import SampledGraphDataModule

    with pytest.raises(error, match=name):
        SampledGraphDataModule(None, **{"data": _tiny_graph(), **kwargs})
