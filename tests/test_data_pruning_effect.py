"""Effect tests of the data-pruning DataModules on real offline data (slow).

Per-seed numbers measured when the margins were set (torch 2.13 CPU, one thread):

* ConceptClusterPruning, digits, keep 50 %, k = 20, tau = 0.01, cosine; MLP 64-128-10 (Adam 1e-3, batch 32,
  40 epochs) on the kept half vs a random half, validation accuracy (seeds 0, 1, 2):
  DBP 0.961 / 0.957 / 0.957, random 0.959 / 0.965 / 0.961 (difference +0.002 / -0.008 / -0.004, mean -0.003);
  full training set 0.970 / 0.974 / 0.974. Spearman(complexity, kept fraction) 0.82 / 0.61 / 0.52;
  Spearman(complexity, kept count) 0.97 / 1.00 / 0.90; fewest kept per class 23 / 36 / 41.
* ComputeAwareFiltering, MNIST (14x14 average-pooled), bucket A = 500 clean images, bucket B = 10,000 images
  with 40 % of the labels replaced by another class; utility curves fitted per bucket from 10 small runs each
  (1 epoch over 250 ... 10,000 samples, 2-16 passes over 500); MLP 196-64-10 (Adam 5e-3, batch 64); test
  error on 5,000 clean t10k images (seeds 0, 1, 2):
  budget 1,000 samples -> top bucket only chosen; error top 0.237 / 0.280 / 0.220 vs all 0.349 / 0.345 / 0.387;
  budget 40,000 samples -> both buckets chosen; error all 0.130 / 0.119 / 0.117 vs top 0.167 / 0.163 / 0.156.
"""

import lightning.pytorch as pl
import pytest
import torch
from scipy.stats import spearmanr
from torch.utils.data import TensorDataset

from litmix.data import IndexedDataset
from litmix.datamodules import ComputeAwareFiltering, ConceptClusterPruning, DigitsDataModule
from litmix.datamodules.mnist import read_idx
from litmix.functional.data_pruning import fit_utility_curve

SEEDS = (0, 1, 2)


def _tensors(dataset):
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([it[0] for it in items]), torch.tensor([int(it[1]) for it in items])


