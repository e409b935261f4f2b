import random

import pytest
import torch

from litmix.datamodules.proxy_features import ProxyFeatureDataModule, nb201_layer_features, nb201_layer_names
from litmix.nas.nb201 import all_codes, code_to_arch, load_nb201, nb201_param_count
from litmix.nas.rank_metrics import kendall_tau
from litmix.nas.ranker import ProxyRanker
from litmix.plugins.parzc_predictor import _MABN, ParZCPredictor, _BayesianLinear
from litmix.testing import assert_resume_matches, make_trainer, run_ddp


def test_bayesian_linear_samples_weights():
    torch.manual_seed(0)
    layer = _BayesianLinear(5, 3, rho_init=-3.0)
    x = torch.randn(4, 5)
    assert not torch.allclose(layer(x), layer(x))
    sharp = _BayesianLinear(5, 3, rho_init=-30.0)  # softplus(-30) ~ 1e-13: deterministic mean weights
    mean = torch.nn.functional.linear(x, sharp.weight_mu, sharp.bias_mu)
    assert torch.allclose(sharp(x), mean, atol=1e-9)


def test_mabn_mixes_patches_and_draws_noise_from_the_generator():
    torch.manual_seed(0)
    net = _MABN(in_features=12, patches=4, patch_dim=3, width=8, depth=2, rho_init=-3.0)
    x = torch.randn(5, 12)
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    out = net(x, gen())
    assert out.shape == (5, 1)
    assert torch.equal(out, net(x, gen()))
    assert not torch.equal(out, net(x, torch.Generator().manual_seed(2)))
    # the token MLP mixes across patches: without it, patch j's output depends on patch j's input only
    h = torch.randn(2, 4, 8, requires_grad=True)
    net.blocks[0](h)[:, 0].sum().backward()
    assert float(h.grad[:, 1:].abs().sum()) > 0
    module = ParZCPredictor(in_features=12, model="mabn", mixer_patches=4, mixer_patch_dim=3, mixer_width=8)
    assert module(x, gen()).shape == (5,)
    assert torch.equal(module.predict_scores(x), module.predict_scores(x))


