import pickle
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from litmix.loss_terms import LossTermCallback
from litmix.testing import (
    CollectingClassifier,
    TinyClassifier,
    TinyDataModule,
    assert_resume_matches,
    fit_tiny,
    make_trainer,
)


class L2Term(LossTermCallback):
    """Adds coef * ||W||^2 of the first layer."""

    default_log_prefix = "l2"

    def __init__(self, coef: float = 0.1, name: str | None = None, scale: float = 1.0) -> None:
        super().__init__(name=name)
        self.loss_term_weight = coef
        self.task_loss_scale = scale
        self.calls = 0

    def loss_term(self, trainer, pl_module, batch, batch_idx, outputs):
        self.calls += 1
        return pl_module.net[0].weight.pow(2).sum()


class InlinePenalty(TinyClassifier):
    def __init__(self, coefs: list[float], scale: float = 1.0) -> None:
        super().__init__()
        self.coefs, self.scale = coefs, scale

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx) * self.scale
        return loss + sum(c * self.net[0].weight.pow(2).sum() for c in self.coefs)


class DictOutput(TinyClassifier):
    def training_step(self, batch, batch_idx):
        return {"loss": super().training_step(batch, batch_idx), "extra": torch.tensor(1.0)}


class Manual(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False


def _weights(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("module_cls", [TinyClassifier, DictOutput])
def test_two_callbacks_match_inline_penalty(module_cls):
    pl.seed_everything(0)
    a = module_cls()
    cbs = [L2Term(0.1, name="a"), L2Term(0.05, name="b", scale=0.5)]
    trainer = fit_tiny(cbs, module=a, max_steps=6)
    pl.seed_everything(0)
    b = InlinePenalty([0.1, 0.05], scale=0.5)
    fit_tiny([], module=b, max_steps=6)
    for wa, wb in zip(_weights(a), _weights(b), strict=True):
        torch.testing.assert_close(wa, wb)
    assert [cb.calls for cb in cbs] == [6, 6]  # each term counted exactly once per step
    assert "a/loss" in trainer.callback_metrics
    assert "b/loss" in trainer.callback_metrics
    assert "training_step" not in a.__dict__  # wrapper removed at teardown
    pickle.dumps(a)


def test_protocol_module_under_manual_optimization():
    pl.seed_everything(0)
    module = CollectingClassifier()
    cb = L2Term(0.1)
    fit_tiny([cb], module=module, max_steps=3)
    assert cb.calls == 3
    assert "training_step" not in module.__dict__


def test_manual_optimization_without_opt_in_is_an_error():
    with pytest.raises(MisconfigurationException, match="collects_loss_terms"):
        fit_tiny([L2Term(0.1)], module=Manual(), max_steps=1)


def test_bad_output_type_is_an_error():
    class BadOutput(TinyClassifier):
        def training_step(self, batch, batch_idx) -> Any:
            return [super().training_step(batch, batch_idx)]

    with pytest.raises(TypeError, match="loss tensor or a dict"):
        fit_tiny([L2Term(0.1)], module=BadOutput(), max_steps=1)


def test_resume_matches_uninterrupted(tmp_path):
    assert_resume_matches(lambda: [L2Term(0.1)], TinyClassifier, TinyDataModule, tmp_path)


def test_two_instances_need_distinct_names():
    with pytest.raises(RuntimeError):
        make_trainer(callbacks=[L2Term(0.1), L2Term(0.2)])
