"""SSVI: functional core, SparseVariationalLinear, the SSVI callback (budget, state, errors), effect on digits."""

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn

from litmix.callbacks import SSVI
from litmix.functional.ssvi import (
    folded_normal_moments,
    gaussian_kl,
    inverse_softplus,
    removal_scores,
    ssvi_support_update,
)
from litmix.layers import SparseVariationalConv2d, SparseVariationalLinear, mc_predict, to_sparse_variational
from litmix.testing import TinyClassifier, TinyDataModule, make_trainer

# ------------------------------------------------------------------------------------------------ functional core


def test_gaussian_kl_matches_torch_distributions_on_the_support_only():
    torch.manual_seed(0)
    mu, sigma = torch.randn(5, 7), torch.rand(5, 7) + 0.05
    mask = torch.rand(5, 7) > 0.5
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, sigma), torch.distributions.Normal(torch.zeros(()), torch.tensor(0.3))
    )
    assert torch.allclose(gaussian_kl(mu, sigma, 0.3, mask), ref[mask].sum(), rtol=1e-5)
    assert torch.allclose(gaussian_kl(mu, sigma, 0.3), ref.sum(), rtol=1e-5)
    # whatever mu and sigma hold off the support, they add nothing and get no gradient
    mu.requires_grad_(True)
    sigma = sigma.clone().requires_grad_(True)
    gaussian_kl(mu, sigma, 0.3, mask).backward()
    assert not mu.grad[~mask].any()
    assert not sigma.grad[~mask].any()


def test_folded_normal_moments_match_monte_carlo():
    mu, sigma = torch.tensor([0.0, 0.3, -1.0, 2.0, 10.0]), torch.tensor([1.0, 0.5, 0.7, 0.1, 1.0])
    mean, var = folded_normal_moments(mu, sigma)
    g = torch.Generator().manual_seed(0)
    draws = (mu.double() + sigma.double() * torch.randn(200_000, 5, generator=g, dtype=torch.float64)).abs()
    assert torch.allclose(mean, draws.mean(0), rtol=0.01)
    assert torch.allclose(var, draws.var(0), rtol=0.03)


def test_snr_abs_ranks_like_mu_over_sigma_and_stays_finite():
    r = torch.linspace(0, 50, 5001, dtype=torch.float64)
    snr = removal_scores(r, torch.ones_like(r), "snr_abs")
    assert bool((snr[1:] > snr[:-1]).all())  # strictly increasing in |mu| / sigma
    assert math.isclose(float(snr[0]), math.sqrt(2 / math.pi) / math.sqrt(1 - 2 / math.pi), rel_tol=1e-9)
    tiny = removal_scores(torch.tensor([1.0]), torch.tensor([1e-30]), "snr_abs")
    assert bool(torch.isfinite(tiny).all())


def test_support_update_keeps_the_budget_removes_lowest_and_adds_largest_gradient():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(20, 30, generator=g)
    rho = torch.randn(20, 30, generator=g)
    mask = torch.rand(20, 30, generator=g) < 0.2
    mu = mu * mask
    grad = torch.randn(20, 30, generator=g)
    new = ssvi_support_update(mu, rho, mask, 0.25, "snr", grad, "gradient")
    k = round(0.25 * int(mask.sum()))
    assert int(new.sum()) == int(mask.sum())
    removed, added = mask & ~new, new & ~mask
    assert int(removed.sum()) <= k
    assert int(added.sum()) == int(removed.sum())
    scores = removal_scores(mu, F.softplus(rho), "snr").masked_fill(~mask, float("inf")).reshape(-1)
    dropped = torch.zeros(mask.numel(), dtype=torch.bool)
    dropped[scores.topk(k, largest=False).indices] = True
    dropped = dropped.view(mask.shape)
    assert bool(new[mask & ~dropped].all())
    assert not (removed & ~dropped).any()
    # the added coordinates (re-added dropped ones included) carry the largest |gradient| among the candidates
    candidates, grown = ~mask | dropped, new & (~mask | dropped)
    assert int(grown.sum()) == k
    assert float(grad.abs()[grown].min()) >= float(grad.abs()[candidates & ~grown].max())
    a = ssvi_support_update(mu, rho, mask, 0.25, "mean", None, "random", torch.Generator().manual_seed(1))
    b = ssvi_support_update(mu, rho, mask, 0.25, "mean", None, "random", torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert int(a.sum()) == int(mask.sum())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: gaussian_kl(torch.zeros(2), torch.ones(2), 0.0), "prior_std"),
        (lambda: gaussian_kl(torch.zeros(2), torch.ones(3), 1.0), "shape"),
        (lambda: removal_scores(torch.zeros(2), torch.ones(2), "snrr"), "criterion"),
        (lambda: ssvi_support_update(torch.zeros(4), torch.zeros(4), torch.ones(4, dtype=torch.bool), 1.5), "fraction"),
        (lambda: ssvi_support_update(torch.zeros(4), torch.zeros(4), torch.ones(4, dtype=torch.bool), 0.5), "gradient"),
        (lambda: inverse_softplus(0.0), "sigma"),
    ],
)
def test_functional_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------------------ layer


