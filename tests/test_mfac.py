"""M-FAC (Frantar, Kurtic and Alistarh 2021): the static and dynamic inverse-Fisher algorithms against dense solves in
float64, the optimizer (exact step, param groups, state round trip, memory, DDP, CLI) and OBS pruning, with effect
tests on scikit-learn's digits (an MLP 64-256-10, 19,210 parameters)."""

from __future__ import annotations

import copy
import math
import re
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from litmix.functional.mfac import (
    inverse_fisher,
    inverse_fisher_diag,
    inverse_fisher_mul,
    mfac_obs_masks,
    obs_saliency,
    obs_update,
    window_inverse_mul,
    window_update,
)
from litmix.functional.sparsity import magnitude_masks
from litmix.optim import MFAC, memory_report
from litmix.registry import get_plugin
from litmix.testing import TinyClassifier, TinyDataModule, run_ddp

F64 = torch.float64


def _dense_fisher(grads: torch.Tensor, damp: float) -> torch.Tensor:
    m, d = grads.shape
    return damp * torch.eye(d, dtype=grads.dtype) + grads.T @ grads / m


# ------------------------------------------------------------------------------------- the algorithms, exactly


def test_static_recursion_equals_the_dense_inverse_in_float64():
    """The catalogue's check (the reference's ``__main__``): D = 200, m = 16, float64, mul and diag."""
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(16, 200, dtype=F64, generator=gen)
    x = torch.randn(200, dtype=F64, generator=gen)
    saved = grads.clone()
    for damp in (1e-5, 1e-2, 1.0):
        inv = torch.linalg.inv(_dense_fisher(grads, damp))
        fisher = inverse_fisher(grads, damp=damp)
        want = inv @ x
        assert (inverse_fisher_mul(fisher, x) - want).abs().max() <= 1e-8 * want.abs().max()
        assert (inverse_fisher_diag(fisher) - inv.diagonal()).abs().max() <= 1e-8 * inv.diagonal().abs().max()
    assert torch.equal(grads, saved)  # the input is not overwritten


