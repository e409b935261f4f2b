"""PolarizationPruning: the regularizer, structured gate masks, resume, DDP, bad arguments, effect on digits."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from litmix.callbacks.polarization_pruning import PolarizationPruning, _BNClassifier, polarization
from litmix.testing import TinyClassifier, TinyDataModule, assert_state_roundtrip, fit_tiny, make_trainer, run_ddp
from tests._pruning import (
    MLP,
    PARAMETER_NAMES_CASES,
    SPARSITY_CASES,
    MaskChecksum,
    PerturbRank1,
    assert_resumed_masks_match,
    val_accuracy,
)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        *SPARSITY_CASES,
        *PARAMETER_NAMES_CASES,
        ({"weight": -1.0}, ValueError, "weight"),
        ({"t": 0.0}, ValueError, "t="),
        ({"prune_at": 0}, ValueError, "prune_at"),
        ({"unit": "batch"}, ValueError, "unit"),
        ({"init_gates": -0.5}, ValueError, "init_gates"),
        ({"clamp": "yes"}, TypeError, "clamp"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        PolarizationPruning(**kwargs)


def test_nothing_prunable_and_non_1d_gates_fail_at_setup():
    with pytest.raises(ValueError, match="found nothing prunable"):
        fit_tiny([PolarizationPruning()], module=TinyClassifier())
    with pytest.raises(ValueError, match="gates must be 1-D"):
        fit_tiny([PolarizationPruning(parameter_names=["net.0.weight"])], module=TinyClassifier())
    with pytest.raises(ValueError, match="unknown parameters"):
        fit_tiny([PolarizationPruning(parameter_names=["net.9.weight"])], module=_BNClassifier())


def test_regularizer_by_hand():
    g = torch.tensor([0.0, 0.2, 1.0, 1.0])  # mean 0.55
    assert float(polarization(g, 0.8)) == pytest.approx(0.8 * 2.2 - (0.55 + 0.35 + 0.45 + 0.45), abs=1e-6)


class Record(Callback):
    def __init__(self, cb):
        self.cb, self.terms, self.expected = cb, [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.cb.pruned:
            self.expected.append(float(polarization(pl_module.net[1].weight.detach(), self.cb.t)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        g = pl_module.net[1].weight
        assert float(g.min()) >= 0.0
        assert float(g.max()) <= 1.0  # clamped
        if self.cb.pruned:
            assert not self.cb.engine.check_weights()  # pruned gates and biases stay 0


def test_term_gates_and_structured_masks():
    pl.seed_everything(0)
    cb = PolarizationPruning(sparsity=0.25, weight=0.5, t=0.8, prune_at=3, unit="step")
    rec = Record(cb)
    trainer = fit_tiny([cb, rec], module=_BNClassifier(), max_steps=6, log_every_n_steps=1)
    assert rec.expected[0] == pytest.approx(0.8 * 16 * 0.5)  # gates initialized at 0.5: no spread yet
    assert cb.pruned
    assert cb.pruned_step == 3
    masks = cb.engine.masks
    assert torch.equal(masks["net.1.weight"], masks["net.1.bias"])  # the neuron's scale and shift together
    assert int((~masks["net.1.weight"]).sum()) == 4
    assert float(trainer.callback_metrics["polarization/sparsity"]) == pytest.approx(0.25)
    assert "polarization/middle_band" in trainer.callback_metrics
    assert_state_roundtrip(cb)


def test_resume_matches_uninterrupted(tmp_path):
    for unit, at in (("step", 6), ("epoch", 1)):

        def make(unit=unit, at=at):
            return [PolarizationPruning(0.5, weight=0.05, prune_at=at, unit=unit)]

        a, b = assert_resumed_masks_match(make, _BNClassifier, tmp_path / unit, atol=1e-6)
        assert a.pruned
        assert b.pruned


@pytest.mark.ddp
def test_ddp_masks_identical_on_both_ranks():
    """Rank 1's gates are overwritten at random before pruning: the masks still agree (rank 0 decides)."""
    cb = PolarizationPruning(0.5, weight=0.05, prune_at=3, unit="step")
    probes = [PerturbRank1(["net.1.weight"], at=2, overwrite=True), cb, MaskChecksum(["net.1.weight_mask"])]
    trainer = run_ddp(probes, _BNClassifier(), TinyDataModule(), max_steps=4)
    assert float(trainer.callback_metrics["test/mask_diff"]) == 0.0


# ----------------------------------------------------------------------------- effect on digits


def _run(seed: int, weight: float) -> tuple[float, float]:
    """4 epochs with the regularizer, 60 % of the 128 neurons pruned, 2 epochs fine-tuning; (near 0/1, accuracy)."""
    from litmix.datamodules.digits import DigitsDataModule

    dm = DigitsDataModule(batch_size=64, seed=seed)
    pl.seed_everything(seed, verbose=False)
    model = MLP(64, 128, 10, lr=1e-2, batchnorm=True)
    cb = PolarizationPruning(sparsity=0.6, weight=weight, t=0.8, prune_at=4, unit="epoch")
    seen = {}

    class Gates(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 4:
                g = cb.gates()
                seen["near01"] = float(((g < 0.05) | (g > 0.95)).float().mean())

    make_trainer(callbacks=[Gates(), cb], max_epochs=6).fit(model, datamodule=dm)
    assert cb.engine.sparsity_report()["net.1.weight"] == pytest.approx(0.6, abs=0.005)  # the set sparsity
    return seen["near01"], val_accuracy(model, dm)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gates_polarize_and_pruned_net_keeps_accuracy_on_digits(seed):
    """64-128(BN)-10 MLP on digits, Adam 1e-2, weight 1e-2, t 0.8, 60 % of neurons pruned after 4 epochs.

    Measured on seeds 0 / 1 / 2 (539 validation digits): gates within 0.05 of 0 or 1 before pruning 1.000 / 0.992 /
    0.992 with the regularizer, 0.0 / 0.0 / 0.0 without (weight 0, same init at 0.5); gates below 0.05: 0.68 /
    0.65 / 0.65. Accuracy after pruning 60 % and 2 epochs of fine-tuning: 0.972 / 0.963 / 0.974 with the
    regularizer, 0.972 / 0.955 / 0.983 without it (same pruning). Asserted: >= 0.95 of gates near 0/1 (and <= 0.05
    without), accuracy >= the unregularized pruned net's - 0.02.
    """
    near01, acc = _run(seed, 1e-2)
    near01_plain, acc_plain = _run(seed, 0.0)
    assert near01 >= 0.95, (seed, near01)
    assert near01_plain <= 0.05, (seed, near01_plain)
    assert acc >= acc_plain - 0.02, (seed, acc, acc_plain)
