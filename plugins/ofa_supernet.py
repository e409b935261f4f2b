"""Once-for-All elastic-depth, elastic-width MLP supernet with step-seeded subnet sampling and in-place KD."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import Tensor, nn

from litmix.base import Example
from litmix.nas.evaluation import recalibrate_bn, subnet_accuracy
from litmix.nas.ofa import depth_choices_allowed, sliced_batch_norm, width_choices_allowed
from litmix.nas.sampling import make_generator
from litmix.plugins._ofa_base import _OFAModule
from litmix.registry import register
from litmix.validation import check_bool, check_float, check_int, check_type


class _ElasticLinear(nn.Linear):
    """A linear layer whose first ``in``/``out`` features can be used alone (weight slicing, shared weights)."""

    def forward_slice(self, x: Tensor, out_features: int) -> Tensor:
        return nn.functional.linear(x, self.weight[:out_features, : x.shape[-1]], self.bias[:out_features])


class _ElasticBatchNorm1d(nn.BatchNorm1d):
    """A BatchNorm1d normalising the first ``x.shape[-1]`` features with the matching slice of its statistics."""

    def forward(self, x: Tensor) -> Tensor:
        w = x.shape[-1]
        if w == self.num_features:
            return super().forward(x)
        return sliced_batch_norm(self, x, w)


@register(
    "plugin",
    "nas",
    paper="Once-for-All: Train One Network and Specialize it for Efficient Deployment (https://arxiv.org/abs/1908.09791)",
)
class OFASupernetModule(_OFAModule):
    """Once-for-All training of an elastic-depth, elastic-width MLP: the full net and sampled subnets share weights.

    Cai et al., https://arxiv.org/abs/1908.09791. A subnet is a tuple of hidden widths, one per active layer: its
    length is the **depth** ``d`` (one of ``depth_choices``: the first ``d`` hidden layers run, the rest are
    skipped, as OFA drops the last blocks of a stage) and layer ``l`` uses the first ``round(r * hidden[l])``
    units for a **width** ratio ``r`` in ``width_ratios`` (weight slicing). The head reads the first units of
    the last active layer. Every step trains the full model (cross-entropy) and ``num_subnets`` subnets drawn
    from a generator seeded by ``(seed, global_step, k)`` (OFA's ``random.seed(f"{epoch*nBatch+i}{k:03d}000")``:
    every DDP rank draws the same subnets, and a resumed run continues the same sequence). A subnet's loss is
    ``CE + kd_ratio * KL(softmax(full / T) || softmax(sub / T)) * T^2`` with the full model's detached logits as
    the in-place teacher, scaled by ``subnet_scale``; all losses are summed into one optimizer step.

    The sampled space is controlled by :meth:`set_shrinking` (``width_lower_bound`` / ``depth_lower_bound``:
    only ratios / depths at or above them are drawn; ``subnet_scale``: weight of the subnet losses, 0 skips the
    subnets). Without a schedule the whole space is sampled from step 0 (BigNAS-style).
    :class:`litmix.callbacks.ShrinkingSchedule` sets them per step: DεpS delay, then OFA's progressive order
    depth -> width. OFA's kernel phase does not apply: an MLP has no kernels (elastic kernel size needs
    convolutions; this module keeps to MLPs so that it trains on CPU in seconds).

    With ``batchnorm=True`` every hidden layer is ``Linear -> BatchNorm1d -> ReLU`` with sliced (shared)
    BN statistics; their running statistics mix all sampled subnets, so evaluate a subnet after
    :meth:`recalibrate` (OFA's BN re-calibration on a train subset, :func:`litmix.nas.evaluation.recalibrate_bn`).
    Validation logs ``ofa/val_acc_max`` and ``ofa/val_acc_min`` (largest and smallest subnet, running
    statistics as they are).

    Args:
        in_features: input features (> 0); images are flattened.
        hidden: maximum widths of the hidden layers (each > 0).
        num_classes: classes.
        width_ratios: elastic width ratios, each in ``(0, 1]``; 1 is always added.
        depth_choices: elastic depths (numbers of hidden layers), each in ``[1, len(hidden)]``; ``len(hidden)`` is
            always added; None = fixed depth.
        batchnorm: BatchNorm1d after every hidden linear layer.
        num_subnets: subnets per step (OFA's ``dynamic_batch_size``), >= 0.
        kd_ratio: weight of the in-place distillation term (>= 0).
        kd_temperature: distillation temperature (> 0).
        lr: Adam learning rate (> 0).
        seed: base seed of the subnet sequence (>= 0).
        sandwich: make the last subnet of each step the smallest allowed one (BigNAS sandwich rule).

    Optimiser: Adam with a per-step cosine schedule over ``trainer.estimated_stepping_batches``
    (:func:`litmix.nas.schedules.cosine_lr_scheduler`). Subnets are drawn from ``(seed, global_step, k)`` and the
    shrinking bounds are a pure function of the step, so every DDP rank trains the same subnets; BatchNorm
    statistics are broadcast from rank 0 at every epoch end (:func:`litmix.nas.ddp.broadcast_buffers`). Sharded
    strategies (FSDP, DeepSpeed) are refused in ``setup``: weight slicing of shared parameters needs whole
    parameters.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for out-of-range arguments.
        MisconfigurationException: in ``setup`` under a sharded strategy (FSDP, DeepSpeed).

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> from litmix.testing import make_trainer
        >>> module, dm, _ = OFASupernetModule.example()
        >>> make_trainer(max_steps=2).fit(module, datamodule=dm)
        >>> module.sample_widths(3) == module.sample_widths(3), module.max_widths
        (True, (32, 32))
        >>> deep = OFASupernetModule(hidden=[16, 16, 16], depth_choices=[1, 2], batchnorm=True)
        >>> deep.smallest_subnet(), len(deep(torch.rand(4, 64), (8, 4)))
        ((4,), 4)
    """

    def __init__(
        self,
        in_features: int = 64,
        hidden: list[int] | None = None,
        num_classes: int = 10,
        width_ratios: list[float] | None = None,
        depth_choices: list[int] | None = None,
        batchnorm: bool = False,
        num_subnets: int = 2,
        kd_ratio: float = 1.0,
        kd_temperature: float = 1.0,
        lr: float = 3e-3,
        seed: int = 0,
        sandwich: bool = True,
    ) -> None:
        name = type(self).__name__
        check_int(name, "in_features", in_features, low=1)
        check_int(name, "num_classes", num_classes, low=1)
        for arg, value in (("hidden", hidden), ("width_ratios", width_ratios), ("depth_choices", depth_choices)):
            check_type(name, arg, value, (list, tuple), allow_none=True)
        hidden = list(hidden) if hidden is not None else [128, 128]
        if not hidden:
            raise ValueError(f"{name}(hidden={hidden!r}): hidden must list at least one width")
        for h in hidden:
            check_int(name, "hidden", h, low=1)
        for r in width_ratios if width_ratios is not None else []:
            check_float(name, "width_ratios", r, low=0.0, high=1.0, low_open=True)
        for d in depth_choices or []:
            check_int(name, "depth_choices", d, low=1, high=len(hidden))
        ratios = sorted({float(r) for r in (width_ratios if width_ratios is not None else [0.25, 0.5, 0.75])} | {1.0})
        depths = sorted({int(d) for d in (depth_choices or [])} | {len(hidden)})
        check_bool(name, "batchnorm", batchnorm)
        check_int(name, "num_subnets", num_subnets, low=0)
        self._check_training_args(name, kd_ratio, kd_temperature, lr, seed, sandwich)
        super().__init__()
        self.save_hyperparameters()
        dims = [in_features, *hidden]
        self.layers = nn.ModuleList(_ElasticLinear(a, b) for a, b in itertools.pairwise(dims))
        self.norms = nn.ModuleList(_ElasticBatchNorm1d(h) if batchnorm else nn.Identity() for h in hidden)
        self.head = _ElasticLinear(max(hidden), num_classes)
        self.hidden, self.width_ratios, self.depth_choices = hidden, ratios, depths
        self.num_classes, self.batchnorm = num_classes, batchnorm
        self.num_subnets, self.kd_ratio, self.kd_temperature = num_subnets, kd_ratio, kd_temperature
        self.lr, self.seed, self.sandwich = lr, seed, sandwich
        self.width_lower_bound = min(ratios)
        self.depth_lower_bound = min(depths)
        self.subnet_scale = 1.0
        self.sampled_log: list[tuple[int, float, tuple[int, ...]]] = []  # (step, lower bound, widths); last 10k

    @classmethod
    def example(cls) -> Example:
        """A 2x32 elastic MLP on 64 flattened digits."""
        from litmix.datamodules.digits import DigitsDataModule

        return Example(cls(hidden=[32, 32], lr=1e-2), DigitsDataModule(batch_size=16, train_size=64), [])

    _shard_why = "weight slicing of the shared layers needs whole parameters"

    @property
    def max_widths(self) -> tuple[int, ...]:
        """Widths of the full model."""
        return tuple(self.hidden)

    @property
    def min_width_ratio(self) -> float:
        """The smallest ratio of the space."""
        return min(self.width_ratios)

    @property
    def min_depth(self) -> int:
        """The smallest depth of the space."""
        return min(self.depth_choices)

    @property
    def max_depth(self) -> int:
        """The depth of the full model."""
        return len(self.hidden)

    def set_shrinking(
        self, width_lower_bound: float, subnet_scale: float, depth_lower_bound: int | None = None
    ) -> None:
        """Restrict sampling to ratios >= ``width_lower_bound`` (and depths >= ``depth_lower_bound`` when given).

        ``subnet_scale`` weights the subnet losses.
        """
        self.width_lower_bound, self.subnet_scale = float(width_lower_bound), float(subnet_scale)
        if depth_lower_bound is not None:
            self.depth_lower_bound = int(depth_lower_bound)

    def widths_of(self, ratios: list[float] | tuple[float, ...]) -> tuple[int, ...]:
        """Widths of the first ``len(ratios)`` layers for per-layer ratios (the subnet of depth ``len(ratios)``)."""
        if not 1 <= len(ratios) <= len(self.hidden):
            raise ValueError(f"widths_of: need 1 to {len(self.hidden)} ratios, got {len(ratios)}")
        return tuple(max(1, round(r * h)) for r, h in zip(ratios, self.hidden[: len(ratios)], strict=True))

    def smallest_subnet(self) -> tuple[int, ...]:
        """The subnet of minimum depth and minimum width."""
        return self.widths_of([self.min_width_ratio] * self.min_depth)

    def _smallest(self) -> tuple[int, ...]:
        return self.smallest_subnet()

    def _space_open(self) -> bool:
        return self.width_lower_bound < 1.0 or self.depth_lower_bound < self.max_depth

    def sample_widths(self, step: int, k: int = 0) -> tuple[int, ...]:
        """Subnet ``k`` at ``step``: depth among depths >= ``depth_lower_bound``, ratios >= ``width_lower_bound``.

        With ``sandwich`` the last subnet (``k = num_subnets - 1``) is the smallest allowed one. The depth is
        drawn (first) only when more than one depth is allowed.
        """
        allowed = width_choices_allowed(self.width_ratios, self.width_lower_bound)
        depths = depth_choices_allowed(self.depth_choices, self.depth_lower_bound)
        if self.sandwich and k == self.num_subnets - 1:
            return self.widths_of([allowed[0]] * depths[0])
        gen = make_generator(self.seed, step, k)
        depth = depths[int(torch.randint(len(depths), (1,), generator=gen))] if len(depths) > 1 else depths[-1]
        picks = torch.randint(len(allowed), (depth,), generator=gen).tolist()
        return self.widths_of([allowed[i] for i in picks])

    def forward(self, x: Tensor, widths: tuple[int, ...] | None = None) -> Tensor:
        """Logits of the subnet with hidden ``widths`` (one per active layer; the full model when None)."""
        h = x.flatten(1)
        widths = widths or self.max_widths
        for layer, norm, w in zip(self.layers[: len(widths)], self.norms[: len(widths)], widths, strict=True):
            assert isinstance(layer, _ElasticLinear)
            h = torch.relu(norm(layer.forward_slice(h, w)))
        return self.head.forward_slice(h, self.num_classes)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Full model + ``num_subnets`` step-seeded subnets with in-place distillation, one summed loss."""
        x, y, full_logits, loss = self._full_loss(batch)
        step = self.global_step
        if self.subnet_scale > 0 and self._space_open():
            teacher = self._kd_teacher(full_logits)
            for k in range(self.num_subnets):
                widths = self.sample_widths(step, k)
                self.sampled_log.append((step, self.width_lower_bound, widths))
                loss = loss + self.subnet_scale * self._subnet_loss(x, y, widths, teacher) / max(self.num_subnets, 1)
        else:
            self.sampled_log.append((step, self.width_lower_bound, self.max_widths))
        del self.sampled_log[:-10_000]
        self.log("ofa/width_lower_bound", self.width_lower_bound)
        self.log("ofa/depth_lower_bound", float(self.depth_lower_bound))
        self.log("ofa/loss", loss)
        return loss

    def recalibrate(self, widths: tuple[int, ...] | None, dataloader: Any, num_batches: int = 10) -> int:
        """Re-estimate the BN statistics for subnet ``widths`` on ``num_batches`` train batches (OFA).

        The shared running statistics are overwritten (their first ``widths[l]`` entries per layer): call it
        before evaluating each subnet. Without BatchNorm it does nothing and returns 0.
        """
        if not self.batchnorm:
            return 0
        return recalibrate_bn(self, dataloader, num_batches, forward=lambda x: self(x, widths))

    def subnet_accuracy(self, widths: tuple[int, ...] | None, dataloader: Any) -> float:
        """Accuracy of one subnet on ``dataloader`` (eval mode: BN uses the current running statistics).

        See :func:`litmix.nas.evaluation.subnet_accuracy`.
        """
        return subnet_accuracy(self, dataloader, forward=lambda x: self(x, widths))
