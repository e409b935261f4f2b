import json
import math
import random

import numpy as np
import pytest
import scipy.stats
import torch
import torch.multiprocessing as mp
from torch import nn

from litmix.nas.nb201 import all_codes, code_to_arch, load_nb201, nb201_param_count
from litmix.nas.rank_metrics import best_rank_at_k, kendall_tau, precision_at_k, rank_report, spearman_rho
from litmix.nas.ranker import ProxyRanker

# ---------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_correlations_match_scipy_with_ties_and_nans(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=300)
    y = x + rng.normal(size=300)
    x[::7] = np.round(x[::7])  # ties
    y = np.round(y, 1)  # more ties in the truth
    x_nan = x.copy()
    x_nan[:5] = np.nan
    keep = np.isfinite(x_nan)
    assert kendall_tau(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-6)
    assert spearman_rho(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-6)
    assert kendall_tau(x_nan, y) == pytest.approx(scipy.stats.kendalltau(x[keep], y[keep]).statistic, abs=1e-6)
    assert spearman_rho(x_nan, y) == pytest.approx(scipy.stats.spearmanr(x[keep], y[keep]).statistic, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_metrics_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=100), rng.normal(size=100)
    order_x, order_y = np.argsort(-x), np.argsort(-y)
    true_rank = {int(i): r + 1 for r, i in enumerate(order_y)}
    for k in (1, 5, 10, 50):
        assert precision_at_k(x, y, k) == len(set(order_x[:k]) & set(order_y[:k])) / k
        assert best_rank_at_k(x, y, k) == min(true_rank[int(i)] for i in order_x[:k])
    assert precision_at_k(y, y, 10) == 1.0
    assert best_rank_at_k(-y, y, 10) == 91


def test_metric_arguments():
    with pytest.raises(ValueError, match="same length"):
        kendall_tau([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match=r"precision_at_k\(k=0\): k must be an int >= 1"):
        precision_at_k([1.0, 2.0], [1.0, 2.0], 0)
    assert math.isnan(kendall_tau([1.0, float("nan")], [1.0, 2.0]))
    assert rank_report([1, 2, 3], [1, 2, 3], ks=[2])["p@2"] == 1.0


# ---------------------------------------------------------------------------------------------- ranker

CODES = random.Random(0).sample(all_codes(), 6)


def _small_ranker(**kw):
    return ProxyRanker(CODES, names=["params", "synflow", "snip"], C=4, N=1, batch_size=4, input_shape=(3, 8, 8), **kw)


def test_scores_do_not_depend_on_order_or_rng_state():
    table = _small_ranker().score_all()
    torch.manual_seed(123)
    reversed_table = ProxyRanker(
        CODES[::-1], names=["params", "synflow", "snip"], C=4, N=1, batch_size=4, input_shape=(3, 8, 8)
    ).score_all()[::-1]
    assert table == reversed_table
    assert [row["arch"] for row in table] == [code_to_arch(c) for c in CODES]
    assert [row["params"] for row in table] == [float(nb201_param_count(c, C=4, N=1)) for c in CODES]


def test_callables_and_bad_arguments():
    def wide():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 10))

    def narrow():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 10))

    ranker = ProxyRanker([wide, narrow], names=["params"], input_shape=(3, 2, 2))
    table = ranker.score_all()
    assert [r["arch"] for r in table] == ["wide", "narrow"]
    report = ranker.evaluate(table, {"wide": 2.0, "narrow": 1.0}, ks=[1])
    assert report["params"]["kendall"] == 1.0
    with pytest.raises(ValueError, match="archs"):
        ProxyRanker([], names=["params"])
    with pytest.raises(ValueError, match="archs\\[0\\]"):
        ProxyRanker(["not an arch"], names=["params"])
    with pytest.raises(ValueError, match="C must be"):
        ProxyRanker(CODES, C=0)
    with pytest.raises(ValueError, match="missing"):
        ranker.evaluate(table, {"wide": 1.0})


def _ddp_worker(rank, world, store, out_dir):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        table = _small_ranker().score_all()
        with open(f"{out_dir}/rank{rank}.json", "w") as fh:
            json.dump(table, fh)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.ddp
def test_two_rank_scoring_equals_one_process(tmp_path):
    single = _small_ranker().score_all()
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, start_method="fork")
    for rank in range(2):
        table = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert table == json.loads(json.dumps(single)), f"rank {rank} differs from the single-process table"


@pytest.mark.slow
def test_small_nb201_check(shared_data):
    """Ranker on 40 NB201 cells: analytic params tau reproduced exactly, synflow clearly informative."""
    truth = load_nb201(shared_data / "nb201" / "nb201_zen.zip", "cifar10")
    codes = random.Random(1).sample(all_codes(), 40)
    ranker = ProxyRanker(codes, names=["params", "synflow"], C=8, N=1)
    report = ranker.evaluate(ranker.score_all(), truth, ks=[5])
    acc = [truth[code_to_arch(c)].val_accuracy for c in codes]
    analytic = [nb201_param_count(c, C=8, N=1) for c in codes]
    assert report["params"]["kendall"] == pytest.approx(scipy.stats.kendalltau(analytic, acc).statistic, abs=1e-6)
    assert report["synflow"]["spearman"] > 0.5
    assert report["synflow"]["br@5"] <= 10