def test_local_reparameterisation_matches_the_weight_posterior():
    torch.manual_seed(0)
    layer = SparseVariationalLinear(6, 3, prior_std=1.0, init_sigma=0.5)
    mask = torch.rand(3, 6) < 0.5
    layer.set_support(mask)
    x = torch.randn(1, 6).expand(40_000, 6)
    out = layer.train()(x).detach()
    mean = F.linear(x[:1], layer.weight, layer.bias)[0]
    var = F.linear(x[:1] ** 2, (F.softplus(layer.weight_rho) * mask) ** 2)[0]
    assert torch.allclose(out.mean(0), mean, atol=0.02)
    assert torch.allclose(out.var(0), var, rtol=0.05)
    assert not layer.weight[~mask].any()
    assert torch.equal(layer.eval()(x[:2]), F.linear(x[:2], layer.weight, layer.bias))


def test_conversion_keeps_parameters_and_state_dict_follows_persistent_rho():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    w, b = net[2].weight, net[2].bias
    assert to_sparse_variational(net, layer_names=["2"]) == ["2"]
    assert isinstance(net[2], SparseVariationalLinear)
    assert type(net[0]) is nn.Linear
    assert net[2].weight is w
    assert net[2].bias is b
    assert "2.weight_rho" in net.state_dict()
    net[2].persistent_rho = False
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    plain.load_state_dict(net.state_dict(), strict=True)  # the mean network loads into the plain model
    net.load_state_dict(plain.state_dict(), strict=True)  # and back, rho untouched
    p = mc_predict(net, torch.randn(5, 4), num_samples=4)
    assert torch.allclose(p.sum(-1), torch.ones(5))
    assert net.training


def test_conv_local_reparameterisation_matches_the_weight_posterior():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect", bias=True)
    net = nn.Sequential(conv)
    assert to_sparse_variational(net, prior_std=1.0, init_sigma=0.3) == ["0"]
    layer = net[0]
    assert isinstance(layer, SparseVariationalConv2d)
    assert layer.weight is conv.weight
    assert layer.padding_mode == "reflect"
    layer.set_support(torch.rand(3, 2, 3, 3) < 0.4)
    x = torch.randn(1, 2, 4, 4).expand(20_000, 2, 4, 4)
    out = layer.train()(x).detach()
    mean = layer._conv_forward(x[:1], layer.weight, layer.bias)[0]
    var = layer._conv_forward(x[:1] ** 2, layer.sigma().square(), None)[0]
    assert torch.allclose(out.mean(0), mean, atol=0.03)
    assert torch.allclose(out.var(0), var, rtol=0.06, atol=1e-4)
    assert torch.equal(layer.eval()(x[:2]), layer._conv_forward(x[:2], layer.weight, layer.bias))


class _TinyConv(TinyClassifier):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Unflatten(1, (2, 2, 2)), nn.Conv2d(2, 6, 2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(54, 4)
        )


