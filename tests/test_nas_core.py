"""The shared NAS helpers: one skeleton, one subnet evaluation, one cosine schedule, one PA&DA tau, names, registry."""

import csv
import math
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, IterableDataset

from litmix.base import Example, LitmixCallback, LitmixDataModule, LitmixModule
from litmix.callbacks.pada_sampler import PADASampling
from litmix.callbacks.shrinking_schedule import ShrinkingSchedule
from litmix.datamodules.digits import DigitsDataModule
from litmix.datamodules.proxy_features import ProxyFeatureDataModule
from litmix.nas import (
    NB201Network,
    NB201Supernet,
    build_nb201_network,
    nb201_param_count,
    subnet_accuracy,
    training_progress,
)
from litmix.nas.pada import pada_tau
from litmix.plugins.nb201_supernet import NB201SupernetModule
from litmix.plugins.ofa_supernet import OFASupernetModule
from litmix.plugins.parzc_predictor import ParZCPredictor
from litmix.plugins.proxyless_nas import ProxylessNASModule
from litmix.registry import get_plugin
from litmix.testing import make_trainer, sharded_strategy

MODULES = [NB201SupernetModule, OFASupernetModule, ParZCPredictor, ProxylessNASModule]


# ------------------------------------------------------------------------------------------ one NB201 skeleton
def test_supernet_path_equals_the_stand_alone_network_with_the_same_weights():
    """NB201Supernet and NB201Network share one skeleton: a path of the supernet is exactly the built network."""
    code = (2, 3, 0, 4, 1, 2)
    torch.manual_seed(0)
    sup = NB201Supernet(C=4, N=2, in_channels=1, reduction="light")
    sup.set_active(code)
    net = NB201Network(
        code, C=4, N=2, in_channels=1, reduction="light", cell_bn_affine=False, cell_bn_track_running_stats=False
    )
    sup_state = sup.state_dict()
    mapped = {}
    for key in net.state_dict():
        parts = key.split(".")
        if parts[0] == "cells" and parts[2] == "edges":  # cells.i.edges.e.rest -> cells.i.edges.e.candidates.op.rest
            e = int(parts[3])
            key_sup = ".".join([*parts[:4], "candidates", str(code[e]), *parts[4:]])
        else:
            key_sup = key
        mapped[key] = sup_state[key_sup]
    net.load_state_dict(mapped)
    x = torch.randn(5, 1, 8, 8)
    sup.eval()
    net.eval()
    assert torch.equal(sup(x), net(x))
    assert sum(p.numel() for p in net.parameters()) == nb201_param_count(
        code, C=4, N=2, in_channels=1, cell_bn_affine=False, reduction="light"
    )


def test_builder_validates_arguments():
    with pytest.raises(ValueError, match=r"NB201Network\(reduction='x'\)"):
        build_nb201_network((0,) * 6, reduction="x")
    with pytest.raises(TypeError, match=r"NB201Network\(C=2.5\)"):
        build_nb201_network((0,) * 6, C=2.5)
    with pytest.raises(TypeError, match="arch"):
        build_nb201_network(3)
    with pytest.raises(ValueError, match="NB201 code"):
        build_nb201_network((0,) * 5)


# ------------------------------------------------------------------------------------------ one subnet evaluation
def test_subnet_accuracy_leaves_running_statistics_untouched():
    module = NB201SupernetModule(C=4, N=1, in_channels=1, reduction="light")
    dm = DigitsDataModule(batch_size=64, flatten=False, train_size=64)
    dm.setup("fit")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    accs = module.subnet_accuracy([(2,) * 6, (0,) * 6], dm.val_dataloader())
    assert all(0.0 <= a <= 1.0 for a in accs)
    assert module.training
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key
    # the plugin method is the shared helper, run per code
    module.net.set_active((2,) * 6)
    assert accs[0] == subnet_accuracy(module, dm.val_dataloader(), forward=module.net, batch_stats=True)
    ofa = OFASupernetModule(hidden=[16, 16])
    assert ofa.subnet_accuracy((8, 8), dm.val_dataloader()) == subnet_accuracy(
        ofa, dm.val_dataloader(), forward=lambda x: ofa(x, (8, 8))
    )
    with pytest.raises(ValueError, match="targets"):
        subnet_accuracy(ofa, [torch.zeros(2, 64)])


