"""Tests for the unlearning loss registry (litmix.functional.unlearning_losses) and UnlearningModule's use of it.

Effect numbers for the report: ``python tests/test_unlearning_losses.py [seeds...]`` (digits class forgetting).
"""

import copy
import logging
import math
import sys

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from litmix.datamodules.forget_retain import ForgetRetainDataModule
from litmix.functional.unlearning import npo_loss, sequence_nll
from litmix.functional.unlearning_losses import (
    ALIASES,
    FORGET_LOSSES,
    activation_mse,
    grad_diff_loss,
    idk_dpo_loss,
    resolve_forget_loss,
    rmu_direction,
    rmu_forget_loss,
    simnpo_loss,
    undial_loss,
    undial_targets,
    wga_loss,
)
from litmix.plugins.unlearning_module import UnlearningModule
from litmix.testing import TinyDataModule, make_trainer, run_ddp

logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


def mlp(seed, d=8, h=16, c=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c))


def tiny_dm(**kwargs):
    kwargs.setdefault("forget_indices", list(range(0, 64, 5)))  # 13 items: odd, so DDP pads
    kwargs.setdefault("eval_batch_size", 5)
    return ForgetRetainDataModule.from_dataset(
        TinyDataModule(n=64).dataset, test_dataset=TinyDataModule(n=24).dataset, batch_size=4, **kwargs
    )


class CaptureLoss(Callback):
    def __init__(self):
        self.forget_terms = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.forget_terms.append(float(trainer.callback_metrics["train/forget_loss_step"]))


def logsig(x):
    return -math.log1p(math.exp(-x))


# ----------------------------------------------------------------------------- functional: hand computations
def test_simnpo_matches_hand_computation_and_has_no_reference():
    nll, length = torch.tensor([6.0, 2.0]), torch.tensor([3, 1])
    beta, margin = 2.0, 0.5
    hand = -(2 / beta) * (logsig(beta * (2.0 - margin)) + logsig(beta * (2.0 - margin))) / 2
    assert abs(float(simnpo_loss(nll, length, beta, margin)) - hand) < 1e-6
    assert abs(float(simnpo_loss(torch.tensor([1.0]), None, 1.0)) + 2 * logsig(1.0)) < 1e-6
    # falls as the forget NLL grows (minimising it forgets)
    assert simnpo_loss(nll + 5, length, beta) < simnpo_loss(nll, length, beta)


def test_idk_dpo_matches_hand_computation_and_reduces_to_npo():
    nll, ref, alt, ref_alt = torch.tensor([3.0]), torch.tensor([2.0]), torch.tensor([4.0]), torch.tensor([5.0])
    beta = 0.5
    # log pi/pi_ref of the preferred answer: 5 - 4 = 1; of the forget answer: 2 - 3 = -1
    hand = -(2 / beta) * logsig(beta * (1.0 - (-1.0)))
    assert abs(float(idk_dpo_loss(nll, ref, alt, ref_alt, beta)) - hand) < 1e-6
    x, r = torch.tensor([1.0, 7.0, 3.0]), torch.tensor([2.0, 2.0, 2.0])
    assert torch.equal(idk_dpo_loss(x, r, beta=0.3), npo_loss(x, r, beta=0.3))
    assert abs(float(idk_dpo_loss(x, x, x, x, beta=0.1)) - 20 * math.log(2)) < 1e-4
    with pytest.raises(ValueError, match="alt_nll"):
        idk_dpo_loss(x, r, alt_nll=x)


def test_undial_matches_hand_computation():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    ref = torch.tensor([[2.0, 1.0, 0.0]])
    beta = 1.5
    adj = [2.0 - beta, 1.0, 0.0]
    z = sum(math.exp(a) for a in adj)
    soft = [math.exp(a) / z for a in adj]
    lz = math.log(sum(math.exp(v) for v in (1.0, 0.0, -1.0)))
    hand = -sum(s * (v - lz) for s, v in zip(soft, (1.0, 0.0, -1.0), strict=True))
    assert abs(float(undial_loss(logits, ref, torch.tensor([0]), beta)) - hand) < 1e-6
    assert torch.allclose(undial_targets(ref, torch.tensor([0]), beta), torch.tensor([soft]))
    # LM form: ignored positions do not count
    seq, seq_ref = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    tgt = torch.tensor([[1, -100, 2], [-100, -100, 4]])
    mask = tgt != -100
    expected = undial_loss(seq[mask], seq_ref[mask], tgt[mask], beta)
    assert torch.allclose(undial_loss(seq, seq_ref, tgt, beta), expected)


