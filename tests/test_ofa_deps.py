import copy
import itertools

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader

from litmix.callbacks.shrinking_schedule import ShrinkingSchedule
from litmix.datamodules.digits import DigitsDataModule
from litmix.nas.deps import deps_subnet_lr_scale, deps_width_lower_bound
from litmix.nas.evaluation import recalibrate_bn
from litmix.nas.ofa import ofa_progressive_bounds, width_choices_allowed
from litmix.plugins.ofa_supernet import OFASupernetModule
from litmix.testing import TinyClassifier, TinyDataModule, assert_resume_matches, make_trainer, run_ddp


def test_deps_functions_delay_and_monotone():
    grid = [i / 200 for i in range(201)]
    lower = [deps_width_lower_bound(p, 0.5, 0.25, 0.25) for p in grid]
    scale = [deps_subnet_lr_scale(p, 0.5, 0.25, 0.1) for p in grid]
    assert all(lb == 1.0 for p, lb in zip(grid, lower, strict=True) if p < 0.5)
    assert all(s == 0.0 for p, s in zip(grid, scale, strict=True) if p < 0.5)
    assert all(a >= b for a, b in itertools.pairwise(lower))
    assert all(a <= b for a, b in itertools.pairwise(scale))
    assert lower[-1] == 0.25
    assert scale[-1] == 1.0
    assert deps_width_lower_bound(0.5, 0.5, 0.0, 0.25) == 0.25  # grow_frac=0: whole space at once
    assert width_choices_allowed([0.25, 0.5, 1.0], 0.99) == [1.0]
    with pytest.raises(ValueError, match="start_frac"):
        deps_width_lower_bound(0.1, start_frac=1.5)
    with pytest.raises(ValueError, match="start_frac"):
        ShrinkingSchedule(start_frac=-0.1)


