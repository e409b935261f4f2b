"""UnlearningModule on a Hugging Face GPT-2 loaded with from_pretrained, through PEFT LoRA adapters."""

from __future__ import annotations

import logging
import math
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
pytest.importorskip("peft")

from transformers import AutoModelForCausalLM

from litmix.datamodules.tofu import TOFUDataModule
from litmix.plugins.unlearning_module import UnlearningModule
from litmix.testing import make_trainer
from litmix.unlearning_peft import tofu_split_scores, train_tofu_gpt2

# The benchmark's setting (benchmarks/bench_unlearning_peft.py): the per-seed numbers are in its results table.
TASK = {"n_entities": 50, "steps": 150, "batch": 32}
LORA = {"r": 8, "alpha": 16}


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory):
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    root = tmp_path_factory.mktemp("tofu-data")
    return train_tofu_gpt2(tmp_path_factory.mktemp("gpt2"), data_dir=root, seed=0, **TASK)


def _data_dir(gpt2_dir):
    return (gpt2_dir / "tofu_data.txt").read_text()


def _fit(module, gpt2_dir, steps, seed=0):
    dm = TOFUDataModule(_data_dir(gpt2_dir), tokenizer="word", prompt_template="{question} :", batch_size=5, seed=seed)
    trainer = make_trainer(max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    return trainer, dm


def _frozen(module):
    return {n: p.detach().clone() for n, p in module.model.named_parameters() if not p.requires_grad}


@pytest.mark.slow
def test_npo_rt_through_lora_forgets_and_keeps_retain(gpt2_dir):
    """Seed 0 of the benchmark (120 steps, r 8): forget NLL 0.20 -> 48.9, retain 0.17 -> 0.39 (seeds 1, 2:
    0.29 -> 45.3 / 0.44 -> 0.60 and 0.06 -> 49.2 / 0.05 -> 0.56). Assert the margins that held on every seed."""
    torch.manual_seed(0)
    before = tofu_split_scores(AutoModelForCausalLM.from_pretrained(str(gpt2_dir)), _data_dir(gpt2_dir))
    module = UnlearningModule(
        str(gpt2_dir), forget_loss="npo", retain_loss="nll", lr=1e-2, cache_reference=True, lora=LORA
    )
    frozen = _frozen(module)
    params = dict(module.model.named_parameters())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    assert all("lora_" in n for n, p in params.items() if p.requires_grad)
    assert trainable / sum(p.numel() for p in params.values()) < 0.2  # 14.8 % on this 17k-parameter GPT-2
    trainer, _ = _fit(module, gpt2_dir, steps=120)
    opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in params.values() if p.requires_grad}
    assert all(torch.equal(v, params[n]) for n, v in frozen.items())  # base weights bit-identical
    after = tofu_split_scores(module.model, _data_dir(gpt2_dir))
    assert before["forget_nll"] < 1.0
    assert before["retain_acc"] >= 0.95
    assert after["forget_nll"] - before["forget_nll"] > 40.0  # measured >= 45.0 on seeds 0/1/2
    assert after["retain_nll"] < 1.0  # measured <= 0.60
    assert after["retain_acc"] >= 0.9  # measured >= 0.96
    assert module.ref_model is None  # the reference is the model with adapters disabled, not a copy


