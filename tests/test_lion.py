"""Lion (Chen et al. 2023) and memory_report: the formula, both code paths, param groups, state round trip,
argument validation, the digits effect and the state size against AdamW."""

from __future__ import annotations

import copy
import math
import re
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from litmix.datamodules import DigitsDataModule
from litmix.optim import Lion, memory_report
from litmix.registry import get_plugin
from litmix.testing import TinyClassifier, make_trainer


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3))


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0) -> None:
    for step in range(start, start + steps):
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(5, 6, generator=gen), torch.randint(0, 3, (5,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_one_step_equals_the_formula_exactly():
    p = nn.Parameter(torch.tensor([0.5, -1.25, 2.0]))
    m0 = torch.tensor([0.25, 0.5, -1.0])
    g = torch.tensor([-3.0, 0.125, 4.0])
    lr, (b1, b2), wd = 0.125, (0.5, 0.75), 0.5
    for foreach in (True, False):
        q = nn.Parameter(p.detach().clone())
        opt = Lion([q], lr=lr, betas=(b1, b2), weight_decay=wd, foreach=foreach)
        opt.state[q]["exp_avg"] = m0.clone()
        q.grad = g.clone()
        opt.step()
        # every constant is a power of two: the reference is exact in float32
        want_p = p.detach() * (1 - lr * wd) - lr * torch.sign(b1 * m0 + (1 - b1) * g)
        want_m = b2 * m0 + (1 - b2) * g
        assert torch.equal(q.detach(), want_p), foreach
        assert torch.equal(opt.state[q]["exp_avg"], want_m), foreach
    # first step from zero momentum: |update| = lr on every coordinate with a nonzero gradient
    q = nn.Parameter(torch.zeros(3))
    q.grad = torch.tensor([1e-9, -5.0, 0.0])
    Lion([q], lr=0.01).step()
    assert torch.equal(q.detach(), torch.tensor([-0.01, 0.01, 0.0]))


def test_steps_match_the_formula_to_rounding_on_random_values():
    gen = torch.Generator().manual_seed(0)
    p0, m0 = torch.randn(1000, generator=gen), torch.randn(1000, generator=gen) * 0.1
    lr, (b1, b2), wd = 3e-4, (0.9, 0.99), 1e-2
    for foreach in (True, False):
        p = nn.Parameter(p0.clone())
        opt = Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd, foreach=foreach)
        opt.state[p]["exp_avg"] = m0.clone()
        want_p, want_m = p0.clone(), m0.clone()
        for _ in range(5):
            g = torch.randn(1000, generator=gen)
            p.grad = g
            opt.step()
            want_p = want_p * (1 - lr * wd) - lr * torch.sign(b1 * want_m + (1 - b1) * g)
            want_m = b2 * want_m + (1 - b2) * g
        torch.testing.assert_close(p.detach(), want_p, rtol=0, atol=1e-6)
        torch.testing.assert_close(opt.state[p]["exp_avg"], want_m, rtol=1e-5, atol=1e-7)


def test_defaults_match_the_paper():
    opt = Lion([nn.Parameter(torch.zeros(2))])
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (1e-4, (0.9, 0.99), 0.0)


def test_foreach_and_loop_paths_give_identical_results():
    results = []
    for foreach in (True, False):
        model = _mlp()
        opt = Lion(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=foreach)
        _train(model, opt, 20)
        results.append((copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())))
    (wa, sa), (wb, sb) = results
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.equal(sa["state"][i]["exp_avg"], sb["state"][i]["exp_avg"]) for i in sa["state"])
    assert not torch.equal(wa["0.weight"], _mlp().state_dict()["0.weight"])  # it did train


