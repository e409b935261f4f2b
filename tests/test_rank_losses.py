import pytest
import scipy.stats
import torch

from litmix.nas.rank_losses import DiffKendallLoss, diff_kendall_tau, pairwise_rank_loss, zscore


def _data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    y = x + 0.8 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diff_kendall_converges_to_scipy_tau(seed):
    x, y = _data(seed=seed)
    tau = scipy.stats.kendalltau(x.numpy(), y.numpy()).statistic
    assert abs(float(diff_kendall_tau(x, y, alpha=500.0)) - tau) < 0.01
    # monotone in alpha towards tau (catalogue P13: 0.194, 0.350, 0.498, 0.509 for alpha 0.5, 1, 5, 50)
    values = [float(diff_kendall_tau(x, y, alpha=a)) for a in (0.5, 1.0, 5.0, 50.0)]
    assert values == sorted(values)
    assert values[0] < 0.6 * tau


def test_diff_kendall_matches_paper_formula():
    x, y = _data(n=30, seed=3)
    xs, ys = zscore(x), zscore(y)
    pairs = [(i, j) for i in range(30) for j in range(i + 1, 30)]
    ref = sum(torch.tanh(2.0 * (xs[i] - xs[j])) * torch.tanh(2.0 * (ys[i] - ys[j])) for i, j in pairs) / len(pairs)
    assert float(diff_kendall_tau(x, y, alpha=2.0)) == pytest.approx(float(ref), rel=1e-10)
    # scale invariance with standardize=True
    assert float(diff_kendall_tau(5 * x + 3, y, alpha=2.0)) == pytest.approx(float(ref), rel=1e-10)


def test_adam_maximisation_drives_true_tau_up():
    torch.manual_seed(0)
    y = torch.randn(200)
    pred = torch.randn(200, requires_grad=True)
    loss_fn = DiffKendallLoss(alpha=2.0)
    opt = torch.optim.Adam([pred], lr=0.05)
    start = scipy.stats.kendalltau(pred.detach().numpy(), y.numpy()).statistic
    for _ in range(300):
        opt.zero_grad()
        loss = loss_fn(pred, y)
        loss.backward()
        opt.step()
    end = scipy.stats.kendalltau(pred.detach().numpy(), y.numpy()).statistic
    assert abs(start) < 0.2
    assert end > 0.95


def test_pairwise_loss_reference_and_ties():
    pred = torch.tensor([0.3, -1.0, 2.0, 0.5])
    y = torch.tensor([1.0, 0.0, 2.0, 1.0])
    ref, count = 0.0, 0
    for i in range(4):
        for j in range(4):
            if y[i] != y[j]:
                ref += float(torch.log1p(torch.exp(-(pred[j] - pred[i]) * torch.sign(y[j] - y[i]))))
                count += 1
    assert float(pairwise_rank_loss(pred, y)) == pytest.approx(ref / count, rel=1e-6)
    assert float(pairwise_rank_loss(pred, torch.ones(4))) == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        DiffKendallLoss(alpha=0)
    with pytest.raises(ValueError, match="alpha"):
        diff_kendall_tau(torch.ones(3), torch.ones(3), alpha=-1.0)
    with pytest.raises(ValueError, match="same size"):
        diff_kendall_tau(torch.ones(3), torch.ones(4))
