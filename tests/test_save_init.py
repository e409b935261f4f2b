import pickle

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from litmix.callbacks.save_init import SaveInit
from litmix.testing import (
    StubTrainer,
    TinyClassifier,
    TinyDataModule,
    assert_resume_matches,
    assert_state_roundtrip,
    fit_tiny,
    run_ddp,
    sharded_strategy,
)


def _checksum(state):
    flat = torch.cat([v.detach().double().flatten() for v in state.values()])
    return torch.stack([flat.sum(), (flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64)).sum()])


def test_bad_path():
    with pytest.raises(TypeError, match=r"SaveInit\(path=3\)"):
        SaveInit(path=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"SaveInit\(path=''\)"):
        SaveInit(path="")
    with pytest.raises(TypeError, match=r"SaveInit\(name=1\)"):
        SaveInit(name=1)  # type: ignore[arg-type]


def test_example_shape_and_pathlike(tmp_path):
    module, datamodule, (cb,) = SaveInit.example()
    assert isinstance(module, TinyClassifier)
    assert isinstance(datamodule, TinyDataModule)
    assert isinstance(cb, SaveInit)
    assert SaveInit(path=tmp_path / "a.pt").path == str(tmp_path / "a.pt")


def test_state_key_tells_paths_apart():
    assert SaveInit().state_key == "SaveInit"
    assert SaveInit(path="a.pt").state_key != SaveInit(path="b.pt").state_key
    assert SaveInit(name="x").state_key != SaveInit(name="y").state_key


@pytest.mark.parametrize("strategy_cls", [FSDPStrategy, DeepSpeedStrategy])
def test_sharded_strategy_refused_in_setup(strategy_cls):
    cb = SaveInit()
    stub = sharded_strategy(strategy_cls)
    with pytest.raises(MisconfigurationException, match=rf"SaveInit.*strategy={strategy_cls.__name__}.*ddp"):
        cb.setup(StubTrainer(stub, [cb]), TinyClassifier(), "fit")
    cb.setup(StubTrainer(object(), [cb]), TinyClassifier(), "fit")  # a non-sharded strategy passes


def test_snapshot_is_theta0_and_written(tmp_path):
    module = TinyClassifier()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    cb = SaveInit(path=str(tmp_path / "sub" / "theta0.pt"))
    fit_tiny([cb], module=module, max_steps=3)
    assert cb.init_state is not None
    assert not torch.equal(module.net[0].weight, before["net.0.weight"])  # training moved the weights ...
    for k, v in before.items():  # ... but the snapshot holds theta_0
        assert torch.equal(cb.init_state[k], v), k
    on_disk = torch.load(tmp_path / "sub" / "theta0.pt")
    assert all(torch.equal(on_disk[k], v) for k, v in before.items())
    assert pickle.loads(pickle.dumps(cb)).init_state is not None
    assert_state_roundtrip(cb)


class _Forgetful(SaveInit):
    """Negative control: ignores its checkpoint state, so a resumed run snapshots the resumed weights."""

    def load_state_dict(self, state_dict):
        pass


@pytest.mark.parametrize(("cls", "keeps_theta0"), [(SaveInit, True), (_Forgetful, False)])
def test_resume_keeps_original_theta0(tmp_path, cls, keeps_theta0):
    instances = []

    def make():
        instances.append(cls())
        return [instances[-1]]

    if keeps_theta0:
        assert_resume_matches(make, TinyClassifier, TinyDataModule, tmp_path)
    else:  # the contract helper compares callback states too, and catches the forgetful control
        with pytest.raises(AssertionError, match="state differs"):
            assert_resume_matches(make, TinyClassifier, TinyDataModule, tmp_path)
    full, resumed = instances
    ckpt = torch.load(sorted((tmp_path / "ckpt").glob("epoch=0-*.ckpt"))[0], weights_only=False)
    epoch0 = ckpt["state_dict"]
    same = all(torch.equal(full.init_state[k], resumed.init_state[k]) for k in full.init_state)
    assert same == keeps_theta0
    # without the restored state the "theta_0" would be the epoch-0 checkpoint's weights
    assert torch.equal(resumed.init_state["net.0.weight"], epoch0["net.0.weight"]) != keeps_theta0


# ----------------------------------------------------------------------------- DDP


class _PerturbRank1InSetup(Callback):
    """Makes rank 1's weights differ before DDP wraps the module (DDP then broadcasts rank 0's weights)."""

    def setup(self, trainer, pl_module, stage):
        if trainer.global_rank == 1:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.add_(torch.randn_like(p))


class _SnapshotInSetup(SaveInit):
    """Negative control: snapshots in ``setup``, before DDP synchronises the replicas."""

    def setup(self, trainer, pl_module, stage):
        self.init_state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}


class _Theta0Checksum(Callback):
    """All-gathers a checksum of the snapshot and logs the largest difference between ranks."""

    def __init__(self, cb):
        self.cb = cb

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        gathered = pl_module.all_gather(_checksum(self.cb.init_state))
        pl_module.log("test/theta0_diff", float((gathered - gathered[0]).abs().max()), reduce_fx="max")


@pytest.mark.ddp
@pytest.mark.parametrize(("cls", "identical"), [(SaveInit, True), (_SnapshotInSetup, False)])
def test_ddp_theta0_identical_on_both_ranks(tmp_path, cls, identical):
    torch.manual_seed(0)
    module = TinyClassifier()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    path = tmp_path / "theta0.pt"
    cb = cls(path=str(path))
    trainer = run_ddp([_PerturbRank1InSetup(), cb, _Theta0Checksum(cb)], module, TinyDataModule(), max_steps=2)
    diff = float(trainer.callback_metrics["test/theta0_diff"])
    if identical:
        assert diff == 0.0
        saved = torch.load(path)  # written by rank 0: rank 0's (unperturbed) initial weights
        assert all(torch.equal(saved[k], v) for k, v in before.items())
    else:
        assert diff > 0  # the check can fail: a snapshot taken before DDP's broadcast differs on rank 1