def test_reference_is_the_base_model_and_merge_roundtrips(gpt2_dir, tmp_path):
    base = AutoModelForCausalLM.from_pretrained(str(gpt2_dir)).eval()
    torch.manual_seed(0)
    loaded = AutoModelForCausalLM.from_pretrained(str(gpt2_dir))  # an already loaded PreTrainedModel
    args = {"forget_loss": "npo", "retain_loss": "kl", "lr": 1e-2, "lora": {**LORA, "dropout": 0.0}}
    module = UnlearningModule(loaded, **args)
    trainer, dm = _fit(module, gpt2_dir, steps=4)  # resident reference: NPO and KL read the disabled adapters
    assert module.ref_model is None
    assert module.reference_forwards > 0
    batch = next(iter(dm.eval_dataloader("forget")))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    module.eval()
    with torch.no_grad():
        ref = module._reference_logits(inputs)
        tuned = module.model(**inputs).logits
        torch.testing.assert_close(ref, base(**inputs).logits, rtol=0, atol=1e-6)
        assert (tuned - ref).abs().max() > 1e-3  # the adapters did train
        merged = module.merged_model()
        assert type(merged).__name__ == "GPT2LMHeadModel"
        merged.save_pretrained(str(tmp_path / "merged"))
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
        torch.testing.assert_close(reloaded(**inputs).logits, tuned, rtol=0, atol=1e-4)
    assert "lora_A" in str(dict(module.model.named_parameters()).keys())  # merging left the module unchanged
    # The Lightning checkpoint loads strictly into a fresh module built with the same arguments.
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    fresh = UnlearningModule(AutoModelForCausalLM.from_pretrained(str(gpt2_dir)), **args)
    fresh.load_state_dict(state, strict=True)
    for (name, p), q in zip(module.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize(
    ("lora", "error", "words"),
    [
        ({"rank": 4}, ValueError, "unknown key"),
        ({"r": 0}, ValueError, "lora['r']"),
        ({"r": 2.5}, TypeError, "lora['r']"),
        ({"r": 4, "alpha": -1.0}, ValueError, "lora['alpha']"),
        ({"r": 4, "dropout": 1.0}, ValueError, "lora['dropout']"),
        ({"r": 4, "target_modules": []}, ValueError, "target_modules"),
        ({"r": 4, "target_modules": ["q_proj"]}, ValueError, "'q_proj' is not an adaptable layer"),
        ("r=4", TypeError, "lora"),
    ],
)
def test_bad_lora_named_before_compute(gpt2_dir, lora, error, words):
    with pytest.raises(error, match="lora") as info:
        UnlearningModule(str(gpt2_dir), forget_loss="npo", lora=lora)
    assert words in str(info.value)


def test_lora_model_checks():
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"lora.*no default LoRA target modules.*target_modules"):
        UnlearningModule(net, forget_loss="npo", lora={"r": 2})
    module = UnlearningModule(net, forget_loss="npo", lora={"r": 2, "target_modules": ["0", "2"]})
    with pytest.raises(ValueError, match="already has PEFT adapters"):
        UnlearningModule(module.model, forget_loss="npo", lora={"r": 2, "target_modules": ["0"]})


def test_missing_peft_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    net = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ImportError, match=r"litmix\[peft\]"):
        UnlearningModule(net, forget_loss="npo", lora={"r": 2, "target_modules": ["0"]})


def test_npo_step_zero_is_log2_through_disabled_adapters(gpt2_dir):
    """With fresh adapters (B = 0) the model equals its reference: NPO's loss is (2/beta) log 2."""
    module = UnlearningModule(str(gpt2_dir), forget_loss="npo", lora=LORA)
    dm = TOFUDataModule(_data_dir(gpt2_dir), tokenizer="word", prompt_template="{question} :", batch_size=5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    module.log = lambda *a, **k: None  # outside a Trainer
    loss = module._forget_term(batch)
    assert math.isclose(float(loss.detach()), 2 / 0.1 * math.log(2), rel_tol=1e-5)


@pytest.mark.ddp
def test_ddp_two_ranks_lora_weights_and_cache_agree(gpt2_dir):
    """2 CPU ranks: the cache (gathered by index), the adapters and the frozen base agree on every rank."""
    from litmix.testing import AssertRanksAgree, run_ddp

    torch.manual_seed(0)
    module = UnlearningModule(
        str(gpt2_dir), forget_loss="npo", retain_loss="kl", lr=1e-2, cache_reference=True, lora=LORA
    )
    frozen = _frozen(module)
    dm = TOFUDataModule(_data_dir(gpt2_dir), tokenizer="word", prompt_template="{question} :", batch_size=2)
    trainer = run_ddp([AssertRanksAgree()], module, dm, max_steps=3, limit_val_batches=0, num_sanity_val_steps=0)
    assert trainer.state.finished
    params = dict(module.model.named_parameters())
    assert all(torch.equal(v, params[n]) for n, v in frozen.items())
    assert any(p.abs().max() > 0 for n, p in params.items() if "lora_B" in n)  # rank 0's trained adapters came back


def test_lora_resume_matches_uninterrupted(gpt2_dir, tmp_path):
    """Resumed from epoch 1: the adapters and the (adapter-disabled) reference give the uninterrupted weights."""
    from litmix.testing import assert_resume_matches

    def make_module():
        torch.manual_seed(0)
        return UnlearningModule(str(gpt2_dir), forget_loss="npo", retain_loss="kl", lr=1e-2, lora=LORA)

    def make_dm():
        return TOFUDataModule(_data_dir(gpt2_dir), tokenizer="word", prompt_template="{question} :", batch_size=2)

    assert_resume_matches(lambda: [], make_module, make_dm, tmp_path, max_epochs=2)
