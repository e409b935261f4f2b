"""GradualPruning's masking engine: one gradient-mask pass per step keeps pruned weights exactly 0 per optimizer family.

For the optimizers in EXACT_OPTIMIZERS the weights are never re-masked after the mask updates (``_remask_weights`` stays
False and the periodic check never fires), so these tests prove that masked gradients plus zeroed first moments give
pruned weights an exactly zero update: after every optimizer step, with weight decay, momentum, Nesterov, AMSGrad,
foreach and fused implementations. Negative controls show that the checks can fail.
"""

import warnings

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from litmix.callbacks.gradual_pruning import GradualPruning
from litmix.functional.sparsity import (
    SECOND_MOMENTS,
    keeps_pruned_weights_zero,
    pack_mask,
    reset_optimizer_state,
    unpack_mask,
)
from litmix.testing import TinyClassifier, fit_tiny

OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "sgd_nesterov_dampening_foreach": lambda p: torch.optim.SGD(
        p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2, foreach=True
    ),
    "sgd_momentum_dampening_maximize": lambda p: torch.optim.SGD(
        p, lr=0.01, momentum=0.9, dampening=0.1, weight_decay=1e-2, maximize=True, foreach=False
    ),
    "sgd_fused": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2, fused=True),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adam_coupled_wd_amsgrad_foreach": lambda p: torch.optim.Adam(
        p, lr=0.01, weight_decay=0.1, amsgrad=True, foreach=True
    ),
    "adam_fused": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1, fused=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    "adamw_foreach_amsgrad": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, amsgrad=True, foreach=True),
    "adamw_fused": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1, fused=True),
    "nadam_decoupled": lambda p: torch.optim.NAdam(p, lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
    "radam": lambda p: torch.optim.RAdam(p, lr=0.01, weight_decay=0.1),
    "adamax": lambda p: torch.optim.Adamax(p, lr=0.01, weight_decay=0.1),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05, weight_decay=0.1),
    "rmsprop_centered_momentum": lambda p: torch.optim.RMSprop(
        p, lr=0.01, momentum=0.9, centered=True, weight_decay=0.1
    ),
    "adadelta": lambda p: torch.optim.Adadelta(p, lr=1.0, weight_decay=0.1),
}


class WithOptimizer(TinyClassifier):
    def __init__(self, make_opt):
        super().__init__()
        self.make_opt = make_opt

    def configure_optimizers(self):
        return self.make_opt(self.parameters())


class ZeroAfterEveryStep(Callback):
    """After GradualPruning: counts pruned weights that are not exactly 0 after every optimizer step."""

    def __init__(self, cb: GradualPruning):
        self.cb = cb
        self.violations = 0
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = dict(pl_module.named_parameters())
        for name, mask in self.cb._masks.items():
            self.violations += int((params[name][~mask] != 0).sum())
        self.steps += 1


def _fit(make_opt, cb_cls=GradualPruning, max_steps=60, **trainer_kwargs):
    torch.manual_seed(0)
    model = WithOptimizer(make_opt)
    cb = cb_cls(0.75, start_step=1, end_step=25, every_n_steps=3, scope="layer")
    cb.check_every_n_steps = 5  # the periodic check would step in within 5 steps
    rec = ZeroAfterEveryStep(cb)
    trainer = fit_tiny([cb, rec], module=model, max_steps=max_steps, **trainer_kwargs)
    return model, cb, rec, trainer


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_masked_gradients_alone_keep_pruned_weights_exactly_zero(opt):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*pruned weights became non-zero")  # the check never steps in
        model, cb, rec, trainer = _fit(OPTIMIZERS[opt])
    optimizer = trainer.optimizers[0]
    assert keeps_pruned_weights_zero(optimizer)
    assert cb._remask_weights is False  # weights were never re-masked after the optimizer step
    assert rec.steps == 60
    assert rec.violations == 0
    params = dict(model.named_parameters())
    for name, mask in cb._masks.items():
        assert int((~mask).sum()) == round(0.75 * mask.numel())
        p = params[name]
        assert (p[~mask] == 0).all()
        assert (p[mask] != 0).all()  # kept weights train
        for key, value in optimizer.state[p].items():
            if isinstance(value, torch.Tensor) and value.shape == p.shape and key not in SECOND_MOMENTS:
                assert (value[~mask] == 0).all(), key  # first moments / momentum buffers stay 0


@pytest.mark.parametrize("opt", ["sgd_momentum_wd", "adam", "adamw_fused"])
def test_exact_zeros_with_gradient_accumulation(opt):
    _, cb, rec, trainer = _fit(OPTIMIZERS[opt], accumulate_grad_batches=2)
    assert cb._remask_weights is False
    assert rec.violations == 0  # checked after every micro-batch
    assert trainer.global_step == 60


class NoGradMask(GradualPruning):
    """Negative control: gradients not masked (momentum and Adam's moments then move pruned weights)."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        pass

    def _check_pruned_weights(self, pl_module):
        pass


class NoMomentMask(GradualPruning):
    """Negative control: gradients masked, but the momentum buffers are not zeroed when the masks change."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        opt = trainer.optimizers[0]
        saved = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in opt.state}
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        for p in opt.state:
            for k, v in saved[id(p)].items():
                opt.state[p][k] = v

    def _check_pruned_weights(self, pl_module):
        pass