def test_no_small_subnets_before_start_and_space_grows():
    module, dm, _ = OFASupernetModule.example()
    total = 40
    make_trainer(max_steps=total, callbacks=[ShrinkingSchedule(start_frac=0.5, grow_frac=0.25)]).fit(
        module, datamodule=dm
    )
    log = module.sampled_log
    full = module.max_widths
    assert {s for s, _, _ in log} == set(range(total))
    assert all(w == full for s, _, w in log if s < total // 2), "a small subnet was sampled before start_frac"
    bounds = [lb for _, lb, _ in log]
    assert all(a >= b for a, b in itertools.pairwise(bounds)), "sampled space shrank back"
    for _, lb, w in log:
        assert all(wi >= round(lb * h) - 1e-9 for wi, h in zip(w, module.hidden, strict=True))
    late = [w for s, _, w in log if s >= 0.75 * total]
    assert min(min(w) for w in late) == round(0.25 * 32), "the smallest width is never reached"
    assert len({w for _, _, w in log}) > 4


def test_schedule_needs_an_elastic_module():
    with pytest.raises(MisconfigurationException, match="set_shrinking"):
        make_trainer(max_steps=1, callbacks=[ShrinkingSchedule()]).fit(TinyClassifier(), datamodule=TinyDataModule())


def test_sampling_deterministic_in_step():
    module = OFASupernetModule(hidden=[32, 32])
    seqs = [[module.sample_widths(s, k) for s in range(20) for k in range(2)] for _ in range(2)]
    assert seqs[0] == seqs[1]
    assert len(set(seqs[0])) > 5


def test_progressive_order_depth_then_width():
    module = OFASupernetModule(in_features=64, hidden=[16, 16, 16], depth_choices=[1, 2], batchnorm=True, lr=1e-2)
    total = 48
    make_trainer(max_steps=total, callbacks=[ShrinkingSchedule(start_frac=0.25, grow_frac=0.5)]).fit(
        module, datamodule=DigitsDataModule(batch_size=16, train_size=64)
    )
    log = module.sampled_log
    assert all(w == module.max_widths for s, _, w in log if s < total // 4)
    depth_phase = [w for s, _, w in log if total // 4 <= s < total // 2]
    assert min(len(w) for w in depth_phase) == 1, "the depth never shrank in the depth phase"
    assert all(wi == h for w in depth_phase for wi, h in zip(w, module.hidden, strict=False)), (
        "width shrank during the depth phase"
    )
    late = [w for s, _, w in log if s >= 0.75 * total]
    assert (4,) in late, "the smallest subnet (min depth, min width) is never trained"
    assert ofa_progressive_bounds(0.3, 0.25, 0.5, 0.25, 1, 3, "joint") == (3, 0.925)
    with pytest.raises(ValueError, match="order"):
        ShrinkingSchedule(order="kernel")
    with pytest.raises(ValueError, match="depth_choices"):
        OFASupernetModule(hidden=[8, 8], depth_choices=[3])


def test_recalibrate_bn_exact_statistics_and_restores_state():
    torch.manual_seed(0)
    module = OFASupernetModule(in_features=5, hidden=[8, 8], num_classes=3, depth_choices=[1], batchnorm=True)
    x = torch.randn(96, 5) * 3 + 1
    loader = [(x[i : i + 32], torch.zeros(32, dtype=torch.long)) for i in range(0, 96, 32)]
    module.eval()
    assert module.recalibrate((4,), loader, num_batches=2) == 2
    bn = module.norms[0]
    pre = module.layers[0].forward_slice(x[:64], 4).detach()
    assert torch.allclose(bn.running_mean[:4], pre.mean(0), atol=1e-5)
    batch_vars = torch.stack([pre[:32].var(0), pre[32:].var(0)]).mean(0)
    assert torch.allclose(bn.running_var[:4], batch_vars, atol=1e-4)
    assert not module.training
    assert bn.momentum == 0.1
    with pytest.raises(ValueError, match="num_batches"):
        recalibrate_bn(module, loader, 0)
    assert OFASupernetModule().recalibrate(None, loader) == 0  # no BatchNorm: nothing to do


class _Digits(DigitsDataModule):
    def train_dataloader(self):
        return DataLoader(self.train_dataset, batch_size=self.batch_size, shuffle=False)


def test_resume_matches(tmp_path):
    assert_resume_matches(
        lambda: [ShrinkingSchedule(start_frac=0.3, grow_frac=0.2)],
        lambda: OFASupernetModule(hidden=[16, 16], lr=1e-2),
        lambda: _Digits(batch_size=16, train_size=64),
        tmp_path,
    )


def test_resume_matches_elastic_depth_with_batchnorm(tmp_path):
    assert_resume_matches(
        lambda: [ShrinkingSchedule(start_frac=0.2, grow_frac=0.4)],
        lambda: OFASupernetModule(hidden=[16, 16, 16], depth_choices=[1, 2], batchnorm=True, lr=1e-2),
        lambda: _Digits(batch_size=16, train_size=64),
        tmp_path,
    )


class _WidthConsistency(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step, lb, widths = pl_module.sampled_log[-1]
        row = torch.tensor([float(step), lb, *map(float, widths)])
        gathered = pl_module.all_gather(row)
        pl_module.log("test/width_mismatch", float((gathered - gathered[0]).abs().max()), reduce_fx="max")
        pl_module.log("test/min_width", float(min(widths)), reduce_fx="min")


@pytest.mark.ddp
def test_ddp_ranks_sample_identical_subnets():
    module, _, _ = OFASupernetModule.example()
    trainer = run_ddp(
        [ShrinkingSchedule(start_frac=0.25, grow_frac=0.25), _WidthConsistency()],
        module,
        DigitsDataModule(batch_size=8, train_size=128),
        max_steps=16,
    )
    assert trainer.state.finished
    assert float(trainer.callback_metrics["test/width_mismatch"]) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])
def test_ofa_deps_largest_and_smallest_subnets_accurate(seed):
    """P17 on digits with the DεpS schedule (subnets only in the second half of training).

    Measured (seeds 0, 1, 2, DεpS defaults, 30 epochs): largest 0.965 / 0.972 / 0.978, smallest (2 x 32 units)
    0.918 / 0.926 / 0.937. (With 15 epochs, grow/eps 0.1 the smallest reached 0.892 / 0.913 / 0.928.)
    Re-measured on the current tree (seed 0, same accuracies with the pre-elastic-depth module): 0.967 / 0.933.
    """
    pl.seed_everything(seed, verbose=False)
    dm = DigitsDataModule(batch_size=64, seed=seed)
    module = OFASupernetModule(hidden=[128, 128], lr=3e-3, seed=seed)
    make_trainer(max_epochs=30, callbacks=[ShrinkingSchedule()]).fit(module, datamodule=dm)
    smallest = module.widths_of([module.min_width_ratio] * 2)
    acc_max = module.subnet_accuracy(None, dm.val_dataloader())
    acc_min = module.subnet_accuracy(smallest, dm.val_dataloader())
    print(f"seed {seed}: largest {acc_max:.3f} smallest {acc_min:.3f}")
    assert acc_max > 0.94
    assert acc_min > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ofa_progressive_depth_width_and_bn_recalibration(seed):
    """P17: progressive shrinking (DεpS delay, then depth 3 -> 1, then width 1 -> 0.25) of a BN MLP on digits.

    Measured (seeds 0, 1, 2; 30 epochs, 3 x 128 units, depths {1, 2, 3}), validation accuracy with the supernet's
    running BN statistics -> after re-calibration on 10 train batches: largest 0.970 -> 0.983, 0.978 -> 0.983,
    0.985 -> 0.987; smallest (1 layer of 32 units) 0.942 -> 0.950, 0.946 -> 0.952, 0.928 -> 0.931; mean gain over
    8 random subnets 0.066, 0.130, 0.088 (single subnets from -0.004 to +0.503). Re-measured after the Core v2
    refactor (after re-calibration): largest 0.983 / 0.983 / 0.989, smallest 0.950 / 0.948 / 0.933, mean gain
    0.066 / 0.129 / 0.089 (seed 0 identical; the cause of the seed 1-2 shifts was not isolated).
    """
    pl.seed_everything(seed, verbose=False)
    dm = DigitsDataModule(batch_size=64, seed=seed)
    module = OFASupernetModule(hidden=[128, 128, 128], depth_choices=[1, 2, 3], batchnorm=True, lr=3e-3, seed=seed)
    make_trainer(max_epochs=30, callbacks=[ShrinkingSchedule()]).fit(module, datamodule=dm)
    state = copy.deepcopy(module.state_dict())

    def accuracy(widths, recalibrate):
        module.load_state_dict(state)  # every subnet starts from the supernet's running statistics
        if recalibrate:
            module.recalibrate(widths, dm.train_dataloader(), num_batches=10)
        return module.subnet_accuracy(widths, dm.val_dataloader())

    acc_max, acc_min = accuracy(None, True), accuracy(module.smallest_subnet(), True)
    subnets = [module.sample_widths(10**6 + k) for k in range(8)]
    gains = [accuracy(w, True) - accuracy(w, False) for w in subnets]
    print(f"seed {seed}: largest {acc_max:.3f} smallest {acc_min:.3f} mean BN gain {sum(gains) / 8:.3f}")
    assert acc_max > 0.97
    assert acc_min > 0.92
    assert sum(gains) / len(gains) > 0.03
