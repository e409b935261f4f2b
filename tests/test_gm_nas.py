import itertools

import pytest
import torch

from litmix.nas.gm_split import GradientMatchingSplitter, gradient_match_distance, mincut_partition
from litmix.nas.supernet import NB201Supernet


def _brute_force(dist, k, balanced):
    n = dist.shape[0]
    best = None
    for labels in itertools.product(range(k), repeat=n):
        sizes = [labels.count(g) for g in range(k)]
        if min(sizes) == 0 or (balanced and max(sizes) - min(sizes) > 1):
            continue
        cut = sum(1 - float(dist[i, j]) for i, j in itertools.combinations(range(n), 2) if labels[i] != labels[j])
        best = cut if best is None else min(best, cut)
    return best


@pytest.mark.parametrize(("k", "balanced"), [(2, True), (2, False), (3, True)])
def test_mincut_matches_brute_force(k, balanced):
    gen = torch.Generator().manual_seed(k)
    for _ in range(5):
        dist = gradient_match_distance(torch.randn(5, 7, generator=gen))
        groups, cut = mincut_partition(dist, k, balanced)
        assert sorted(i for g in groups for i in g) == list(range(5))
        assert len(groups) == k
        assert all(groups)
        assert cut == pytest.approx(_brute_force(dist, k, balanced), abs=1e-9)


def test_distance_properties():
    g = torch.randn(4, 10)
    d = gradient_match_distance(g)
    assert torch.allclose(d, d.T)
    assert float(d.diagonal().abs().max()) == 0.0
    assert float(gradient_match_distance(torch.stack([g[0], 3 * g[0]]))[0, 1]) < 1e-6
    with pytest.raises(ValueError, match="kind"):
        gradient_match_distance(g, "l1")
    with pytest.raises(ValueError, match="num_groups"):
        mincut_partition(d, 5 + 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identical_ops_land_in_the_same_group(seed):
    """Toy space: ops 0 and 1 are both 3x3 convs with copied weights (identical functions)."""
    torch.manual_seed(seed)
    ops = ["nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3"]
    net = NB201Supernet(C=4, N=1, in_channels=1, reduction="light", ops=ops)
    for cell in net.supernet_cells():
        for edge in cell.edges:
            edge.candidates[1].load_state_dict(edge.candidates[0].state_dict())
    gen = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(3)]
    splitter = GradientMatchingSplitter(repeat=3, seed=seed)
    for edge in range(6):
        s = splitter.edge_split(net, batches, edge)
        assert float(s.distance[0, 1]) < 1e-5
        assert any({0, 1} <= set(g) for g in s.groups), (edge, s.groups)
    children = splitter.split(net, batches)
    assert len(children) == 2
    child_net, allowed = children[0]
    assert child_net is not net
    assert all(len(a) >= 1 for a in allowed)
    split_edges = [e for e in range(6) if len(children[0][1][e]) < 5]
    assert len(split_edges) == 1
    e = split_edges[0]
    assert sorted(children[0][1][e] + children[1][1][e]) == [0, 1, 2, 3, 4]


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_groups"):
        GradientMatchingSplitter(num_groups=1)
    with pytest.raises(ValueError, match="distance"):
        GradientMatchingSplitter(distance="l1")  # type: ignore[arg-type]