def test_callback_keeps_a_conv_net_at_budget_and_its_checkpoint_strict():
    pl.seed_everything(0)
    model = _TinyConv()
    cb = SSVI(sparsity=0.5, update_every=2, end_fraction=1.0, init_sigma=0.01)
    make_trainer(callbacks=[cb], max_steps=6).fit(model, datamodule=TinyDataModule())
    assert type(model.net[1]).__name__ == "SparseVariationalConv2d"  # by name: doctest collection may re-import
    assert cb.n_updates == 2
    assert int(model.net[1].weight_mask.sum()) == round(0.5 * model.net[1].weight.numel())
    assert cb.engine.check_weights() == {}
    _TinyConv().load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: to_sparse_variational(nn.Sequential(nn.Conv1d(1, 2, 3))), ValueError, "no nn.Linear"),
        (lambda: to_sparse_variational(nn.Sequential(nn.Linear(2, 2)), layer_names=["5"]), ValueError, "layer_names"),
        (lambda: to_sparse_variational(nn.Sequential(nn.Linear(2, 2)), prior_std=0.0), ValueError, "prior_std"),
        (lambda: to_sparse_variational(nn.Sequential(nn.Linear(2, 2)), init_sigma=-1.0), ValueError, "init_sigma"),
        (lambda: to_sparse_variational("net"), TypeError, "model"),
        (lambda: SparseVariationalLinear(2, 2, prior_std=float("nan")), ValueError, "prior_std"),
        (lambda: SparseVariationalLinear(0, 2), ValueError, "in_features"),
        (lambda: SparseVariationalLinear(2, 2).set_support(torch.ones(3, 3, dtype=torch.bool)), ValueError, "shape"),
        (lambda: mc_predict(nn.Linear(2, 2), torch.ones(1, 2), num_samples=-1), ValueError, "num_samples"),
    ],
)
def test_layer_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ------------------------------------------------------------------------------------------------ callback


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sparsity": 1.0}, ValueError, "sparsity"),
        ({"sparsity": -0.1}, ValueError, "sparsity"),
        ({"sparsity": "0.9"}, TypeError, "sparsity"),
        ({"prior_std": 0.0}, ValueError, "prior_std"),
        ({"prior_std": -1.0}, ValueError, "prior_std"),
        ({"init_sigma": 0.0}, ValueError, "init_sigma"),
        ({"kl_weight": -0.5}, ValueError, "kl_weight"),
        ({"num_samples": 0}, ValueError, "num_samples"),
        ({"removal": "magnitude"}, ValueError, "removal"),
        ({"addition": "momentum"}, ValueError, "addition"),
        ({"update_every": 0}, ValueError, "update_every"),
        ({"zeta": 0.0}, ValueError, "zeta"),
        ({"end_fraction": 1.5}, ValueError, "end_fraction"),
        ({"distribution": "er"}, ValueError, "distribution"),
        ({"regrow_sigma": "zero"}, ValueError, "regrow_sigma"),
        ({"layer_names": []}, ValueError, "layer_names"),
        ({"layer_names": "net.0"}, TypeError, "layer_names"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SSVI(**kwargs)


class _NoLinear(TinyClassifier):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Unflatten(1, (1, 8)), nn.Conv1d(1, 4, 8), nn.Flatten())


@pytest.mark.parametrize(
    ("module", "cb", "match"),
    [
        (_NoLinear(), SSVI(), "no nn.Linear"),
        (TinyClassifier(), SSVI(layer_names=["net.1"]), "layer_names"),
    ],
)
def test_nothing_to_convert_fails_at_setup_before_training(module, cb, match):
    trainer = make_trainer(callbacks=[cb], max_steps=1)
    with pytest.raises(ValueError, match=match):
        trainer.fit(module, datamodule=TinyDataModule())
    assert trainer.global_step == 0


class _Probe(Callback):
    """After SSVI's support update (same hook, later in the list): budget, zeros, fresh sigma and optimizer state."""

    def __init__(self, ssvi):
        self.ssvi = ssvi
        self.seen_updates = 0
        self.counts = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        ssvi = self.ssvi
        for name, layer in ssvi.layers.items():
            mask = ssvi.engine.masks[f"{name}.weight"]
            budget = round((1 - ssvi.sparsity) * mask.numel())
            assert int(mask.sum()) == budget, (trainer.global_step, name)
            assert torch.equal(mask, ssvi.engine.masks[f"{name}.weight_rho"])
            assert layer.weight_mask is mask
            assert not layer.weight[~mask].any()
            assert not layer.weight.grad[~mask].any()
            assert not layer.weight_rho.grad[~mask].any()
            self.counts.append(int(mask.sum()))
        if ssvi.n_updates > self.seen_updates:  # an update just happened: added coordinates start afresh
            self.seen_updates = ssvi.n_updates
            for name, layer in ssvi.layers.items():
                added = ssvi.engine.masks[f"{name}.weight"] & ~self.masks_before[name]
                assert added.any()
                assert not layer.weight[added].any()
                assert torch.allclose(F.softplus(layer.weight_rho[added]), torch.tensor(ssvi.init_sigma), rtol=1e-5)
                state = optimizer.state[layer.weight]
                assert not state["exp_avg"][added].any()
                assert not state["exp_avg_sq"][added].any()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.masks_before = {n: self.ssvi.engine.masks[f"{n}.weight"].clone() for n in self.ssvi.layers}

    def on_train_start(self, trainer, pl_module):
        self.on_train_batch_end(trainer, pl_module, None, None, 0)


