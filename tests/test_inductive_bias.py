import itertools

import pytest
import torch

from litmix.functional.inductive_bias import (
    gp_hypothesis_errors,
    inductive_bias_from_errors,
    kernel_inductive_bias,
    mlp_hypothesis_errors,
    neural_inductive_bias,
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


# --------------------------------------------------------------------------------------------- neural networks
def test_batched_ensemble_matches_one_network_trained_alone():
    """Network i of the batched ensemble = the same MLP (same init, same batch order) trained on its own."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g)
    y = (x[:, 0] > 0).long()
    errs = mlp_hypothesis_errors(
        x[:30], y[:30], x[30:], y[30:], 2, width=5, depth=1, epochs=3, num_samples=4, batch_size=8
    )
    # re-run the same draws by hand for network 2
    gen = torch.Generator().manual_seed(0)
    sizes = [3, 5, 5, 2]
    layers = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        b = 1.0 / fan_in**0.5
        w = (torch.rand(4, fan_in, fan_out, generator=gen) * 2 - 1) * b
        bias = (torch.rand(4, 1, fan_out, generator=gen) * 2 - 1) * b
        layers.append(torch.nn.Linear(fan_in, fan_out))
        with torch.no_grad():
            layers[-1].weight.copy_(w[2].T)
            layers[-1].bias.copy_(bias[2, 0])
    net = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1], torch.nn.ReLU(), layers[2])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    target = torch.nn.functional.one_hot(y, 2).float()
    for _ in range(3):
        order = torch.argsort(torch.rand(4, 30, generator=gen), dim=1)[2]
        for start in range(0, 30, 8):
            idx = order[start : start + 8]
            loss = ((net(x[idx]) - target[idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        alone = float(((net(x[30:]) - target[30:]) ** 2).mean())
    assert float(errs[2]) == pytest.approx(alone, rel=1e-4)


def test_neural_arguments_validated():
    from litmix.registry import get_plugin

    info = get_plugin("neural_inductive_bias")
    assert (info.kind, info.family) == ("function", "proxy")
    x, y = torch.zeros(12, 2), torch.zeros(12, dtype=torch.long)
    for kwargs, error, match in [
        ({"target_error": 0.0}, ValueError, r"target_error=0.0"),
        ({"width": 2.5}, TypeError, r"width=2.5"),
        ({"depth": -1}, ValueError, r"depth=-1"),
        ({"epochs": -1}, ValueError, r"epochs=-1"),
        ({"num_samples": 5}, ValueError, r"num_samples=5"),
        ({"lr": float("nan")}, ValueError, r"lr=nan"),
        ({"fit": "bayes"}, ValueError, r"fit='bayes'"),
    ]:
        args = {"target_error": 0.1, **kwargs}
        with pytest.raises(error, match=match):
            neural_inductive_bias(x, y, x, y, 2, **args)
    with pytest.raises(ValueError, match=r"x_test=.*3 features"):
        neural_inductive_bias(x, y, torch.zeros(12, 3), y, 2, 0.1)
    with pytest.raises(ValueError, match=r"num_classes=2.*outside"):
        neural_inductive_bias(x, y + 5, x, y, 2, 0.1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trained_networks_need_far_less_inductive_bias_than_kernels_on_digits(seed):
    """The paper's neural-network claims on digits: relative to the kernel (GP) hypothesis space, the neural
    network hypothesis space encodes much inductive bias (needs far fewer bits at the same data and target), more
    training data lowers the bits needed, and the measure separates architectures (width 16 vs 32)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0).float(), torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test = perm[:300]
    nn_bits, kernel_bits = {}, {}
    for n in (50, 200):
        train = perm[300 : 300 + n]
        args = (x[train], y[train], x[test], y[test], 10, 0.04)
        nn_bits[n] = neural_inductive_bias(
            *args, width=32, depth=1, epochs=20, num_samples=60, seed=seed, fit="moments"
        )
        kernel_bits[n] = kernel_inductive_bias(
            *(a.double() if a.is_floating_point() else a for a in args[:4]),
            10,
            0.04,
            num_samples=500,
            sigma=3.0,
            seed=seed,
            fit="moments",
        )
    train = perm[300:500]
    narrow = neural_inductive_bias(
        x[train],
        y[train],
        x[test],
        y[test],
        10,
        0.04,
        width=16,
        depth=1,
        epochs=20,
        num_samples=60,
        seed=seed,
        fit="moments",
    )
    print(f"seed {seed}: bits at test MSE 0.04: MLP {nn_bits}, kernel {kernel_bits}, width-16 MLP at n=200 {narrow}")
    # measured (seeds 0-4, MLP 64-32-32-10 trained 20 epochs, 60 nets; GP RBF sigma 3, 500 draws):
    #   n=200: MLP 12.2/8.6/10.3/12.6/14.3 bits vs kernel 65.0/67.3/61.1/71.9/77.3 bits;
    #   n=50: MLP 334.8/231.8/346.9/263.9/309.1 (40 Adam steps leave the nets near chance, mean MSE 0.082) vs
    #   kernel 238.0/349.0/263.7/204.3/288.6 -- at n=50 the briefly trained MLPs do NOT beat the kernel on 4 of 5
    #   seeds, so only the n=200 comparison is asserted.
    #   Architectures (n=200, same training): width 16 62.6/43.6/46.6, width 32 12.2/8.6/10.3, width 128 0/0/0,
    #   width 32 with 0 / 3 hidden-hidden layers 16.2/12.7/14.8 / 17.5/19.0/17.7 bits (seeds 0-2).
    assert nn_bits[200] + 30 < kernel_bits[200]
    assert narrow > nn_bits[200] + 20  # the measure separates architectures: the narrower MLP needs more bits
    assert nn_bits[50] > nn_bits[200] + 100
