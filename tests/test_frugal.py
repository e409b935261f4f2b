"""FRUGAL (Zmushko et al. 2024): the update rule's limits, re-projection, state round trip for every projection,
the state size, DDP agreement, argument validation, and the char-LM effect on Tiny Shakespeare."""

from __future__ import annotations

import copy
import math
import re

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from litmix.optim import FRUGAL, frugal_param_groups, memory_report
from litmix.testing import AssertRanksAgree, TinyClassifier, TinyDataModule, run_ddp


def _mlp(seed: int = 0, width: int = 8) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width), nn.Linear(width, 3)
    )


def _train(model: nn.Module, opt: torch.optim.Optimizer, steps: int, start: int = 0) -> None:
    for step in range(start, start + steps):
        gen = torch.Generator().manual_seed(step)
        x, y = torch.randn(5, 6, generator=gen), torch.randint(0, 3, (5,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _close(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> bool:
    return all(torch.allclose(x, y, atol=atol) for x, y in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("projection", ["block", "randk"])
def test_density_one_is_adamw_and_density_zero_is_signsgd_on_projectable_tensors(projection):
    ref, frugal = _mlp(), _mlp()
    _train(ref, torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1), 12)
    _train(
        frugal, FRUGAL(frugal_param_groups(frugal), lr=1e-2, weight_decay=0.1, density=1.0, projection=projection), 12
    )
    assert _close(ref, frugal)
    # density 0: every Linear weight moves by exactly lr * sign(g) (biases keep AdamW)
    model = _mlp()
    opt = FRUGAL(frugal_param_groups(model), lr=0.5, density=0.0, projection=projection)
    before = [m.weight.detach().clone() for m in model if isinstance(m, nn.Linear)]
    _train(model, opt, 1)
    for w0, m in zip(before, [m for m in model if isinstance(m, nn.Linear)], strict=True):
        assert torch.equal(m.weight.detach(), w0 - 0.5 * m.weight.grad.sign())


def test_block_mode_splits_state_full_and_state_free_tensors_and_moves_the_active_set():
    model = _mlp(width=16)
    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    opt = FRUGAL(frugal_param_groups(model), lr=1e-2, density=0.5, update_gap=3, block_order="ascending")
    seen = []
    for step in range(9):
        before = [w.detach().clone() for w in weights]
        _train(model, opt, 1, start=step)
        active = [opt.state[w]["active"] for w in weights]
        seen.append(tuple(active))
        assert sum(active) == 2
        for w, w0, on in zip(weights, before, active, strict=True):
            moved = (w.detach() - w0).abs()
            if not on:  # state-free: exactly lr in every coordinate with a nonzero gradient, no moments
                assert torch.allclose(moved[w.grad != 0], torch.full_like(moved[w.grad != 0], 1e-2))
                assert "exp_avg" not in opt.state[w]
            else:
                assert opt.state[w]["exp_avg"].shape == w.shape
    assert seen[0] == seen[1] == seen[2] == (True, True, False, False)
    assert seen[3] == seen[4] == seen[5] == (False, False, True, True)
    assert seen[6] == (True, True, False, False)
    assert int(opt.param_groups[0]["frugal_step"]) == 9


def test_svd_projection_keeps_rank_r_moments_and_a_sign_residual():
    model = _mlp(width=16)
    opt = FRUGAL(frugal_param_groups(model), lr=1e-2, density=0.25, projection="svd", update_gap=2)
    _train(model, opt, 3)
    w = model[2].weight  # 16 x 16: r = 4
    assert opt.state[w]["proj"].shape == (16, 4)
    assert opt.state[w]["exp_avg"].shape == (4, 16)
    proj = opt.state[w]["proj"]
    assert torch.allclose(proj.T @ proj, torch.eye(4), atol=1e-5)  # orthonormal singular vectors
    last = model[5].weight  # 3 x 16: projected on the smaller side, r = ceil(0.25 * 3) = 1
    assert opt.state[last]["proj"].shape == (3, 1)
    assert opt.state[last]["exp_avg"].shape == (1, 16)


@pytest.mark.parametrize("projection", ["block", "randk", "svd"])
@pytest.mark.parametrize("reset", [True, False])
def test_save_load_continue_equals_an_uninterrupted_run(projection, reset):
    kw = {"lr": 1e-2, "weight_decay": 0.1, "density": 0.5, "update_gap": 3, "projection": projection}
    kw["reset_statistics"] = reset
    full = _mlp()
    _train(full, FRUGAL(frugal_param_groups(full), **kw), 11)
    first = _mlp()
    opt_first = FRUGAL(frugal_param_groups(first), **kw)
    _train(first, opt_first, 4)  # stop inside a projection window
    saved = copy.deepcopy({"model": first.state_dict(), "opt": opt_first.state_dict()})
    resumed = _mlp(seed=123)
    resumed.load_state_dict(saved["model"])
    opt_resumed = FRUGAL(frugal_param_groups(resumed), **kw)
    opt_resumed.load_state_dict(saved["opt"])
    _train(resumed, opt_resumed, 7, start=4)
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in full.state_dict().items())
    # negative control: a fresh optimizer (no step counter, no subspace, no moments) does not reproduce the run
    forgetful = _mlp(seed=123)
    forgetful.load_state_dict(saved["model"])
    _train(forgetful, FRUGAL(frugal_param_groups(forgetful), **kw), 7, start=4)
    assert not all(torch.equal(v, forgetful.state_dict()[k]) for k, v in full.state_dict().items())


def test_block_state_is_density_times_adamw_state_for_projectable_tensors():
    model = _mlp(width=32)
    adamw = torch.optim.AdamW(model.parameters())
    frugal = FRUGAL(frugal_param_groups(model), density=0.25, update_gap=1)
    model(torch.randn(2, 6)).sum().backward()
    adamw.step()
    frugal.step()
    projectable = {id(p) for p in frugal_param_groups(model)[0]["params"]}

    def projectable_bytes(opt):
        return sum(
            t.numel() * t.element_size()
            for p, st in opt.state.items()
            if id(p) in projectable
            for t in st.values()
            if torch.is_tensor(t) and t.dim() > 0
        )

    # four projectable weights (6x32, 32x32, 32x32, 32x3): one is state-full
    active = [p for p in frugal_param_groups(model)[0]["params"] if frugal.state[p]["active"]]
    assert projectable_bytes(frugal) == 8 * sum(p.numel() for p in active)
    assert memory_report(frugal)["state_bytes"] < memory_report(adamw)["state_bytes"]


def test_param_groups_select_linear_weights_and_skip_tied_and_excluded():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied
    model = nn.ModuleDict({"emb": emb, "body": nn.Linear(4, 4), "lm_head": nn.Linear(4, 10), "tied": head})
    groups = frugal_param_groups(model)
    assert groups[0]["params"] == [model["body"].weight]
    with pytest.raises(TypeError, match="exclude"):
        frugal_param_groups(model, exclude="lm_head")
    with pytest.raises(TypeError, match="module"):
        frugal_param_groups("model")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"density": 1.5}, ValueError, "density"),
        ({"density": math.nan}, ValueError, "density"),
        ({"update_gap": 0}, ValueError, "update_gap"),
        ({"projection": "qr"}, ValueError, "projection"),
        ({"block_order": "zigzag"}, ValueError, "block_order"),
        ({"inactive_update_rule": "adam"}, ValueError, "inactive_update_rule"),
        ({"inactive_lr_scale": -1.0}, ValueError, "inactive_lr_scale"),
        ({"reset_statistics": 1}, TypeError, "reset_statistics"),
        ({"lr": -1.0}, ValueError, "lr"),
        ({"betas": (0.9, 1.0)}, ValueError, "betas[1]"),
        ({"eps": 0.0}, ValueError, "eps"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_bad_arguments_fail_before_compute_naming_them(kwargs, error, name):
    with pytest.raises(error, match=rf"FRUGAL\({re.escape(name)}="):
        FRUGAL(_mlp().parameters(), **kwargs)


def test_bad_params_are_named():
    with pytest.raises(ValueError, match="params"):
        FRUGAL([])
    with pytest.raises(TypeError, match="params"):
        FRUGAL(torch.zeros(3))
    with pytest.raises(TypeError, match=r"param_groups\[0\]\.projectable"):
        FRUGAL([{"params": _mlp().parameters(), "projectable": "yes"}])


class _FrugalClassifier(TinyClassifier):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return FRUGAL(frugal_param_groups(self), lr=1e-2, density=0.5, update_gap=2, projection="svd")


@pytest.mark.ddp
def test_ddp_ranks_choose_the_same_subspace():
    pl.seed_everything(0, verbose=False)
    run_ddp([AssertRanksAgree()], _FrugalClassifier(), TinyDataModule(), max_steps=5)


# ------------------------------------------------------------------------------------- effect on a char-LM

CTX, HIDDEN = 16, 256


def _char_data(shared_data):
    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    return torch.tensor([stoi[c] for c in text], dtype=torch.long), len(chars)


def _batches(data, seed, steps, batch, lo, hi):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ix = torch.randint(lo, hi, (batch,), generator=gen)
        yield torch.stack([data[i : i + CTX] for i in ix]), data[ix + CTX]


def _char_lm(kind, seed, data, vocab):
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Embedding(vocab, 16), nn.Flatten(), nn.Linear(CTX * 16, HIDDEN), nn.GELU()]
    for _ in range(3):
        layers += [nn.Linear(HIDDEN, HIDDEN), nn.GELU()]
    model = nn.Sequential(*layers, nn.Linear(HIDDEN, vocab))
    groups = frugal_param_groups(model, exclude=(str(len(layers)),))  # the output head stays state-full
    if kind == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    else:
        opt = FRUGAL(groups, lr=1e-3, density=0.25 if kind == "frugal" else 0.0, update_gap=100)
    n_train = int(0.9 * len(data))
    for x, y in _batches(data, seed, 300, 64, 0, n_train - CTX - 1):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        val = [
            nn.functional.cross_entropy(model(x), y).item()
            for x, y in _batches(data, 1000, 20, 256, n_train, len(data) - CTX - 1)
        ]
    projectable = {id(p) for p in groups[0]["params"]}
    state = sum(
        t.numel() * t.element_size()
        for p, st in opt.state.items()
        if id(p) in projectable
        for t in st.values()
        if torch.is_tensor(t) and t.dim() > 0
    )
    return sum(val) / len(val), state


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frugal_quarter_state_matches_adamw_on_the_char_lm(shared_data, seed):
    """Tiny Shakespeare, char MLP (16 chars -> 4 x 256 Linear -> 65), 300 AdamW-lr steps of 64 sequences.

    Measured validation loss (seeds 0 / 1 / 2): AdamW 2.670 / 2.593 / 2.620, FRUGAL(density 0.25) 2.676 / 2.645 /
    2.654 (1.002 / 1.020 / 1.013x AdamW), signSGD on the projectable weights 2.718 / 2.685 / 2.681; FRUGAL's
    projectable state 0.25x AdamW's."""
    data, vocab = _char_data(shared_data)
    adamw, adamw_state = _char_lm("adamw", seed, data, vocab)
    frugal, frugal_state = _char_lm("frugal", seed, data, vocab)
    sign, _ = _char_lm("signsgd", seed, data, vocab)
    assert frugal <= 1.1 * adamw
    assert frugal < sign
    assert frugal_state == adamw_state // 4
