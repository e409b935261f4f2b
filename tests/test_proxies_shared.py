"""Shared passes: several proxies from one forward give the numbers of the one-by-one computation."""

import math

import pytest
import torch
from torch import nn

from litmix.functional.proxies import list_proxies, zero_cost_proxies
from litmix.functional.proxies.shared import plan_shared
from litmix.nas.nb201 import build_nb201_network

ALL = list_proxies()
SHAREABLE = ["grad_norm", "snip", "plain", "fisher", "grasp", "jacob_cov", "epe_nas", "naswot"]


def _equal(a, b):
    """Shared == one-by-one. Measured bit-identical here; rel=1e-6 allows float32 round-off of a backward taken
    with create_graph=True (grasp shares the gradient) or alongside the input gradient (jacob_cov/epe_nas)."""
    assert set(a) == set(b)
    for k in a:
        if isinstance(a[k], dict):
            _equal(a[k], b[k])
        elif math.isnan(a[k]):
            assert math.isnan(b[k]), k
        else:
            assert b[k] == pytest.approx(a[k], rel=1e-6, abs=1e-12), k


CALLS = []


def _count(module, args):  # a function: deepcopy keeps it (and so the copies' forwards are counted)
    CALLS.append(1)


def test_nb201_all_proxies_shared_equal_one_by_one():
    torch.manual_seed(0)
    net = build_nb201_network((2, 3, 0, 4, 2, 1), C=4, N=1)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    one = zero_cost_proxies(net, x, y, names=ALL, seed=0, shared=False)
    both = zero_cost_proxies(net, x, y, names=ALL, seed=0)
    _equal(one, both)
    assert all(math.isfinite(v) for v in both.values())
    per_one = zero_cost_proxies(net, x, y, names=SHAREABLE, seed=0, shared=False, per_layer=True)
    per_both = zero_cost_proxies(net, x, y, names=SHAREABLE, seed=0, per_layer=True)
    _equal(per_one, per_both)


def test_one_forward_serves_all_shareable_proxies():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    net.register_forward_pre_hook(_count)  # deep copies keep the hook: counts the copies' forwards
    CALLS.clear()
    zero_cost_proxies(net, x, y, names=SHAREABLE, seed=0, shared=False)
    assert len(CALLS) == 9  # one forward each, two for grasp
    CALLS.clear()
    out = zero_cost_proxies(net, x, y, names=SHAREABLE, seed=0, return_timings=True)
    assert len(CALLS) == 1
    # the shared pass's wall time is split equally
    assert len({out[f"{n}_seconds"] for n in SHAREABLE}) == 1


def test_what_is_not_shared():
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    plain = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    assert plan_shared(SHAREABLE, {}, plain, True) == [SHAREABLE]
    # grasp makes two forwards in the reference: with dropout, two masks; a temperature changes its loss
    assert "grasp" not in plan_shared(SHAREABLE, {}, net, True)[0]
    assert "grasp" not in plan_shared(SHAREABLE, {"grasp": {"T": 2.0}}, plain, True)[0]
    assert "naswot" not in plan_shared(SHAREABLE, {"naswot": {"gaussian": True}}, plain, True)[0]
    # token ids: the Jacobian proxies forward the embeddings, a forward of their own
    assert plan_shared(SHAREABLE, {}, plain, False) == [
        ["grad_norm", "snip", "plain", "fisher", "grasp", "naswot"],
        ["jacob_cov", "epe_nas"],
    ]
    assert plan_shared(["snip", "synflow", "zen"], {}, plain, True) == []  # a group of one is no group


def test_dropout_model_shared_equals_one_by_one():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    # every shared proxy makes one forward after the seed: the same dropout mask as one by one
    _equal(
        zero_cost_proxies(net, x, y, names=SHAREABLE, seed=3, shared=False),
        zero_cost_proxies(net, x, y, names=SHAREABLE, seed=3),
    )


def test_options_reach_the_shared_pass():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    opts = {"fisher": {"samsung_broadcast": False}, "naswot": {"count": "reference"}}
    a = zero_cost_proxies(net, x, y, names=["fisher", "snip", "naswot"], options=opts, shared=False)
    b = zero_cost_proxies(net, x, y, names=["fisher", "snip", "naswot"], options=opts)
    _equal(a, b)
    assert b["fisher"] != zero_cost_proxies(net, x, y, names=["fisher", "snip"])["fisher"]


@pytest.mark.slow
def test_benchmark_cell_shared_equal_and_faster():
    """The benchmark's cell (C=16, N=5, batch 64): same numbers, shared total <= 0.5x the one-by-one sum.

    Process CPU time (1 thread): robust to other jobs on the machine, unlike wall time.
    """
    import time

    torch.manual_seed(0)
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|avg_pool_3x3~0|skip_connect~1|skip_connect~2|"
    net = build_nb201_network(arch, C=16, N=5)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.process_time()
        one = {n: zero_cost_proxies(net, x, y, names=[n], seed=0)[n] for n in ALL}
        t_one = time.process_time() - start
        start = time.process_time()
        both = zero_cost_proxies(net, x, y, names=ALL, seed=0)
        t_both = time.process_time() - start
    finally:
        torch.set_num_threads(threads)
    _equal(one, both)
    assert t_both <= 0.5 * t_one, (t_both, t_one)