def _train_error(x, y, xv, yv, seed, samples_seen, hidden, lr, batch_size):
    """Train an MLP for ``samples_seen`` samples (epochs over ``x``), return the error on ``(xv, yv)``."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    opt = torch.optim.Adam(net.parameters(), lr)
    done = 0
    while done < samples_seen:
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            if done >= samples_seen:
                break
            b = perm[i : i + batch_size][: samples_seen - done]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
            done += len(b)
    with torch.no_grad():
        return 1.0 - (net(xv).argmax(1) == yv).float().mean().item()


@pytest.mark.slow
def test_concept_cluster_pruning_on_digits_keeps_classes_accuracy_and_favours_complex_clusters():
    measured = []
    for seed in SEEDS:
        base = DigitsDataModule(seed=seed)
        dm = ConceptClusterPruning(base, keep_fraction=0.5, num_clusters=20, tau=0.01, seed=seed)
        dm.setup("fit")
        kept = dm.select()
        x, y = _tensors(dm.train_base)
        xv, yv = _tensors(base.val_dataset)
        assert len(kept) == round(0.5 * len(x))
        per_class = torch.bincount(y[kept], minlength=10)
        assert int(per_class.min()) >= 10, f"seed {seed}: a class is nearly pruned away: {per_class.tolist()}"
        random_half = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: len(kept)]
        epochs = 40 * len(kept)
        acc_dbp = 1 - _train_error(x[kept], y[kept], xv, yv, seed, epochs, 128, 1e-3, 32)
        acc_rnd = 1 - _train_error(x[random_half], y[random_half], xv, yv, seed, epochs, 128, 1e-3, 32)
        rows = dm.table["data"]
        complexity = [r[7] for r in rows]
        rho_fraction = spearmanr(complexity, [r[4] for r in rows]).statistic
        rho_count = spearmanr(complexity, [r[3] for r in rows]).statistic
        measured.append((seed, acc_dbp, acc_rnd, rho_fraction, rho_count, int(per_class.min())))
    print("seed, acc DBP, acc random, rho(complexity, kept fraction), rho(complexity, count), min per class")
    for row in measured:
        print(row)
    diffs = [m[1] - m[2] for m in measured]
    # measured -0.008 worst seed, -0.003 mean: margins with >= 2x slack
    assert min(diffs) >= -0.02, f"DBP worse than a random half by more than noise: {measured}"
    assert sum(diffs) / len(diffs) >= -0.01, f"DBP worse than a random half on average: {measured}"
    # more complex clusters keep a larger share (measured rho >= 0.52) and more samples (>= 0.90)
    assert min(m[3] for m in measured) >= 0.3, measured
    assert min(m[4] for m in measured) >= 0.7, measured


class _Tensors(pl.LightningDataModule):
    """An in-memory DataModule over given tensors, items ``(x, y, index)``."""

    def __init__(self, x, y):
        super().__init__()
        self.train_dataset = IndexedDataset(TensorDataset(x, y))


def _mnist(root, prefix, n=None):
    x = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")[:n].float().div_(255.0)
    x = torch.nn.functional.avg_pool2d(x[:, None], 2).flatten(1).sub_(0.13).div_(0.3)
    return x, read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")[:n].long()


def _fit_bucket(x, y, xv, yv, seed, train):
    """Utility curve of one bucket from small runs: one epoch over growing pools, repeated passes over 500."""
    runs = []
    for pool in (p for p in (250, 500, 1000, 2500, 5000, 10000) if p <= len(x)):
        runs.append((pool, pool, train(x[:pool], y[:pool], pool)))
    for reps in (2, 4, 8, 16):
        runs.append((500 * reps, 500, train(x[:500], y[:500], 500 * reps)))
    n, p, err = zip(*runs, strict=True)
    return fit_utility_curve(n, p, [max(e, 1e-3) for e in err])


@pytest.mark.slow
def test_compute_aware_filtering_small_budget_top_bucket_large_budget_both(shared_data):
    root = shared_data / "mnist" / "MNIST" / "raw"
    x_all, y_all = _mnist(root, "train")
    xv, yv = _mnist(root, "t10k", 5000)
    measured = []
    for seed in SEEDS:
        gen = torch.Generator().manual_seed(1000 + seed)
        perm = torch.randperm(len(x_all), generator=gen)[:10_500]
        x, y = x_all[perm], y_all[perm].clone()
        flip = 500 + torch.nonzero(torch.rand(10_000, generator=gen) < 0.4).flatten()  # bucket B: 40 % wrong labels
        y[flip] = (y[flip] + torch.randint(1, 10, (len(flip),), generator=gen)) % 10

        def train(xs, ys, seen, seed=seed):
            return _train_error(xs, ys, xv, yv, seed, seen, 64, 5e-3, 64)

        top, rest = torch.arange(500), torch.arange(500, 10_500)
        curves = [_fit_bucket(x[b], y[b], xv, yv, seed, train) for b in (top, rest)]
        row = {"seed": seed, "curves": [{k: round(v, 3) for k, v in c.items()} for c in curves]}
        for budget in (1_000, 40_000):
            dm = ComputeAwareFiltering(_Tensors(x, y), budget, curves, buckets=[top.tolist(), rest.tolist()])
            dm.setup("fit")
            kept = dm.select()
            err_top = train(x[top], y[top], budget)
            err_all = train(x, y, budget)
            row[budget] = (dm.num_buckets_selected, round(err_top, 3), round(err_all, 3))
            if budget == 1_000:
                assert dm.num_buckets_selected == 1, row
                assert kept.tolist() == top.tolist()
            else:
                assert dm.num_buckets_selected == 2, row
                assert len(kept) == 10_500
        measured.append(row)
        print(row)
    # the chosen pool beats the other one at both budgets (measured margins >= 0.034 and >= 0.037)
    for row in measured:
        _, top_small, all_small = row[1_000]
        _, top_large, all_large = row[40_000]
        assert top_small < all_small - 0.01, measured
        assert all_large < top_large - 0.01, measured