def test_param_groups_use_their_own_hyperparameters():
    model = _mlp()
    opt = Lion(
        [{"params": model[0].parameters(), "lr": 0.0}, {"params": model[2].parameters(), "weight_decay": 0.5}],
        lr=1e-2,
    )
    frozen = copy.deepcopy(model[0].state_dict())
    before = copy.deepcopy(model[2].state_dict())
    _train(model, opt, 3)
    assert all(torch.equal(frozen[k], v) for k, v in model[0].state_dict().items())  # lr 0: unchanged
    assert not torch.equal(before["weight"], model[2].weight.detach())
    assert opt.param_groups[1]["lr"] == 1e-2
    assert opt.param_groups[1]["weight_decay"] == 0.5
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)


def test_state_dict_round_trip_continues_like_an_uninterrupted_run():
    full = _mlp()
    opt_full = Lion(full.parameters(), lr=1e-2, weight_decay=0.1)
    _train(full, opt_full, 10)

    first = _mlp()
    opt_first = Lion(first.parameters(), lr=1e-2, weight_decay=0.1)
    _train(first, opt_first, 4)
    saved = copy.deepcopy({"model": first.state_dict(), "opt": opt_first.state_dict()})
    resumed = _mlp(seed=123)  # different initial weights: everything must come from the checkpoint
    resumed.load_state_dict(saved["model"])
    opt_resumed = Lion(resumed.parameters(), lr=0.5)  # the checkpoint's hyperparameters win
    opt_resumed.load_state_dict(saved["opt"])
    _train(resumed, opt_resumed, 6, start=4)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in full.state_dict().items())

    # negative control: a resumed optimizer without its momentum does not reproduce the run
    forgetful = _mlp(seed=123)
    forgetful.load_state_dict(saved["model"])
    _train(forgetful, Lion(forgetful.parameters(), lr=1e-2, weight_decay=0.1), 6, start=4)
    assert not all(torch.equal(v, forgetful.state_dict()[k]) for k, v in full.state_dict().items())


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"lr": -1e-3}, ValueError, "lr"),
        ({"lr": math.nan}, ValueError, "lr"),
        ({"lr": math.inf}, ValueError, "lr"),
        ({"lr": "0.1"}, TypeError, "lr"),
        ({"lr": True}, TypeError, "lr"),
        ({"betas": (0.9, 1.0)}, ValueError, "betas[1]"),
        ({"betas": (-0.1, 0.99)}, ValueError, "betas[0]"),
        ({"betas": (0.9,)}, ValueError, "betas"),
        ({"betas": 0.9}, TypeError, "betas"),
        ({"betas": (0.9, "x")}, TypeError, "betas[1]"),
        ({"weight_decay": -0.1}, ValueError, "weight_decay"),
        ({"weight_decay": math.nan}, ValueError, "weight_decay"),
        ({"foreach": 1}, TypeError, "foreach"),
    ],
)
def test_bad_arguments_fail_before_compute_naming_them(kwargs, error, names):
    with pytest.raises(error, match=re.escape(f"Lion({names}=")):
        Lion([nn.Parameter(torch.zeros(2))], **kwargs)


def test_bad_params_and_group_values_are_named():
    with pytest.raises(TypeError, match="params"):
        Lion(nn.Parameter(torch.zeros(2)))
    with pytest.raises(TypeError, match="params"):
        Lion(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="params"):
        Lion([])
    p, q = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"param_groups\[1\]\.lr"):
        Lion([{"params": [p]}, {"params": [q], "lr": -1.0}])
    opt = Lion([p])
    with pytest.raises(ValueError, match=r"param_groups\[1\]\.betas\[0\]"):
        opt.add_param_group({"params": [q], "betas": (1.5, 0.9)})


