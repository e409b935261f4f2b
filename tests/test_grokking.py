"""Grokking (issue 12): ModularArithmeticDataModule, XORClusterDataModule and LazyRichMonitor.

Unit tests of the tables, the XOR data model and the monitor's measurements, bad inputs, the sharded-strategy
refusal, and the effect test: grokking on modular addition (train accuracy ~100 % early, test accuracy jumps
much later) with the jump delayed by a larger initialisation scale (Kumar et al. 2023's lazy-to-rich picture).
The full sweep is ``benchmarks/grokking.py`` -> ``benchmarks/results/grokking.md``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from litmix.callbacks import LazyRichMonitor
from litmix.datamodules import ModularArithmeticDataModule, XORClusterDataModule
from litmix.functional.lazy_rich import feature_gram, kernel_alignment, label_kernel
from litmix.testing import StubTrainer, TinyClassifier, TinyDataModule, fit_tiny, sharded_strategy

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------
# ModularArithmeticDataModule


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_tables_are_correct_and_split_completely(op):
    p = 11
    dm = ModularArithmeticDataModule(p=p, op=op, train_fraction=0.4, batch_size=None, seed=3)
    dm.setup("fit")
    a, b, c = dm.tokens[:, 0], dm.tokens[:, 1], dm.labels
    assert dm.tokens.dtype == torch.int64
    assert dm.labels.dtype == torch.int64
    if op == "add":
        assert torch.equal(c, (a + b) % p)
    elif op == "sub":
        assert torch.equal((c + b) % p, a)
    elif op == "mul":
        assert torch.equal(c, (a * b) % p)
    else:
        assert bool((b != 0).all())
        assert torch.equal((c * b) % p, a)
    n = p * p - (p if op == "div" else 0)
    assert len(c) == n
    assert len(set(map(tuple, dm.tokens.tolist()))) == n
    train, val = set(dm.train_indices.tolist()), set(dm.val_indices.tolist())
    assert not train & val
    assert len(train | val) == n
    assert len(train) == round(0.4 * n)
    x, y, index = next(iter(dm.train_dataloader()))  # full batch, indices name rows of the table
    assert len(x) == len(train)
    assert set(index.tolist()) == train
    assert torch.equal(x, dm.tokens[index])
    assert torch.equal(y, dm.labels[index])


def test_split_depends_on_the_seed_only_and_equals_token():
    def split(seed: int, **kw: Any) -> torch.Tensor:
        dm = ModularArithmeticDataModule(p=13, seed=seed, **kw)
        dm.setup()
        return dm.train_indices

    assert torch.equal(split(0), split(0))
    assert not torch.equal(split(0), split(1))
    dm = ModularArithmeticDataModule(p=13, equals_token=True, batch_size=4)
    dm.setup()
    tokens, _, _ = next(iter(dm.train_dataloader()))
    assert tokens.shape == (4, 3)
    assert bool((tokens[:, 2] == 13).all())
    assert dm.vocab_size == 14
    assert dm.seq_len == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "arg"),
    [
        ({"p": 1}, ValueError, "p"),
        ({"p": 12, "op": "div"}, ValueError, "p"),
        ({"p": 7.0}, TypeError, "p"),
        ({"op": "pow"}, ValueError, "op"),
        ({"train_fraction": 0.0}, ValueError, "train_fraction"),
        ({"train_fraction": 1.0}, ValueError, "train_fraction"),
        ({"train_fraction": float("nan")}, ValueError, "train_fraction"),
        ({"batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_modular_bad_inputs_name_the_argument(kwargs, error, arg):
    with pytest.raises(error, match=rf"ModularArithmeticDataModule\({arg}="):
        ModularArithmeticDataModule(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# XORClusterDataModule


def test_xor_cluster_data_model():
    dm = XORClusterDataModule(n=400, d=50, mu_norm=4.0, eta=0.15, n_val=2000, seed=1)
    dm.setup("fit")
    assert abs(float(dm.mu1 @ dm.mu2)) < 1e-4
    assert abs(float(dm.mu1.norm()) - 4.0) < 1e-4
    assert abs(float(dm.mu2.norm()) - 4.0) < 1e-4
    x, y = dm.train_dataset.dataset.tensors  # type: ignore[attr-defined]
    assert int(dm.flipped.sum()) == 60
    assert torch.equal(y != dm.clean_labels, dm.flipped)
    xv, yv = dm.val_dataset.dataset.tensors  # type: ignore[attr-defined]
    # the clean label is the cluster pair: |<x, mu1>| > |<x, mu2>| is (near-)Bayes-optimal and sees it ...
    nearest = ((xv @ dm.mu2).abs() > (xv @ dm.mu1).abs()).long()
    assert float((nearest == yv).float().mean()) > dm.bayes_accuracy - 0.03 > 0.9
    # ... while no linear classifier does better than chance (XOR): least squares on the clean validation set
    design = torch.cat([xv, torch.ones(len(xv), 1)], 1)
    w = torch.linalg.lstsq(design, (2.0 * yv - 1).unsqueeze(1)).solution
    assert abs(float(((design @ w).squeeze(1) > 0).long().eq(yv).float().mean()) - 0.5) < 0.08
    # the same seed gives the same data, another seed other data
    again = XORClusterDataModule(n=400, d=50, mu_norm=4.0, eta=0.15, n_val=2000, seed=1)
    again.setup()
    assert torch.equal(again.train_dataset.dataset.tensors[0], x)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kwargs", "error", "arg"),
    [
        ({"eta": 0.5}, ValueError, "eta"),
        ({"eta": -0.1}, ValueError, "eta"),
        ({"n": 1}, ValueError, "n"),
        ({"d": 1}, ValueError, "d"),
        ({"mu_norm": 0.0}, ValueError, "mu_norm"),
        ({"mu_norm": float("inf")}, ValueError, "mu_norm"),
        ({"n_val": 0}, ValueError, "n_val"),
    ],
)
def test_xor_bad_inputs_name_the_argument(kwargs, error, arg):
    with pytest.raises(error, match=rf"XORClusterDataModule\({arg}="):
        XORClusterDataModule(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# LazyRichMonitor


@pytest.mark.parametrize(
    ("kwargs", "error", "arg"),
    [
        ({"interval": 0}, ValueError, "interval"),
        ({"interval": 1.5}, TypeError, "interval"),
        ({"probe_size": 1}, ValueError, "probe_size"),
        ({"feature_layer": ""}, ValueError, "feature_layer"),
        ({"train_acc_key": 3}, TypeError, "train_acc_key"),
    ],
)
def test_monitor_bad_inputs_name_the_argument(kwargs, error, arg):
    with pytest.raises(error, match=rf"LazyRichMonitor\({arg}="):
        LazyRichMonitor(**kwargs)


@pytest.mark.parametrize("strategy_cls", [FSDPStrategy, DeepSpeedStrategy])
def test_monitor_refuses_sharded_strategies(strategy_cls):
    cb = LazyRichMonitor()
    with pytest.raises(MisconfigurationException, match=rf"LazyRichMonitor.*strategy={strategy_cls.__name__}"):
        cb.setup(StubTrainer(sharded_strategy(strategy_cls), [cb]), TinyClassifier(), "fit")
    cb.setup(StubTrainer(object(), [cb]), TinyClassifier(), "fit")
    with pytest.raises(ValueError, match=r"feature_layer='nope'"):
        LazyRichMonitor(feature_layer="nope").setup(StubTrainer(object(), []), TinyClassifier(), "fit")


class _Recorder(TinyClassifier):
    """Keeps the initial weights and logs the training accuracy (for the metric-key path)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        self.log("train/acc", (self(x).argmax(-1) == y).float().mean())
        self.log("val/acc", torch.tensor(0.25))
        return super().training_step(batch, batch_idx)


