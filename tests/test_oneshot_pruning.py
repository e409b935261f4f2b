"""One-shot pruning with calibration data: Wanda, SparseGPT, DSnoT, OWL, N:M and the OneShotPruning callback.

Effect tests use a small character-level Hugging Face GPT-2 trained on Tiny Shakespeare by
``benchmarks/train_char_gpt.py`` (2 blocks, d=64, 300 steps, ~108k parameters, a few seconds), saved with
``save_pretrained`` and loaded with ``from_pretrained`` once per session. Margins were measured over training seeds
0, 1, 2 first (numbers next to each test); the test runs seed 0.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from litmix.callbacks import OneShotPruning
from litmix.functional.oneshot_pruning import (
    CalibrationStats,
    dsnot_refine,
    nm_mask,
    owl_sparsities,
    prune_model,
    reconstruction_error,
    row_mask,
    sparsegpt_prune,
    wanda_scores,
)
from litmix.testing import TinyClassifier, TinyDataModule, make_trainer

REPO = Path(__file__).resolve().parents[1]
BLOCK = 64


def _load_script():
    spec = importlib.util.spec_from_file_location("train_char_gpt", REPO / "benchmarks" / "train_char_gpt.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_char_gpt", mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def char_gpt(shared_data, tmp_path_factory):
    """(model folder, script module, train ids, val ids): the tiny char-GPT, trained once per session."""
    pytest.importorskip("transformers")
    script = _load_script()
    text = shared_data / "tinyshakespeare" / "input.txt"
    folder = tmp_path_factory.mktemp("char_gpt")
    torch.set_num_threads(1)
    script.train_char_gpt(
        folder, n_layer=2, n_head=2, n_embd=64, block=BLOCK, steps=300, batch=16, lr=6e-3, seed=0, text=text
    )
    _, train_ids, val_ids = script.load_splits(text)
    return folder, script, train_ids, val_ids


def _fresh(char_gpt):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(char_gpt[0]).eval()


def _ppl(char_gpt, model):
    return char_gpt[1].perplexity(model, char_gpt[3], BLOCK, max_windows=64)


def _calib(char_gpt):
    return char_gpt[1].calibration_batches(char_gpt[2], 16, BLOCK, 8, seed=0)


# --------------------------------------------------------------------------------------------- one Linear layer
@pytest.mark.parametrize("seed", range(5))
def test_wanda_beats_magnitude_on_a_linear_layer_with_uneven_input_scales(seed):
    # measured relative output errors (seeds 0-4): see the report; asserted: wanda < 0.5 * magnitude
    g = torch.Generator().manual_seed(seed)
    scales = torch.exp(torch.empty(64).uniform_(math.log(0.1), math.log(10.0), generator=g))  # log-uniform
    x = torch.randn(2048, 64, generator=g) * scales
    w = torch.randn(32, 64, generator=g)
    stats = CalibrationStats.empty(64)
    stats.update(x)
    wanda = row_mask(wanda_scores(w, stats.wanda_norms()), 0.5)
    mag = row_mask(w.abs(), 0.5)
    assert bool((wanda.sum(1) == 32).all())
    assert bool((mag.sum(1) == 32).all())

    def rel(mask):
        return float(((w * ~mask) @ x.T).norm() / (w @ x.T).norm())

    assert rel(wanda) < 0.5 * rel(mag), (rel(wanda), rel(mag))


def test_sparsegpt_reconstruction_and_nm_pattern():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 32, generator=g) @ torch.randn(32, 32, generator=g)
    w = torch.randn(16, 32, generator=g)
    h = x.T @ x / 1024
    new, keep = sparsegpt_prune(w, h, prune_n=2, prune_m=4, blocksize=8)
    assert bool((keep.reshape(16, 8, 4).sum(-1) == 2).all())
    assert bool((new[~keep] == 0).all())
    assert float(((w - new) @ x.T).norm()) < float(((w * keep - w) @ x.T).norm())
    new, keep = sparsegpt_prune(w, h, sparsity=0.75)
    assert int((~keep).sum()) == round(0.75 * w.numel())


def test_dsnot_keeps_counts_and_nm_groups_and_never_raises_the_error():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1024, 32, generator=g) + torch.linspace(-3, 3, 32)
    w = torch.randn(16, 32, generator=g)
    stats = CalibrationStats.empty(32, hessian=True)
    stats.update(x)
    h = stats.hessian()
    for base, nm in ((row_mask(wanda_scores(w, stats.wanda_norms()), 0.6), None), (nm_mask(w.abs(), 2, 4), (2, 4))):
        new, swaps = dsnot_refine(w, base, stats, nm=nm)
        assert swaps > 0
        assert torch.equal(new.sum(1), base.sum(1))
        if nm is not None:
            assert bool((new.reshape(16, 8, 4).sum(-1) == 2).all())
        before, after = reconstruction_error(w, base, h), reconstruction_error(w, new, h)
        assert bool((after <= before + 1e-9).all())
        assert float(after.sum()) < float(before.sum())


def test_owl_sparsities_follow_ratios_and_average_to_target():
    ratios = [0.02, 0.05, 0.01, 0.03]
    s = owl_sparsities(ratios, 0.7, 0.08)
    assert abs(sum(s) / 4 - 0.7) < 1e-9
    assert sorted(range(4), key=lambda i: s[i]) == sorted(range(4), key=lambda i: -ratios[i])
    assert max(s) - min(s) == pytest.approx(0.16)
    assert owl_sparsities([0.1, 0.1], 0.5) == [0.5, 0.5]


# --------------------------------------------------------------------------------------------- bad arguments
def _net():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sparsity": 1.0}, ValueError, "sparsity"),
        ({"sparsity": -0.1}, ValueError, "sparsity"),
        ({"method": "obs"}, ValueError, "method.*magnitude.*wanda.*sparsegpt"),
        ({"structure": "4:4"}, ValueError, "structure"),
        ({"structure": "2-4"}, ValueError, "structure"),
        ({"structure": "3:16"}, ValueError, "M=16 does not divide the 8 inputs"),
        ({"refine": "rigl"}, ValueError, "refine"),
        ({"sparsity_profile": "erk"}, ValueError, "sparsity_profile"),
        ({"sparsity_profile": "owl", "structure": "2:4"}, ValueError, "sparsity_profile='owl'"),
        ({"method": "mfac_obs", "structure": "2:4"}, ValueError, "structure"),
        ({"parameter_names": ["nope.weight"]}, ValueError, "parameter_names.*nope.weight"),
        ({"owl_lamda": float("nan")}, ValueError, "owl_lamda"),
        ({"sparsity": "0.5"}, TypeError, "sparsity"),
    ],
)
def test_prune_model_names_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        prune_model(_net(), [torch.randn(4, 8)], **kwargs)


def test_prune_model_refuses_no_data_and_nothing_prunable():
    with pytest.raises(ValueError, match="calibration_batches"):
        prune_model(_net(), [], method="wanda")
    with pytest.raises(ValueError, match="nothing prunable"):
        prune_model(nn.Sequential(nn.Embedding(5, 3)), [torch.zeros(2, 3, dtype=torch.long)])
    with pytest.raises(TypeError, match="model"):
        prune_model("not a model", [torch.zeros(2)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sparsity": 1.0}, ValueError, r"OneShotPruning\(sparsity=1.0\)"),
        ({"method": "random"}, ValueError, "method"),
        ({"structure": "2:2"}, ValueError, "structure"),
        ({"structure": 4}, TypeError, "structure"),
        ({"refine": "x"}, ValueError, "refine"),
        ({"calibration_batches": 0}, ValueError, "calibration_batches"),
        ({"sparsity_profile": "owl", "structure": "2:4"}, ValueError, "sparsity_profile"),
        ({"parameter_names": []}, ValueError, "parameter_names"),
        ({"method": "mfac_obs", "refine": "dsnot"}, ValueError, "refine"),
    ],
)
def test_callback_names_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        OneShotPruning(**kwargs)


# --------------------------------------------------------------------------------------------- callback
def test_callback_prunes_once_keeps_mask_while_fine_tuning_and_does_not_reprune_on_resume(tmp_path, monkeypatch):
    import litmix.callbacks.one_shot_pruning as mod

    calls = []
    real = mod.prune_model

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, "prune_model", counting)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
    cb = OneShotPruning(method="sparsegpt", sparsity=0.5, calibration_batches=2)
    model = TinyClassifier()
    trainer = make_trainer(callbacks=[cb, ckpt], max_epochs=2, enable_checkpointing=True)
    trainer.fit(model, datamodule=TinyDataModule())
    assert len(calls) == 1
    masks = {n: m.clone() for n, m in cb.engine.masks.items()}
    for n, p in model.named_parameters():
        if n in masks:
            assert bool((p[~masks[n]] == 0).all()), n
            assert float((~masks[n]).float().mean()) == 0.5
    first = sorted(tmp_path.glob("epoch=0-*.ckpt"))[0]
    resumed_cb = OneShotPruning(method="sparsegpt", sparsity=0.5, calibration_batches=2)
    resumed = TinyClassifier()
    make_trainer(callbacks=[resumed_cb], max_epochs=2).fit(resumed, datamodule=TinyDataModule(), ckpt_path=str(first))
    assert len(calls) == 1  # restored, not pruned again
    for n, m in masks.items():
        assert torch.equal(resumed_cb.engine.masks[n].cpu(), m.cpu())
    for (n, a), b in zip(model.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), n
    # the user's checkpoint loads strictly into the user's own class
    state = torch.load(first, map_location="cpu", weights_only=False)["state_dict"]
    TinyClassifier().load_state_dict(state, strict=True)


def test_callback_uses_the_datamodules_calibration_dataloader():
    seen = []

    class WithCalibration(TinyDataModule):
        def calibration_dataloader(self):
            seen.append(1)
            return [(torch.randn(8, 8), torch.zeros(8, dtype=torch.long))] * 3

    cb = OneShotPruning(method="wanda", sparsity=0.25)
    make_trainer(callbacks=[cb], max_steps=1).fit(TinyClassifier(), datamodule=WithCalibration())
    assert seen == [1]
    assert cb.layer_sparsity["global"] == 0.25


def test_callback_calibrates_on_a_plain_train_dataloader_and_refuses_empty_calibration_data():
    loader = TinyDataModule().train_dataloader()
    cb = OneShotPruning(method="magnitude", sparsity=0.5, calibration_batches=1)
    make_trainer(callbacks=[cb], max_steps=1).fit(TinyClassifier(), train_dataloaders=loader)
    assert cb.layer_sparsity["global"] == 0.5

    class Empty(TinyDataModule):
        def calibration_dataloader(self):
            return []

    with pytest.raises(ValueError, match="calibration"):
        make_trainer(callbacks=[OneShotPruning()], max_steps=1).fit(TinyClassifier(), datamodule=Empty())


# --------------------------------------------------------------------------------------------- char-GPT effects
@pytest.mark.slow
def test_sparsegpt_beats_magnitude_on_the_char_gpt(char_gpt):
    # measured (training seeds 0 / 1 / 2; see the report): sparsegpt ppl below magnitude by >= MARGINS on every seed
    calib = _calib(char_gpt)
    results = {}
    for setting, sparsity, structure in (("50", 0.5, "unstructured"), ("70", 0.7, "unstructured"), ("2:4", 0.5, "2:4")):
        for method in ("magnitude", "sparsegpt"):
            model = _fresh(char_gpt)
            res = prune_model(model, calib, method=method, sparsity=sparsity, structure=structure)
            assert res.sparsity["global"] == pytest.approx(sparsity, abs=0.01)
            results[setting, method] = _ppl(char_gpt, model)
    margins = {"50": 0.2, "70": 0.6, "2:4": 0.3}  # half the smallest margin over seeds 0-2 (0.41, 1.21, 0.61)
    for setting, margin in margins.items():
        assert results[setting, "sparsegpt"] < results[setting, "magnitude"] - margin, results


@pytest.mark.slow
def test_nm_masks_are_valid_on_hf_conv1d(char_gpt):
    model = _fresh(char_gpt)
    res = prune_model(model, _calib(char_gpt), method="wanda", structure="2:4")
    params = dict(model.named_parameters())
    assert len(res.masks) == 8  # 4 Conv1D per block; the tied lm_head stays dense
    for name, mask in res.masks.items():
        # HF Conv1D stores (in_features, out_features): groups of 4 consecutive inputs run along dim 0
        d_in, d_out = mask.shape
        assert bool((mask.reshape(d_in // 4, 4, d_out).sum(1) == 2).all()), name
        assert bool((params[name][~mask] == 0).all()), name


@pytest.mark.slow
def test_dsnot_never_worsens_the_base_masks_of_the_char_gpt(char_gpt):
    model = _fresh(char_gpt)
    convs = {n: m for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    stats = {n: CalibrationStats.empty(m.weight.shape[0], hessian=True) for n, m in convs.items()}
    handles = [m.register_forward_hook(lambda mod, a, o, n=n: stats[n].update(a[0])) for n, m in convs.items()]
    with torch.no_grad():
        for batch in _calib(char_gpt):
            model(**batch)
    for h in handles:
        h.remove()
    improved = 0
    for n, m in convs.items():
        w = m.weight.detach().T
        st = stats[n]
        h = st.hessian()
        for base in (row_mask(wanda_scores(w, st.wanda_norms()), 0.7), row_mask(w.abs(), 0.5)):
            new, _ = dsnot_refine(w, base, st)
            assert torch.equal(new.sum(1), base.sum(1))
            before, after = reconstruction_error(w, base, h), reconstruction_error(w, new, h)
            assert bool((after <= before * (1 + 1e-12) + 1e-12).all()), n
            improved += int(float(after.sum()) < float(before.sum()))
    assert improved >= 8  # at least half of the (layer, base mask) pairs improve


@pytest.mark.slow
def test_owl_layer_sparsities_follow_outlier_ratios_on_the_char_gpt(char_gpt):
    from scipy.stats import spearmanr

    model = _fresh(char_gpt)
    res = prune_model(model, _calib(char_gpt), method="wanda", sparsity=0.7, sparsity_profile="owl")
    assert list(res.outlier_ratios) == ["transformer.h.0", "transformer.h.1"]
    block_sparsity = [res.target[f"{b}.mlp.c_fc.weight"] for b in res.outlier_ratios]
    assert sum(block_sparsity) / len(block_sparsity) == pytest.approx(0.7)
    ratios = list(res.outlier_ratios.values())
    assert ratios[0] != ratios[1]
    assert spearmanr(ratios, block_sparsity).statistic == pytest.approx(-1.0)
    assert res.sparsity["global"] == pytest.approx(0.7, abs=0.01)


@pytest.mark.slow
def test_callback_prunes_a_hf_gpt_in_a_lightning_module_and_fine_tunes_it(char_gpt, shared_data, tmp_path):
    import lightning.pytorch as pl

    class LM(pl.LightningModule):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids).logits

        def training_step(self, batch, batch_idx):
            x, y, _ = batch
            logits = self(x)
            return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    from litmix.datamodules import CharLMDataModule

    dm = CharLMDataModule(str(shared_data / "tinyshakespeare" / "input.txt"), block_size=BLOCK, batch_size=8)
    lm = LM(_fresh(char_gpt))
    cb = OneShotPruning(method="sparsegpt", structure="2:4", calibration_batches=2)
    trainer = make_trainer(callbacks=[cb], max_steps=3, default_root_dir=tmp_path)
    trainer.fit(lm, datamodule=dm)
    assert cb.layer_sparsity["global"] == 0.5
    for name, p in lm.named_parameters():
        if name in cb.engine.masks:
            mask = cb.engine.masks[name]
            assert bool((p[~mask] == 0).all()), name
            assert bool((mask.reshape(-1, 4, mask.shape[1]).sum(1) == 2).all()), name
    trainer.save_checkpoint(tmp_path / "lm.ckpt")
    state = torch.load(tmp_path / "lm.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    LM(copy.deepcopy(_fresh(char_gpt))).load_state_dict(state, strict=True)
