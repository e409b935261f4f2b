import shutil
import statistics

import pytest
import torch
from torch_geometric.data import Data

from litmix.datamodules.graph import _tiny_graph
from litmix.nas.auto_gnn import AutoGNNSearch, build_gnn, prepare_graph

FAST = {"hidden": [4, 8], "heads": [1, 2]}


def test_bad_arguments_fail_before_compute_naming_the_argument():
    with pytest.raises(ValueError, match="budget"):
        AutoGNNSearch(budget=0)
    with pytest.raises(ValueError, match="search_space"):
        AutoGNNSearch(search_space={"attention": []})
    with pytest.raises(ValueError, match="search_space"):
        AutoGNNSearch(search_space={"depth": [1, 2]})
    with pytest.raises(ValueError, match="unknown attention names"):
        AutoGNNSearch(search_space={"attention": ["gcn", "transformer"]})
    with pytest.raises(ValueError, match="search_space"):
        AutoGNNSearch(search_space={"hidden": [0]})
    with pytest.raises(TypeError, match="conservative"):
        AutoGNNSearch(conservative=1)
    g = _tiny_graph()
    with pytest.raises(ValueError, match="data has no node features"):
        AutoGNNSearch(budget=1, epochs=1).search(Data(y=g.y, edge_index=g.edge_index, train_mask=g.train_mask))
    with pytest.raises(ValueError, match="budget"):
        AutoGNNSearch(budget=1, epochs=1).search(g, budget=0)
    with pytest.raises(ValueError, match="no child"):
        AutoGNNSearch().result()


def test_conservative_explorer_changes_one_class_of_the_best_child():
    search = AutoGNNSearch(budget=6, epochs=3, search_space=FAST, seed=1)
    g = _tiny_graph()
    search.search(g, budget=1)
    for _ in range(5):
        best = search.archs[max(range(len(search.val_accs)), key=lambda i: search.val_accs[i])]
        search.step(g)
        child = search.archs[-1]
        changed = {k for a, b in zip(best, child, strict=True) for k in a if a[k] != b[k]}
        assert len(changed) == 1, (best, child)
    assert len({repr(a) for a in search.archs}) == 6  # distinct children: the budget counts architectures


def test_parameter_sharing_only_between_homogeneous_layers():
    g = prepare_graph(_tiny_graph())
    search = AutoGNNSearch(budget=2, epochs=3, search_space=FAST, seed=0)
    parent = [
        {"attention": "gat", "aggregation": "sum", "activation": "relu", "hidden": 8, "heads": 2},
        {"attention": "gcn", "aggregation": "sum", "heads": 1},
    ]
    search._child(parent, g, 0, share=True)
    stored = search.shared[(0, 8, 8, 2, "gat", "relu", True)][1]
    # aggregation holds no parameters: same shapes, attention and activation -> the weights are inherited
    same = [dict(parent[0], aggregation="max"), parent[1]]
    net_same = build_gnn(same, 8, 3)
    assert net_same.layers[0].signature() == (8, 8, 2, "gat", "relu", True)
    _, _, inherited = search._child(same, g, 1, share=True)
    assert inherited == 1
    # another activation or width: heterogeneous -> nothing inherited
    for other in (dict(parent[0], activation="tanh"), dict(parent[0], hidden=4), dict(parent[0], attention="gcn")):
        _, _, inherited = search._child([other, parent[1]], g, 2, share=True)
        assert inherited == 0, other
    assert all(key[0] == 0 for key in search.shared)  # the output layer is never shared
    assert stored["weight"].shape == (8, 16)


def test_search_is_seeded_and_resumes_exactly():
    g = _tiny_graph()
    full = AutoGNNSearch(budget=5, epochs=4, search_space=FAST, seed=3).search(g)
    first = AutoGNNSearch(budget=5, epochs=4, search_space=FAST, seed=3)
    first.search(g, budget=2)
    state = first.state_dict()
    resumed = AutoGNNSearch(budget=5, epochs=4, search_space=FAST, seed=3)
    resumed.load_state_dict(state)
    out = resumed.search(g)
    assert out.archs == full.archs
    assert out.val_accs == full.val_accs
    with pytest.raises(ValueError, match="another search space"):
        AutoGNNSearch(num_layers=3).load_state_dict(state)
    with pytest.raises(ValueError, match="newer"):
        resumed.load_state_dict({**state, "version": 2})


@pytest.fixture(scope="module")
def cora(shared_data, tmp_path_factory):
    from torch_geometric.datasets import Planetoid

    root = tmp_path_factory.mktemp("planetoid")
    shutil.copytree(shared_data / "planetoid" / "Cora", root / "Cora")
    return Planetoid(str(root), "Cora")[0]


@pytest.mark.slow
def test_auto_gnn_children_beat_random_search_of_the_same_budget_on_cora(cora):
    """Budget 12 children (30 epochs each) on Cora: Auto-GNN vs a random search of the same budget.

    Measured (seeds 0, 1, 2; see the report): mean validation accuracy of the evaluated children 0.762 / 0.716 /
    0.736 vs random 0.714 / 0.657 / 0.691 (gain +0.048 / +0.059 / +0.045); best child found 0.808 / 0.794 / 0.800
    vs 0.796 / 0.798 / 0.810 (the found architecture does NOT reliably beat random search at this budget; its
    retrained test accuracy 0.805 / 0.796 / 0.783 vs 0.785 / 0.796 / 0.800). Budget 20: children mean gain
    +0.046 / +0.047 / +0.063, best found 0.808 / 0.796 / 0.814 vs 0.796 / 0.798 / 0.810. CI runs seeds 0 and 1
    (time budget).
    """
    torch.set_num_threads(1)
    space = {"hidden": [8, 16, 32], "heads": [1, 2]}
    gains, best_gaps = [], []
    for seed in (0, 1):
        search = AutoGNNSearch(budget=12, epochs=30, search_space=space, seed=seed)
        found = search.search(cora)
        rand = search.random_search(cora)
        assert len(found.archs) == len(rand.archs) == 12
        gains.append(statistics.mean(found.val_accs) - statistics.mean(rand.val_accs))
        best_gaps.append(found.best_val - rand.best_val)
    print("mean-child gain per seed", gains, "best-found gap per seed", best_gaps)
    assert min(gains) > 0.03
    assert statistics.mean(best_gaps) > -0.02