def test_wga_matches_hand_computation_and_detaches_the_weight():
    p = [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]
    logits = torch.log(torch.tensor(p)).requires_grad_(True)
    targets = torch.tensor([0, 2])
    beta = 2.0
    hand = -((0.5**beta) * -math.log(0.5) + (0.3**beta) * -math.log(0.3)) / 2
    loss = wga_loss(logits, targets, beta)
    assert abs(float(loss) - hand) < 1e-6
    loss.backward()
    # d/dlogits of -w * CE with w constant: -w * (softmax - onehot) / 2
    expected = -(0.5**beta) * (torch.tensor(p[0]) - torch.tensor([1.0, 0, 0])) / 2
    assert torch.allclose(logits.grad[0], expected, atol=1e-6)
    tgt = torch.tensor([[1, -100], [0, 2]])
    seq = torch.randn(2, 2, 3)
    assert torch.allclose(wga_loss(seq, tgt, 1.0), wga_loss(seq[tgt != -100], tgt[tgt != -100], 1.0))


def test_grad_diff_and_activation_mse_and_rmu_direction_by_hand():
    assert float(grad_diff_loss(torch.tensor([2.0, 4.0]), torch.tensor([1.0]), 0.5)) == -3.0 + 0.5
    a = torch.tensor([[[1.0, 1.0], [3.0, 3.0]], [[0.0, 2.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    # sample 0: (1 + 9) / 2 = 5, sample 1: mean(0, 4) = 2 -> 3.5
    assert float(activation_mse(a, torch.zeros(2), mask)) == 3.5
    u1, u2 = rmu_direction(6, 3.0, seed=1), rmu_direction(6, 3.0, seed=1)
    assert torch.equal(u1, u2)
    assert abs(float(u1.norm()) - 3.0) < 1e-5
    assert not torch.equal(u1, rmu_direction(6, 3.0, seed=2))
    assert float(rmu_forget_loss(torch.zeros(2, 6), u1)) == pytest.approx(9.0 / 6)
    with pytest.raises(ValueError, match="direction shape"):
        rmu_forget_loss(torch.zeros(2, 5), u1)


def test_registry_names_and_bad_function_arguments():
    assert set(FORGET_LOSSES) == {"grad_ascent", "grad_diff", "npo", "simnpo", "idkdpo", "undial", "wga", "rmu"}
    assert all(resolve_forget_loss(a).name == t for a, t in ALIASES.items())
    with pytest.raises(ValueError, match=r"forget_loss='nope'.*grad_ascent, grad_diff, npo, simnpo, idkdpo"):
        resolve_forget_loss("nope")
    for fn, args in (
        (simnpo_loss, (torch.zeros(2),)),
        (idk_dpo_loss, (torch.zeros(2), torch.zeros(2))),
        (undial_loss, (torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))),
        (wga_loss, (torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))),
    ):
        with pytest.raises(ValueError, match=r"beta=0"):
            fn(*args, beta=0.0)
    with pytest.raises(ValueError, match="shapes differ"):
        simnpo_loss(torch.zeros(2), torch.ones(3))


# ----------------------------------------------------------------------------- module: arguments
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"forget_loss": "sgd"}, ValueError, r"forget_loss='sgd'.*registered: grad_ascent, grad_diff, npo, simnpo"),
        ({"forget_loss": 3}, TypeError, r"forget_loss=3"),
        ({"method": "npo", "forget_loss": "wga"}, ValueError, r"method='npo', forget_loss='wga'"),
        ({"forget_loss": "wga", "margin": 1.0}, ValueError, r"margin=1.0.*simnpo"),
        ({"forget_loss": "simnpo", "margin": float("nan")}, ValueError, r"margin=nan"),
        ({"forget_loss": "rmu"}, ValueError, r"rmu_layer=None"),
        ({"forget_loss": "npo", "retain_loss": "activation"}, ValueError, r"rmu_layer=None"),
        ({"forget_loss": "rmu", "rmu_layer": "9"}, ValueError, r"rmu_layer='9'.*no such submodule"),
        ({"forget_loss": "rmu", "rmu_layer": "1", "rmu_coeff": 0.0}, ValueError, r"rmu_coeff=0.0"),
        ({"forget_loss": "rmu", "rmu_layer": "1", "rmu_seed": -1}, ValueError, r"rmu_seed=-1"),
        ({"forget_loss": "rmu", "rmu_layer": 1}, TypeError, r"rmu_layer=1"),
        ({"forget_loss": "simnpo", "cache_reference": True}, ValueError, r"cache_reference=True.*npo, idkdpo, undial"),
        ({"forget_loss": "wga", "nll_reduction": "sum"}, ValueError, r"nll_reduction='sum'"),
        ({"forget_loss": "ga", "retain_loss": "nll"}, ValueError, r"forget_loss='ga'.*grad_diff"),
        ({"forget_loss": "undial", "beta": -1.0}, ValueError, r"beta=-1.0"),
        ({"forget_loss": "idkdpo", "retain_loss": "l1"}, ValueError, r"retain_loss='l1'"),
    ],
)
def test_module_argument_errors_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        UnlearningModule(mlp(0), **kwargs)


