"""The shell shared by the Once-for-All supernets. Private: not a plugin.

Used by :class:`OFASupernetModule <litmix.plugins.OFASupernetModule>` and
:class:`OFAConvSupernetModule <litmix.plugins.OFAConvSupernetModule>`: the largest network's loss, the in-place
distillation loss of one subnet, validation of the largest and the smallest subnet, the BatchNorm broadcast at
epoch end, the sharded-strategy refusal and Adam with a cosine schedule.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from litmix._sharded import refuse_sharded_strategy
from litmix.base import LitmixModule
from litmix.data import split_batch
from litmix.nas.ddp import broadcast_buffers
from litmix.nas.schedules import cosine_lr_scheduler
from litmix.validation import check_bool, check_float, check_int


class _OFAModule(LitmixModule):
    """Base of the OFA supernets: ``self(x, subnet)`` runs one subnet (the largest when ``subnet`` is None).

    Subclasses set ``kd_ratio``, ``kd_temperature`` and ``lr``, the class variables ``_shard_why`` /
    ``_shard_instead`` (the sharded-strategy refusal) and implement :meth:`_smallest` (the smallest subnet).
    """

    kd_ratio: float
    kd_temperature: float
    lr: float
    #: why sharded strategies are refused, and what to use instead
    _shard_why: ClassVar[str]
    _shard_instead: ClassVar[str] = "strategy='ddp'"

    @staticmethod
    def _check_training_args(
        name: str, kd_ratio: float, kd_temperature: float, lr: float, seed: int, sandwich: bool
    ) -> None:
        """``kd_ratio`` >= 0, ``kd_temperature`` and ``lr`` > 0, ``seed`` >= 0, ``sandwich`` a bool."""
        check_float(name, "kd_ratio", kd_ratio, low=0.0)
        check_float(name, "kd_temperature", kd_temperature, low=0.0, low_open=True)
        check_float(name, "lr", lr, low=0.0, low_open=True)
        check_int(name, "seed", seed, low=0)
        check_bool(name, "sandwich", sandwich)

    def setup(self, stage: str) -> None:
        """Refuse sharded strategies: weight slicing of the shared layers needs whole parameters."""
        refuse_sharded_strategy(type(self).__name__, self.trainer.strategy, self._shard_why, self._shard_instead)

    def _smallest(self) -> Any:
        raise NotImplementedError

    def _full_loss(self, batch: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x, y, logits, loss)`` of the largest network on ``batch`` (cross-entropy, logged as ``ofa/full_loss``)."""
        x, y, _ = split_batch(batch)
        assert y is not None, f"{type(self).__name__} needs (x, y) batches"
        full_logits = self(x)
        loss = nn.functional.cross_entropy(full_logits, y)
        self.log("ofa/full_loss", loss, prog_bar=True)
        return x, y, full_logits, loss

    def _kd_teacher(self, full_logits: Tensor) -> Tensor:
        """The in-place teacher: log-softmax of the largest network's detached logits at ``kd_temperature``."""
        return torch.log_softmax(full_logits.detach() / self.kd_temperature, dim=-1)

    def _subnet_loss(self, x: Tensor, y: Tensor, subnet: Any, teacher: Tensor) -> Tensor:
        """``CE + kd_ratio * KL(teacher || softmax(sub / T)) * T^2`` of ``subnet`` on ``(x, y)``."""
        logits = self(x, subnet)
        sub = nn.functional.cross_entropy(logits, y)
        if self.kd_ratio > 0:
            t = self.kd_temperature
            student = torch.log_softmax(logits / t, dim=-1)
            kd = nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean") * t * t
            sub = sub + self.kd_ratio * kd
        return sub

    def on_train_epoch_end(self) -> None:
        """Broadcast rank 0's BatchNorm statistics, so every DDP rank ends the epoch with the same state."""
        broadcast_buffers(self)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Accuracy of the largest and the smallest subnet (running BN statistics as they are)."""
        x, y, _ = split_batch(batch)
        self.log("ofa/val_acc_max", (self(x).argmax(-1) == y).float().mean())
        self.log("ofa/val_acc_min", (self(x, self._smallest()).argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        """Adam with a per-step cosine schedule (:func:`litmix.nas.schedules.cosine_lr_scheduler`)."""
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        return {"optimizer": opt, "lr_scheduler": cosine_lr_scheduler(opt, self.trainer, type(self).__name__)}
