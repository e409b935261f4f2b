"""A one-hidden-layer network trained stage by stage with gradient boosting (Emami & Martínez-Muñoz 2023)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from litmix.base import Example, LitmixModule
from litmix.data import split_batch
from litmix.registry import register
from litmix.validation import check_float, check_int

_PAPER = "Sequential Training of Neural Networks with Gradient Boosting (https://arxiv.org/abs/1909.12098)"


@register("plugin", "optimization", paper=_PAPER)
class GradientBoostedNetwork(LitmixModule):
    """A classifier ``x -> b + sum_t nu * V_t relu(W_t x + c_t)`` whose hidden units are trained in stages.

    Emami and Martínez-Muñoz, "Sequential Training of Neural Networks with Gradient Boosting" (2023,
    https://arxiv.org/abs/1909.12098). A network with one hidden layer is an additive expansion over its hidden
    units, so it can be trained like gradient boosting: the output bias starts at the log class frequencies
    (the constant that minimises the cross-entropy), then stage ``t`` trains ``units`` new hidden units and their
    output weights, for ``steps_per_stage`` optimizer steps, to fit the pseudo-residuals ``onehot(y) -
    softmax(F_{t-1}(x))`` (the negative gradient of the cross-entropy at the current ensemble) by squared error,
    and adds them with shrinkage ``nu``. Earlier stages are frozen. The result is one network with
    ``stages * units`` hidden units; because each stage only corrects the previous ones, the last-trained units
    can be switched off at test time (``forward(x, stages=k)``) for a faster, slightly less accurate model.

    The stage follows ``global_step // steps_per_stage``, so a resumed run continues in the right stage;
    after the last stage the module stops training (``trainer.should_stop``). Blocks other than the current one
    have ``requires_grad=False``, so the optimizer skips them (their Adam state stays as it was); under DDP use
    ``strategy="ddp_find_unused_parameters_true"``. Logs ``boost/residual_mse``,
    ``boost/stage`` and, with validation data, ``val/acc`` and ``val/loss``.

    Args:
        in_features: input features, >= 1.
        num_classes: classes, >= 2.
        stages: boosting stages ``T``, >= 1.
        units: hidden units per stage ``J``, >= 1.
        shrinkage: ``nu``, in (0, 1].
        steps_per_stage: optimizer steps per stage, >= 1.
        lr: Adam learning rate, > 0.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for a value outside its range, naming it.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, _ = GradientBoostedNetwork.example()
        >>> trainer = fit_tiny(module=module, datamodule=datamodule, max_steps=20)
        >>> module.stage, len(module.blocks)  # 4 stages of 3 units, 5 steps each: the last stage is done
        (4, 4)
    """

    bias: Tensor
    prior_set: Tensor

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        stages: int = 4,
        units: int = 16,
        shrinkage: float = 1.0,
        steps_per_stage: int = 300,
        lr: float = 0.01,
    ) -> None:
        owner = type(self).__name__
        in_features = check_int(owner, "in_features", in_features, low=1)
        num_classes = check_int(owner, "num_classes", num_classes, low=2)
        stages = check_int(owner, "stages", stages, low=1)
        units = check_int(owner, "units", units, low=1)
        shrinkage = check_float(owner, "shrinkage", shrinkage, low=0.0, high=1.0, low_open=True)
        steps_per_stage = check_int(owner, "steps_per_stage", steps_per_stage, low=1)
        lr = check_float(owner, "lr", lr, low=0.0, low_open=True)
        super().__init__()
        self.save_hyperparameters()
        self.stages, self.units, self.shrinkage = stages, units, shrinkage
        self.steps_per_stage, self.lr = steps_per_stage, lr
        self.num_classes = num_classes
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(in_features, units), nn.ReLU(), nn.Linear(units, num_classes, bias=False))
            for _ in range(stages)
        )
        self.register_buffer("bias", torch.zeros(num_classes))
        self.register_buffer("prior_set", torch.zeros((), dtype=torch.bool))

    @classmethod
    def example(cls) -> Example:
        """4 stages of 3 units on :class:`litmix.testing.TinyDataModule` (8 features, 4 classes)."""
        from litmix.testing import TinyDataModule

        return Example(cls(8, 4, stages=4, units=3, steps_per_stage=5, lr=0.05), TinyDataModule(), [])

    @property
    def stage(self) -> int:
        """The stage being trained (``stages`` once training is complete)."""
        return min(self.stages, self.global_step // self.steps_per_stage) if self._trainer is not None else 0

    def forward(self, x: Tensor, stages: int | None = None) -> Tensor:
        """Logits of the first ``stages`` stages (all by default)."""
        k = self.stages if stages is None else stages
        out = self.bias.expand(x.shape[0], -1)
        for block in list(self.blocks)[:k]:
            out = out + self.shrinkage * block(x)
        return out

    def _freeze_all_but(self, t: int) -> None:
        for i, block in enumerate(self.blocks):
            block.requires_grad_(i == t)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        """Set the prior bias once; train only the current stage's block; stop after the last stage."""
        if not bool(self.prior_set):
            _, y, _ = split_batch(batch)
            assert y is not None, "GradientBoostedNetwork needs (x, y) batches"
            counts = torch.bincount(y, minlength=self.num_classes).float() + 1.0
            if self.trainer.world_size > 1:
                counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
            self.bias.copy_(counts.log() - counts.log().mean())
            self.prior_set.fill_(True)
        if self.stage >= self.stages:
            self.trainer.should_stop = True
            return -1
        self._freeze_all_but(self.stage)
        return None

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Fit stage ``t``'s units to the pseudo-residuals of stages ``< t``."""
        x, y, _ = split_batch(batch)
        assert y is not None, "GradientBoostedNetwork needs (x, y) batches"
        t = self.stage
        with torch.no_grad():
            residual = nn.functional.one_hot(y, self.num_classes).float() - self(x, stages=t).softmax(-1)
        loss = nn.functional.mse_loss(self.shrinkage * self.blocks[t](x), residual)
        self.log("boost/residual_mse", loss, prog_bar=True)
        self.log("boost/stage", float(t))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Validation accuracy and loss of the stages trained so far."""
        x, y, _ = split_batch(batch)
        assert y is not None, "GradientBoostedNetwork needs (x, y) batches"
        logits = self(x, stages=max(1, self.stage))
        self.log("val/acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True, sync_dist=True)
        self.log("val/loss", nn.functional.cross_entropy(logits, y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over every block; frozen blocks get no gradient, so the optimizer skips them exactly."""
        return torch.optim.Adam(self.parameters(), lr=self.lr)
