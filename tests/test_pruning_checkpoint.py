"""GradualPruning checkpoints, state keys, logging prefix, schedule/run-length checks and sharded strategies."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from litmix.callbacks.gradual_pruning import GradualPruning
from litmix.functional.sparsity import sparsity_report, unpack_mask
from litmix.testing import TinyClassifier, TinyDataModule, fit_tiny, make_trainer, sharded_strategy


def _fit_with_checkpoint(tmp_path, cb, max_steps=8):
    model = TinyClassifier()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    make_trainer(callbacks=[cb, ckpt], max_steps=max_steps, enable_checkpointing=True).fit(
        model, datamodule=TinyDataModule()
    )
    return model, tmp_path / "last.ckpt"


def test_checkpoint_loads_strictly_into_the_users_class(tmp_path):
    cb = GradualPruning(0.75, start_step=0, end_step=4, every_n_steps=2)
    model, path = _fit_with_checkpoint(tmp_path, cb)
    loaded = TinyClassifier.load_from_checkpoint(path)  # strict=True by default; was: Unexpected key(s) *_mask
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert sparsity_report(loaded, ["net.0.weight", "net.2.weight"])["global"] == 0.75
    plain = TinyClassifier()
    plain.load_state_dict(torch.load(path, weights_only=True)["state_dict"], strict=True)


def test_resume_restores_every_mask_and_continues(tmp_path):
    cb = GradualPruning(0.75, start_step=0, end_step=4, every_n_steps=2)
    _, path = _fit_with_checkpoint(tmp_path, cb)
    state = torch.load(path, weights_only=True)["callbacks"]["GradualPruning"]
    assert state["version"] == 2
    assert state["last_update_step"] == 4
    cb2 = GradualPruning(0.75, start_step=0, end_step=4, every_n_steps=2)
    resumed = TinyClassifier()
    trainer = make_trainer(callbacks=[cb2], max_steps=12)
    trainer.fit(resumed, datamodule=TinyDataModule(), ckpt_path=str(path))
    for n in ("net.0.weight", "net.2.weight"):
        assert torch.equal(cb2._masks[n], cb._masks[n])  # restored exactly, not recomputed
        assert (dict(resumed.named_parameters())[n][~cb2._masks[n]] == 0).all()
    assert cb2.last_update_step == 4  # no update after the restored end of the schedule


def test_version_1_checkpoint_resumes_with_masks_rebuilt_from_zeros(tmp_path):
    cb = GradualPruning(0.75, start_step=0, end_step=4, every_n_steps=2)
    _, path = _fit_with_checkpoint(tmp_path, cb)
    ckpt = torch.load(path, weights_only=True)
    state = ckpt["callbacks"]["GradualPruning"]
    for n, entry in state.pop("masks").items():  # rewrite as litmix < 0.2 wrote it
        ckpt["state_dict"][n + "_mask"] = unpack_mask(entry["bits"], entry["shape"])
    state["version"] = 1
    old = tmp_path / "v1.ckpt"
    torch.save(ckpt, old)
    resumed = TinyClassifier()
    resumed.strict_loading = False  # the *_mask keys are no longer part of the module's state_dict
    cb2 = GradualPruning(0.75, start_step=0, end_step=4, every_n_steps=2)
    make_trainer(callbacks=[cb2], max_steps=12).fit(resumed, datamodule=TinyDataModule(), ckpt_path=str(old))
    for n in ("net.0.weight", "net.2.weight"):
        assert torch.equal(cb2._masks[n], cb._masks[n])
        assert (dict(resumed.named_parameters())[n][~cb2._masks[n]] == 0).all()


def test_mask_state_of_wrong_shape_or_unknown_parameter_is_an_error():
    cb = GradualPruning(0.5, start_step=0, end_step=2, every_n_steps=1)
    fit_tiny([cb], max_steps=3)
    state = cb.state_dict()
    bad = {**state, "masks": {**state["masks"], "net.0.weight": {"shape": [3, 3], "bits": b"\xff\xff"}}}
    with pytest.raises(ValueError, match=r"mask for 'net\.0\.weight' has shape \(3, 3\)"):
        cb.load_state_dict(bad)
    other = {**state, "masks": {"net.9.weight": {"shape": [1], "bits": b"\x80"}}}
    with pytest.raises(ValueError, match=r"net\.9\.weight"):
        cb.load_state_dict(other)
    newer = {**state, "version": 99}
    with pytest.raises(ValueError, match="version 99"):
        cb.load_state_dict(newer)


def test_schedule_longer_than_the_run_is_an_error_before_the_first_step():
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = make_trainer(callbacks=[GradualPruning(end_step=1000)], max_steps=6)
    with pytest.raises(ValueError, match=r"GradualPruning\(end_step=1000\): the run makes only 6 optimizer steps"):
        trainer.fit(model, datamodule=TinyDataModule())  # was: silently ended at 0.0052 sparsity
    assert trainer.global_step == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match=r"start_step=6\).*pass start_step <= 5"):
        fit_tiny([GradualPruning(start_step=6, end_step=10)], max_steps=6)
    with pytest.raises(ValueError, match="estimated_stepping_batches=inf"):
        fit_tiny([GradualPruning()], max_steps=-1, max_epochs=-1)


def test_end_fraction_one_still_reaches_the_target():
    model = TinyClassifier()
    cb = GradualPruning(0.5, end_fraction=1.0, every_n_steps=4)
    fit_tiny([cb], module=model, max_steps=10)
    assert (cb._t0, cb._t1) == (0, 9)  # capped at the last step the run makes
    assert cb.current_sparsity == 0.5
    assert sparsity_report(model)["global"] == 0.5


@pytest.mark.parametrize("strategy_cls", [FSDPStrategy, DeepSpeedStrategy])
def test_sharded_strategies_are_refused_naming_them_and_ddp(strategy_cls, monkeypatch):
    cb = GradualPruning()
    trainer = make_trainer(callbacks=[cb])
    stub = sharded_strategy(strategy_cls)
    monkeypatch.setattr(type(trainer), "strategy", property(lambda self: stub))
    with pytest.raises(MisconfigurationException, match=rf"strategy={strategy_cls.__name__}\).*strategy='ddp'"):
        cb.setup(trainer, TinyClassifier(), "fit")


def test_state_keys_differ_by_parameters_and_duplicates_are_refused(tmp_path):
    a = GradualPruning(0.5, start_step=0, end_step=2, every_n_steps=1, parameter_names=["net.0.weight"])
    b = GradualPruning(0.5, start_step=0, end_step=2, every_n_steps=1, parameter_names=["net.2.weight"])
    assert a.state_key != b.state_key
    assert GradualPruning().state_key == "GradualPruning"  # the default selection keeps the old key
    assert GradualPruning(name="x").state_key != GradualPruning().state_key
    model = TinyClassifier()
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    make_trainer(callbacks=[a, b, ckpt], max_steps=3, enable_checkpointing=True).fit(model, datamodule=TinyDataModule())
    states = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]
    assert set(states[a.state_key]["masks"]) == {"net.0.weight"}
    assert set(states[b.state_key]["masks"]) == {"net.2.weight"}
    with pytest.raises(RuntimeError, match="state_key` must be unique"):  # Lightning refuses at Trainer(...)
        fit_tiny([GradualPruning(0.5), GradualPruning(0.7)], max_steps=1)


def test_logs_under_name_or_default_prefix():
    trainer = fit_tiny([GradualPruning(0.5, start_step=0, end_step=2, every_n_steps=1, name="sp")], max_steps=4)
    assert "sp/sparsity" in trainer.callback_metrics
    assert "sp/sparsity/net.0.weight" in trainer.callback_metrics
    assert not any(k.startswith("pruning/") for k in trainer.callback_metrics)
    trainer = fit_tiny([GradualPruning(0.5, start_step=0, end_step=2, every_n_steps=1)], max_steps=4)
    assert trainer.callback_metrics["pruning/sparsity"] == 0.5
