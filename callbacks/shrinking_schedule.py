"""DεpS: delayed, gradual shrinking of a Once-for-All supernet's sampled space."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from litmix.base import Example, LitmixCallback
from litmix.nas.deps import deps_subnet_lr_scale
from litmix.nas.ofa import ofa_progressive_bounds
from litmix.nas.schedules import training_progress
from litmix.registry import register
from litmix.validation import check_choice, check_float


@register(
    "callback",
    "nas",
    paper="DεpS: Delayed ε-Shrinking for Faster Once-For-All Training (https://arxiv.org/abs/2407.06167)",
)
class ShrinkingSchedule(LitmixCallback):
    """Delay subnet sampling until the full model is partly trained, then grow the space and ramp subnet LRs.

    Annavajjala, Khare et al., https://arxiv.org/abs/2407.06167. With ``progress = global_step /
    trainer.estimated_stepping_batches`` (:func:`litmix.nas.schedules.training_progress`; ``epoch / max_epochs``
    when the step count is unknown), before every training batch the callback calls
    ``pl_module.set_shrinking(width_lower_bound, subnet_scale[, depth_lower_bound])``:

    - **delayed shrinking (FM-Warmup)**: before ``start_frac`` (default 0.5) the lower bound is 1 and the
      subnet scale 0: only the full model trains;
    - the sampled space then grows monotonically over a further ``grow_frac`` of training (0 opens the whole
      space at once). For a module with elastic depth (``min_depth < max_depth``) and ``order="progressive"``
      this follows Once-for-All's progressive shrinking (full -> kernel -> depth -> width; the module has no
      kernel phase): the depth lower bound falls from ``max_depth`` to ``min_depth`` in the first half of the
      window, then the width lower bound falls linearly from 1 to ``min_width_ratio`` in the second half
      (:func:`~litmix.nas.ofa.ofa_progressive_bounds`). ``order="joint"`` opens both over the
      whole window; with a fixed depth the width uses the whole window;
    - **ε-shrinking**: the subnets' loss weight (equal to a learning-rate factor for SGD) ramps from
      ``eps_start`` to 1 over ``eps_frac`` of training, so small subnets do not disrupt the full model.

    The schedule is a pure function of ``global_step``, so it needs no checkpoint state and is identical on all
    ranks. The module must provide ``set_shrinking(float, float)`` and ``min_width_ratio`` (as
    :class:`litmix.plugins.OFASupernetModule` does), and ``min_depth``/``max_depth`` with a third
    ``depth_lower_bound`` argument of ``set_shrinking`` for elastic depth. Logs ``<prefix>/width_lower_bound``,
    ``<prefix>/depth_lower_bound`` and ``<prefix>/subnet_scale`` to every logger, ``<prefix>`` being ``name`` or
    ``"deps"``.
    DεpS's third component (in-place distillation from the partly trained full model) is the module's
    ``kd_ratio``.

    Args:
        start_frac: fraction of training before shrinking starts, in ``[0, 1]``.
        grow_frac: fraction of training over which the space grows to its full size, >= 0.
        eps_frac: length of the subnet learning-rate ramp, >= 0.
        eps_start: subnet scale when shrinking starts, in ``[0, 1]``.
        order: ``"progressive"`` (depth, then width) or ``"joint"`` (both together).
        name: prefix of the logged keys and of the checkpoint key (default ``"deps"``).

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for out-of-range arguments or an unknown ``order``; at the first batch, when the run's
            length is unknown.
        MisconfigurationException: in ``setup`` when the module lacks ``set_shrinking`` / ``min_width_ratio``.

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> from litmix.testing import make_trainer
        >>> module, dm, callbacks = ShrinkingSchedule.example()
        >>> make_trainer(max_steps=8, callbacks=callbacks).fit(module, datamodule=dm)
        >>> module.sampled_log[-1][1] < 1.0  # the space has opened by the last step
        True
        >>> [lb for step, lb, _ in module.sampled_log if step < 4] == [1.0] * 4
        True
    """

    default_log_prefix = "deps"

    def __init__(
        self,
        start_frac: float = 0.5,
        grow_frac: float = 0.25,
        eps_frac: float = 0.25,
        eps_start: float = 0.1,
        order: Literal["progressive", "joint"] = "progressive",
        name: str | None = None,
    ) -> None:
        cls = type(self).__name__
        check_float(cls, "start_frac", start_frac, low=0.0, high=1.0)
        check_float(cls, "grow_frac", grow_frac, low=0.0)
        check_float(cls, "eps_frac", eps_frac, low=0.0)
        check_float(cls, "eps_start", eps_start, low=0.0, high=1.0)
        check_choice(cls, "order", order, ("progressive", "joint"))
        super().__init__(name=name)
        self.order = order
        self.start_frac, self.grow_frac = float(start_frac), float(grow_frac)
        self.eps_frac, self.eps_start = float(eps_frac), float(eps_start)

    @classmethod
    def example(cls) -> Example:
        """The DεpS defaults (shrinking from mid-run) on a tiny :class:`~litmix.plugins.OFASupernetModule`.

        The module is imported lazily: callbacks import only the core at module level.
        """
        from litmix.plugins.ofa_supernet import OFASupernetModule
        from litmix.testing import TinyDataModule

        module = OFASupernetModule(in_features=8, hidden=[16, 16], num_classes=4, lr=1e-2)
        return Example(module, TinyDataModule(), [cls(start_frac=0.5)])

    def _state_key_fields(self) -> dict[str, Any]:
        """Two unnamed instances differ by their schedule."""
        return {
            "start_frac": self.start_frac,
            "grow_frac": self.grow_frac,
            "eps_frac": self.eps_frac,
            "eps_start": self.eps_start,
            "order": self.order,
        }

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check that the module is an elastic supernet."""
        super().setup(trainer, pl_module, stage)
        if not callable(getattr(pl_module, "set_shrinking", None)) or not hasattr(pl_module, "min_width_ratio"):
            raise MisconfigurationException(
                f"ShrinkingSchedule needs a module with set_shrinking(width_lower_bound, subnet_scale) and "
                f"min_width_ratio (e.g. litmix.plugins.OFASupernetModule); got {type(pl_module).__name__}"
            )

    def values(self, progress: float, min_ratio: float) -> tuple[float, float]:
        """``(width_lower_bound, subnet_scale)`` at ``progress`` for a fixed-depth module."""
        lower = ofa_progressive_bounds(progress, self.start_frac, self.grow_frac, min_ratio)[1]
        scale = deps_subnet_lr_scale(progress, self.start_frac, self.eps_frac, self.eps_start)
        return lower, scale

    def bounds(self, progress: float, min_ratio: float, min_depth: int, max_depth: int) -> tuple[int, float, float]:
        """``(depth_lower_bound, width_lower_bound, subnet_scale)`` at ``progress``."""
        depth, lower = ofa_progressive_bounds(
            progress, self.start_frac, self.grow_frac, min_ratio, min_depth, max_depth, self.order
        )
        return depth, lower, deps_subnet_lr_scale(progress, self.start_frac, self.eps_frac, self.eps_start)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Set the sampled space and the subnet scale for this step."""
        progress = training_progress(trainer, type(self).__name__)
        max_depth = int(getattr(pl_module, "max_depth", 1))
        min_depth = int(getattr(pl_module, "min_depth", max_depth))
        depth, lower, scale = self.bounds(progress, float(pl_module.min_width_ratio), min_depth, max_depth)  # type: ignore[arg-type]
        if min_depth < max_depth:
            pl_module.set_shrinking(lower, scale, depth)  # type: ignore[operator]
            pl_module.log(f"{self.log_prefix}/depth_lower_bound", float(depth))
        else:
            pl_module.set_shrinking(lower, scale)  # type: ignore[operator]
        pl_module.log(f"{self.log_prefix}/width_lower_bound", lower)
        pl_module.log(f"{self.log_prefix}/subnet_scale", scale)