def test_sparse_gradients_are_refused():
    emb = nn.Embedding(5, 2, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        Lion(emb.parameters()).step()


def test_registry_entries():
    info = get_plugin("Lion")
    assert (info.kind, info.family, info.import_path) == ("optimizer", "optimization", "litmix.optim.Lion")
    assert "2302.06675" in info.paper
    fn = get_plugin("memory_report")
    assert (fn.kind, fn.family, fn.import_path) == ("function", "optimization", "litmix.optim.memory_report")


def _stepped(opt_cls, model: nn.Module, **kwargs) -> torch.optim.Optimizer:
    opt = opt_cls(model.parameters(), **kwargs)
    _train(model, opt, 1)
    return opt


def test_memory_report_bytes_per_param():
    model = _mlp()
    n = sum(p.numel() for p in model.parameters())
    adamw = memory_report(_stepped(torch.optim.AdamW, model))
    lion = memory_report(_stepped(Lion, model))
    sgd_m = memory_report(_stepped(torch.optim.SGD, model, lr=0.1, momentum=0.9))
    sgd = memory_report(_stepped(torch.optim.SGD, model, lr=0.1))
    assert (adamw["params"], lion["params"], sgd_m["params"]) == (n, n, n)
    assert (adamw["bytes_per_param"], lion["bytes_per_param"], sgd_m["bytes_per_param"]) == (8.0, 4.0, 4.0)
    assert sgd["bytes_per_param"] == 0.0
    assert sgd["state_bytes"] == 0
    # Lion's state is exactly half of AdamW's per-element state; AdamW also keeps one 4-byte step per tensor
    assert 2 * (lion["state_bytes"] - lion["scalar_bytes"]) == adamw["state_bytes"] - adamw["scalar_bytes"]
    assert lion["scalar_bytes"] == 0
    assert adamw["scalar_bytes"] == 4 * len(list(model.parameters()))
    assert lion["state_bytes"] == 4 * n
    assert adamw["state_bytes"] == 8 * n + adamw["scalar_bytes"]
    bf16 = _mlp().to(torch.bfloat16)
    for q in bf16.parameters():
        q.grad = torch.ones_like(q)
    half_opt = Lion(bf16.parameters())
    half_opt.step()
    half = memory_report(half_opt)
    assert half["bytes_per_param"] == 2.0
    with pytest.raises(TypeError, match="optimizer"):
        memory_report(model)  # type: ignore[arg-type]


class _LionMLP(TinyClassifier):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return Lion(self.parameters(), lr=3e-4, weight_decay=1e-2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lion_trains_the_digits_mlp(seed):
    """Measured val accuracy after 30 epochs (batch 32, hidden 64): 0.965, 0.974, 0.972 for seeds 0, 1, 2."""
    pl.seed_everything(seed, verbose=False)
    module = _LionMLP(in_features=64, hidden=64, num_classes=10)
    trainer = make_trainer(max_epochs=30, limit_val_batches=1.0, check_val_every_n_epoch=30)
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32, seed=seed))
    assert float(trainer.callback_metrics["val/acc"]) >= 0.95
    report = memory_report(trainer.optimizers[0])
    assert report["bytes_per_param"] == 4.0
    assert report["scalar_bytes"] == 0


_CLI = ["fit", "--model=litmix.testing.TinyClassifier", "--model.in_features=64", "--model.num_classes=10"]
_CLI += ["--data=DigitsDataModule", "--trainer.max_epochs=1", "--trainer.logger=false", "--optimizer=Lion"]


def test_cli_selects_lion_by_short_name(tmp_path):
    # a subprocess, as users run it: in-process, pytest's doctest collection imports litmix/optim/lion.py a second
    # time, and jsonargparse would see two classes named Lion
    def cli(*args):
        cmd = [sys.executable, "-m", "litmix.cli", *_CLI, *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)

    proc = cli("--optimizer.lr=3e-4", "--optimizer.weight_decay=0.01", "--print_config")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "class_path: litmix.optim.Lion" in proc.stdout
    assert "weight_decay: 0.01" in proc.stdout
    proc = cli("--optimizer.lr=-1")
    assert proc.returncode == 2
    assert "Lion(lr=-1.0): lr must be a finite number >= 0.0" in proc.stderr
