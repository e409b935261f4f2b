import math
import pickle

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from litmix.callbacks.zero_cost_proxies import ZeroCostProxies
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
    cb = ZeroCostProxies(names=NAMES, batch_size=32)
    trainer = fit_tiny([cb], module=module, max_steps=3)
    # same numbers as the functional API on the first 32 training samples with the initial weights
    ref_module = TinyClassifier()
    ref_module.load_state_dict(init)
    x, y, _ = TinyDataModule().dataset[:32]
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
    cb = ZeroCostProxies.example()
    assert pickle.loads(pickle.dumps(cb)).names == cb.names
    fit_tiny([cb], max_steps=1)
    assert_state_roundtrip(cb)
    state = cb.state_dict()
    fresh = ZeroCostProxies.example()
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