def test_names_aliases_defaults_and_old_method_argument():
    assert UnlearningModule(mlp(0)).method == "npo"
    assert UnlearningModule(mlp(0), method="grad_diff").retain_loss == "nll"
    assert UnlearningModule(mlp(0), forget_loss="graddiff").method == "grad_diff"
    assert UnlearningModule(mlp(0), method="npo", forget_loss="npo").beta == 0.1
    assert UnlearningModule(mlp(0), forget_loss="idkpo").method == "idkdpo"
    for name, beta in (("simnpo", 4.5), ("undial", 10.0), ("wga", 1.0), ("idkdpo", 0.1)):
        assert UnlearningModule(mlp(0), forget_loss=name).beta == beta
    rmu = UnlearningModule(mlp(0), forget_loss="rmu", rmu_layer="1")
    assert rmu.retain_loss == "activation"


def test_retain_loss_without_retain_items_names_retain_loss():
    import lightning.pytorch as pl

    class ForgetOnly(pl.LightningDataModule):
        def train_dataloader(self):
            x, y = torch.randn(8, 8), torch.randint(0, 4, (8,))
            return DataLoader([{"forget": (x[i], y[i]), "index": i} for i in range(8)], batch_size=4)

    module = UnlearningModule(mlp(0), forget_loss="wga", retain_loss="nll", lr=0.01)
    with pytest.raises(ValueError, match=r"retain_loss='nll'.*no 'retain' items"):
        make_trainer(max_steps=1).fit(module, datamodule=ForgetOnly())


# ----------------------------------------------------------------------------- module: every loss trains
ALL_RECIPES = {
    "grad_ascent": {},
    "grad_diff": {},
    "npo": {"retain_loss": "kl"},
    "simnpo": {"margin": 2.0},  # forget NLL ~1.7 here: beta * (NLL - margin) < 0 keeps the gradient alive
    "idkdpo": {},
    "undial": {},
    "wga": {},
    "rmu": {"rmu_layer": "1"},
}


