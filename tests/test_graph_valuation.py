import shutil

import pytest
import torch

from litmix.functional.graph_valuation import (
    GraphValue,
    blind_alignment,
    featural_relevance_diversity,
    graph_dataset_value,
    graph_wasserstein,
    message_passed_features,
)


def _block_graph(n, centers, noise, seed, p_in=0.2, p_out=0.02):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(centers)
    adj = torch.triu(torch.rand(n, n, generator=g) < torch.where(y[:, None] == y, p_in, p_out), 1)
    x = (1 - noise) * centers[y] + torch.randn(n, centers.shape[1], generator=g) * (0.3 + 2 * noise)
    return {"x": x, "edge_index": torch.stack(torch.nonzero(adj, as_tuple=True))}


def test_alignment_recovers_a_hidden_permutation():
    g = torch.Generator().manual_seed(0)
    adj = torch.triu((torch.rand(30, 30, generator=g) < 0.2).double(), 1)
    adj = adj + adj.T
    perm = torch.randperm(30, generator=g)
    shuffled = adj[perm][:, perm]
    order = blind_alignment(shuffled, adj, iters=50)
    assert torch.equal(shuffled[order][:, order], adj)


def test_wasserstein_is_zero_for_equal_graphs_and_grows_with_rewiring():
    g = torch.Generator().manual_seed(1)
    adj = torch.triu((torch.rand(40, 40, generator=g) < 0.15).double(), 1)
    adj = adj + adj.T
    w0, s0 = graph_wasserstein(adj, adj)
    assert w0 < 1e-6
    assert s0 == pytest.approx(1.0)
    ring = torch.roll(torch.eye(40, dtype=torch.float64), 1, dims=1)
    w1, s1 = graph_wasserstein(adj, ring + ring.T)
    assert w1 > 1.0
    assert 0.0 <= s1 < 0.9


def test_relevance_and_diversity_move_in_opposite_directions():
    g = torch.Generator().manual_seed(2)
    scale = torch.tensor([4.0, 2.0, 1.0, 0.5])
    buyer = torch.randn(300, 4, generator=g) * scale
    same = torch.randn(300, 4, generator=g) * scale
    other = torch.randn(300, 4, generator=g) * scale.flip(0)
    r_same, d_same = featural_relevance_diversity(buyer, same, components=4)
    r_other, d_other = featural_relevance_diversity(buyer, other, components=4)
    assert r_same > 0.8 > r_other
    assert d_other > d_same


def test_value_prefers_the_clean_seller_and_is_deterministic():
    centers = 2 * torch.randn(3, 6, generator=torch.Generator().manual_seed(3))
    buyer = _block_graph(40, centers, 0.0, seed=0)
    clean, noisy = _block_graph(30, centers, 0.1, seed=1), _block_graph(30, centers, 1.0, seed=2)
    v_clean, v_noisy = graph_dataset_value(buyer, clean), graph_dataset_value(buyer, noisy)
    assert isinstance(v_clean, GraphValue)
    assert v_clean.value > v_noisy.value
    assert v_clean.relevance > v_noisy.relevance
    assert graph_dataset_value(buyer, clean) == v_clean
    # the features go through each party's own graph: message passing changes them
    assert not torch.allclose(message_passed_features(buyer["x"], buyer["edge_index"], 2), buyer["x"].double())


def test_bad_inputs_fail_before_compute_naming_the_problem():
    from torch_geometric.data import Data

    centers = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    good = _block_graph(20, centers, 0.0, seed=0)
    for buyer, seller, kwargs, error, match in [
        ({"edge_index": good["edge_index"]}, good, {}, ValueError, r"buyer=.*node features x"),
        (good, Data(edge_index=good["edge_index"], num_nodes=20), {}, ValueError, r"seller=.*node features x"),
        (good, {**good, "edge_index": good["edge_index"] + 50}, {}, ValueError, r"seller=.*outside \[0, 20\)"),
        (good, {**good, "edge_index": good["edge_index"].float()}, {}, ValueError, r"seller=.*integer \(2, E\)"),
        (good, {**good, "x": torch.zeros(20, 5)}, {}, ValueError, r"seller=.*5 dimensions.*4"),
        (good, good, {"hops": -1}, ValueError, r"hops=-1"),
        (good, good, {"components": 1.5}, TypeError, r"components=1.5"),
        (good, good, {"diversity_weight": 2.0}, ValueError, r"diversity_weight=2.0"),
        (good, good, {"match_iters": 0}, ValueError, r"match_iters=0"),
    ]:
        with pytest.raises(error, match=match):
            graph_dataset_value(buyer, seller, **kwargs)


def test_registered():
    from litmix.registry import get_plugin

    info = get_plugin("graph_dataset_value")
    assert (info.kind, info.family) == ("function", "proxy")
    assert "2408.12659" in info.paper


# --------------------------------------------------------------------------------------------- effect on Cora
def _random_walk_subgraph(nbrs, n, size, used, gen, length=4):
    """Node-disjoint subgraph: union of short random walks from random roots (GraphSAINT-style), induced edges."""
    out, inside = [], set()
    while len(out) < size:
        roots = [i for i in torch.randperm(n, generator=gen)[:50].tolist() if i not in used and i not in inside]
        for v in roots:
            for _ in range(length + 1):
                if v not in inside and len(out) < size:
                    inside.add(v)
                    out.append(v)
                nb = [u for u in nbrs[v] if u not in used and u not in inside]
                if not nb:
                    break
                v = nb[int(torch.randint(len(nb), (1,), generator=gen))]
            if len(out) >= size:
                break
    used |= inside
    return torch.tensor(out)


