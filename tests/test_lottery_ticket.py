"""LotteryTicket: rewind point, magnitude mask, fixed mask after the rounds, resume, DDP, bad arguments, effect."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from litmix.callbacks.lottery_ticket import LotteryTicket
from litmix.functional.sparsity import magnitude_masks
from litmix.testing import (
    AssertRanksAgree,
    TinyClassifier,
    TinyDataModule,
    assert_state_roundtrip,
    fit_tiny,
    make_trainer,
    run_ddp,
)
from tests._pruning import (
    MLP,
    SEEDED_PRUNER_CASES,
    MaskChecksum,
    PerturbRank1,
    assert_resumed_masks_match,
    assert_selection_errors_at_setup,
    val_accuracy,
)

# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        *SEEDED_PRUNER_CASES,
        ({"prune_every": 0}, ValueError, "prune_every"),
        ({"unit": "batch"}, ValueError, "unit"),
        ({"rounds": 0}, ValueError, "rounds"),
        ({"rewind_step": -1}, ValueError, "rewind_step"),
        ({"rewind_step": 4, "prune_every": 4, "unit": "step"}, ValueError, "rewind_step"),
        ({"scope": "row"}, ValueError, "scope"),
        ({"scoring": "snip"}, ValueError, "scoring"),
        ({"reset_optimizer": 1}, TypeError, "reset_optimizer"),
        ({"retrain_weight_decay": -0.1}, ValueError, "retrain_weight_decay"),
        ({"retrain_weight_decay": float("nan")}, ValueError, "retrain_weight_decay"),
        ({"retrain_weight_decay": float("inf")}, ValueError, "retrain_weight_decay"),
        ({"retrain_weight_decay": "0"}, TypeError, "retrain_weight_decay"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LotteryTicket(**kwargs)


def test_unknown_parameters_and_nothing_prunable_fail_at_setup():
    assert_selection_errors_at_setup(LotteryTicket)


# ----------------------------------------------------------------------------- behaviour


class Probe(Callback):
    """After LotteryTicket in the list: records the weights at each round and checks pruned weights stay 0."""

    def __init__(self, cb: LotteryTicket):
        self.cb = cb
        self.at_round: list[dict] = []
        self.violations = 0
        self.init = None

    def on_train_start(self, trainer, pl_module):
        self.init = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if len(self.at_round) < self.cb.rounds_done:
            opt = trainer.optimizers[0]
            self.at_round.append(
                {
                    "step": trainer.global_step,
                    "weights": {n: p.detach().clone() for n, p in pl_module.named_parameters()},
                    "masks": {n: m.clone() for n, m in self.cb.engine.masks.items()},
                    "opt_state_empty": len(opt.state) == 0,
                }
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.cb.rounds_done:
            self.violations += sum(self.cb.engine.check_weights().values())


def test_rewind_to_init_with_global_magnitude_mask():
    """At step 4: mask = global magnitude mask of the trained weights, all weights rewound to theta_0, Adam fresh."""
    pl.seed_everything(0)
    seen = {}

    class Capture(LotteryTicket):
        def _prune_and_rewind(self, trainer, pl_module):
            trained = {n: p.detach().clone() for n, p, _ in self.engine.parameters()}
            seen["expected"] = magnitude_masks(trained, 0.7, "global")
            super()._prune_and_rewind(trainer, pl_module)

    cb = Capture(0.7, prune_every=4, unit="step")
    probe = Probe(cb)
    trainer = fit_tiny([cb, probe], max_steps=10)
    assert cb.rounds_done == 1
    assert cb.round_steps == [4]
    (record,) = probe.at_round
    assert record["step"] == 4
    assert record["opt_state_empty"]
    for n, mask in record["masks"].items():
        assert torch.equal(mask, seen["expected"][n])
    for n, w in record["weights"].items():
        mask = record["masks"].get(n, torch.ones_like(w, dtype=torch.bool))
        assert torch.equal(w, probe.init[n] * mask), n  # rewound to the initialization (biases too)
    assert probe.violations == 0  # the mask stays fixed and applied while retraining
    assert cb.engine.sparsity_report()["global"] == pytest.approx(0.7, abs=0.01)
    assert float(trainer.callback_metrics["lottery/sparsity"]) == pytest.approx(0.7, abs=0.01)


def test_rewind_to_step_k_iterative_rounds_and_layer_scope():
    pl.seed_everything(0)
    snapshots = {}

    class Record(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2 and not snapshots:
                snapshots.update({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    cb = LotteryTicket(0.84, prune_every=4, unit="step", rounds=2, rewind_step=2, scope="layer", reset_optimizer=False)
    probe = Probe(cb)
    fit_tiny([Record(), cb, probe], max_steps=12)
    assert cb.rounds_done == 2
    assert cb.round_steps == [4, 8]
    first, second = probe.at_round
    for n, m in first["masks"].items():
        assert (~m).float().mean().item() == pytest.approx(cb.round_sparsity(1), abs=0.02)  # 0.6 per layer
        assert bool((second["masks"][n] <= m).all())  # nested: earlier prunes stay pruned
        assert (~second["masks"][n]).float().mean().item() == pytest.approx(0.84, abs=0.02)
    for record in (first, second):
        for n, w in record["weights"].items():
            mask = record["masks"].get(n, torch.ones_like(w, dtype=torch.bool))
            assert torch.equal(w, snapshots[n] * mask)  # rewound to theta_2
        assert not record["opt_state_empty"]
    assert probe.violations == 0
    assert_state_roundtrip(cb)


def test_random_control_has_same_density_and_differs():
    pl.seed_everything(0)
    a = LotteryTicket(0.75, prune_every=2, unit="step", scope="layer")
    b = LotteryTicket(0.75, prune_every=2, unit="step", scope="layer", scoring="random")
    fit_tiny([a], max_steps=3)
    pl.seed_everything(0)
    fit_tiny([b], max_steps=3)
    for n, m in a.engine.masks.items():
        assert int(m.sum()) == int(b.engine.masks[n].sum())
        assert not torch.equal(m, b.engine.masks[n])


def test_resume_matches_uninterrupted(tmp_path):
    """4 steps per epoch; the round at step 6 falls in the resumed second epoch; epoch rounds at epoch 1."""
    for unit, every in (("step", 6), ("epoch", 1)):

        def make(unit=unit, every=every):
            return [LotteryTicket(0.6, prune_every=every, unit=unit, rewind_step=1)]

        a, b = assert_resumed_masks_match(make, TinyClassifier, tmp_path / unit)
        assert a.rounds_done == b.rounds_done == 1


class DecayedClassifier(TinyClassifier):
    """TinyClassifier trained with AdamW, weight decay 0.5."""

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.5)


class RecordWeightDecay(Callback):
    """Weight decay of every param group at each optimizer step (after the pruner's batch-start hook)."""

    def __init__(self):
        self.at_step: dict[int, list[float]] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.at_step[trainer.global_step] = [g["weight_decay"] for g in optimizer.param_groups]


def test_retrain_weight_decay_switches_at_the_rewind_step():
    for wd, after in ((0.0, 0.0), (None, 0.5)):
        cb, rec = LotteryTicket(0.5, prune_every=3, unit="step", retrain_weight_decay=wd), RecordWeightDecay()
        fit_tiny([cb, rec], module=DecayedClassifier(), max_steps=6)
        assert cb.round_steps == [3]
        assert rec.at_step == {s: [0.5 if s < 3 else after] for s in range(6)}, (wd, rec.at_step)
        assert cb.state_dict()["weight_decay_set"] == wd


def test_resume_keeps_retrain_weight_decay(tmp_path):
    """Round at step 2; the checkpoint after epoch 0 (step 4) is past the rewind: the resumed run keeps WD 0, even
    when the checkpoint's optimizer state says otherwise."""

    def make():
        return [LotteryTicket(0.5, prune_every=2, unit="step", retrain_weight_decay=0.0)]

    a, b = assert_resumed_masks_match(make, DecayedClassifier, tmp_path)
    assert a.weight_decay_set == b.weight_decay_set == 0.0
    ckpt_path = next((tmp_path / "ckpt").glob("epoch=0-*.ckpt"))
    ckpt = torch.load(ckpt_path, weights_only=False)
    for group in ckpt["optimizer_states"][0]["param_groups"]:
        group["weight_decay"] = 0.5
    torch.save(ckpt, tmp_path / "edited.ckpt")
    cb, rec = LotteryTicket(0.5, prune_every=2, unit="step", retrain_weight_decay=0.0), RecordWeightDecay()
    trainer = make_trainer(callbacks=[cb, rec], max_epochs=2)
    trainer.fit(DecayedClassifier(), datamodule=TinyDataModule(), ckpt_path=str(tmp_path / "edited.ckpt"))
    assert cb.rounds_done == 1
    assert sorted(rec.at_step) == [4, 5, 6, 7]
    assert all(v == [0.0] for v in rec.at_step.values()), rec.at_step


# ----------------------------------------------------------------------------- DDP


@pytest.mark.ddp
def test_ddp_masks_and_state_identical_on_both_ranks():
    cb = LotteryTicket(0.7, prune_every=4, unit="step")
    trainer = run_ddp(
        [PerturbRank1(at=3, kept_only=False), cb, MaskChecksum(), AssertRanksAgree()],
        TinyClassifier(),
        TinyDataModule(),
        max_steps=6,
    )
    assert float(trainer.callback_metrics["test/mask_diff"]) == 0.0


# ----------------------------------------------------------------------------- effect on digits


def _ticket_accuracy(seed: int, scoring: str) -> float:
    from litmix.datamodules.digits import DigitsDataModule

    dm = DigitsDataModule(batch_size=64, seed=seed)
    pl.seed_everything(seed, verbose=False)
    model = MLP(64, 128, 10, lr=3e-3)
    cb = LotteryTicket(0.9, prune_every=3, unit="epoch", scoring=scoring, seed=seed)
    make_trainer(callbacks=[cb], max_epochs=6).fit(model, datamodule=dm)
    assert cb.engine.sparsity_report()["global"] == pytest.approx(0.9, abs=1e-3)
    return val_accuracy(model, dm)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ticket_beats_random_mask_at_90_percent_on_digits(seed):
    """64-128-10 MLP on digits: 3 epochs dense, 90 % global magnitude mask, rewind to theta_0, 3 epochs retrained.

    Measured (539 validation digits): ticket 0.850 / 0.835 / 0.881, random mask at the same per-layer density (same
    rewind, same steps) 0.499 / 0.395 / 0.341 on seeds 0 / 1 / 2 (gaps +0.35 / +0.44 / +0.54). Asserted: ticket >=
    random + 0.2.
    """
    ticket = _ticket_accuracy(seed, "magnitude")
    random = _ticket_accuracy(seed, "random")
    assert ticket >= random + 0.2, (seed, ticket, random)