# ------------------------------------------------------------------------------------------ one cosine schedule
class _LrRecorder(Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("cls", [NB201SupernetModule, OFASupernetModule, ParZCPredictor])
def test_cosine_schedule_is_torch_per_step_over_the_run(cls):
    module, dm, _ = cls.example()
    rec = _LrRecorder()
    trainer = make_trainer(max_epochs=2, callbacks=[rec])
    trainer.fit(module, datamodule=dm)
    total = trainer.global_step
    assert isinstance(trainer.lr_scheduler_configs[0].scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert trainer.lr_scheduler_configs[0].interval == "step"
    expected = [module.lr * 0.5 * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    assert rec.lrs == pytest.approx(expected, rel=1e-9, abs=1e-12)


class _Endless(IterableDataset):
    """A stream without a length: Lightning cannot count the steps of an epoch."""

    def __iter__(self):
        gen = torch.Generator().manual_seed(0)
        for i in range(8):
            yield torch.randn(12, generator=gen), torch.randn((), generator=gen), i


class _EndlessData(LitmixDataModule):
    def train_dataloader(self):
        return DataLoader(_Endless(), batch_size=4)


@pytest.mark.parametrize("cls", [NB201SupernetModule, OFASupernetModule, ParZCPredictor])
def test_cosine_schedule_refuses_a_run_of_unknown_length(cls):
    """Regression: ParZCPredictor raised OverflowError (int(inf)) on an infinite step count."""
    module, dm, _ = cls.example()
    trainer = make_trainer(max_epochs=-1, max_steps=-1)
    with pytest.raises(ValueError, match=rf"{cls.__name__}: a cosine learning-rate schedule needs the run's length"):
        trainer.fit(module, datamodule=dm)


def test_cosine_schedule_falls_back_to_epochs_without_a_step_count():
    module = ParZCPredictor(in_features=12, hidden=[8], mc_samples=1)
    trainer = make_trainer(max_epochs=2)
    trainer.fit(module, datamodule=_EndlessData())
    assert trainer.lr_scheduler_configs[0].interval == "epoch"
    assert trainer.lr_scheduler_configs[0].scheduler.T_max == 2
    assert trainer.global_step == 4


def test_training_progress_needs_a_run_length():
    endless = SimpleNamespace(estimated_stepping_batches=float("inf"), max_epochs=-1, max_steps=-1, current_epoch=0)
    with pytest.raises(ValueError, match="ShrinkingSchedule: its schedule needs the run's length"):
        training_progress(endless, "ShrinkingSchedule")
    steps = SimpleNamespace(estimated_stepping_batches=10, global_step=15, max_epochs=1)
    assert training_progress(steps) == 1.0


# ------------------------------------------------------------------------------------------ one PA&DA tau
@pytest.mark.parametrize(
    ("limit", "expected"),
    [({"max_epochs": 3}, [4 / 12, 8 / 12, 1.0]), ({"max_steps": 10, "max_epochs": -1}, [0.4, 0.8, 1.0])],
)
def test_path_and_data_halves_use_one_tau(tmp_path, limit, expected):
    """Regression: the callback used (epoch + 1) / max_epochs (tau = 1 from the first epoch of a max_steps run)
    while the plugin fell back to steps; both now call pada_tau (fraction of the run done)."""
    module, dm, _ = NB201SupernetModule.example()  # 64 digits, batch 16: 4 steps per epoch
    logger = CSVLogger(tmp_path, name="", version="")
    trainer = make_trainer(callbacks=[PADASampling()], logger=logger, log_every_n_steps=1, **limit)
    trainer.fit(module, datamodule=dm)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    data = [float(r["pada/data_tau"]) for r in rows if r.get("pada/data_tau")]
    path = [float(r["pada/path_tau"]) for r in rows if r.get("pada/path_tau")]
    assert data == pytest.approx(expected)
    assert path == pytest.approx(expected)
    assert pada_tau(SimpleNamespace(estimated_stepping_batches=12, global_step=12, max_epochs=3), 0.5) == 0.5


# ------------------------------------------------------------------------------------------ names and logging
def test_named_callbacks_log_under_their_name():
    """Regression: PADASampling and ShrinkingSchedule ignored ``name``, so two instances wrote the same keys."""
    module, dm, _ = ShrinkingSchedule.example()
    trainer = make_trainer(max_steps=4, callbacks=[ShrinkingSchedule(name="shrink")])
    trainer.fit(module, datamodule=dm)
    assert "shrink/subnet_scale" in trainer.callback_metrics
    assert "deps/subnet_scale" not in trainer.callback_metrics
    module, dm, _ = PADASampling.example()
    trainer = make_trainer(max_epochs=2, callbacks=[PADASampling(name="data")])
    trainer.fit(module, datamodule=dm)
    assert "data/data_tau" in trainer.callback_metrics
    assert "pada/data_tau" not in trainer.callback_metrics


def test_state_keys_follow_the_configuration():
    assert PADASampling(seed=1).state_key != PADASampling(seed=2).state_key
    assert PADASampling(name="a").state_key != PADASampling(name="b").state_key
    assert ShrinkingSchedule(start_frac=0.2).state_key != ShrinkingSchedule(start_frac=0.3).state_key
    with pytest.raises(RuntimeError, match="state_key"):  # Lightning refuses two identical keys at construction
        make_trainer(max_steps=1, callbacks=[PADASampling(), PADASampling()])


# ------------------------------------------------------------------------------------------ contract shape
@pytest.mark.parametrize("cls", [*MODULES, ProxyFeatureDataModule, PADASampling, ShrinkingSchedule])
def test_example_shape_and_no_family_attribute(cls):
    example = cls.example()
    assert isinstance(example, Example)
    if cls in MODULES:
        assert isinstance(example.module, cls)
        assert isinstance(example.module, LitmixModule)
    if cls is ProxyFeatureDataModule:
        assert isinstance(example.datamodule, ProxyFeatureDataModule)
    if issubclass(cls, LitmixCallback):
        assert [type(c) for c in example.callbacks] == [cls]
        assert not hasattr(cls, "example_module")
        assert not hasattr(cls, "example_datamodule")
    else:
        assert example.callbacks == []
    assert "family" not in vars(cls)


@pytest.mark.parametrize("strategy", [FSDPStrategy, DeepSpeedStrategy])
@pytest.mark.parametrize("cls", [NB201SupernetModule, OFASupernetModule, ProxylessNASModule])
def test_sharded_strategies_are_refused(cls, strategy):
    module = cls.example().module
    sharded = sharded_strategy(strategy)
    module._trainer = SimpleNamespace(strategy=sharded)
    with pytest.raises(MisconfigurationException, match=rf"{cls.__name__} does not support .*{strategy.__name__}"):
        module.setup("fit")


# ------------------------------------------------------------------------------------------ registry
@pytest.mark.parametrize(
    ("name", "kind", "family"),
    [
        ("ProxyRanker", "utility", "proxy"),
        ("RoBoTSearch", "utility", "proxy"),
        ("GradientMatchingSplitter", "utility", "nas"),
        ("DiffKendallLoss", "loss", "proxy"),
        ("kendall_tau", "function", "proxy"),
        ("build_nb201_network", "function", "nas"),
        ("subnet_accuracy", "function", "nas"),
    ],
)
def test_utilities_are_registered_under_litmix_nas(name, kind, family):
    info = get_plugin(name)
    assert (info.kind, info.family) == (kind, family)
    assert info.import_path == f"litmix.nas.{name}"
    assert info.paper
    doc = info.cls.__doc__
    assert "Example:" in doc
    assert "Raises:" in doc
    if kind in ("utility", "loss"):
        assert isinstance(info.cls.example(), info.cls)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: PADASampling(tau_max=float("nan")), ValueError, r"PADASampling\(tau_max=nan\)"),
        (lambda: PADASampling(seed=1.5), TypeError, r"PADASampling\(seed=1.5\)"),
        (lambda: ShrinkingSchedule(order="both"), ValueError, r"ShrinkingSchedule\(order='both'\)"),
        (lambda: ShrinkingSchedule(grow_frac="0.1"), TypeError, r"ShrinkingSchedule\(grow_frac='0.1'\)"),
        (lambda: NB201SupernetModule(lr=float("inf")), ValueError, r"NB201SupernetModule\(lr=inf\)"),
        (lambda: NB201SupernetModule(eval_code=[0, 0]), ValueError, r"NB201SupernetModule\(eval_code=\[0, 0\]\)"),
        (lambda: OFASupernetModule(hidden=[16, 0]), ValueError, r"OFASupernetModule\(hidden=0\)"),
        (lambda: OFASupernetModule(kd_temperature=float("nan")), ValueError, "kd_temperature"),
        (lambda: ParZCPredictor(in_features=4, weight_decay=float("inf")), ValueError, "weight_decay"),
        (lambda: ParZCPredictor(in_features=4, cosine="yes"), TypeError, "cosine"),
        (lambda: ProxylessNASModule(warmup_steps=1.5), TypeError, "warmup_steps"),
        (
            lambda: ProxyFeatureDataModule(features=torch.zeros(4, 2), targets=torch.zeros(4), seed=-1),
            ValueError,
            "seed",
        ),
        (lambda: ProxyFeatureDataModule("/no/such/features.pt"), FileNotFoundError, r"\(path='/no/such"),
    ],
)
def test_constructors_name_the_bad_argument(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_proxy_feature_datamodule_epoch_order_and_tiny_data():
    dm = ProxyFeatureDataModule.example().datamodule
    dm.setup("fit")
    assert len(dm.train_dataset) == 40
    assert len(dm.val_dataset) == 80


# ------------------------------------------------------------------------------------------ DDP state equality
class _RanksAgree(Callback):
    """Fails on a rank whose module state_dict (weights and buffers) differs from rank 0's at the end of fit."""

    def on_train_end(self, trainer, pl_module):
        import torch.distributed as dist

        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, state)
        differ = [k for k in gathered[0] if not torch.equal(gathered[0][k], state[k])]
        assert not differ, f"rank {trainer.global_rank} differs from rank 0 on {differ}"