def test_monitor_measurements_match_a_manual_computation():
    torch.manual_seed(0)
    module = _Recorder()
    w0 = {k: v.detach().clone() for k, v in module.named_parameters()}
    monitor = LazyRichMonitor(interval=2, probe_size=64, feature_layer="net.1")  # ReLU output = last hidden
    by_key = LazyRichMonitor(interval=2, probe_size=64, train_acc_key="train/acc", val_acc_key="val/acc", name="k")
    fit_tiny([monitor, by_key], module=module, datamodule=TinyDataModule(), max_steps=4)
    assert [h["step"] for h in monitor.history] == [2.0, 4.0]
    last = monitor.history[-1]
    flat = torch.cat([p.detach().flatten() for p in module.parameters()]).double()
    flat0 = torch.cat([p.flatten() for p in w0.values()]).double()
    assert last["weight_norm"] == pytest.approx(float(flat.norm()), rel=1e-9)
    assert last["weight_movement"] == pytest.approx(float((flat - flat0).norm() / flat0.norm()), rel=1e-9)
    x, y = TinyDataModule().dataset.dataset.tensors  # all 64 samples are the probe
    with torch.no_grad():
        hidden = module.net[1](module.net[0](x))
    expected = kernel_alignment(feature_gram(hidden), label_kernel(y, 4))
    assert last["kernel_alignment"] == pytest.approx(expected, abs=1e-9)
    assert 0 < last["kernel_movement"] < 1
    accuracy = float((module(x).argmax(-1) == y).float().mean())
    assert last["train_acc"] == pytest.approx(accuracy)
    assert last["test_acc"] == pytest.approx(accuracy)
    assert last["train_test_gap"] == pytest.approx(0.0)
    assert by_key.history[-1]["test_acc"] == pytest.approx(0.25)  # read from the module's logged metrics
    assert set(monitor.state_dict()) >= {"init_weights", "init_kernel", "train_probe", "history"}


