"""Dynamic sparse training (RigL / SET) at a fixed parameter budget, as a Lightning callback."""

from __future__ import annotations

from typing import ClassVar, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from litmix.base import Example
from litmix.functional.sparsity import erk_densities, prune_and_grow, random_masks
from litmix.registry import register
from litmix.sparsity._callback import sync_generator
from litmix.sparsity._dynamic import DynamicMaskCallback
from litmix.validation import check_choice, check_float, check_int, check_str_list

__all__ = ["DynamicSparseTraining"]

PAPER = (
    "Rigging the Lottery: Making All Tickets Winners (https://arxiv.org/abs/1911.11134); Scalable training of "
    "artificial neural networks with adaptive sparse connectivity inspired by network science "
    "(https://arxiv.org/abs/1707.04780)"
)


@register("callback", "sparsity", paper=PAPER)
class DynamicSparseTraining(DynamicMaskCallback):
    """Sparse training from scratch at a constant parameter budget: periodically drop weights and grow others.

    Implements RigL (Evci et al., "Rigging the Lottery: Making All Tickets Winners",
    https://arxiv.org/abs/1911.11134) with ``method="rigl"`` and SET (Mocanu et al., "Scalable training of
    artificial neural networks with adaptive sparse connectivity inspired by network science",
    https://arxiv.org/abs/1707.04780) with ``method="set"``:

    * At the start of fit each pruned parameter gets a uniformly random mask at its density: ``1 - sparsity``
      everywhere (``distribution="uniform"``) or the Erdős–Rényi–Kernel densities (``"erk"``, RigL's default:
      small layers denser) with the same overall budget.
    * Every ``update_every`` optimizer steps until ``end_fraction`` of the run (``T_end``), in
      ``on_before_optimizer_step`` (after gradient accumulation and AMP unscaling, while the gradient is still
      dense), each parameter drops the fraction ``zeta_t = zeta / 2 * (1 + cos(pi t / T_end))`` of its kept
      weights with the smallest ``|w|`` and grows as many inactive ones: those of largest ``|gradient|`` (RigL) or
      uniformly at random (SET). Grown weights start at 0 with fresh (zero) optimizer state; the mask's kept count
      never changes (the count of non-zero weights drifts slightly, since grown weights start at 0).
    * Decisions are made on global rank 0 and broadcast (DDP); the masks (one bit per weight), the update count
      and SET's random generator are in this callback's checkpointed state, so a resumed run makes the same
      decisions as an uninterrupted one.

    Masks are held by the shared :class:`~litmix.sparsity.MaskEngine` (non-persistent ``<param>_mask`` buffers:
    the module's checkpoint loads strictly into its own class). Between updates the cost is one in-place multiply
    per masked gradient; RigL's dense gradient is the one backprop computes anyway. Pruning does not make dense
    kernels faster.

    Logs like every litmix pruner (see :class:`~litmix.callbacks.GradualPruning`: sparsity per layer and overall
    and a per-layer image whenever a layer's sparsity changes, which at a fixed budget is when the first masks are
    drawn; final values at the end of fit), plus ``<prefix>/churn`` (fraction
    of kept weights replaced at the last update) at every mask change and ``<prefix>/updates`` at the end.
    ``<prefix>`` is ``name`` when given, else ``dst``.

    Args:
        sparsity: fraction of pruned weights over all pruned parameters, in [0, 1).
        method: ``"rigl"`` (grow by gradient magnitude) or ``"set"`` (grow at random).
        update_every: optimizer steps between mask updates (``Delta T``, >= 1).
        zeta: initial drop fraction, in (0, 1].
        end_fraction: ``T_end`` as a fraction of ``trainer.estimated_stepping_batches``, in (0, 1].
        end_step: absolute ``T_end`` in optimizer steps (>= 1); overrides ``end_fraction``.
        distribution: layer densities, ``"erk"`` or ``"uniform"``.
        parameter_names: parameters to sparsify (``named_parameters`` names); default ``None``: the weights of
            ``nn.Linear``, ``nn.Conv*``, ``nn.Bilinear``, HF ``Conv1D`` and PyG ``Linear`` layers.
        seed: seed of the initial masks and of SET's growth (>= 0).
        name: optional instance name (checkpoint key and logging prefix).

    Raises:
        ValueError: for arguments out of range (in ``__init__``) and, when fit starts, unknown parameter names, a
            module without prunable layers, or a run whose length is unknown without ``end_step``.
        TypeError: for arguments of the wrong type.
        MisconfigurationException: under manual optimization or a sharded strategy (FSDP, DeepSpeed).

    Example:
        >>> from litmix.testing import fit_tiny, TinyClassifier
        >>> model = TinyClassifier()
        >>> cb = DynamicSparseTraining(sparsity=0.5, update_every=2, distribution="uniform")
        >>> _ = fit_tiny([cb], module=model, max_steps=8)
        >>> cb.engine.sparsity_report()["global"], cb.n_updates
        (0.5, 2)
    """

    default_log_prefix: ClassVar[str] = "dst"
    state_version: ClassVar[int] = 1
    sharded_reason: ClassVar[str] = "it ranks whole parameters and regrows by dense gradients"

    def __init__(
        self,
        sparsity: float = 0.9,
        method: Literal["rigl", "set"] = "rigl",
        update_every: int = 100,
        zeta: float = 0.3,
        end_fraction: float = 0.75,
        end_step: int | None = None,
        distribution: Literal["erk", "uniform"] = "erk",
        parameter_names: list[str] | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        cls = type(self).__name__
        sparsity = check_float(cls, "sparsity", sparsity, low=0.0, high=1.0, high_open=True)
        method = check_choice(cls, "method", method, ("rigl", "set"))
        update_every = check_int(cls, "update_every", update_every, low=1)
        zeta = check_float(cls, "zeta", zeta, low=0.0, high=1.0, low_open=True)
        end_fraction = check_float(cls, "end_fraction", end_fraction, low=0.0, high=1.0, low_open=True)
        end_step = check_int(cls, "end_step", end_step, low=1, allow_none=True)
        distribution = check_choice(cls, "distribution", distribution, ("erk", "uniform"))
        parameter_names = check_str_list(cls, "parameter_names", parameter_names, what="parameter names")
        seed = check_int(cls, "seed", seed, low=0, high=2**63 - 1)
        super().__init__(
            update_every=update_every, zeta=zeta, end_fraction=end_fraction, end_step=end_step, seed=seed, name=name
        )
        self.sparsity: float = sparsity
        self.method: Literal["rigl", "set"] = method
        self.distribution: Literal["erk", "uniform"] = distribution
        self.parameter_names = parameter_names
        # resolved at setup
        self._densities: dict[str, float] = {}

    @classmethod
    def example(cls) -> Example:
        """RigL on ``TinyClassifier`` at 50 % sparsity, updating every step."""
        from litmix.testing import TinyClassifier, TinyDataModule

        return Example(
            TinyClassifier(),
            TinyDataModule(),
            [cls(sparsity=0.5, update_every=1, end_fraction=1.0, distribution="uniform")],
        )

    # ------------------------------------------------------------------ hooks
    def _on_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, names: list[str]) -> None:
        self._reset_updates()
        shapes = {n: tuple(m.shape) for n, m in self._engine.masks.items()}
        density = 1.0 - self.sparsity
        if self.distribution == "erk":
            self._densities = erk_densities(shapes, density)
        else:
            self._densities = dict.fromkeys(names, density)

    def _selection_detail(self) -> str:
        return f"; densities {self._densities}"

    def _target_sparsity(self) -> float:
        return self.sparsity

    def _prepare_masks(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Initial random masks on rank 0 (unless restored), broadcast; applied to weights and optimizer state."""
        if not self.initialized:
            shapes = {n: tuple(m.shape) for n, m in self._engine.masks.items()}
            masks = random_masks(shapes, self._densities, self._generator) if trainer.is_global_zero else {}
            self._engine.update(masks, trainer.optimizers, strategy=trainer.strategy)
            sync_generator(trainer, self._generator)
            self.initialized = True

    def _update_masks(self, trainer: pl.Trainer, step: int) -> None:
        """Prune the smallest ``|w|`` and grow as many (RigL: largest ``|gradient|``; SET: at random)."""
        fraction = self._update_fraction(step)
        new: dict[str, Tensor] = {}
        if trainer.is_global_zero:
            for n, p, mask in self._engine.parameters():
                grow = None
                if self.method == "rigl":
                    grow = p.grad if p.grad is not None else torch.zeros_like(p)
                new[n] = prune_and_grow(p, mask, fraction, grow, self._generator).cpu()
        kept = sum(int(m.sum()) for m in self._engine.masks.values())
        regrown = self._engine.update(new, trainer.optimizers, strategy=trainer.strategy)
        self._finish_update(trainer, step, sum(int(r.sum()) for r in regrown.values()), kept)