@pytest.mark.parametrize("name", list(ALL_RECIPES))
def test_every_loss_trains_and_raises_the_forget_nll(name):
    torch.manual_seed(0)
    net = mlp(0)
    dm = tiny_dm()
    module = UnlearningModule(copy.deepcopy(net), forget_loss=name, lr=0.05, **ALL_RECIPES[name])
    make_trainer(max_steps=8).fit(module, datamodule=dm)
    x, y, _ = next(iter(DataLoader(dm.eval_datasets["forget"], batch_size=100)))
    with torch.no_grad():
        before = F.cross_entropy(net(x), y)
        after = F.cross_entropy(module.model(x), y)
    assert after > before + 0.05, (name, float(before), float(after))
    assert set(module.state_dict()) == {f"model.{k}" for k in net.state_dict()}


def test_simnpo_never_builds_or_runs_a_reference():
    module = UnlearningModule(mlp(0), forget_loss="simnpo", retain_loss="nll", lr=0.05)
    make_trainer(max_steps=4).fit(module, datamodule=tiny_dm())
    assert module.ref_model is None
    assert module.reference_forwards == 0


def _layer_mse(net, x, layer, target):
    acts = []
    handle = net.get_submodule(layer).register_forward_hook(lambda m, i, o: acts.append(o))
    with torch.no_grad():
        net(x)
    handle.remove()
    return float(((acts[0] - target) ** 2).mean())


def test_rmu_moves_forget_activations_toward_the_target_and_keeps_retain_ones():
    """Forget set = class 0 of the blobs; layer "1" (the hidden ReLU). Measured: forget MSE to c*u 0.714 -> 0.197,
    retain drift from the frozen model 0.033 (retain activations' mean square 0.50)."""
    net = mlp(0)
    dm = tiny_dm(forget_indices=list(range(0, 64, 4)))
    module = UnlearningModule(copy.deepcopy(net), forget_loss="rmu", rmu_layer="1", rmu_coeff=2.0, lr=0.01)
    make_trainer(max_steps=30, max_epochs=-1).fit(module, datamodule=dm)
    target = rmu_direction(16, 2.0, seed=0)
    xf = next(iter(DataLoader(dm.eval_datasets["forget"], batch_size=100)))[0]
    xr = next(iter(DataLoader(dm.eval_datasets["retain"], batch_size=100)))[0]
    before, after = _layer_mse(net, xf, "1", target), _layer_mse(module.model, xf, "1", target)
    assert after < 0.35 * before, (before, after)
    acts = {}
    for key, model in (("orig", net), ("new", module.model)):
        handle = model.get_submodule("1").register_forward_hook(lambda m, i, o, key=key: acts.__setitem__(key, o))
        with torch.no_grad():
            model(xr)
        handle.remove()
    retain_drift = float(((acts["new"] - acts["orig"]) ** 2).mean())
    assert retain_drift < 0.1 * (before - after), (retain_drift, before, after)


# ----------------------------------------------------------------------------- reference cache
@pytest.mark.parametrize("name", ["npo", "idkdpo", "undial"])
def test_cached_reference_equals_resident(name):
    runs = {}
    for cache in (False, True):
        torch.manual_seed(0)
        module = UnlearningModule(mlp(0), forget_loss=name, lr=0.05, cache_reference=cache, optimizer="sgd")
        capture = CaptureLoss()
        make_trainer(max_steps=6, callbacks=[capture]).fit(module, datamodule=tiny_dm())
        runs[cache] = (module, capture.forget_terms)
    (resident, res_terms), (cached, cache_terms) = runs[False], runs[True]
    assert cached.ref_model is None
    assert resident.ref_model is not None
    assert max(abs(a - b) for a, b in zip(res_terms, cache_terms, strict=True)) < 1e-5
    if name != "undial":
        assert abs(cache_terms[0] - 2 / 0.1 * math.log(2)) < 1e-4  # (2/beta) log 2 at the reference
    # computed once: one reference forward per forget eval batch (13 items, batch 5), none per training step
    assert cached.reference_forwards == 3
    assert resident.reference_forwards >= 6


