import csv
import math
import pickle

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from litmix.callbacks.zero_cost_proxies import ZeroCostProxies
from litmix.data import split_batch
from litmix.functional.proxies import zero_cost_proxies
from litmix.testing import (
    TinyClassifier,
    TinyDataModule,
    assert_resume_matches,
    assert_state_roundtrip,
    fit_tiny,
    make_trainer,
    run_ddp,
)

NAMES = ["synflow", "snip", "grad_norm", "naswot", "params", "flops"]


class Counting(ZeroCostProxies):
    calls = 0

    def _score(self, trainer, pl_module, loader):
        type(self).calls += 1
        super()._score(trainer, pl_module, loader)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown or no proxy names \['synflo'\]; available proxies: \["):
        ZeroCostProxies(names=["synflo"])
    with pytest.raises(ValueError, match="batch_size"):
        ZeroCostProxies(batch_size=1)
    with pytest.raises(ValueError, match="layer_filter"):
        ZeroCostProxies(layer_filter="convs")
    with pytest.raises(ValueError, match="nan_policy"):
        ZeroCostProxies(nan_policy="zero")


def test_scores_match_functional_and_model_untouched():
    pl.seed_everything(0)
    module = TinyClassifier()
    init = {k: v.clone() for k, v in module.state_dict().items()}
    cb = ZeroCostProxies(names=NAMES, batch_size=16)  # naswot: at most 16 + 1 samples (TinyClassifier's units)
    trainer = fit_tiny([cb], module=module, max_steps=3)
    # same numbers as the functional API on the first 16 training samples with the initial weights
    ref_module = TinyClassifier()
    ref_module.load_state_dict(init)
    x, y, _ = TinyDataModule().dataset[:16]
    expect = zero_cost_proxies(ref_module, x, y, names=NAMES, seed=0)
    assert cb.scores == pytest.approx(expect)
    for name in NAMES:
        assert float(trainer.callback_metrics[f"zc/{name}"]) == pytest.approx(expect[name], rel=1e-6)
    assert set(cb.seconds) == set(NAMES)
    # the training itself is unaffected: same weights as a run without the callback
    pl.seed_everything(0)
    plain = TinyClassifier()
    fit_tiny([], module=plain, max_steps=3)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, module.state_dict()[k]), k


def test_without_datamodule_uses_train_dataloader():
    cb = ZeroCostProxies(names=["params", "snip"], batch_size=8)
    trainer = make_trainer(callbacks=[cb], max_steps=1)
    trainer.fit(TinyClassifier(), train_dataloaders=TinyDataModule().train_dataloader())
    assert cb.scores is not None
    assert cb.scores["params"] == 212.0
    assert math.isfinite(cb.scores["snip"])


def test_wandb_table(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    tables = []
    monkeypatch.setattr(logger, "log_table", lambda **kw: tables.append(kw))
    cb = ZeroCostProxies(names=["synflow", "params"], batch_size=8)
    fit_tiny([cb], logger=logger, max_steps=1)
    assert len(tables) == 1
    assert tables[0]["key"] == "zc_proxies"
    assert [row[:2] for row in tables[0]["data"]] == [["synflow", cb.scores["synflow"]], ["params", 212.0]]


def test_state_pickle_and_resume_does_not_rescore(tmp_path):
    module, datamodule, (cb,) = ZeroCostProxies.example()
    assert pickle.loads(pickle.dumps(cb)).names == cb.names
    fit_tiny([cb], module=module, datamodule=datamodule, max_steps=1)
    assert_state_roundtrip(cb)
    state = cb.state_dict()
    fresh = ZeroCostProxies.example().callbacks[0]
    fresh.load_state_dict(state)
    assert fresh.scores == cb.scores
    other = ZeroCostProxies(names=["zen"])  # a different request ignores stale scores
    other.load_state_dict(state)
    assert other.scores is None

    Counting.calls = 0
    instances = []

    def make():
        instances.append(Counting(names=NAMES, batch_size=16))
        return [instances[-1]]

    assert_resume_matches(make, TinyClassifier, TinyDataModule, tmp_path)
    assert Counting.calls == 1  # the uninterrupted run scored; the resumed run restored the scores
    assert instances[0].scores == instances[1].scores


class SameScoresOnAllRanks(Callback):
    def __init__(self, zc):
        self.zc = zc

    def on_train_end(self, trainer, pl_module):
        values = torch.tensor([self.zc.scores[n] for n in NAMES], dtype=torch.float64)
        gathered = trainer.strategy.all_gather(values)
        assert gathered.shape == (2, len(NAMES))
        assert torch.equal(gathered[0], gathered[1])
        assert self.zc.computed_here == trainer.is_global_zero  # only rank 0 ran the proxies


@pytest.mark.ddp
def test_ddp_ranks_hold_identical_scores():
    pl.seed_everything(0)
    zc = ZeroCostProxies(names=NAMES, batch_size=16)
    trainer = run_ddp([zc, SameScoresOnAllRanks(zc)], TinyClassifier(), TinyDataModule(), max_steps=2)
    assert all(f"zc/{n}" in trainer.callback_metrics for n in NAMES)
    assert float(trainer.callback_metrics["zc/params"]) == 212.0


# ----------------------------------------------------------------------------- every_n_epochs


@pytest.mark.parametrize(("bad", "error"), [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)])
def test_every_n_epochs_rejects_bad_values(bad, error):
    with pytest.raises(error, match="every_n_epochs"):
        ZeroCostProxies(every_n_epochs=bad)