def test_blocked_recursion_equals_the_block_diagonal_inverse():
    gen = torch.Generator().manual_seed(1)
    grads = torch.randn(8, 50, dtype=F64, generator=gen)  # blocks of 16: 16, 16, 16 and a padded 2
    x = torch.randn(50, dtype=F64, generator=gen)
    fisher = inverse_fisher(grads, damp=0.1, block_size=16)
    dense = torch.zeros(50, 50, dtype=F64)
    for start in range(0, 50, 16):
        sl = slice(start, min(start + 16, 50))
        dense[sl, sl] = torch.linalg.inv(_dense_fisher(grads[:, sl], 0.1))
    torch.testing.assert_close(inverse_fisher_mul(fisher, x), dense @ x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(inverse_fisher_diag(fisher), dense.diagonal(), rtol=1e-10, atol=1e-10)
    # a block as large as d is the full Fisher
    full = inverse_fisher(grads, damp=0.1, block_size=50)
    torch.testing.assert_close(inverse_fisher_mul(full, x), inverse_fisher_mul(inverse_fisher(grads, 0.1), x))


def test_sliding_window_equals_the_dense_solve_through_ring_buffer_wraparound():
    gen = torch.Generator().manual_seed(2)
    m, d, damp = 6, 40, 1e-4
    window, gram = torch.zeros(m, d, dtype=F64), torch.zeros(m, m, dtype=F64)
    history = []
    for step in range(15):  # wraps around the ring buffer twice
        g = torch.randn(d, dtype=F64, generator=gen)
        history.append(g)
        dots = window_update(window, gram, step % m, g)
        torch.testing.assert_close(dots, window @ g)
        torch.testing.assert_close(gram, window @ window.T)
        last = torch.stack(history[-m:] + [torch.zeros(d, dtype=F64)] * (m - len(history[-m:])))
        x = torch.randn(d, dtype=F64, generator=gen)
        want = torch.linalg.solve(_dense_fisher(last, damp), x)
        got = window_inverse_mul(window, gram, x, damp=damp)
        assert (got - want).abs().max() <= 1e-8 * want.abs().max(), step
    # the static and the dynamic algorithms agree on a full window
    torch.testing.assert_close(inverse_fisher_mul(inverse_fisher(window, damp), x), got, rtol=1e-8, atol=1e-8)


def test_obs_update_is_the_constrained_minimum_of_the_quadratic_model():
    """With the loss ``(w' - w)^T F (w' - w) / 2``, dropping q by OBS costs exactly the saliency, and no other w' with
    ``w'_q = 0`` costs less (the constrained minimum, solved densely)."""
    gen = torch.Generator().manual_seed(3)
    grads = torch.randn(5, 12, dtype=F64, generator=gen)
    w = torch.randn(12, dtype=F64, generator=gen)
    dense = _dense_fisher(grads, 0.05)
    fisher = inverse_fisher(grads, damp=0.05)
    scores = obs_saliency(w, inverse_fisher_diag(fisher))
    for q in range(12):
        drop = torch.zeros(12, dtype=torch.bool)
        drop[q] = True
        new = obs_update(w, drop, fisher)
        assert new[q] == 0.0
        cost = 0.5 * (new - w) @ dense @ (new - w)
        torch.testing.assert_close(cost, scores[q], rtol=1e-9, atol=0.0)
        free = [i for i in range(12) if i != q]  # minimise over the other coordinates with w'_q = 0
        h = dense[free][:, free]
        best = w.clone()
        best[q] = 0.0
        best[free] = w[free] + torch.linalg.solve(h, dense[free, q] * w[q])
        torch.testing.assert_close(new, best, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="shapes differ"):
        obs_saliency(w, w[:3])
    with pytest.raises(ValueError, match="weights"):
        obs_update(w[:3], drop[:3], fisher)


@pytest.mark.parametrize(
    ("call", "error", "name"),
    [
        (lambda: inverse_fisher(torch.zeros(3), 1e-3), ValueError, "grads"),
        (lambda: inverse_fisher([[1.0]], 1e-3), TypeError, "grads"),  # type: ignore[arg-type]
        (lambda: inverse_fisher(torch.ones(2, 3), 0.0), ValueError, "damp"),
        (lambda: inverse_fisher(torch.ones(2, 3), math.nan), ValueError, "damp"),
        (lambda: inverse_fisher(torch.ones(2, 3), 1e-3, block_size=0), ValueError, "block_size"),
        (lambda: window_inverse_mul(torch.ones(2, 3), torch.ones(2, 2), torch.ones(3), damp=-1.0), ValueError, "damp"),
        (lambda: window_update(torch.ones(2, 3), torch.ones(2, 2), 2, torch.ones(3)), ValueError, "slot"),
        (lambda: window_update(torch.ones(2, 3), torch.ones(3, 3), 0, torch.ones(3)), ValueError, "gram"),
    ],
)
def test_functional_bad_arguments_are_named(call, error, name):
    with pytest.raises(error, match=name):
        call()


# ------------------------------------------------------------------------------------------------ optimizer


def _mlp(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0) -> None:
    dtype = next(model.parameters()).dtype
    for step in range(start, start + steps):
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(5, 6, generator=gen).to(dtype), torch.randint(0, 3, (5,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.01)])
def test_every_step_is_lr_times_the_inverse_window_fisher_times_the_gradient(momentum, weight_decay):
    model = _mlp(dtype=F64)
    m, damp, lr = 4, 1e-3, 0.05
    opt = MFAC(model.parameters(), lr=lr, num_grads=m, damp=damp, momentum=momentum, weight_decay=weight_decay)
    history, velocity = [], torch.zeros(sum(p.numel() for p in model.parameters()), dtype=F64)
    for step in range(9):  # wraps around the window twice
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(5, 6, generator=gen, dtype=F64), torch.randint(0, 3, (5,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        w = _flat(p.detach() for p in model.parameters()).clone()
        g = _flat(p.grad for p in model.parameters()) + weight_decay * w
        history.append(g)
        window = torch.stack(history[-m:] + [torch.zeros_like(g)] * (m - len(history[-m:])))
        update = torch.linalg.solve(_dense_fisher(window, damp), g)
        if momentum > 0:
            velocity = momentum * velocity + (1 - momentum) * update
            update = velocity
        opt.step()
        torch.testing.assert_close(_flat(p.detach() for p in model.parameters()), w - lr * update, rtol=0, atol=1e-12)
    assert opt.state[model[0].weight]["step"] == 9.0


def test_defaults_match_the_paper():
    group = MFAC([nn.Parameter(torch.zeros(2))]).param_groups[0]
    assert (group["lr"], group["num_grads"], group["damp"], group["momentum"], group["weight_decay"]) == (
        1e-3,
        1024,
        1e-5,
        0.0,
        0.0,
    )


def test_param_groups_keep_their_own_window_and_hyperparameters():
    model = _mlp()
    opt = MFAC(
        [{"params": model[0].parameters(), "lr": 0.0, "num_grads": 3}, {"params": model[2].parameters(), "damp": 0.5}],
        lr=0.05,
        num_grads=5,
        damp=1e-2,
    )
    frozen = copy.deepcopy(model[0].state_dict())
    before = model[2].weight.detach().clone()
    _train(model, opt, 4)
    assert all(torch.equal(frozen[k], v) for k, v in model[0].state_dict().items())  # lr 0: unchanged
    assert not torch.equal(before, model[2].weight.detach())
    assert opt.state[model[0].weight]["grads"].shape == (3, 7, 6)
    assert opt.state[model[2].weight]["grads"].shape == (5, 3, 7)
    assert opt.state[model[0].weight]["gram"].shape == (3, 3)
    assert "gram" not in opt.state[model[0].bias]  # one Gram matrix per group, with its first parameter
    assert (opt.param_groups[1]["lr"], opt.param_groups[1]["damp"], opt.param_groups[0]["damp"]) == (0.05, 0.5, 1e-2)


def test_parameters_without_a_gradient_are_not_moved_and_count_as_zero():
    model = _mlp()
    opt = MFAC(model.parameters(), lr=0.05, num_grads=3, damp=1e-2)
    _train(model, opt, 2)
    model[2].bias.requires_grad_(False)
    model[2].bias.grad = None
    bias = model[2].bias.detach().clone()
    _train(model, opt, 2, start=2)
    assert torch.equal(model[2].bias.detach(), bias)
    assert torch.equal(opt.state[model[2].bias]["grads"][3 % 3], torch.zeros(3))  # step 4 wrote zeros in slot 0
    window = torch.cat([opt.state[p]["grads"].reshape(3, -1) for p in model.parameters()], dim=1)
    torch.testing.assert_close(opt.state[model[0].weight]["gram"], window @ window.T)


def test_state_dict_round_trip_continues_like_an_uninterrupted_run():
    kwargs = {"lr": 0.05, "num_grads": 4, "damp": 1e-2, "momentum": 0.5, "weight_decay": 1e-3}
    full = _mlp()
    _train(full, MFAC(full.parameters(), **kwargs), 10)

    first = _mlp()
    opt_first = MFAC(first.parameters(), **kwargs)
    _train(first, opt_first, 6)  # past one wraparound of the window
    saved = copy.deepcopy({"model": first.state_dict(), "opt": opt_first.state_dict()})
    saved = torch.load(_roundtrip(saved), weights_only=True)  # through a file, as a checkpoint
    resumed = _mlp(seed=123)
    resumed.load_state_dict(saved["model"])
    opt_resumed = MFAC(resumed.parameters(), lr=0.5)  # the checkpoint's hyperparameters win
    opt_resumed.load_state_dict(saved["opt"])
    _train(resumed, opt_resumed, 4, start=6)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in full.state_dict().items())

    # negative control: a resumed optimizer without its gradient window does not reproduce the run
    forgetful = _mlp(seed=123)
    forgetful.load_state_dict(saved["model"])
    _train(forgetful, MFAC(forgetful.parameters(), **kwargs), 4, start=6)
    assert not all(torch.equal(v, forgetful.state_dict()[k]) for k, v in full.state_dict().items())


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_memory_report_counts_the_window_exactly():
    """State bytes per parameter element: AdamW 8; MFAC 4 m (the window) + 4 m^2 / n (the Gram matrix), + 4 with
    momentum; one 4-byte step counter per tensor for AdamW, per group for MFAC."""
    model = _mlp()
    n, tensors = sum(p.numel() for p in model.parameters()), len(list(model.parameters()))
    adamw = torch.optim.AdamW(model.parameters())
    _train(model, adamw, 1)
    for m, momentum in ((8, 0.0), (32, 0.9)):
        opt = MFAC(model.parameters(), num_grads=m, momentum=momentum)
        _train(model, opt, 1)
        report = memory_report(opt)
        extra = 4 * n if momentum else 0
        assert report["params"] == n
        assert report["state_bytes"] == 4 * m * n + 4 * m * m + extra + 4
        assert report["scalar_bytes"] == 4
        assert report["bytes_per_param"] == (4 * m * n + 4 * m * m + extra) / n
    report_adamw = memory_report(adamw)
    assert report_adamw["state_bytes"] == 8 * n + 4 * tensors
    assert report_adamw["bytes_per_param"] == 8.0


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"lr": -1e-3}, ValueError, "lr"),
        ({"lr": math.inf}, ValueError, "lr"),
        ({"lr": "0.1"}, TypeError, "lr"),
        ({"num_grads": 0}, ValueError, "num_grads"),
        ({"num_grads": 2.0}, TypeError, "num_grads"),
        ({"num_grads": True}, TypeError, "num_grads"),
        ({"damp": 0.0}, ValueError, "damp"),
        ({"damp": math.nan}, ValueError, "damp"),
        ({"momentum": 1.0}, ValueError, "momentum"),
        ({"momentum": -0.1}, ValueError, "momentum"),
        ({"weight_decay": -1.0}, ValueError, "weight_decay"),
        ({"weight_decay": None}, TypeError, "weight_decay"),
    ],
)
def test_bad_arguments_fail_before_compute_naming_them(kwargs, error, name):
    with pytest.raises(error, match=re.escape(f"MFAC({name}=")):
        MFAC([nn.Parameter(torch.zeros(2))], **kwargs)


