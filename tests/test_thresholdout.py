"""Thresholdout (Dwork et al. 2015): the answering rule, its noise and state, the paper's adaptive feature-selection
experiment at small scale, and the ThresholdoutValidation callback (checkpoint selection, resume, DDP, errors)."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from litmix.callbacks import ThresholdoutValidation
from litmix.data import split_batch
from litmix.metrics import Thresholdout
from litmix.testing import AssertRanksAgree, TinyClassifier, TinyDataModule, make_trainer, run_ddp


def test_answers_follow_the_rule_and_the_budget():
    holdout = Thresholdout(threshold=0.05, sigma=0.0, budget=2)
    assert holdout.query(0.80, 0.78) == 0.80  # within the threshold: the training value
    assert holdout.query(0.99, 0.70) == 0.70  # overfitting: the holdout value
    assert holdout.query(0.50, 0.90) == 0.90
    assert holdout.budget_left == 0
    assert math.isnan(holdout.query(0.80, 0.80))  # budget spent
    assert holdout.queries == 4
    with pytest.raises(ValueError, match=r"Thresholdout.query\(train=nan\)"):
        holdout.query(math.nan, 0.5)


def test_laplace_noise_has_the_stated_scale_and_the_state_round_trips():
    holdout = Thresholdout(threshold=1e-6, sigma=0.01, budget=10_000, seed=3)
    answers = torch.tensor([holdout.query(1.0, 0.5) for _ in range(4000)])
    assert (answers - 0.5).abs().mean() == pytest.approx(0.01, rel=0.1)  # E|Lap(b)| = b
    first = Thresholdout(sigma=0.02, seed=5)
    second = Thresholdout(sigma=0.02, seed=5)
    pairs = [(0.9, 0.6), (0.7, 0.69), (0.8, 0.5)]
    for t, h in pairs:
        first.query(t, h)
        second.query(t, h)
    saved = first.state_dict()
    continued = [first.query(0.95, 0.6) for _ in range(5)]
    restored = Thresholdout(sigma=0.02, seed=99)
    restored.load_state_dict(saved)
    assert [restored.query(0.95, 0.6) for _ in range(5)] == continued


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"threshold": 0.0}, ValueError, "threshold"),
        ({"sigma": -0.1}, ValueError, "sigma"),
        ({"sigma": math.inf}, ValueError, "sigma"),
        ({"budget": 0}, ValueError, "budget"),
        ({"seed": "0"}, TypeError, "seed"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, name):
    with pytest.raises(error, match=rf"Thresholdout\({name}="):
        Thresholdout(**kwargs)
    with pytest.raises(error, match=rf"ThresholdoutValidation\({name}="):
        ThresholdoutValidation(**kwargs)
    with pytest.raises(ValueError, match=r"ThresholdoutValidation\(monitor=''\)"):
        ThresholdoutValidation(monitor="")


# ------------------------------------------------------------------ the paper's experiment, at small scale


def _feature_selection(seed: int, n: int = 2000, d: int = 2000) -> dict[str, list[tuple[int, float, float]]]:
    """Dwork et al. (Science 2015, Fig. 2): no signal at all (random labels); variables are selected adaptively
    by their training correlation and whether the holdout agrees on its sign, then a linear classifier on the
    top k is scored. Returns per mode, per k: (k, reported holdout accuracy, fresh-data accuracy).

    Thresholdout's threshold and noise are the paper's (0.04, 0.01 at n = 10,000) scaled by sqrt(10,000 / n)."""
    gen = torch.Generator().manual_seed(seed)

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, d, generator=gen, dtype=torch.float64)
        return x, torch.randint(0, 2, (n,), generator=gen).double() * 2 - 1

    (xt, yt), (xh, yh), (xf, yf) = draw(), draw(), draw()
    ct, ch = (xt * yt[:, None]).mean(0), (xh * yh[:, None]).mean(0)
    scale = math.sqrt(10_000 / n)
    out = {}
    for mode in ("standard", "thresholdout"):
        holdout = Thresholdout(threshold=0.04 * scale, sigma=0.01 * scale, budget=10_000, seed=seed)

        def answer(train: float, held: float, mode: str = mode, holdout: Thresholdout = holdout) -> float:
            return held if mode == "standard" else holdout.query(train, held)

        candidates = (ct.abs() > 1 / math.sqrt(n)).nonzero().squeeze(1).tolist()
        kept = [
            j
            for j in candidates
            if math.copysign(1, answer(ct[j].item(), ch[j].item())) == math.copysign(1, ct[j].item())
        ]
        kept.sort(key=lambda j: -abs(ct[j].item()))
        rows = []
        for k in (10, 20, 50, 100, 200, 500):
            w = torch.zeros(d, dtype=torch.float64)
            w[kept[:k]] = ct[kept[:k]].sign()

            def acc(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor = w) -> float:
                return float(((x @ w).sign() == y).double().mean())

            rows.append((k, answer(acc(xt, yt), acc(xh, yh)), acc(xf, yf)))
        out[mode] = rows
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adaptive_selection_overfits_the_standard_holdout_but_not_thresholdout(seed):
    """Measured at k = 200 / 500 (reported holdout accuracy - fresh accuracy), seeds 0 / 1 / 2: standard holdout
    +0.079 / +0.119, +0.106 / +0.131, +0.097 / +0.113; Thresholdout -0.022 / -0.039, +0.026 / +0.000,
    +0.005 / +0.022 (fresh data: 0.49-0.51, the truth: there is no signal)."""
    result = _feature_selection(seed)
    for (k, reported, fresh), (_, thr, fresh_t) in zip(result["standard"], result["thresholdout"], strict=True):
        if k >= 200:
            assert reported - fresh > 0.06, result["standard"]
            assert abs(thr - fresh_t) < 0.05, result["thresholdout"]
        assert abs(fresh - 0.5) < 0.05


# ---------------------------------------------------------------------------------------------- callback


class _Classifier(TinyClassifier):
    """Logs ``train/acc`` per epoch; ``val_offset`` shifts the logged validation accuracy (an overfitting gap)."""

    def __init__(self, val_offset: float = 0.0) -> None:
        super().__init__()
        self.val_offset = val_offset

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = split_batch(batch)
        logits = self(x)
        self.log("train/acc", (logits.argmax(-1) == y).float().mean(), on_step=False, on_epoch=True)
        return torch.nn.functional.cross_entropy(logits, y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y, _ = split_batch(batch)
        self.log("val/acc", (self(x).argmax(-1) == y).float().mean() - self.val_offset)


def _fit(callbacks: list, module: pl.LightningModule, **kwargs: Any) -> pl.Trainer:
    pl.seed_everything(0, verbose=False)
    kwargs.setdefault("max_epochs", 4)
    trainer = make_trainer(callbacks=callbacks, limit_val_batches=1.0, **kwargs)
    trainer.fit(module, datamodule=TinyDataModule())
    return trainer


class _Record(pl.Callback):
    """The epoch's (train, val) pair as the Thresholdout callback sees it (runs in the same hook, before it)."""

    def __init__(self) -> None:
        self.pairs: list[tuple[float, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        m = trainer.callback_metrics
        self.pairs.append((float(m["train/acc"]), float(m["val/acc"])))


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_callback_answers_each_epoch_by_the_rule(offset):
    record, cb = _Record(), ThresholdoutValidation(threshold=0.1, sigma=0.0, budget=10)
    _fit([record, cb], _Classifier(val_offset=offset))
    assert len(cb.answers) == len(record.pairs) == 4
    spent = 0
    for (train, val), answer in zip(record.pairs, cb.answers, strict=True):
        if abs(val - train) > 0.1:
            assert answer == pytest.approx(val)
            spent += 1
        else:
            assert answer == pytest.approx(train)
    assert cb.holdout.budget_left == 10 - spent
    if offset:
        assert spent == 4  # a 0.5 gap: every answer is the holdout's
    budget = ThresholdoutValidation(threshold=0.1, sigma=0.0, budget=3)
    _fit([budget], _Classifier(val_offset=0.5))
    assert not any(math.isnan(a) for a in budget.answers[:3])
    assert math.isnan(budget.answers[3])  # the budget of 3 is spent: the 4th epoch gets no answer


def test_model_checkpoint_selects_on_the_thresholdout_answer(tmp_path):
    cb = ThresholdoutValidation(sigma=0.0)
    ckpt = ModelCheckpoint(dirpath=tmp_path, monitor=cb.key, mode="max", save_on_train_epoch_end=True)
    _fit([cb, ckpt], _Classifier(), enable_checkpointing=True)
    assert cb.key == "thresholdout/val/acc"
    assert float(ckpt.best_model_score) == pytest.approx(max(cb.answers))


def test_missing_metric_is_named():
    logged = r"\['train/loss', 'val/acc'\]"
    with pytest.raises(KeyError, match=r"metric\(s\) \['train/acc'\] were not logged; logged: " + logged):
        _fit([ThresholdoutValidation()], TinyClassifier(), max_epochs=1)


def test_resume_gives_the_answers_of_an_uninterrupted_run(tmp_path):
    def callbacks(path):
        return [
            ThresholdoutValidation(threshold=0.01, sigma=0.05, seed=1),
            ModelCheckpoint(dirpath=path, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True),
        ]

    full_cbs = callbacks(tmp_path / "a")
    _fit(full_cbs, _Classifier(val_offset=0.2), enable_checkpointing=True)
    first = sorted((tmp_path / "a").glob("epoch=1-*.ckpt"))[0]
    resumed_cbs = callbacks(tmp_path / "b")
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(callbacks=resumed_cbs, limit_val_batches=1.0, max_epochs=4, enable_checkpointing=True)
    trainer.fit(_Classifier(val_offset=0.2), datamodule=TinyDataModule(), ckpt_path=str(first))
    assert resumed_cbs[0].answers == full_cbs[0].answers
    assert resumed_cbs[0].holdout.state_dict()["budget_left"] == full_cbs[0].holdout.state_dict()["budget_left"]


@pytest.mark.ddp
def test_ddp_ranks_hold_rank_zero_answers_and_state():
    cb = ThresholdoutValidation(threshold=0.01, sigma=0.05)
    run_ddp(
        [cb, AssertRanksAgree()],
        _Classifier(val_offset=0.2),
        TinyDataModule(),
        max_steps=-1,
        max_epochs=2,
        limit_val_batches=1.0,
    )