@pytest.mark.parametrize("addition", ["gradient", "random"])
def test_support_stays_exactly_at_the_budget_after_every_update(addition):
    pl.seed_everything(0)
    model = TinyClassifier(hidden=32)
    cb = SSVI(sparsity=0.8, update_every=2, zeta=0.5, end_fraction=1.0, addition=addition, init_sigma=0.02)
    probe = _Probe(cb)
    make_trainer(callbacks=[cb, probe], max_steps=12).fit(model, datamodule=TinyDataModule())
    assert cb.n_updates == 5
    assert probe.seen_updates == 5
    assert len(probe.counts) == 2 * 12
    assert cb.engine.sparsity_report()["global"] == pytest.approx(0.8, abs=1e-3)
    assert cb.engine.check_weights() == {}


def test_kl_term_is_the_support_kl_over_n_and_dense_vi_never_updates():
    pl.seed_everything(0)
    model = TinyClassifier()
    cb = SSVI(sparsity=0.0, prior_std=0.5, init_sigma=0.05, kl_weight=0.5, update_every=1)
    trainer = make_trainer(callbacks=[cb], max_steps=3, log_every_n_steps=1)
    trainer.fit(model, datamodule=TinyDataModule())
    assert cb.n_updates == 0
    assert all(bool(layer.weight_mask.all()) for layer in cb.layers.values())
    expected = sum(float(layer.kl().detach()) for layer in cb.layers.values()) / 64  # TinyDataModule has 64 samples
    assert cb.loss_term(trainer, model, None, 0, None).item() == pytest.approx(expected, rel=1e-6)
    assert cb.loss_term_weight == 0.5
    assert "ssvi/loss_epoch" in trainer.callback_metrics


def test_second_fit_keeps_the_support_and_posterior():
    pl.seed_everything(0)
    model = TinyClassifier()
    cb = SSVI(sparsity=0.5, update_every=100, init_sigma=0.01)
    make_trainer(callbacks=[cb], max_steps=2).fit(model, datamodule=TinyDataModule())
    masks = {n: m.clone() for n, m in cb.engine.masks.items()}
    make_trainer(callbacks=[cb], max_steps=2).fit(model, datamodule=TinyDataModule())
    assert all(torch.equal(masks[n], cb.engine.masks[n]) for n in masks)