def test_bad_params_groups_and_gradients_are_refused():
    with pytest.raises(TypeError, match="params"):
        MFAC(nn.Parameter(torch.zeros(2)))
    with pytest.raises(ValueError, match="params"):
        MFAC([])
    p, q = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"param_groups\[1\]\.num_grads"):
        MFAC([{"params": [p]}, {"params": [q], "num_grads": 0}])
    with pytest.raises(ValueError, match=r"param_groups\[1\]\.damp"):
        MFAC([p]).add_param_group({"params": [q], "damp": -1.0})
    emb = nn.Embedding(5, 2, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse"):
        MFAC(emb.parameters()).step()


def test_registry_entries():
    info = get_plugin("MFAC")
    assert (info.kind, info.family, info.import_path) == ("optimizer", "optimization", "litmix.optim.MFAC")
    assert "2107.03356" in info.paper
    fn = get_plugin("mfac_obs_masks")
    assert (fn.kind, fn.family, fn.import_path) == ("function", "sparsity", "litmix.functional.mfac.mfac_obs_masks")


class _MFACClassifier(TinyClassifier):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return MFAC(self.parameters(), lr=1e-2, num_grads=4, damp=1e-2, momentum=0.5)


class _OptimizerStatesAgree(Callback):
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import torch.distributed as dist

        state = trainer.optimizers[0].state_dict()["state"]
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, state)
        assert state
        assert gathered[0][0]["grads"].abs().sum() > 0
        for other in gathered[1:]:
            for i, entry in gathered[0].items():
                assert all(torch.equal(v, other[i][k]) for k, v in entry.items()), i