# ---------------------------------------------------------------------------------------------------------
# Effect: grokking on modular addition, delayed by the initialisation scale


def _grokking_run(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """``benchmarks/_grokking.py``'s ``grokking_run`` (the sweep's run; ``benchmarks/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("_grokking", REPO / "benchmarks" / "_grokking.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.grokking_run(*args, **kwargs)


SEEDS = (0, 1, 2)
SCALES = (1.0, 8.0)


@pytest.fixture(scope="module")
def grokking_runs() -> dict[tuple[float, int], dict[str, Any]]:
    """(init scale, seed) -> run on (a + b) mod 31 with train fraction 0.7 (about 20 CPU s in all)."""
    torch.set_num_threads(1)
    return {(scale, seed): _grokking_run(31, 0.7, scale, seed, max_steps=4000) for scale in SCALES for seed in SEEDS}


@pytest.mark.slow
def test_grokking_test_accuracy_jumps_long_after_train_accuracy(grokking_runs):
    """Measured (seeds 0/1/2, init scale 1): train acc >= 0.99 at step 75/75/50 with test acc 0.0, test acc >= 0.9
    at step 1300/1125/1075 (17-22x later); probe kernel alignment 0.155/0.162/0.147 -> 0.245/0.247/0.248."""
    for seed in SEEDS:
        run = grokking_runs[(1.0, seed)]
        assert run["fit"] is not None, (seed, run)
        assert run["fit"] <= 200, (seed, run)  # train accuracy ~100 % early ...
        assert run["test_at_fit"] < 0.5, (seed, run)  # ... while the test accuracy is still low ...
        assert run["grok"] is not None, (seed, run)
        assert run["grok"] >= 5 * run["fit"], (seed, run)  # ... and jumps much later
        assert run["align_at_grok"] > run["align_at_fit"] + 0.05, (seed, run)  # features moved toward the labels


@pytest.mark.slow
def test_larger_init_scale_groks_later(grokking_runs):
    """Measured (seeds 0/1/2): grok step 1300/1125/1075 at scale 1 vs 1800/2100/1550 at scale 8 (1.38-1.87x);
    relative weight movement at the fit step 6.44/6.44/5.06 vs 0.83/0.85/0.84 (larger scale: lazier fit)."""
    for seed in SEEDS:
        small, large = grokking_runs[(1.0, seed)], grokking_runs[(8.0, seed)]
        assert large["grok"] is not None, (seed, large)
        assert large["grok"] >= 1.2 * small["grok"], (seed, small, large)
        assert large["move_at_fit"] < small["move_at_fit"] / 2, (seed, small, large)  # lazier fit


class _TwoLayerReLU(pl.LightningModule):
    """Xu et al.'s network: ``f(x) = sum_j a_j relu(<w_j, x>)``, fixed ``a_j = +-1/sqrt(m)``, small Gaussian
    ``W`` (std 1e-4), full-batch GD (lr 1) on the logistic loss of ``y = 1 - 2 * label``; logits ``(-f, f) / 2``.
    """

    def __init__(self, d: int, m: int = 100, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.hidden = nn.Linear(d, m, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.randn(m, d, generator=gen) * 1e-4)
        self.act = nn.ReLU()
        self.register_buffer("a", torch.tensor([1.0, -1.0]).repeat(m // 2) / m**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.act(self.hidden(x)) @ self.a
        return torch.stack([f, -f], 1) / 2  # label 0 <=> y = +1 <=> f > 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, label, _ = batch
        f = self(x)[:, 0] * 2
        return nn.functional.softplus(-(1 - 2 * label.float()) * f).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_xor_cluster_benign_overfitting_then_grokking_seen_by_the_monitor(seed):
    """Xu et al.'s effect on XORClusterDataModule (n 200, d 2000, eta 0.1), read from LazyRichMonitor's history:
    after the first GD step the network fits the noisy training labels (train acc >= 0.8) at near-chance test
    accuracy; 200 steps later it still fits every label, flipped ones included, with test accuracy >= 0.9."""
    dm = XORClusterDataModule(n=200, d=2000, eta=0.1, n_val=2000, seed=seed)
    monitor = LazyRichMonitor(interval=1, probe_size=1000, feature_layer="act")
    fit_tiny([monitor], module=_TwoLayerReLU(2000, seed=seed), datamodule=dm, max_steps=200)
    first, last = monitor.history[0], monitor.history[-1]
    assert first["step"] == 1.0
    assert last["step"] == 200.0
    print(seed, {k: round(v, 3) for k, v in first.items()}, {k: round(v, 3) for k, v in last.items()})
    assert first["train_acc"] >= 0.8
    assert first["test_acc"] <= 0.6  # overfit: near-random on clean test data
    assert last["train_acc"] == 1.0  # still interpolates the 20 flipped labels ...
    assert last["test_acc"] >= 0.9  # ... and generalises (benign overfitting after grokking)
    assert last["train_test_gap"] < first["train_test_gap"] - 0.2
    assert last["kernel_alignment"] > first["kernel_alignment"]


def test_monitor_on_a_token_model_with_the_equals_token():
    """Sequence logits (B, T, V): the last position is scored; the features are the GRU states (flattened)."""
    from litmix.testing import TinyTokenLM

    dm = ModularArithmeticDataModule(p=7, train_fraction=0.5, batch_size=8, equals_token=True)
    monitor = LazyRichMonitor(interval=2, probe_size=16)
    fit_tiny([monitor], module=TinyTokenLM(vocab_size=dm.vocab_size), datamodule=dm, max_steps=4)
    assert [h["step"] for h in monitor.history] == [2.0, 4.0]
    last = monitor.history[-1]
    assert set(last) >= {"kernel_alignment", "kernel_movement", "train_acc", "test_acc", "train_test_gap"}
    assert 0.0 <= last["train_acc"] <= 1.0
    assert monitor.train_probe is not None
    assert len(monitor.train_probe) == 16


def test_monitor_val_probe_differs_from_train_probe_on_a_shared_data_set():
    """TinyDataModule serves one data set for training and validation: each probe must use its own indices."""
    torch.manual_seed(0)
    module = TinyClassifier()
    monitor = LazyRichMonitor(interval=3, probe_size=16)
    fit_tiny([monitor], module=module, datamodule=TinyDataModule(), max_steps=3)
    assert monitor.val_probe is not None
    assert monitor.train_probe is not None
    assert not torch.equal(monitor.train_probe, monitor.val_probe)
    x, y = TinyDataModule().dataset.dataset.tensors
    with torch.no_grad():
        right = module(x).argmax(-1) == y
    last = monitor.history[-1]
    assert last["train_acc"] == pytest.approx(float(right[monitor.train_probe].float().mean()))
    assert last["test_acc"] == pytest.approx(float(right[monitor.val_probe].float().mean()))
