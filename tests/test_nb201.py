import pytest
import torch
from scipy.stats import kendalltau, spearmanr

from litmix.nas.nb201 import (
    EDGES,
    NUM_CELLS,
    OPS,
    NB201Cell,
    all_codes,
    arch_to_code,
    build_nb201_network,
    code_to_arch,
    count_ops,
    load_nb201,
    make_op,
    nb201_param_count,
    parse_code,
)


@pytest.fixture(scope="module")
def nb201(shared_data):
    return load_nb201(shared_data / "nb201" / "nb201_zen.zip", "cifar10")


def test_op_and_edge_order():
    assert OPS == ("skip_connect", "none", "nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3")
    assert EDGES == ((1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4))


def test_arch_string_round_trip():
    codes = all_codes()
    assert len(codes) == NUM_CELLS == len(set(codes)) == 15625
    strings = {code_to_arch(c) for c in codes}
    assert len(strings) == NUM_CELLS
    for code in codes[::97]:
        assert arch_to_code(code_to_arch(code)) == code
        assert parse_code(str(code)) == code
    # edge (1,4) is node 3's input from node 0; edge (2,3) is node 2's input from node 1
    assert code_to_arch((0, 1, 2, 3, 4, 0)) == (
        "|skip_connect~0|+|none~0|nor_conv_1x1~1|+|nor_conv_3x3~0|avg_pool_3x3~1|skip_connect~2|"
    )


@pytest.mark.parametrize(
    "bad", ["|nor_conv_3x3~0|+|none~0|", "|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|", (0, 1, 5, 0, 0, 0)]
)
def test_bad_arch_raises(bad):
    with pytest.raises(ValueError, match="NB201"):
        parse_code(bad)


def test_load_covers_all_cells(nb201):
    assert len(nb201) == NUM_CELLS
    accs = sorted(r.val_accuracy for r in nb201.values())
    assert accs[0] == pytest.approx(10.0, abs=0.5)
    assert accs[-1] == pytest.approx(91.57, abs=0.01)
    with pytest.raises(ValueError, match="dataset"):
        load_nb201("unused.zip", "mnist")


def test_decoding_params_rank_kendall(nb201):
    """9 #conv3x3 + #conv1x1 (proportional to parameters) ranks cells with tau 0.538; a wrong op order is far worse."""
    archs = list(nb201)
    acc = [nb201[a].val_accuracy for a in archs]
    ops = [count_ops(a) for a in archs]
    tau = kendalltau([9 * o["nor_conv_3x3"] + o["nor_conv_1x1"] for o in ops], acc)[0]
    swapped = kendalltau([9 * o["nor_conv_1x1"] + o["nor_conv_3x3"] for o in ops], acc)[0]
    assert tau == pytest.approx(0.538, abs=0.01)
    assert swapped < 0.36
    params = [nb201_param_count(a) for a in archs]
    assert kendalltau(params, acc)[0] == pytest.approx(0.538, abs=0.005)
    assert spearmanr(params, acc)[0] == pytest.approx(0.715, abs=0.005)


def test_builder_forward_and_param_count():
    archs = [(1,) * 6, (0,) * 6, (3,) * 6, (2, 3, 1, 1, 1, 1), (2,) * 6]
    counts = []
    for code in archs:
        net = build_nb201_network(code, C=8, N=1, num_classes=7)
        out = net(torch.randn(2, 3, 16, 16))
        assert out.shape == (2, 7)
        assert net.forward_pre_gap(torch.randn(2, 3, 16, 16)).shape == (2, 32, 4, 4)
        n = sum(p.numel() for p in net.parameters())
        assert n == nb201_param_count(code, C=8, N=1, num_classes=7)
        counts.append(n)
    assert counts[0] == counts[1] < counts[2] < counts[3] < counts[4]
    # full-size network: the NB201 reference count of the all-conv3x3 cell (1.53 M incl. BN)
    assert nb201_param_count((2,) * 6) == sum(p.numel() for p in build_nb201_network((2,) * 6).parameters())


def test_cell_semantics():
    """Node j = sum of ops on its incoming edges; all-none cell outputs zeros, skip chain sums inputs."""
    x = torch.randn(1, 4, 5, 5)
    assert torch.equal(NB201Cell(4, (1,) * 6)(x), torch.zeros_like(x))
    # only edge (1,4) skip: output = x; skip everywhere: n2 = x, n3 = x + n2 = 2x, n4 = x + n2 + n3 = 4x
    assert torch.allclose(NB201Cell(4, (1, 1, 0, 1, 1, 1))(x), x)
    assert torch.allclose(NB201Cell(4, (0,) * 6)(x), 4 * x)
    with pytest.raises(ValueError, match="make_op"):
        make_op("max_pool_3x3", 4)