def test_cache_is_checkpointed_outside_the_state_dict_and_resume_runs_no_reference_forward(tmp_path):
    net = mlp(0)
    module = UnlearningModule(copy.deepcopy(net), forget_loss="idkdpo", lr=0.05, cache_reference=True)
    trainer = make_trainer(max_steps=2)
    trainer.fit(module, datamodule=tiny_dm())
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    checkpoint = torch.load(tmp_path / "a.ckpt", weights_only=False)
    saved = checkpoint["litmix"]["ref_cache"]
    assert set(saved) == {"nll", "alt_nll", "alt_target"}
    assert saved["nll"].shape == (13,)
    user_model = mlp(5)  # the user's class loads the weights strictly
    user_model.load_state_dict({k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}, strict=True)
    resumed = UnlearningModule(copy.deepcopy(net), forget_loss="idkdpo", lr=0.05, cache_reference=True)
    make_trainer(max_steps=4).fit(resumed, datamodule=tiny_dm(), ckpt_path=tmp_path / "a.ckpt")
    assert resumed.reference_forwards == 0
    assert resumed.ref_model is None
    for key, value in saved.items():
        assert torch.equal(resumed.ref_cache[key].cpu(), value)


class _CacheReport(Callback):
    def on_train_end(self, trainer, pl_module):
        cache = torch.cat([pl_module.ref_cache[k].flatten() for k in sorted(pl_module.ref_cache)]).double()
        gathered = trainer.strategy.all_gather(cache)
        trainer.callback_metrics["check/cache_spread"] = (gathered - gathered[0]).abs().max()
        trainer.callback_metrics["check/cache_sum"] = cache.sum()
        trainer.callback_metrics["check/cache_weighted"] = (cache * torch.arange(1, len(cache) + 1)).sum()
        forwards = trainer.strategy.all_gather(torch.tensor(float(pl_module.reference_forwards)))
        trainer.callback_metrics["check/ref_forwards"] = forwards.sum()


@pytest.mark.ddp
def test_ddp_ranks_score_their_shards_and_gather_the_single_process_cache():
    module = UnlearningModule(mlp(0), forget_loss="idkdpo", lr=0.05, cache_reference=True)
    trainer = run_ddp([_CacheReport()], module, tiny_dm(eval_batch_size=4), max_steps=2)
    single = UnlearningModule(mlp(0), forget_loss="idkdpo", lr=0.05, cache_reference=True)
    report = _CacheReport()
    one = make_trainer(max_steps=2, callbacks=[report])
    one.fit(single, datamodule=tiny_dm(eval_batch_size=4))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert metrics["check/cache_spread"] == 0.0  # every rank holds the same assembled cache
    # float32 forwards over differently composed batches: equal to ~1e-7
    assert abs(metrics["check/cache_sum"] - float(one.callback_metrics["check/cache_sum"])) < 1e-5
    assert abs(metrics["check/cache_weighted"] - float(one.callback_metrics["check/cache_weighted"])) < 1e-4
    # 13 items on 2 ranks, batch 4: rank 0 scores 7 items (2 batches), rank 1 scores 6 (2 batches)
    assert metrics["check/ref_forwards"] == 4.0
    assert float(one.callback_metrics["check/ref_forwards"]) == 4.0  # 13 items, batch 4: 4 batches


