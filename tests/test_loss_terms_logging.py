"""The loss-term core's cheap logging (issue 6 §4) and its non-finite check (§6)."""

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from litmix.loss_terms import LossTermCallback
from litmix.testing import TinyClassifier, TinyDataModule, fit_tiny, run_ddp


class Recorder(LossTermCallback):
    """Adds ``0.01 * ||W1||²``; records every term, and logs it the old way (``ref/loss``) as a reference."""

    default_log_prefix = "rec"

    def __init__(self, name: str | None = None, bad_at: int | None = None, bad: float = float("nan")) -> None:
        super().__init__(name=name)
        self.loss_term_weight = 0.5
        self.bad_at, self.bad = bad_at, bad
        self.terms: list[tuple[int, float]] = []  # (global step, term)

    def loss_term(self, trainer, pl_module, batch, batch_idx, outputs):
        term = 0.01 * pl_module.net[0].weight.pow(2).sum()
        if trainer.global_step == self.bad_at:
            term = term * self.bad
        self.terms.append((trainer.global_step, float(term.detach())))
        pl_module.log("ref/loss", term.detach(), on_step=True, on_epoch=True)  # Lightning's per-step logging
        return term


def _csv_rows(logger: CSVLogger) -> list[dict[str, str]]:
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


def test_values_reach_the_logger_at_log_every_n_steps_and_epoch_means_are_exact(tmp_path):
    rec = Recorder()
    logger = CSVLogger(tmp_path, name="run")
    trainer = fit_tiny([rec], max_epochs=3, max_steps=-1, logger=logger, log_every_n_steps=3)
    rows = _csv_rows(logger)
    terms = [t for _, t in rec.terms]
    assert len(terms) == 12  # 3 epochs x 4 batches

    # step values: written at Lightning's logging steps, the same steps and values as a per-step self.log
    steps = _column(rows, "rec/loss_step")
    assert [s for s, _ in steps] == [2, 5, 8, 11]
    ref_steps = _column(rows, "ref/loss_step")
    assert [s for s, _ in ref_steps] == [s for s, _ in steps]
    assert [v for _, v in steps] == pytest.approx([v for _, v in ref_steps], rel=1e-6)
    for step, value in steps:
        assert value == pytest.approx(terms[step], rel=1e-6)

    # epoch means: exactly the mean of the epoch's per-step terms (and Lightning's on_epoch mean)
    epochs = [v for _, v in _column(rows, "rec/loss_epoch")]
    expected = [sum(terms[4 * e : 4 * e + 4]) / 4 for e in range(3)]
    assert epochs == pytest.approx(expected, rel=1e-6)
    assert epochs == pytest.approx([v for _, v in _column(rows, "ref/loss_epoch")], rel=1e-6)
    assert float(trainer.callback_metrics["rec/loss"]) == pytest.approx(expected[-1], rel=1e-6)
    assert not any(r.get("rec/loss") for r in rows)  # the un-suffixed key is for callbacks and the progress bar


class CountingLog(TinyClassifier):
    """Counts ``self.log`` calls of the loss-term core."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[str] = []

    def log(self, name, *args, **kwargs):
        if name.startswith("l2/"):
            self.logged.append(name)
        return super().log(name, *args, **kwargs)


class L2(LossTermCallback):
    default_log_prefix = "l2"

    def loss_term(self, trainer, pl_module, batch, batch_idx, outputs):
        return pl_module.net[0].weight.pow(2).sum()


def test_no_per_step_log_call():
    """Lightning's self.log costs about a small model's step: the core calls it only when it writes."""
    module = CountingLog()
    fit_tiny([L2()], module=module, max_epochs=2, max_steps=-1, log_every_n_steps=3)
    assert module.logged == [
        "l2/loss_step",  # batch 3 of 8
        "l2/loss_epoch",
        "l2/loss",
        "l2/loss_step",  # batch 6
        "l2/loss_epoch",
        "l2/loss",
    ]


def test_nan_term_stops_the_run_naming_plugin_and_step():
    rec = Recorder(name="bad", bad_at=5)
    with pytest.raises(
        FloatingPointError, match=r"Recorder\(name='bad'\): the loss term bad/loss is nan at global step 5"
    ):
        fit_tiny([rec], max_epochs=3, max_steps=-1)  # log_every_n_steps=50: caught at the end of epoch 1
    assert [s for s, _ in rec.terms] == list(range(8))  # stopped at the end of the epoch that held step 5


def test_inf_term_stops_within_log_every_n_steps():
    rec = Recorder(bad_at=2, bad=float("inf"))
    with pytest.raises(
        FloatingPointError, match=r"Recorder\(name=None\): the loss term rec/loss is inf at global step 2"
    ):
        fit_tiny([rec], max_epochs=3, max_steps=-1, log_every_n_steps=1)
    assert len(rec.terms) == 3  # stopped at that very step


class RankTerm(LossTermCallback):
    """A constant term ``rank + 1``: the epoch mean over both ranks is 1.5, each rank's own mean 1 or 2."""

    default_log_prefix = "rank"

    def loss_term(self, trainer, pl_module, batch, batch_idx, outputs):
        return torch.tensor(float(trainer.global_rank + 1))


@pytest.mark.ddp
def test_epoch_mean_is_reduced_over_ranks():
    trainer = run_ddp([RankTerm()], TinyClassifier(), TinyDataModule(), max_steps=2)
    assert float(trainer.callback_metrics["rank/loss_epoch"]) == 1.5
    assert float(trainer.callback_metrics["rank/loss"]) == 1.5


class BareProvider:
    """A LossTermProvider that does not subclass LossTermCallback: logged per step (the slow, general path)."""

    log_prefix = "bare"
    loss_term_weight = 1.0
    task_loss_scale = 1.0

    def loss_term(self, trainer, pl_module, batch, batch_idx, outputs):
        return pl_module.net[0].weight.pow(2).sum()


def test_protocol_provider_without_the_base_class():
    from lightning.pytorch.callbacks import Callback

    class Bare(BareProvider, Callback):
        pass

    class Wrapper(L2):  # installs the wrapper; the bare provider rides along
        pass

    trainer = fit_tiny([Wrapper(), Bare()], max_steps=3)
    assert {"bare/loss_step", "bare/loss_epoch", "l2/loss_epoch"} <= set(trainer.callback_metrics)