@pytest.mark.ddp
@pytest.mark.parametrize(
    "make",
    [
        lambda: NB201SupernetModule.example(),
        lambda: Example(
            OFASupernetModule(hidden=[16, 16], batchnorm=True), DigitsDataModule(batch_size=8, train_size=64)
        ),
    ],
    ids=["nb201", "ofa_batchnorm"],
)
def test_ddp_ranks_end_with_equal_buffers(make):
    """Regression: DDP re-broadcasts BN statistics only at the next forward, so ranks ended with different ones."""
    from litmix.testing import run_ddp

    module, dm, callbacks = make()
    trainer = run_ddp([*callbacks, _RanksAgree()], module, dm, strategy="ddp_fork_find_unused_parameters_true")
    assert trainer.state.finished


class _NoSyncDistAdvice(Callback):
    """Fails on a rank where Lightning advised ``sync_dist=True`` (values already equal on every rank)."""

    def on_fit_start(self, trainer, pl_module):
        from lightning.pytorch.trainer.connectors.logger_connector import result

        result.warning_cache.clear()

    def on_train_end(self, trainer, pl_module):
        from lightning.pytorch.trainer.connectors.logger_connector import result

        advice = [m for m in result.warning_cache if "sync_dist" in m]
        assert not advice, advice


@pytest.mark.ddp
@pytest.mark.parametrize("cls", [PADASampling, ParZCPredictor])
def test_ddp_epoch_logs_raise_no_sync_dist_advice(cls):
    """Regression (issue section 6, DDP noise): epoch-level logs of identical values warned once per key."""
    from litmix.testing import run_ddp

    module, dm, callbacks = cls.example() if cls is ParZCPredictor else NB201SupernetModule.example()
    callbacks = [PADASampling()] if cls is PADASampling else callbacks
    trainer = run_ddp(
        [*callbacks, _NoSyncDistAdvice()], module, dm, strategy="ddp_fork_find_unused_parameters_true", max_steps=4
    )
    assert trainer.state.finished