# ----------------------------------------------------------------------------- causal LM plumbing
def tiny_gpt2(vocab_size=40, n_positions=16, seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=2, n_head=2, n_embd=16, vocab_size=vocab_size, n_positions=n_positions,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def lm_items(n, seed, idk=True):
    gen = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        ids = torch.randint(0, 40, (10,), generator=gen)
        labels = ids.clone()
        labels[:4] = -100
        item = {"input_ids": ids, "attention_mask": torch.ones(10, dtype=torch.long), "labels": labels}
        if idk:
            alt = torch.cat([ids[:4], torch.tensor([1, 2, 3, 4, 5, 6])])  # the same prompt, an "I don't know"
            alt_labels = alt.clone()
            alt_labels[:4] = -100
            item["alternate"] = {
                "input_ids": alt,
                "attention_mask": torch.ones(10, dtype=torch.long),
                "labels": alt_labels,
            }
        items.append(item)
    return items


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("idkdpo", {"cache_reference": True, "retain_loss": "kl"}),
        ("simnpo", {}),
        ("wga", {}),
        ("undial", {}),
        ("rmu", {"rmu_layer": "transformer.h.0", "rmu_coeff": 2.0}),
    ],
)
def test_causal_lm_losses_run_and_start_where_the_formula_says(name, kwargs):
    model = tiny_gpt2()
    items = lm_items(8, 0)
    dm = ForgetRetainDataModule.from_dataset(items, forget_indices=[0, 1, 2, 3], batch_size=2, eval_batch_size=2)
    module = UnlearningModule(copy.deepcopy(model), forget_loss=name, lr=1e-2, **kwargs)
    capture = CaptureLoss()
    make_trainer(max_steps=3, callbacks=[capture]).fit(module, datamodule=dm)
    assert all(math.isfinite(v) for v in capture.forget_terms)
    if name == "idkdpo":
        assert abs(capture.forget_terms[0] - 20 * math.log(2)) < 1e-3
        assert module.ref_model is not None  # kept for the KL retain term
        assert module.ref_cache["alt_nll"].shape == (4,)
    if name == "simnpo":
        batch = dm.train_pairs[0]["forget"]
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"][None]).logits
        nll = sequence_nll(logits, batch["labels"][None], "mean")
        assert float(nll) > 0  # length-normalised NLL is what SimNPO reads


def test_causal_lm_idkdpo_without_alternate_names_the_missing_key():
    items = lm_items(6, 1, idk=False)
    dm = ForgetRetainDataModule.from_dataset(items, forget_indices=[0, 1], batch_size=2, eval_batch_size=2)
    module = UnlearningModule(tiny_gpt2(), forget_loss="idkdpo", lr=1e-2)
    with pytest.raises(ValueError, match=r"forget_loss='idkdpo'.*'alternate'"):
        make_trainer(max_steps=1).fit(module, datamodule=dm)


# ----------------------------------------------------------------------------- effect: digits class forgetting
# sklearn digits, forget class 3 (128 train images), MLP 64-64-64-10 trained 20 epochs (Adam 3e-3); every loss
# unlearns it for 40 steps (Adam, batch 32 forget + 32 retain). Measured per seed 0 / 1 / 2 (forget-train
# accuracy; retain-train accuracy drop from the original, original retain accuracy 0.990 / 0.996 / 0.997):
#   grad_ascent lr 3e-4            forget 0.016 / 0.031 / 0.000   retain drop 0.101 / 0.093 / 0.103
#   grad_diff   lr 3e-4            forget 0.078 / 0.023 / 0.008   retain drop 0.035 / 0.020 / 0.074
#   npo + nll   lr 1e-3            forget 0.000 / 0.000 / 0.000   retain drop 0.104 / 0.100 / 0.113
#   simnpo + nll lr 1e-3           forget 0.000 / 0.000 / 0.000   retain drop -0.004 / -0.002 / 0.009
#   idkdpo + nll lr 1e-3           forget 0.000 / 0.000 / 0.000   retain drop 0.022 / 0.015 / 0.039
#   undial beta 100 lr 1e-3        forget 0.000 / 0.008 / 0.000   retain drop 0.019 / 0.022 / 0.017
#   wga + nll   lr 1e-3            forget 0.000 / 0.000 / 0.000   retain drop -0.003 / -0.002 / 0.009
#   rmu layer 3 (+activation) 3e-3 forget 0.000 / 0.000 / 0.016   retain drop 0.033 / 0.058 / 0.021
# Not asserted: UNDIAL at the paper's beta 10 forgets only partly here (0.312 / 0.258 / 0.039: the digits MLP's
# logit margins exceed 10); RMU at lr 1e-3 (0.070 / 0.141 / 0.367).
EFFECT_STEPS = 40
EFFECT_RECIPES = {
    "grad_ascent": ({"forget_loss": "grad_ascent", "lr": 3e-4}, 0.05, 0.12),
    "grad_diff": ({"forget_loss": "grad_diff", "lr": 3e-4}, 0.10, 0.09),
    "npo": ({"forget_loss": "npo", "retain_loss": "nll", "lr": 1e-3}, 0.02, 0.13),
    "simnpo": ({"forget_loss": "simnpo", "retain_loss": "nll", "lr": 1e-3}, 0.02, 0.03),
    "idkdpo": ({"forget_loss": "idkdpo", "retain_loss": "nll", "lr": 1e-3, "cache_reference": True}, 0.02, 0.06),
    "undial": ({"forget_loss": "undial", "beta": 100.0, "lr": 1e-3, "cache_reference": True}, 0.03, 0.04),
    "wga": ({"forget_loss": "wga", "retain_loss": "nll", "lr": 1e-3}, 0.02, 0.03),
    "rmu": ({"forget_loss": "rmu", "rmu_layer": "3", "lr": 3e-3}, 0.05, 0.08),
}