def test_logs_like_every_pruner_per_layer_sparsity_image_churn_and_final_values(tmp_path):
    """The shell logs the ``weight`` supports per layer (not ``weight_rho``), the image, churn and final values."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    pl.seed_everything(0)
    logger = CSVLogger(tmp_path, name="csv")
    cb = SSVI(sparsity=0.5, update_every=2, end_fraction=1.0, init_sigma=0.01)
    trainer = make_trainer(callbacks=[cb], max_steps=6, logger=logger, log_every_n_steps=1)
    trainer.fit(TinyClassifier(), datamodule=TinyDataModule())
    assert cb.n_updates == 2
    assert cb.layer_sparsity == {"net.0.weight": 0.5, "net.2.weight": 0.5, "global": 0.5}
    assert trainer.callback_metrics["ssvi/sparsity/net.0.weight"] == pytest.approx(0.5)
    assert 0.0 < float(trainer.callback_metrics["ssvi/churn"]) <= 0.5
    with open(logger.log_dir + "/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert not any(k.endswith("weight_rho") for k in rows[0])
    final = [r for r in rows if r.get("ssvi/final_sparsity")]
    assert len(final) == 1
    assert float(final[0]["ssvi/final_sparsity/net.2.weight"]) == pytest.approx(0.5)
    assert float(final[0]["ssvi/updates"]) == 2.0
    assert float(final[0]["ssvi/final_sigma_mean"]) == pytest.approx(cb.sigma_mean())
    pytest.importorskip("matplotlib")
    assert list((tmp_path / "csv" / "version_0" / "images").glob("ssvi_sparsity_per_layer_step*.png"))


# ------------------------------------------------------------------------------------------------ effect on digits

# Digits (sklearn, 1,797 8x8 images), stratified 70/30 split per seed, MLP 64-128-128-10, Adam 5e-3, batch 64,
# 20 epochs (400 steps); SSVI at 90 % sparsity (update every 25 steps, zeta 0.5, until 75 % of the run), prior
# N(0, 1), init sigma 1e-3, full ELBO (kl_weight 1); dense mean-field VI = SSVI(sparsity=0) with the same prior;
# deterministic = the same MLP without the callback; 32-sample Monte Carlo predictive for both VI nets.
# Measured (accuracy / ECE (15 bins, torchmetrics) / NLL on the 539 test digits; H = mean predictive entropy in nats
# on the same digits with N(0, 0.5^2) noise added, an out-of-distribution proxy):
#   seed | SSVI 90 %                        | dense VI                         | deterministic
#   0    | 0.9630 / 0.0294 / 0.1286, H 0.408 | 0.9741 / 0.0117 / 0.0927, H 0.303 | 0.9704 / 0.0201 / 0.1034, H 0.200
#   1    | 0.9556 / 0.0171 / 0.1358, H 0.335 | 0.9704 / 0.0106 / 0.1003, H 0.275 | 0.9648 / 0.0195 / 0.1182, H 0.195
#   2    | 0.9444 / 0.0223 / 0.1745, H 0.364 | 0.9444 / 0.0221 / 0.1359, H 0.299 | 0.9648 / 0.0117 / 0.1064, H 0.211
# The paper's "calibration at least as good as dense VI" did NOT reproduce: SSVI's ECE and NLL are worse than dense
# VI's on seeds 0 and 1, and on seed 2 its ECE is equal within 0.0002 but its NLL worse (also worse on all three seeds
# on the 64-256-256-10 MLP, 60 epochs, Adam 1e-3). What held on every seed, asserted with about 2x slack: SSVI keeps
# exactly 90 % sparsity, its accuracy is within 0.03 of dense VI's (gaps 0.0111 / 0.0148 / 0.0), its predictive stays
# calibrated in absolute terms (ECE <= 0.06, NLL <= 0.35), and it is more uncertain than dense VI on the noised digits
# (H gaps +0.105 / +0.060 / +0.065; asserted >= +0.03; part of it is its lower confidence on clean digits, see NLL).


class _MLP(pl.LightningModule):
    def __init__(self, hidden=128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, t = batch
        return F.cross_entropy(self(x), t)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=5e-3)


def _digits_run(seed, variant):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch.utils.data import DataLoader, TensorDataset
    from torchmetrics.classification import MulticlassCalibrationError

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    train, test = train_test_split(list(range(len(y))), test_size=0.3, stratify=y.numpy(), random_state=seed)
    pl.seed_everything(seed, verbose=False)
    model = _MLP()
    loader = DataLoader(
        TensorDataset(x[train], y[train]), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    cbs = (
        [] if variant == "det" else [SSVI(0.9 if variant == "ssvi" else 0.0, prior_std=1.0, update_every=25, seed=seed)]
    )
    make_trainer(callbacks=cbs, max_epochs=20).fit(model, train_dataloaders=loader)
    probs = mc_predict(model, x[test], num_samples=32 if cbs else 0)
    target = y[test]
    acc = float((probs.argmax(-1) == target).float().mean())
    ece = float(MulticlassCalibrationError(num_classes=10, n_bins=15, norm="l1")(probs, target))
    nll = float(F.nll_loss(probs.clamp_min(1e-12).log(), target))
    realised = cbs[0].engine.sparsity_report()["global"] if cbs else 0.0
    # out-of-distribution proxy: the test digits with strong Gaussian noise; mean predictive entropy (nats)
    noisy = x[test] + 0.5 * torch.randn(x[test].shape, generator=torch.Generator().manual_seed(seed))
    p_noisy = mc_predict(model, noisy, num_samples=32 if cbs else 0)
    entropy = float(-(p_noisy * p_noisy.clamp_min(1e-12).log()).sum(-1).mean())
    return {"acc": acc, "ece": ece, "nll": nll, "sparsity": realised, "noisy_entropy": entropy}


@pytest.fixture(scope="module")
def digits_runs():
    pytest.importorskip("sklearn")
    return {(seed, v): _digits_run(seed, v) for seed in (0, 1, 2) for v in ("ssvi", "vi")}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssvi_at_90_percent_stays_near_dense_vi_on_digits(digits_runs, seed):
    ssvi, vi = digits_runs[(seed, "ssvi")], digits_runs[(seed, "vi")]
    assert ssvi["sparsity"] == pytest.approx(0.9, abs=1e-4)
    assert ssvi["acc"] >= vi["acc"] - 0.03, (seed, ssvi, vi)
    assert ssvi["ece"] <= 0.06, (seed, ssvi)
    assert ssvi["nll"] <= 0.35, (seed, ssvi)
    assert ssvi["noisy_entropy"] >= vi["noisy_entropy"] + 0.03, (seed, ssvi, vi)
