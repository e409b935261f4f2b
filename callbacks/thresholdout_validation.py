"""A validation metric answered through Thresholdout, so model selection can reuse the holdout (Dwork et al. 2015)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch

from litmix.base import Example, LitmixCallback
from litmix.data import split_batch
from litmix.metrics.thresholdout import Thresholdout
from litmix.registry import register
from litmix.testing import TinyClassifier
from litmix.validation import check_float, check_int, check_str

_PAPER = (
    "The reusable holdout: Preserving validity in adaptive data analysis (Dwork et al., Science 2015; "
    "https://arxiv.org/abs/1506.02629)"
)


class _TrainAccClassifier(TinyClassifier):
    """:class:`litmix.testing.TinyClassifier` that also logs ``train/acc`` per epoch (the example's module)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Cross-entropy; logs the training accuracy per epoch."""
        x, y, _ = split_batch(batch)
        assert y is not None, "needs (x, y) batches"
        logits = self(x)
        self.log("train/acc", (logits.argmax(-1) == y).float().mean(), on_step=False, on_epoch=True)
        return torch.nn.functional.cross_entropy(logits, y)


@register("callback", "optimization", paper=_PAPER)
class ThresholdoutValidation(LitmixCallback):
    """Publish a validation metric through :class:`litmix.metrics.Thresholdout` at the end of every training epoch.

    Dwork et al., "The reusable holdout: Preserving validity in adaptive data analysis", Science 2015
    (https://arxiv.org/abs/1506.02629). Every choice made by looking at ``monitor`` (early stopping, keeping
    the best checkpoint, trying another learning rate) adapts to the validation set, which then overestimates
    the model. This callback answers each epoch's validation result with Thresholdout instead: the value of
    ``train_metric`` while the two agree within a noisy threshold, the validation value plus Laplace noise (one
    unit of ``budget``) when they do not. It answers in ``on_train_epoch_end``, the first hook where Lightning
    holds both the epoch's training aggregate and its validation value (validation runs before the training
    epoch's metrics are reduced), and only when a validation run happened since the last answer. The answer is
    put into ``trainer.callback_metrics`` under ``<prefix>/<monitor>`` (default prefix ``thresholdout``) and
    sent to every logger with ``<prefix>/budget_left``, so
    ``ModelCheckpoint(monitor="thresholdout/val/acc", save_on_train_epoch_end=True)`` or
    ``EarlyStopping(..., check_on_train_epoch_end=True)`` select on it (Lightning runs those callbacks after this
    one). Both metrics must be logged per epoch with the same meaning (e.g. ``train/acc`` with
    ``on_epoch=True`` and ``val/acc``). The answer is computed on rank 0 and broadcast with the Thresholdout
    state (budget left, threshold, noise generator), which is checkpointed.

    Args:
        monitor: the validation metric to protect.
        train_metric: the same statistic on the training data.
        threshold: Thresholdout's ``T``, > 0.
        sigma: Laplace noise scale, >= 0.
        budget: overfitting answers before the holdout is used up (then the answer is ``nan``), >= 1.
        seed: seed of the noise, >= 0.
        name: optional instance name (checkpoint key and log prefix).

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value outside its range, naming it.
        KeyError: at the end of an epoch with a validation run, when ``monitor`` or ``train_metric`` was not
            logged, naming the metrics that were.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, (cb,) = ThresholdoutValidation.example()
        >>> trainer = fit_tiny([cb], module=module, datamodule=datamodule, max_steps=4, limit_val_batches=1.0)
        >>> "thresholdout/val/acc" in trainer.callback_metrics
        True
    """

    default_log_prefix: ClassVar[str] = "thresholdout"

    def __init__(
        self,
        monitor: str = "val/acc",
        train_metric: str = "train/acc",
        threshold: float = 0.04,
        sigma: float = 0.01,
        budget: int = 100,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        owner = type(self).__name__
        self.monitor = check_str(owner, "monitor", monitor, allow_empty=False)
        self.train_metric = check_str(owner, "train_metric", train_metric, allow_empty=False)
        check_float(owner, "threshold", threshold, low=0.0, low_open=True)
        check_float(owner, "sigma", sigma, low=0.0)
        check_int(owner, "budget", budget, low=1)
        check_int(owner, "seed", seed, low=0)
        super().__init__(name=name)
        self.holdout = Thresholdout(threshold=threshold, sigma=sigma, budget=budget, seed=seed)
        self.answers: list[float] = []
        self._validated = False  # a validation run happened since the last answer

    @classmethod
    def example(cls) -> Example:
        """:class:`litmix.testing.TinyClassifier` logging ``train/acc`` beside ``val/acc``."""
        from litmix.testing import TinyDataModule

        return Example(_TrainAccClassifier(), TinyDataModule(), [cls()])

    def _state_key_fields(self) -> dict[str, Any]:
        return {"monitor": self.monitor}

    @property
    def key(self) -> str:
        """The metric name of the answers: ``<prefix>/<monitor>``."""
        return f"{self.log_prefix}/{self.monitor}"

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Note that a validation run happened (sanity checks do not count)."""
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Answer the epoch's validation result through Thresholdout and publish the answer."""
        if not self._validated:
            return
        self._validated = False
        metrics = trainer.callback_metrics
        missing = [m for m in (self.monitor, self.train_metric) if m not in metrics]
        if missing:
            raise KeyError(
                f"{type(self).__name__}: metric(s) {missing} were not logged; logged: {sorted(metrics)} "
                "(log the training statistic per epoch, e.g. self.log('train/acc', acc, on_epoch=True))"
            )
        answer = math.nan
        if trainer.is_global_zero:
            answer = self.holdout.query(float(metrics[self.train_metric]), float(metrics[self.monitor]))
        answer, state = trainer.strategy.broadcast((answer, self.holdout.state_dict()), src=0)
        self.holdout.load_state_dict(state)  # every rank holds rank 0's budget, threshold and generator
        self.answers.append(float(answer))
        metrics[self.key] = torch.tensor(float(answer))
        logged = {self.key: float(answer), f"{self.log_prefix}/budget_left": float(self.holdout.budget_left)}
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        """The Thresholdout state and the answers given."""
        return {
            **super().state_dict(),
            "holdout": self.holdout.state_dict(),
            "answers": list(self.answers),
            "validated": self._validated,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state_dict)
        self.holdout.load_state_dict(state_dict["holdout"])
        self.answers = list(state_dict["answers"])
        self._validated = bool(state_dict.get("validated", False))
