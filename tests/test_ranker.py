import json
import math
import random
from pathlib import Path

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


class _Interrupt(Exception):
    pass


def _interrupt_after(ranker, n):
    """Make ``ranker.score_one`` raise after ``n`` architectures (a run killed part-way)."""
    real, calls = ranker.score_one, []

    def score_one(i):
        if len(calls) == n:
            raise _Interrupt
        calls.append(i)
        return real(i)

    ranker.score_one = score_one
    return calls


def test_interrupted_run_resumes_from_the_rows_already_scored(tmp_path):
    path = str(tmp_path / "scores.jsonl")
    uninterrupted = _small_ranker().score_all()
    first = _small_ranker(resume_file=path)
    _interrupt_after(first, 4)
    with pytest.raises(_Interrupt):
        first.score_all()
    with open(path, "a") as fh:  # the row being written when the process died, cut short
        fh.write('{"i": 5, "row": {"arch"')
    second = _small_ranker(resume_file=path)
    calls = _interrupt_after(second, 99)
    assert second.score_all() == uninterrupted
    assert calls == [4, 5], "only the two rows missing from the file are scored again"
    third = _small_ranker(resume_file=path)
    assert _interrupt_after(third, 99) == []
    assert third.score_all() == uninterrupted
    assert third.score_all() == uninterrupted
    assert len(Path(path).read_text().splitlines()) == 1 + 4 + 1 + 2


def test_resume_file_of_another_configuration_is_refused(tmp_path):
    path = str(tmp_path / "scores.jsonl")
    _small_ranker(resume_file=path).score_all()
    with pytest.raises(ValueError, match=r"resume_file=.*another configuration"):
        _small_ranker(resume_file=path, seed=1).score_all()
    with pytest.raises(ValueError, match=r"resume_file=.*another configuration"):
        ProxyRanker(
            CODES, names=["params"], C=4, N=1, batch_size=4, input_shape=(3, 8, 8), resume_file=path
        ).score_all()
    with pytest.raises(ValueError, match="not this ranker's architectures"):
        ProxyRanker(
            CODES[::-1],
            names=["params", "synflow", "snip"],
            C=4,
            N=1,
            batch_size=4,
            input_shape=(3, 8, 8),
            resume_file=path,
        ).score_all()
    with pytest.raises(ValueError, match=r"ProxyRanker\(resume_file=.*directory"):
        _small_ranker(resume_file=str(tmp_path))
    with pytest.raises(TypeError, match="resume_file"):
        _small_ranker(resume_file=3)


def test_progress_bar_reports_rate_and_eta_on_rank_zero(capsys):
    _small_ranker(progress=True).score_all()
    err = capsys.readouterr().err
    assert "ProxyRanker" in err
    assert "6/6" in err
    assert "arch/s" in err
    _small_ranker().score_all()
    assert "ProxyRanker" not in capsys.readouterr().err


def _ddp_resume_worker(rank, world, store, out_dir, path):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        ranker = _small_ranker(resume_file=path)
        calls = _interrupt_after(ranker, 99)
        table = ranker.score_all()
        with open(f"{out_dir}/rank{rank}.json", "w") as fh:
            json.dump({"table": table, "calls": calls}, fh)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.ddp
def test_two_ranks_resume_a_single_process_run(tmp_path):
    """A run interrupted in one process continues on 2 ranks: each scores half of what is left."""
    path = str(tmp_path / "scores.jsonl")
    uninterrupted = _small_ranker().score_all()
    first = _small_ranker(resume_file=path)
    _interrupt_after(first, 2)
    with pytest.raises(_Interrupt):
        first.score_all()
    args = (2, str(tmp_path / "store"), str(tmp_path), path)
    mp.start_processes(_ddp_resume_worker, args=args, nprocs=2, start_method="fork")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for result in results:
        assert result["table"] == json.loads(json.dumps(uninterrupted))
    assert sorted(results[0]["calls"] + results[1]["calls"]) == [2, 3, 4, 5]
    assert results[0]["calls"] == [2, 4]
    assert results[1]["calls"] == [3, 5]
    assert (tmp_path / "scores.jsonl.rank1").exists()
    assert _small_ranker(resume_file=path).score_all() == uninterrupted


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
