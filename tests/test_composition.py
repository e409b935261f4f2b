"""Several litmix callbacks in one Trainer: distil + prune + score, resumable and under DDP."""

import lightning.pytorch as pl
import pytest
import torch

from litmix.callbacks import GradualPruning, KnowledgeDistillation, ZeroCostProxies
from litmix.datamodules import DigitsDataModule
from litmix.functional.sparsity import sparsity_report
from litmix.testing import TinyClassifier, TinyDataModule, assert_resume_matches, fit_tiny, make_trainer, run_ddp


def _callbacks(teacher, every=1):
    return [
        ZeroCostProxies(names=["synflow", "snip", "params"]),
        KnowledgeDistillation(teacher, temperature=2.0, weight=0.5),
        GradualPruning(target_sparsity=0.5, end_fraction=0.5, every_n_steps=every),
    ]


def _teacher(in_features=8, classes=4):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(in_features, 32), torch.nn.ReLU(), torch.nn.Linear(32, classes))


def test_distill_prune_score_on_digits():
    pl.seed_everything(0)
    digits = DigitsDataModule(batch_size=64)
    teacher = TinyClassifier(64, 128, 10, lr=0.01)
    make_trainer(max_epochs=15).fit(teacher, datamodule=digits)
    student = TinyClassifier(64, 32, 10, lr=0.01)
    cbs = _callbacks(teacher, every=5)
    trainer = make_trainer(max_epochs=15, callbacks=cbs, limit_val_batches=1.0)
    trainer.fit(student, datamodule=digits)
    metrics = trainer.callback_metrics
    assert {"kd/loss_epoch", "zc/synflow", "zc/params", "pruning/sparsity"} <= set(metrics)
    report = sparsity_report(student)
    assert abs(report["global"] - 0.5) < 0.01
    assert metrics["val/acc"] > 0.9  # a distilled, half-pruned 64-32-10 MLP still classifies digits
    assert cbs[0].scores["params"] > 0


def test_resume_with_three_callbacks(tmp_path):
    teacher = _teacher()
    assert_resume_matches(lambda: _callbacks(teacher), TinyClassifier, TinyDataModule, tmp_path, atol=1e-6)


def test_scoring_a_pruned_model_sees_the_zeros():
    module = TinyClassifier()
    fit_tiny(
        [GradualPruning(target_sparsity=0.9, end_fraction=0.5, every_n_steps=1)],
        module=module,
        max_epochs=2,
        max_steps=-1,
    )
    dense = TinyClassifier()
    scorer = ZeroCostProxies(names=["synflow", "snip"])
    fit_tiny([scorer], module=module, max_steps=1)
    pruned_scores = dict(scorer.scores)
    fit_tiny([scorer := ZeroCostProxies(names=["synflow", "snip"])], module=dense, max_steps=1)
    assert pruned_scores["synflow"] < scorer.scores["synflow"]


@pytest.mark.ddp
def test_three_callbacks_under_ddp():
    trainer = run_ddp(_callbacks(_teacher()), TinyClassifier(), TinyDataModule(), max_steps=4)
    assert trainer.state.finished
    assert {"kd/loss_epoch", "zc/synflow", "pruning/sparsity"} <= set(trainer.callback_metrics)