def test_arguments():
    with pytest.raises(ValueError, match="in_features"):
        ParZCPredictor(in_features=0)
    with pytest.raises(ValueError, match="losses"):
        ParZCPredictor(in_features=4, losses=["hinge"])
    with pytest.raises(ValueError, match="loss_weights"):
        ParZCPredictor(in_features=4, losses=["mse", "pairwise"], loss_weights=[1.0])
    with pytest.raises(ValueError, match="mc_samples"):
        ParZCPredictor(in_features=4, mc_samples=0)
    with pytest.raises(ValueError, match="seed"):
        ParZCPredictor(in_features=4, seed=-1)
    with pytest.raises(ValueError, match="model"):
        ParZCPredictor(in_features=4, model="pinat")
    with pytest.raises(ValueError, match="mixer_width"):
        ParZCPredictor(in_features=4, model="mabn", mixer_width=0)
    with pytest.raises(ValueError, match="exactly one"):
        ProxyFeatureDataModule()
    with pytest.raises(ValueError, match="train_size"):
        ProxyFeatureDataModule(features=torch.zeros(4, 2), targets=torch.zeros(4), train_size=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        ProxyFeatureDataModule(features=torch.zeros(4, 2), targets=torch.zeros(4), batch_size=1)


def test_datamodule_split_standardisation_and_file_roundtrip(tmp_path):
    x, y = torch.randn(40, 3) * 5 + 2, torch.randn(40) * 3
    path = tmp_path / "f.pt"
    ProxyFeatureDataModule.save(path, x, y, [f"a{i}" for i in range(40)])
    dm = ProxyFeatureDataModule(str(path), train_size=0.25, seed=1)
    dm.setup()
    assert len(dm.train_idx) == 10
    assert len(dm.val_idx) == 30
    assert set(dm.train_idx.tolist()).isdisjoint(dm.val_idx.tolist())
    assert torch.allclose(dm.features[dm.train_idx].mean(0), torch.zeros(3), atol=1e-5)
    assert dm.archs[0] == "a0"
    with pytest.raises(FileNotFoundError):
        ProxyFeatureDataModule(str(tmp_path / "missing.pt")).setup()


def test_layer_features_follow_the_fixed_layout():
    names = nb201_layer_names(4, 1)
    codes = [(2,) * 6, (3, 1, 0, 1, 0, 1)]
    f = nb201_layer_features(codes, ["synflow", "snip"], C=4, N=1, input_shape=(3, 8, 8), batch_size=4)
    assert f.shape == (2, 2 * len(names))
    edge0 = names.index("cells.0.edges.0.1")
    edge1 = names.index("cells.0.edges.1.1")
    assert f[0, edge0] > 0
    assert f[0, edge1] > 0
    assert f[1, edge0] > 0
    assert f[1, edge1] == 0
    # totals: the per-layer synflow values reproduce the ranker's summed score
    raw = f[0, : len(names)]
    total = torch.log(torch.expm1(raw.double()).sum())
    ranker_total = ProxyRanker([codes[0]], names=["synflow"], C=4, N=1, input_shape=(3, 8, 8)).score_all()[0]["synflow"]
    assert float(total) == pytest.approx(ranker_total, rel=1e-5)


def test_example_fit_and_checkpoint_roundtrip(tmp_path):
    module, dm, _ = ParZCPredictor.example()
    trainer = make_trainer(max_epochs=2, limit_val_batches=1.0, enable_checkpointing=True, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert "parzc/kendall" in trainer.callback_metrics
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    loaded = ParZCPredictor.load_from_checkpoint(ckpt)
    assert loaded.hidden == module.hidden
    assert loaded.losses == module.losses
    for key, value in module.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    resumed = make_trainer(max_epochs=3, limit_val_batches=1.0)
    resumed.fit(ParZCPredictor.example()[0], datamodule=ParZCPredictor.example()[1], ckpt_path=str(ckpt))
    assert resumed.global_step == trainer.global_step * 3 // 2


def test_losses_each_improve_the_held_out_ranking():
    """Synthetic example: held-out tau rises from ~0 (untrained) to >0.5 (measured 0.52-0.68, 3 seeds x 4 losses)."""
    for losses, model in (
        (["diffkendall"], "mlp"),
        (["mse"], "mlp"),
        (["pairwise"], "mlp"),
        (["diffkendall", "mse"], "mlp"),
        (["diffkendall"], "mabn"),
    ):
        torch.manual_seed(0)
        _, dm, _ = ParZCPredictor.example()
        mixer = {"mixer_patches": 4, "mixer_patch_dim": 4, "mixer_width": 16}
        module = ParZCPredictor(
            in_features=12, hidden=[16, 8], lr=1e-2, mc_samples=2, losses=losses, model=model, **mixer
        )
        before = make_trainer(limit_val_batches=1.0).validate(module, datamodule=dm, verbose=False)[0]["parzc/kendall"]
        trainer = make_trainer(max_epochs=30, limit_val_batches=1.0, check_val_every_n_epoch=30)
        trainer.fit(module, datamodule=dm)
        after = float(trainer.callback_metrics["parzc/kendall"])
        assert after > 0.4, (losses, after)
        assert after - before > 0.25, (losses, before, after)


class _GlobalRngNoise(ParZCPredictor):
    """Negative control: the weight noise of training comes from the global RNG (the old behaviour)."""

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        return self._loss(self(x), y)


class _OneOffShuffle(ProxyFeatureDataModule):
    """Negative control: a shuffling generator seeded once per dataloader (the old behaviour)."""

    def train_dataloader(self):
        gen = torch.Generator().manual_seed(self.seed)
        return torch.utils.data.DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=True, generator=gen)


def _example_data(cls=ProxyFeatureDataModule):
    _, dm, _ = ParZCPredictor.example()
    return cls(features=dm._features, targets=dm._targets, train_size=40, batch_size=20, seed=3)


def _example_module(cls=ParZCPredictor):
    return cls(in_features=12, hidden=[16, 8], lr=1e-2, mc_samples=2, seed=5)


def test_noise_depends_only_on_seed_step_and_batch():
    module = _example_module()
    x = torch.randn(6, 12)
    torch.manual_seed(0)
    a = module(x, module.noise_generator(x.device, 7, 1))
    torch.manual_seed(1)  # the global RNG plays no part
    b = module(x, module.noise_generator(x.device, 7, 1))
    assert torch.equal(a, b)
    assert not torch.equal(a, module(x, module.noise_generator(x.device, 8, 1)))
    assert not torch.equal(a, module(x, module.noise_generator(x.device, 7, 0)))
    assert torch.equal(module.predict_scores(x), module.predict_scores(x))  # evaluation is repeatable


def test_shuffle_depends_only_on_seed_and_epoch():
    dm = _example_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    first = [b[2].tolist() for b in loader]
    assert first == [b[2].tolist() for b in dm.train_dataloader()]  # a fresh loader: same order
    loader.sampler.set_epoch(1)
    second = [b[2].tolist() for b in loader]
    assert first != second
    assert sorted(i for b in second for i in b) == sorted(i for b in first for i in b)


@pytest.mark.parametrize(
    ("module_cls", "data_cls", "exact"),
    [
        (ParZCPredictor, ProxyFeatureDataModule, True),
        (_GlobalRngNoise, ProxyFeatureDataModule, False),
        (ParZCPredictor, _OneOffShuffle, False),
    ],
)
def test_resume_is_exact(tmp_path, module_cls, data_cls, exact):
    """Uninterrupted 2 epochs vs resumed from the epoch-0 checkpoint: identical weights (cosine LR, Adam, noise)."""

    def run():
        return assert_resume_matches(
            list, lambda: _example_module(module_cls), lambda: _example_data(data_cls), tmp_path, max_epochs=2
        )

    if exact:
        full, resumed = run()
        assert full.global_step == resumed.global_step == 4
    else:  # the check can fail: global-RNG noise or a one-off shuffle generator breaks the equality
        with pytest.raises(AssertionError, match="differs between the uninterrupted and the resumed run"):
            run()


@pytest.mark.ddp
def test_two_rank_fit():
    module, dm, _ = ParZCPredictor.example()
    trainer = run_ddp([], module, dm, max_epochs=2, max_steps=-1, limit_val_batches=1.0)
    assert trainer.state.finished
    assert "parzc/kendall" in trainer.callback_metrics


PARZC_PROXIES = ["grad_norm", "snip", "synflow"]


@pytest.fixture(scope="session")
def nb201_layer_data(shared_data):
    """300 NB201 cells: per-layer grad_norm/snip/synflow (C=8, N=1, 8x8 Gaussian batch), summed scores, truth."""
    truth = load_nb201(shared_data / "nb201" / "nb201_zen.zip", "cifar10")
    codes = random.Random(0).sample(all_codes(), 600)[:300]
    ranker = ProxyRanker(codes, names=PARZC_PROXIES, C=8, N=1, input_shape=(3, 8, 8), batch_size=8, per_layer=True)
    table = ranker.score_all()
    names = nb201_layer_names(8, 1)
    x = torch.zeros(len(codes), 3 * len(names))
    for i, row in enumerate(table):
        for p, proxy in enumerate(PARZC_PROXIES):
            for j, layer in enumerate(names):
                v = row[proxy].get(layer)
                if v is not None:
                    x[i, p * len(names) + j] = float(torch.sign(torch.tensor(v)) * torch.log1p(torch.tensor(abs(v))))
    y = torch.tensor([truth[code_to_arch(c)].val_accuracy for c in codes])
    return codes, table, x, y


# held-out tau gain over the best single summed proxy, measured (split seeds 0-7), noise seed 0 / = split seed:
#   mlp  (100 epochs, lr 1e-3):  +0.126 +0.118 +0.122 +0.168 +0.168 +0.147 +0.130 +0.141
#                                +0.126 +0.120 +0.092 +0.204 +0.181 +0.140 +0.124 +0.157
#   mabn (width 64, 50 epochs, lr 2e-3):
#                                +0.139 +0.143 +0.139 +0.209 +0.176 +0.186 +0.156 +0.153
#                                +0.139 +0.131 +0.141 +0.202 +0.159 +0.185 +0.133 +0.177
PARZC_MODELS = {
    "mlp": ({"lr": 1e-3}, 100, 0.08),
    "mabn": ({"model": "mabn", "mixer_width": 64, "lr": 2e-3}, 50, 0.1),
}


@pytest.mark.slow
@pytest.mark.parametrize("split", range(8))
@pytest.mark.parametrize("model", ["mlp", "mabn"])
def test_parzc_beats_best_summed_proxy(nb201_layer_data, model, split):
    """300 NB201 cells, per-layer grad_norm/snip/synflow (C=8, N=1, 8x8 Gaussian batch): train on 100, judge on
    200. Held-out Kendall tau minus the best single summed proxy (incl. params), for the noise seed 0 and for the
    noise seed = the split seed, ``torch.manual_seed(split)`` before building the predictor. Asserts the gain is
    >= 0.1 for MABN (measured +0.131 to +0.209 over the 16 runs) and >= 0.08 for the Bayesian MLP (measured
    +0.092 to +0.204; +0.1 held with noise seed 0 but not on split 2 with noise seed 2). Values in PARZC_MODELS'
    comment. Both models train with DiffKendall.
    """
    codes, table, x, y = nb201_layer_data
    kwargs, epochs, margin = PARZC_MODELS[model]
    dm = ProxyFeatureDataModule(features=x, targets=y, train_size=100, batch_size=32, seed=split)
    dm.setup()
    val = dm.val_idx.tolist()
    single = {p: kendall_tau([table[i][p]["total"] for i in val], y[val]) for p in PARZC_PROXIES}
    single["params"] = kendall_tau([nb201_param_count(codes[i]) for i in val], y[val])
    gains = []
    for noise_seed in (0, split):
        torch.manual_seed(split)
        module = ParZCPredictor(in_features=x.shape[1], losses=["diffkendall"], seed=noise_seed, **kwargs)
        trainer = make_trainer(max_epochs=epochs, limit_val_batches=1.0, check_val_every_n_epoch=epochs)
        trainer.fit(module, datamodule=dm)
        gains.append(float(trainer.callback_metrics["parzc/kendall"]) - max(single.values()))
        if split == 0:
            break  # noise seed = split seed = 0: the same run
    print(f"{model} split {split}: gains (noise 0, noise {split}) {gains}, single {single}")
    assert min(gains) >= margin, (gains, single)
