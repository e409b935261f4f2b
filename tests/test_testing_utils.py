"""Negative controls for the contract checks in ``litmix.testing``: each check fails on a broken plugin."""

from typing import Any

import pytest
import torch

from litmix.base import Example, LitmixCallback
from litmix.testing import (
    AssertRanksAgree,
    TinyClassifier,
    TinyDataModule,
    assert_fitted_state_roundtrip,
    assert_resume_matches,
    run_ddp,
)


class RankState(LitmixCallback):
    """Holds a value that differs per rank, as an un-broadcast decision would."""

    def __init__(self, name=None):
        super().__init__(name)
        self.value = torch.zeros(1)

    def on_train_start(self, trainer, pl_module):
        self.value = torch.full((1,), float(trainer.global_rank))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "value": self.value}

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.value = state_dict.get("value", self.value)

    @classmethod
    def example(cls):
        return Example(TinyClassifier(), TinyDataModule(), [cls()])


class ForgetsState(RankState):
    """Counts steps but does not restore the count."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.value = self.value + 1

    def load_state_dict(self, state_dict):
        LitmixCallback.load_state_dict(self, state_dict)


@pytest.mark.ddp
def test_ranks_that_disagree_fail_the_ddp_check():
    with pytest.raises(Exception, match="rank 1 disagrees with rank 0"):
        run_ddp([RankState(), AssertRanksAgree()], TinyClassifier(), TinyDataModule(), max_steps=1)


def test_a_state_that_is_not_restored_fails_the_round_trip():
    cb = ForgetsState()
    cb.value = torch.ones(1) * 3
    with pytest.raises(AssertionError, match="does not reproduce the fitted state"):
        assert_fitted_state_roundtrip(ForgetsState, cb)


def test_a_state_that_is_not_restored_fails_resume(tmp_path):
    with pytest.raises(AssertionError, match="state differs between the uninterrupted and resumed run"):
        assert_resume_matches(lambda: [ForgetsState()], TinyClassifier, TinyDataModule, tmp_path, max_epochs=2)