@pytest.mark.parametrize("cb_cls", [NoGradMask, NoMomentMask])
@pytest.mark.parametrize("opt", ["sgd_momentum_wd", "adam"])
def test_negative_controls_revive_pruned_weights(cb_cls, opt):
    _, _, rec, _ = _fit(OPTIMIZERS[opt], cb_cls=cb_cls, max_steps=30)
    assert rec.violations > 0


class NoisySGD(torch.optim.SGD):
    """Not in EXACT_OPTIMIZERS (a subclass): its step writes every weight."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(1e-3)
        return loss


def test_unknown_optimizer_gets_weights_remasked_every_step():
    assert not keeps_pruned_weights_zero(NoisySGD([torch.nn.Parameter(torch.ones(1))], lr=0.1))
    _, cb, rec, _ = _fit(lambda p: NoisySGD(p, lr=0.05, momentum=0.9))
    assert cb._remask_weights is True
    assert rec.violations == 0


class WritesWeights(Callback):
    """Another callback that writes every weight once (at step 7), after the optimizer step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 7:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.add_(0.5)


def test_periodic_check_catches_other_writers_and_switches_to_remasking():
    torch.manual_seed(0)
    cb = GradualPruning(0.75, start_step=1, end_step=4, every_n_steps=1)
    assert cb.check_every_n_steps == 500
    cb.check_every_n_steps = 5
    rec = ZeroAfterEveryStep(cb)
    model = TinyClassifier()
    with pytest.warns(UserWarning, match="pruned weights became non-zero"):
        fit_tiny([WritesWeights(), cb, rec], module=model, max_steps=30)
    assert cb._remask_weights is True
    assert rec.violations > 0  # steps 7..9 until the check at step 10
    for name, mask in cb._masks.items():
        assert (dict(model.named_parameters())[name][~mask] == 0).all()


class Regrow(GradualPruning):
    """Dynamic-sparse-training stand-in: the second mask update regrows every coordinate pruned by the first."""

    def _decide_masks(self, trainer, entries, sparsity):
        new = super()._decide_masks(trainer, entries, sparsity)
        if self.last_update_step >= 0 and not hasattr(self, "regrown"):
            self.regrown = {n: ~m.clone() for n, _, m in entries}
            new = {n: ~m for n, m in new.items()}  # prune what was kept, regrow what was pruned
        return new


class StateAfterUpdate(Callback):
    def __init__(self, cb):
        self.cb, self.seen = cb, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 2:
            opt = trainer.optimizers[0]
            params = dict(pl_module.named_parameters())
            self.seen = {
                n: (params[n].detach().clone(), {k: v.clone() for k, v in opt.state[params[n]].items()})
                for n in self.cb._masks
            }


def test_regrown_weights_start_from_zero_weight_and_fresh_optimizer_state():
    cb = Regrow(0.5, initial_sparsity=0.25, start_step=1, end_step=2, every_n_steps=1)
    probe = StateAfterUpdate(cb)
    fit_tiny([cb, probe], max_steps=4)
    assert probe.seen
    for n, (weight, state) in probe.seen.items():
        regrown = cb.regrown[n]
        assert regrown.any()
        assert (weight[regrown] == 0).all()
        for key in ("exp_avg", "exp_avg_sq"):
            assert (state[key][regrown] == 0).all(), key  # fresh Adam state, second moment included


def test_reset_optimizer_state_and_mask_packing():
    p = torch.nn.Parameter(torch.ones(3, 5))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(3, 5)
    opt.step()
    coords = torch.zeros(3, 5, dtype=torch.bool)
    coords[1, 2] = True
    assert reset_optimizer_state(opt, p, coords) == 1
    assert opt.state[p]["momentum_buffer"][1, 2] == 0
    assert int((opt.state[p]["momentum_buffer"] != 0).sum()) == 14
    gen = torch.Generator().manual_seed(0)
    for shape in [(1,), (7,), (8,), (300, 784), (3, 4, 5)]:
        mask = torch.rand(shape, generator=gen) > 0.5
        bits = pack_mask(mask)
        assert len(bits) == -(-mask.numel() // 8)
        assert torch.equal(unpack_mask(bits, shape), mask)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_mask(b"\x00", (3, 4))


def test_masks_are_one_byte_per_weight_without_float_copies():
    model = TinyClassifier()
    cb = GradualPruning(0.5, start_step=0, end_step=2, every_n_steps=1)
    trainer = fit_tiny([cb], module=model, max_steps=4)
    masked = sum(m.numel() for m in cb._masks.values())
    assert masked == 8 * 16 + 16 * 4
    buffers = {n: b for n, b in model.named_buffers() if n.endswith("_mask")}
    assert {n[: -len("_mask")] for n in buffers} == set(cb._masks)
    assert all(b.dtype == torch.bool for b in buffers.values())
    assert sum(b.numel() * b.element_size() for b in buffers.values()) == masked  # 1 byte per masked weight
    for n, b in buffers.items():
        assert b.data_ptr() == cb._masks[n[: -len("_mask")]].data_ptr()  # one tensor, shared with the callback
    # nothing else the callback holds is per-weight (the uint8 views used for mul_ share the masks' memory)
    cb._refresh(model)
    for (_, _, mask), (_, view) in zip(cb._params(model), cb._fast, strict=True):
        assert view.dtype == torch.uint8
        assert view.data_ptr() == mask.data_ptr()
    state = cb.state_dict()["masks"]
    assert sum(len(v["bits"]) for v in state.values()) == sum(-(-m.numel() // 8) for m in cb._masks.values())
    assert trainer.global_step == 4