def _digits_original(ds, seed, epochs=20, width=64):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    x, y, _ = next(iter(DataLoader(ds, batch_size=len(ds))))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for b in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            F.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
    return net


def _accuracies(net, dm):
    out = {}
    for split in ("forget", "retain", "test", "holdout"):
        x, y, _ = next(iter(DataLoader(dm.eval_datasets[split], batch_size=100_000)))
        with torch.no_grad():
            out[split] = float((net(x).argmax(-1) == y).float().mean())
    return out


def digits_effects(seed, recipes=EFFECT_RECIPES, steps=EFFECT_STEPS):
    dm = ForgetRetainDataModule("digits", forget_classes=[3], batch_size=32, seed=seed)
    dm.setup("fit")
    original = _digits_original(dm.train_base, seed)
    rows = {"original": _accuracies(original, dm)}
    for name, (kwargs, _, _) in recipes.items():
        module = UnlearningModule(copy.deepcopy(original), optimizer="adam", **kwargs)
        make_trainer(max_steps=steps, max_epochs=-1).fit(module, datamodule=dm)
        rows[name] = _accuracies(module.model, dm)
    return rows


@pytest.fixture(scope="module")
def class_forgetting_effects():
    torch.set_num_threads(1)  # module-scoped fixtures run before the autouse one-thread fixture
    return {seed: digits_effects(seed) for seed in (0, 1, 2)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EFFECT_RECIPES))
def test_every_loss_forgets_a_digit_class_and_keeps_retain_accuracy(class_forgetting_effects, name):
    _, max_forget, max_drop = EFFECT_RECIPES[name]
    for seed, rows in class_forgetting_effects.items():
        orig, new = rows["original"], rows[name]
        assert orig["forget"] > 0.95, seed
        assert new["forget"] <= max_forget, (seed, new)
        assert new["holdout"] <= max(2 * max_forget, 0.05), (seed, new)  # unseen images of the class too
        assert new["retain"] >= orig["retain"] - max_drop, (seed, orig, new)
        assert new["test"] >= orig["test"] - max_drop - 0.02, (seed, orig, new)


@pytest.mark.slow
def test_bounded_losses_with_a_retain_term_keep_more_utility_than_gradient_ascent(class_forgetting_effects):
    """Measured on every seed: SimNPO+RT and WGA+RT forget fully with retain drops <= 0.009, GA's >= 0.093."""
    for seed, rows in class_forgetting_effects.items():
        ga_drop = rows["original"]["retain"] - rows["grad_ascent"]["retain"]
        for name in ("simnpo", "wga"):
            drop = rows["original"]["retain"] - rows[name]["retain"]
            assert rows[name]["forget"] <= rows["grad_ascent"]["forget"] + 0.02, (seed, name)
            assert drop < ga_drop - 0.05, (seed, name, drop, ga_drop)


if __name__ == "__main__":
    torch.set_num_threads(1)
    for seed in [int(s) for s in sys.argv[1:]] or [0, 1, 2]:
        rows = digits_effects(seed)
        for name, r in rows.items():
            drop = rows["original"]["retain"] - r["retain"]
            print(f"seed {seed} {name:12s} " + " ".join(f"{k}={v:.3f}" for k, v in r.items()) + f" drop={drop:+.3f}")