def test_every_n_epochs_history_and_logged_values(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    pl.seed_everything(0)
    module = TinyClassifier()
    cb = ZeroCostProxies(names=["synflow", "snip", "params"], batch_size=16, every_n_epochs=2)
    logger = CSVLogger(str(tmp_path), name="zc")
    trainer = fit_tiny([cb], module=module, max_epochs=6, max_steps=-1, logger=logger)
    assert [h["epoch"] for h in cb.history] == [1, 3, 5]
    assert [h["step"] for h in cb.history] == [8, 16, 24]  # 4 batches per epoch
    # the last re-score (end of training) is the functional API on the trained weights
    x, y, _ = TinyDataModule().dataset[:16]
    expect = zero_cost_proxies(module, x, y, names=["synflow", "snip", "params"], seed=0)
    assert cb.history[-1]["scores"] == pytest.approx(expect)
    assert cb.history[-1]["scores"]["synflow"] != pytest.approx(cb.scores["synflow"])  # training changed it
    assert float(trainer.callback_metrics["zc/synflow"]) == pytest.approx(expect["synflow"], rel=1e-6)
    # each re-score is logged as zc/<name> at its epoch; epoch 0 carries the fit-start score
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("zc/synflow")]
    logged = {int(r["epoch"]): float(r["zc/synflow"]) for r in rows}
    assert sorted(logged) == [0, 1, 3, 5]
    assert logged[0] == pytest.approx(cb.scores["synflow"], rel=1e-6)
    for h in cb.history:
        assert logged[h["epoch"]] == pytest.approx(h["scores"]["synflow"], rel=1e-6)


def test_without_every_n_epochs_no_history():
    cb = ZeroCostProxies(names=["params"], batch_size=8)
    fit_tiny([cb], max_epochs=2, max_steps=-1)
    assert cb.history == []


class _ForgetsHistory(ZeroCostProxies):
    """Negative control: restores the scores but drops the history."""

    def load_state_dict(self, state_dict):
        super().load_state_dict({**state_dict, "history": []})


@pytest.mark.parametrize(("cls", "keeps"), [(ZeroCostProxies, True), (_ForgetsHistory, False)])
def test_resume_keeps_history(tmp_path, cls, keeps):
    instances = []

    def make():
        instances.append(cls(names=["synflow", "snip", "params"], batch_size=16, every_n_epochs=1))
        return [instances[-1]]

    if keeps:
        assert_resume_matches(make, TinyClassifier, TinyDataModule, tmp_path, max_epochs=3)
    else:  # the check can fail: the resumed state lacks the epoch-0 entry
        with pytest.raises(AssertionError, match="state differs between the uninterrupted and resumed run"):
            assert_resume_matches(make, TinyClassifier, TinyDataModule, tmp_path, max_epochs=3)
    full, resumed = instances
    assert [h["epoch"] for h in full.history] == [0, 1, 2]
    if keeps:
        assert resumed.history == full.history  # epoch 0 from the checkpoint, epochs 1-2 re-scored identically
        assert_state_roundtrip(resumed)
    else:  # the check can fail: without the restored history the epoch-0 entry is lost
        assert [h["epoch"] for h in resumed.history] == [1, 2]