def _corrupt(graph, p_features, q_edges, gen):
    """Replace a share of node feature rows by random bags of words (same row sum) and rewire a share of edges."""
    x, m = graph["x"].clone(), graph["x"].shape[0]
    for r in torch.randperm(m, generator=gen)[: round(p_features * m)].tolist():
        k = max(1, int((x[r] > 0).sum()))
        x[r] = 0.0
        x[r, torch.randperm(x.shape[1], generator=gen)[:k]] = 1.0 / k
    ei = graph["edge_index"]
    ei = ei[:, ei[0] < ei[1]].clone()
    pick = torch.randperm(ei.shape[1], generator=gen)[: round(q_edges * ei.shape[1])]
    ei[:, pick] = torch.randint(0, m, (2, len(pick)), generator=gen)
    return {**graph, "x": x, "edge_index": torch.cat([ei, ei.flip(0)], dim=1)}


def _sgc_accuracy(train_graphs, masks, test_graph, test_mask):
    """Logistic regression on 2-hop message-passed features (SGC), each graph propagated over its own edges."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    feats = [message_passed_features(gr["x"], gr["edge_index"], 2).float().numpy() for gr in train_graphs]
    x = np.concatenate([f[m] for f, m in zip(feats, masks, strict=True)])
    y = np.concatenate([gr["y"][m].numpy() for gr, m in zip(train_graphs, masks, strict=True)])
    clf = LogisticRegression(max_iter=1000, C=10.0).fit(x, y)
    test = message_passed_features(test_graph["x"], test_graph["edge_index"], 2).float().numpy()[test_mask]
    return float((clf.predict(test) == test_graph["y"][test_mask].numpy()).mean())


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_ranks_sellers_like_the_accuracy_they_add_on_cora(shared_data, tmp_path, seed):
    from scipy.stats import spearmanr
    from torch_geometric.datasets import Planetoid
    from torch_geometric.utils import subgraph

    shutil.copytree(shared_data / "planetoid" / "Cora", tmp_path / "Cora")
    data = Planetoid(str(tmp_path), "Cora")[0]
    n = data.num_nodes
    x = data.x / data.x.sum(1, keepdim=True).clamp_min(1)
    nbrs = [[] for _ in range(n)]
    for a, b in data.edge_index.t().tolist():
        nbrs[a].append(b)

    def graph(nodes):
        ei, _ = subgraph(nodes, data.edge_index, relabel_nodes=True, num_nodes=n)
        return {"x": x[nodes].clone(), "edge_index": ei, "y": data.y[nodes]}

    gen, used = torch.Generator().manual_seed(seed), set()
    buyer = graph(_random_walk_subgraph(nbrs, n, 200, used, gen))
    labelled = torch.zeros(200, dtype=torch.bool)
    labelled[torch.randperm(200, generator=gen)[:40]] = True
    base = _sgc_accuracy([buyer], [labelled], buyer, ~labelled)
    clean = graph(_random_walk_subgraph(nbrs, n, 200, used, gen))
    values, gains = {}, {}
    for p in (0.0, 0.5, 1.0):
        for q in (0.0, 0.5, 1.0):
            seller = _corrupt(clean, p, q, torch.Generator().manual_seed(seed * 100))
            values[p, q] = graph_dataset_value(buyer, seller, seed=seed)
            gains[p, q] = _sgc_accuracy(
                [buyer, seller], [labelled, torch.ones(200, dtype=torch.bool)], buyer, ~labelled
            )
            gains[p, q] -= base
    keys = list(values)
    rho = spearmanr([values[k].value for k in keys], [gains[k] for k in keys])[0]
    rho_structure = spearmanr([values[k].structural_similarity for k in keys], [gains[k] for k in keys])[0]
    print(f"seed {seed}: buyer-only accuracy {base:.3f}")
    for k in keys:
        v = values[k]
        print(
            f"  features corrupted {k[0]:.1f} edges rewired {k[1]:.1f}: value {v.value:.3f} R {v.relevance:.3f} "
            f"D {v.diversity:.3f} W {v.structural_disparity:.2f} sim {v.structural_similarity:.3f} gain {gains[k]:+.3f}"
        )
    print(f"seed {seed}: Spearman(value, gain) {rho:.2f}; structural similarity alone {rho_structure:.2f}")
    # measured (9 corrupted versions of one seller subgraph per seed; 3 seller subgraphs per seed when measuring):
    #   Spearman(value, gain) seeds 0-2, first seller: 0.83 / 0.90 / 0.85 (all 9 sellers measured: 0.68-0.95);
    #   across 27 sellers of 3 regions: 0.87 / 0.53 / 0.35. Structural similarity alone does not track the gain
    #   (-0.22 / 0.17 / 0.20 across 27); rewiring lowers the graph Wasserstein distance of these sparse subgraphs.
    assert rho >= 0.6
    assert values[0.0, 0.0].value > values[0.5, 0.0].value > values[1.0, 0.0].value
