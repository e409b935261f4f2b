import pytest
import torch

from litmix.functional.inductive_bias import (
    gp_hypothesis_errors,
    inductive_bias_from_errors,
    kernel_inductive_bias,
)


def test_hypotheses_interpolate_training_data():
    x = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    # evaluated on the training points themselves the posterior has ~zero variance and mean = labels
    errs = gp_hypothesis_errors(x, y, x, y, 2, num_samples=20, jitter=1e-8)
    assert float(errs.max()) < 1e-4


def test_moment_fit_recovers_a_known_ncx2():
    from scipy.stats import ncx2

    e = torch.tensor(ncx2.rvs(40, 10, scale=0.01, size=20000, random_state=0))
    true_bits = -ncx2.logcdf(0.3, 40, 10, scale=0.01) / torch.log(torch.tensor(2.0)).item()
    assert inductive_bias_from_errors(e, 0.3, fit="moments") == pytest.approx(true_bits, rel=0.1)


def test_bias_falls_as_target_error_rises():
    e = torch.tensor(__import__("scipy.stats", fromlist=["ncx2"]).ncx2.rvs(30, 5, size=3000, random_state=1))
    bits = [inductive_bias_from_errors(e, t, fit="moments") for t in (10.0, 20.0, 30.0)]
    assert bits[0] > bits[1] > bits[2] >= 0


def test_argument_checks():
    e = torch.rand(50) + 1
    with pytest.raises(ValueError, match="target_error"):
        inductive_bias_from_errors(e, 0.0)
    with pytest.raises(ValueError, match="fit"):
        inductive_bias_from_errors(e, 1.0, fit="bayes")
    with pytest.raises(ValueError, match="10 errors"):
        inductive_bias_from_errors(e[:5], 1.0)
    with pytest.raises(ValueError, match="sigma"):
        kernel_inductive_bias(torch.zeros(2, 1), torch.zeros(2), torch.zeros(2, 1), torch.zeros(2), 2, 0.1, sigma=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smaller_training_budget_needs_more_inductive_bias_on_digits(seed):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0), torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test = perm[:300]
    bits = {}
    for n in (20, 100, 400):
        train = perm[300 : 300 + n]
        bits[n] = kernel_inductive_bias(
            x[train], y[train], x[test], y[test], 10, target_error=0.05, sigma=3.0, seed=seed, fit="moments"
        )
    print(f"seed {seed}: bits at test MSE 0.05: {bits}")
    # measured: n=20 169.6/209.7/210.2, n=100 104.9/131.2/121.2, n=400 0.0 (its random hypotheses already
    # average MSE 0.035 < 0.05)
    assert bits[20] > bits[100] + 20
    assert bits[100] > bits[400]


def test_registered_and_arguments_validated():
    from litmix.registry import get_plugin

    info = get_plugin("kernel_inductive_bias")
    assert (info.kind, info.family) == ("function", "proxy")
    assert "2406.15941" in info.paper
    args = (torch.zeros(2, 1), torch.zeros(2), torch.zeros(2, 1), torch.zeros(2))
    for kwargs, error, match in [
        ({"num_classes": 2, "target_error": "0.1"}, TypeError, r"kernel_inductive_bias\(target_error='0.1'\)"),
        ({"num_classes": 2, "target_error": float("nan")}, ValueError, r"target_error=nan"),
        ({"num_classes": 2.0, "target_error": 0.1}, TypeError, r"num_classes=2.0"),
        ({"num_classes": 2, "target_error": 0.1, "num_samples": 5}, ValueError, r"num_samples=5"),
        ({"num_classes": 2, "target_error": 0.1, "sigma": float("inf")}, ValueError, r"sigma=inf"),
        ({"num_classes": 2, "target_error": 0.1, "fit": "bayes"}, ValueError, r"fit='bayes'"),
    ]:
        with pytest.raises(error, match=match):
            kernel_inductive_bias(*args, **kwargs)