class _PerturbRank1AtEpochEnd(Callback):
    """Before the re-scoring: rank 1's weights drift away (the replicas differ only in this test)."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.global_rank == 1:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.add_(torch.randn_like(p))


class _ScoresOnEveryRank(ZeroCostProxies):
    """Negative control: every rank re-scores its own replica (no broadcast)."""

    def _compute(self, trainer, pl_module, loader):
        x, y, _ = split_batch(self._first_batch(loader))
        return zero_cost_proxies(pl_module, x, y, names=self.names, seed=self.seed, return_timings=True)


class _HistoryChecksum(Callback):
    """After the re-scoring: all-gather the latest history entry, log how many scores differ between ranks."""

    def __init__(self, zc):
        self.zc = zc

    def on_train_epoch_end(self, trainer, pl_module):
        values = torch.tensor([self.zc.history[-1]["scores"][n] for n in NAMES], dtype=torch.float64)
        gathered = pl_module.all_gather(values)
        assert gathered.shape == (2, len(NAMES))
        pl_module.log("test/history_len", float(len(self.zc.history)))
        same = (gathered == gathered[0]) | (gathered.isnan() & gathered[0].isnan())
        pl_module.log("test/zc_mismatches", float((~same).sum()), reduce_fx="max")


@pytest.mark.ddp
@pytest.mark.parametrize(("cls", "identical"), [(ZeroCostProxies, True), (_ScoresOnEveryRank, False)])
def test_ddp_every_n_epochs_identical_on_both_ranks(cls, identical):
    pl.seed_everything(0)
    zc = cls(names=NAMES, batch_size=16, every_n_epochs=1)
    callbacks = [_PerturbRank1AtEpochEnd(), zc, _HistoryChecksum(zc)]
    trainer = run_ddp(callbacks, TinyClassifier(), TinyDataModule(), max_epochs=2, max_steps=-1)
    assert float(trainer.callback_metrics["test/history_len"]) == 2
    mismatches = float(trainer.callback_metrics["test/zc_mismatches"])
    if identical:
        assert mismatches == 0
    else:
        assert mismatches > 0  # the check can fail: rank 1's own scores of its drifted replica differ


# ----------------------------------------------------------------------------- contract, logging, strategies


def test_example_contract_and_validation():
    from litmix.base import Example

    ex = ZeroCostProxies.example()
    assert isinstance(ex, Example)
    assert isinstance(ex.callbacks[0], ZeroCostProxies)
    assert not hasattr(ZeroCostProxies, "family")
    for kwargs, error, arg in [
        ({"names": 3}, TypeError, "names"),
        ({"names": [3]}, TypeError, "names"),
        ({"batch_size": 2.5}, TypeError, "batch_size"),
        ({"log_table": 1}, TypeError, "log_table"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": "0"}, TypeError, "seed"),
        ({"layer_filter": 3}, TypeError, "layer_filter"),
        ({"nan_policy": float("nan")}, ValueError, "nan_policy"),
        ({"name": ""}, ValueError, "name"),
    ]:
        with pytest.raises(error, match=rf"ZeroCostProxies\({arg}="):
            ZeroCostProxies(**kwargs)
    with pytest.raises(ValueError, match=r"unknown or no proxy names \[\]"):
        ZeroCostProxies(names=[])


def test_state_keys_differ_for_unnamed_instances_and_log_prefix():
    a, b = ZeroCostProxies(names=["params"], batch_size=8), ZeroCostProxies(names=["synflow"], batch_size=8)
    assert a.state_key != b.state_key
    assert a.state_key == ZeroCostProxies(names=["params"], batch_size=8).state_key
    trainer = fit_tiny([a, b, c := ZeroCostProxies(names=["params"], batch_size=8, name="probe")], max_steps=1)
    assert {"zc/params", "zc/synflow", "probe/params"} <= set(trainer.callback_metrics)
    assert c.log_prefix == "probe"
    with pytest.raises(RuntimeError, match="state_key` must be unique"):  # Lightning refuses at construction
        fit_tiny([ZeroCostProxies(names=["params"]), ZeroCostProxies(names=["params"])], max_steps=1)


@pytest.mark.parametrize("strategy_name", ["FSDPStrategy", "DeepSpeedStrategy"])
def test_sharded_strategies_are_refused(strategy_name):
    from unittest import mock

    import lightning.pytorch.strategies as strategies
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    cls = getattr(strategies, strategy_name)
    stub = cls.__new__(cls)  # an uninitialised instance: FSDP itself needs a GPU
    trainer = mock.Mock(strategy=stub, callbacks=[])
    cb = ZeroCostProxies(names=["params"])
    with pytest.raises(MisconfigurationException, match=rf"ZeroCostProxies does not support .*{strategy_name}.*ddp"):
        cb.setup(trainer, TinyClassifier(), "fit")
    cb.setup(mock.Mock(strategy=object(), callbacks=[]), TinyClassifier(), "fit")  # not sharded: accepted


def test_pyg_data_batches():
    from torch_geometric.data import Data
    from torch_geometric.loader import DataLoader as GraphLoader
    from torch_geometric.nn import GCNConv

    class GCNModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.conv1, self.act, self.conv2 = GCNConv(4, 32), torch.nn.ReLU(), GCNConv(32, 3)

        def forward(self, x, edge_index):
            return self.conv2(self.act(self.conv1(x, edge_index)), edge_index)

        def training_step(self, data, _):
            out = self(data.x, data.edge_index)
            return torch.nn.functional.cross_entropy(out[data.train_mask], data.y[data.train_mask])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(20, dtype=torch.bool)
    mask[:10] = True
    data = Data(
        x=torch.randn(20, 4, generator=g),
        edge_index=torch.randint(0, 20, (2, 60), generator=g),
        y=torch.arange(20) % 3,
        train_mask=mask,
    )
    names = ["snip", "grad_norm", "naswot", "jacob_cov", "synflow", "params"]
    torch.manual_seed(0)
    module = GCNModule()
    expect = zero_cost_proxies(module, data, names=names, seed=0, layer_filter="extended")
    cb = ZeroCostProxies(names=names, batch_size=2, layer_filter="extended")
    trainer = make_trainer(callbacks=[cb], max_steps=1)
    trainer.fit(module, train_dataloaders=GraphLoader([data], batch_size=1))
    assert cb.scores == pytest.approx(expect)
    assert all(math.isfinite(v) for v in cb.scores.values())


class _UnsyncedLog(ZeroCostProxies):
    """Negative control: the former logging (sync_dist=False) of values that are identical on every rank."""

    def _log(self, pl_module, scores):
        pl_module.log_dict({f"zc/{k}": float(v) for k, v in scores.items()}, on_epoch=True, sync_dist=False)


@pytest.mark.ddp
@pytest.mark.parametrize(("cls", "quiet"), [(ZeroCostProxies, True), (_UnsyncedLog, False)])
def test_ddp_logging_without_sync_dist_warning(cls, quiet):
    import warnings

    zc = cls(names=NAMES, batch_size=16, every_n_epochs=1)
    with warnings.catch_warnings():  # inherited by the forked ranks: the warning becomes an error there
        warnings.filterwarnings("error", message=r".*It is recommended to use `self.log\('zc/")
        if quiet:
            trainer = run_ddp([zc], TinyClassifier(), TinyDataModule(), max_epochs=2, max_steps=-1)
            assert float(trainer.callback_metrics["zc/params"]) == 212.0
        else:  # the check can fail: the unsynced logging warns
            with pytest.raises(Exception, match="It is recommended to use"):
                run_ddp([zc], TinyClassifier(), TinyDataModule(), max_epochs=2, max_steps=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Lightning's strategy `fsdp` requires a GPU accelerator")
def test_real_fsdp_is_refused_at_setup():
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    trainer = make_trainer(accelerator="gpu", devices=1, strategy="fsdp", callbacks=[ZeroCostProxies()], max_steps=1)
    with pytest.raises(MisconfigurationException, match=r"ZeroCostProxies does not support .*FSDPStrategy"):
        trainer.fit(TinyClassifier(), datamodule=TinyDataModule())