@pytest.mark.ddp
def test_ddp_ranks_hold_equal_windows_and_weights():
    from litmix.testing import AssertRanksAgree

    pl.seed_everything(0, verbose=False)
    run_ddp([AssertRanksAgree(), _OptimizerStatesAgree()], _MFACClassifier(), TinyDataModule(), max_steps=6)


class _PruneOnRankData(Callback):
    """Prunes at train start from batches that differ between ranks; the masks must still agree."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import torch.distributed as dist

        gen = torch.Generator().manual_seed(100 + trainer.global_rank)
        data = [(torch.randn(8, 8, generator=gen), torch.randint(0, 4, (8,), generator=gen)) for _ in range(4)]
        masks = mfac_obs_masks(pl_module, None, data, 0.5, num_grads=4, recomputations=2, block_size=16)
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, ({k: v.cpu() for k, v in masks.items()}, data[0][0]))
        assert not torch.equal(gathered[0][1], gathered[1][1])  # the ranks did see different batches
        for other, _ in gathered[1:]:
            assert all(torch.equal(gathered[0][0][k], other[k]) for k in masks)


@pytest.mark.ddp
def test_ddp_ranks_prune_alike_from_different_batches():
    from litmix.testing import AssertRanksAgree

    pl.seed_everything(0, verbose=False)
    run_ddp([_PruneOnRankData(), AssertRanksAgree()], TinyClassifier(), TinyDataModule(), max_steps=1)


def test_cli_selects_mfac_by_short_name(tmp_path):
    # a subprocess, as users run it (in-process, doctest collection may import litmix/optim/mfac.py twice)
    cmd = [sys.executable, "-m", "litmix.cli", "fit", "--model=litmix.testing.TinyClassifier", "--optimizer=MFAC"]
    cmd += ["--optimizer.num_grads=32", "--optimizer.damp=1e-3", "--print_config"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "class_path: litmix.optim.MFAC" in proc.stdout
    assert "num_grads: 32" in proc.stdout


# ------------------------------------------------------------------------------------------------ pruning


def _toy_net(seed: int = 0) -> tuple[nn.Sequential, list]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    gen = torch.Generator().manual_seed(seed)
    data = [(torch.randn(6, 5, generator=gen), torch.randint(0, 3, (6,), generator=gen)) for _ in range(3)]
    return net, data


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_obs_masks_reach_the_sparsity_and_zero_exactly_the_pruned_weights(scope):
    net, data = _toy_net()
    net.train()
    net[2].bias.requires_grad_(False)
    bias = net[2].bias.detach().clone()
    masks = mfac_obs_masks(net, None, data, 0.6, num_grads=5, recomputations=3, block_size=16, scope=scope)
    assert list(masks) == ["0.weight", "2.weight"]
    counts = [int((~m).sum()) for m in masks.values()]
    if scope == "layer":
        assert counts == [round(0.6 * 40), round(0.6 * 24)]
    else:
        assert sum(counts) == round(0.6 * 64)
    for name, p in net.named_parameters():
        if name in masks:
            assert masks[name].dtype == torch.bool
            assert masks[name].shape == p.shape
            assert torch.equal(p.detach() == 0, ~masks[name])
    assert torch.equal(net[2].bias.detach(), bias)  # biases are not selected, and OBS moves selected weights only
    assert net.training
    assert not net[2].bias.requires_grad
    assert all(p.grad is None for p in net.parameters())
    # earlier masks: their pruned weights stay pruned as the sparsity rises
    more = mfac_obs_masks(net, None, data, 0.8, num_grads=5, recomputations=2, masks=masks)
    assert all(bool((more[n] <= masks[n]).all()) for n in masks)
    assert sum(int((~m).sum()) for m in more.values()) == round(0.8 * 64)
    # masks already past the target: nothing to drop, no gradients drawn, and the masked weights are zeroed
    fresh, _ = _toy_net(5)
    again = mfac_obs_masks(fresh, None, [], 0.1, masks=more)  # an empty loader is never touched
    assert all(torch.equal(again[n], more[n]) for n in more)
    assert all(torch.equal(dict(fresh.named_parameters())[n].detach() == 0, ~more[n]) for n in more)


def test_obs_masks_accept_a_loss_function_and_parameter_names():
    net, data = _toy_net(1)
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    with torch.no_grad():  # gradients are drawn all the same
        masks = mfac_obs_masks(net, loss_fn, data, 0.5, parameter_names=["2.weight"], num_grads=4, recomputations=2)
    assert list(masks) == ["2.weight"]
    assert int((~masks["2.weight"]).sum()) == 12
    assert len(calls) == 8  # 4 gradients per recomputation, the 3-batch loader restarted
    assert bool((net[0].weight != 0).all())


def test_obs_masks_n_m_keep_n_of_every_m_along_the_input():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))
    data = [(torch.randn(6, 8), torch.randint(0, 3, (6,))) for _ in range(3)]
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    masks = mfac_obs_masks(net, loss_fn, data, 0.0, structure="2:4", num_grads=4, recomputations=3)
    assert len(calls) == 8  # pruned per group round(2 j / 3) = 1, 1, 2: gradients drawn at steps 1 and 3 only
    for name, m in masks.items():
        groups = m.reshape(m.shape[0], -1).reshape(-1, 4)
        assert bool((groups.sum(1) == 2).all()), name
        assert torch.equal(dict(net.named_parameters())[name].detach() == 0, ~m)
    # 1:4 on top of the 2:4 masks: every group loses one more weight, the 2:4 zeros stay
    more = mfac_obs_masks(net, None, data, 0.0, structure="1:4", num_grads=4, recomputations=1, masks=masks)
    assert all(bool((more[n] <= masks[n]).all()) for n in masks)
    assert all(bool((m.reshape(-1, 4).sum(1) == 1).all()) for m in more.values())


def test_obs_masks_per_layer_sparsities():
    net, data = _toy_net(3)
    masks = mfac_obs_masks(net, None, data, {"0.weight": 0.25, "2.weight": 0.75}, num_grads=4, recomputations=2)
    assert [int((~m).sum()) for m in masks.values()] == [10, 18]


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"sparsity": 1.0}, ValueError, "sparsity"),
        ({"sparsity": -0.1}, ValueError, "sparsity"),
        ({"sparsity": "0.5"}, TypeError, "sparsity"),
        ({"num_grads": 0}, ValueError, "num_grads"),
        ({"recomputations": 0}, ValueError, "recomputations"),
        ({"block_size": 0}, ValueError, "block_size"),
        ({"damp": 0.0}, ValueError, "damp"),
        ({"scope": "row"}, ValueError, "scope"),
        ({"parameter_names": ["nope.weight"]}, ValueError, "parameter_names"),
        ({"model": "net"}, TypeError, "model"),
        ({"model": nn.Sequential(nn.ReLU())}, ValueError, "nothing to prune"),
        ({"loader": []}, ValueError, "loader"),
        ({"loader": 3}, TypeError, "loader"),
        ({"loss_fn": 3}, TypeError, "loss_fn"),
        ({"masks": {"0.weight": torch.ones(2, 2, dtype=torch.bool)}}, ValueError, "masks"),
        ({"structure": "4:2"}, ValueError, "structure"),
        ({"structure": "2:4:8"}, ValueError, "structure"),
        ({"structure": 24}, TypeError, "structure"),
        ({"structure": "2:3"}, ValueError, "structure"),  # 3 divides neither input size (5, 8)
        ({"sparsity": {"0.weight": 0.5}, "parameter_names": ["0.weight", "2.weight"]}, ValueError, "sparsity"),
        ({"sparsity": {"0.weight": 1.5}}, ValueError, r"sparsity\['0.weight'\]"),
    ],
)
def test_obs_masks_bad_arguments_are_named(kwargs, error, name):
    net, data = _toy_net()
    args = {"model": net, "loss_fn": None, "loader": data, "sparsity": 0.5, **kwargs}
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(error, match=name):
        mfac_obs_masks(args.pop("model"), args.pop("loss_fn"), args.pop("loader"), args.pop("sparsity"), **args)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


# ------------------------------------------------------------------------------------- effects on real data

SEEDS = (0, 1, 2)
EPOCHS = 10


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xt, xv, yt, yv = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    as_x = lambda a: torch.tensor(a, dtype=torch.float32) / 16.0  # noqa: E731
    return as_x(xt), torch.tensor(yt), as_x(xv), torch.tensor(yv)


def _digits_mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))  # 19,210 parameters


def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


OPTIMIZERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "mfac": lambda p: MFAC(p, lr=1e-2, num_grads=32, damp=1e-2),
}


@pytest.fixture(scope="module")
def trained(digits):
    """(optimizer, seed) -> (model, train loss, validation accuracy): 10 epochs, batch 32."""
    xt, yt, xv, yv = digits
    out = {}
    for name, make in OPTIMIZERS.items():
        for seed in SEEDS:
            net = _digits_mlp(seed)
            opt = make(net.parameters())
            gen = torch.Generator().manual_seed(seed)
            for _ in range(EPOCHS):
                for idx in torch.randperm(len(yt), generator=gen).split(32):
                    opt.zero_grad()
                    nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
                    opt.step()
            with torch.no_grad():
                loss = float(nn.functional.cross_entropy(net(xt), yt))
            out[name, seed] = (net, loss, _accuracy(net, xv, yv))
    return out


@pytest.mark.slow
def test_mfac_trains_the_digits_mlp_as_well_as_adam_and_sgd(trained):
    """Measured (validation accuracy / train loss after 10 epochs), seeds 0, 1, 2:
    MFAC(lr 1e-2, m 32, damp 1e-2) 0.974/0.063, 0.969/0.075, 0.972/0.060; Adam(1e-3) 0.967/0.127, 0.967/0.128,
    0.957/0.128; SGD(0.1, momentum 0.9) 0.970/0.024, 0.980/0.015, 0.976/0.015."""
    acc = {k: v[2] for k, v in trained.items()}
    loss = {k: v[1] for k, v in trained.items()}
    for seed in SEEDS:
        assert acc["mfac", seed] >= 0.95, seed  # the catalogue's bar is 0.9
        assert acc["mfac", seed] >= acc["adam", seed] - 0.01, seed
        assert acc["mfac", seed] >= acc["sgd", seed] - 0.03, seed
        assert loss["mfac", seed] < loss["adam", seed], seed
    mean = {name: sum(acc[name, s] for s in SEEDS) / len(SEEDS) for name in OPTIMIZERS}
    assert mean["mfac"] >= max(mean["adam"], mean["sgd"]) - 0.01


def _magnitude_pruned(net: nn.Module, sparsity: float) -> nn.Module:
    net = copy.deepcopy(net)
    weights = {n: p for n, p in net.named_parameters() if n.endswith("weight")}
    masks = magnitude_masks(weights, sparsity, "global")
    with torch.no_grad():
        for n, p in weights.items():
            p.mul_(masks[n])
    return net


@pytest.mark.slow
def test_mfac_obs_beats_magnitude_at_80_percent_without_fine_tuning(digits, trained):
    """Measured validation accuracy at 80 % global sparsity of both weight matrices (Adam-trained models; m = 64
    gradients of batch 32, blocks of 128, damp 1e-5, 16 recomputations), seeds 0, 1, 2: dense 0.967, 0.967, 0.957;
    magnitude 0.900, 0.854, 0.935; M-FAC OBS 0.972, 0.965, 0.969."""
    xt, yt, xv, yv = digits
    results = []
    for seed in SEEDS:
        dense = trained["adam", seed][0]
        gen = torch.Generator().manual_seed(100 + seed)
        loader = [(xt[i], yt[i]) for i in torch.randperm(len(yt), generator=gen).split(32)]
        obs = copy.deepcopy(dense)
        masks = mfac_obs_masks(obs, None, loader, 0.8)
        assert sum(int((~m).sum()) for m in masks.values()) == round(0.8 * (64 * 256 + 256 * 10))
        results.append((_accuracy(_magnitude_pruned(dense, 0.8), xv, yv), _accuracy(obs, xv, yv)))
    for seed, (mag, obs) in zip(SEEDS, results, strict=True):
        assert obs > mag + 0.01, (seed, results)
    assert sum(o - m for m, o in results) / len(results) > 0.03, results
