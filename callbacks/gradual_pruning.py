"""Gradual magnitude pruning (Zhu & Gupta) as a Lightning callback."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from litmix.base import Example
from litmix.functional.sparsity import (
    cubic_sparsity,
    keeps_pruned_weights_zero,
    magnitude_masks,
)
from litmix.registry import register
from litmix.sparsity import MaskEngine
from litmix.sparsity._callback import MaskedPruningCallback, check_parameter_names
from litmix.sparsity._schedule import check_step_schedule, resolve_step_schedule
from litmix.validation import check_bool, check_choice, check_float

__all__ = ["GradualPruning"]

PAPER = (
    "To prune, or not to prune: exploring the efficacy of pruning for model compression "
    "(https://arxiv.org/abs/1710.01878)"
)


@register("callback", "sparsity", paper=PAPER)
class GradualPruning(MaskedPruningCallback):
    """Gradual magnitude pruning to an absolute target sparsity with a cubic schedule.

    Implements Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
    compression" (https://arxiv.org/abs/1710.01878): the sparsity follows
    ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3`` over optimizer steps ``t``; every
    ``every_n_steps`` steps between ``t0`` and ``t1`` the smallest-magnitude weights (globally or per layer)
    are pruned up to ``s_t`` of the pruned parameters; the mask is fixed afterwards. Masks only grow: pruned
    weights stay pruned, and masks already on the module (from an earlier fit of the same module object) are kept
    as a floor.

    **Masks.** Owned by the shared :class:`~litmix.sparsity.MaskEngine` (``callback.engine``), like every litmix
    pruner's. One bool per pruned weight (1 byte), held as *non-persistent* buffers ``<param>_mask`` on the owning
    module (``net.0.weight_mask``): they follow the module across devices but are not in its ``state_dict``, so a
    checkpoint of a pruned model loads with strict loading into the class that wrote it
    (``MyModule.load_from_checkpoint(path)``). The masks are saved in this callback's state (one bit per weight),
    so ``Trainer.fit(ckpt_path=...)`` restores every mask exactly. The pruned weights are exactly 0 in the saved
    weights; :meth:`make_permanent` only drops the buffers.

    **Engine** (one pass over each masked tensor per optimizer step). The gradients of pruned weights are zeroed
    in ``on_before_optimizer_step`` (after AMP unscaling and before clipping, so clipping norms see the sparse
    network), and first moments/momentum buffers are zeroed at newly pruned coordinates whenever the masks change.
    For the optimizers in :data:`~litmix.functional.sparsity.EXACT_OPTIMIZERS` (SGD with momentum, Nesterov and
    weight decay; Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, RMSprop, Adadelta; their ``foreach``/``fused``
    variants) a coordinate whose gradient and first moment are zero gets an exactly zero update, so pruned weights
    stay exactly 0 and momentum can never revive them without re-masking the weights. Second moments
    (``exp_avg_sq``) only scale an update that is already zero: at pruned coordinates they are set to 1 after each
    mask change and every ``refill_every`` (1000) steps, because zeros and denormals there make Adam's ``sqrt``
    several times slower on some CPUs (``benchmarks/results/pruner_step_ratios.md``). Any other optimizer
    gets its weights re-masked after every step as well. Every ``check_every_n_steps`` (500) steps the pruned
    weights are checked; if something else wrote them (another callback, a custom step), a warning says so and
    the weights are re-masked after every step from then on. Regrown coordinates (a mask going from pruned to
    kept) start from fresh (zero) optimizer state. Under DDP the masks are computed on global rank 0 and broadcast.

    Pruning does not make dense kernels faster; it saves nothing until the weights are stored sparse.

    **Default selection** (``parameter_names=None``): the ``weight`` of every ``nn.Linear``, ``nn.Conv*``,
    ``nn.Bilinear``, Hugging Face ``Conv1D`` (GPT-2 blocks), PyG ``Linear`` (inside ``GCNConv`` etc.) and timm
    layer (they subclass ``nn.Linear``/``nn.Conv2d``; ``CondConv2d`` by name); embeddings, norms and biases stay
    dense. A weight shared by several prunable layers is pruned once; a weight tied to a non-prunable layer (a
    language model's ``lm_head`` tied to its input ``Embedding``) stays dense. The chosen parameters are listed in
    an info log line at the start of fit. Explicit ``parameter_names`` may name any alias of a tied parameter.

    **Logging** (shared by every litmix pruner): ``<prefix>/sparsity`` (mask sparsity, progress bar) whenever the
    masks change and every ``Trainer(log_every_n_steps)`` steps; at every mask change every logger also gets
    ``<prefix>/sparsity`` and ``<prefix>/sparsity/<param>`` through ``log_metrics`` and a per-layer bar chart
    (``<prefix>/sparsity_per_layer`` on a ``WandbLogger``; a PNG under ``images/`` of a ``CSVLogger``'s
    ``log_dir``; skipped without matplotlib); ``<prefix>/sparsity/<param>`` at each epoch end; at the end of fit
    ``<prefix>/final_sparsity`` and ``<prefix>/final_sparsity/<param>``. ``<prefix>`` is ``name`` when given,
    else ``pruning``.

    Args:
        target_sparsity: final fraction of pruned weights ``s_f``, in [0, 1).
        initial_sparsity: sparsity ``s_i`` applied at ``t0``, in [0, ``target_sparsity``].
        start_fraction: ``t0`` as a fraction of ``trainer.estimated_stepping_batches``, in [0, 1).
        end_fraction: ``t1`` as a fraction of ``trainer.estimated_stepping_batches``, in (``start_fraction``, 1]
            (``t1`` is capped at the last step of the run).
        start_step: absolute ``t0`` (optimizer steps, >= 0); overrides ``start_fraction``.
        end_step: absolute ``t1`` (> ``start_step``); overrides ``end_fraction``. The run must reach it: fit
            raises a ``ValueError`` before the first step when ``end_step`` is not below
            ``trainer.estimated_stepping_batches``.
        every_n_steps: optimizer steps between mask updates (>= 1).
        scope: ``"global"`` (one magnitude ranking over all pruned parameters) or ``"layer"`` (each to
            the same sparsity).
        parameter_names: parameters to prune as in ``named_parameters`` (``"net.0.weight"``); default (``None``):
            see *Default selection* above.
        zero_second_moments: deprecated, no effect on training. ``True`` also zeroes second moments
            (``exp_avg_sq``, ...) at newly pruned coordinates, which only costs time (``sqrt(0)`` is slow on some
            CPUs, ``benchmarks/results/pruning.md``); it will be removed.
        name: optional instance name (checkpoint key and logging prefix).

    Raises:
        ValueError: for arguments out of range (in ``__init__``) and, when fit starts, for parameter names the
            module lacks (listing the available ones), a module without prunable layers (listing the candidate
            parameters) or a schedule that does not fit the run (naming the argument, its value and the run length).
        TypeError: for arguments of the wrong type.
        MisconfigurationException: under manual optimization or a sharded strategy (FSDP, DeepSpeed).

    Example:
        >>> from litmix.testing import fit_tiny, TinyClassifier
        >>> from litmix.functional.sparsity import sparsity_report
        >>> model = TinyClassifier()
        >>> cb = GradualPruning(target_sparsity=0.5, start_step=0, end_step=4, every_n_steps=2)
        >>> _ = fit_tiny([cb], module=model, max_steps=6)
        >>> round(sparsity_report(model)["global"], 2)
        0.5
        >>> sorted(k for k in model.state_dict() if k.endswith("_mask"))  # masks live in the callback's state
        []
        >>> GradualPruning.make_permanent(model)
        ['net.0.weight', 'net.2.weight']
    """

    default_log_prefix: ClassVar[str] = "pruning"
    state_version: ClassVar[int] = 2
    #: masks already on the module (an earlier fit of the same module object) are a floor for the schedule
    keep_existing_masks: ClassVar[bool] = True

    def __init__(
        self,
        target_sparsity: float = 0.9,
        initial_sparsity: float = 0.0,
        start_fraction: float = 0.0,
        end_fraction: float = 0.75,
        start_step: int | None = None,
        end_step: int | None = None,
        every_n_steps: int = 20,
        scope: Literal["global", "layer"] = "global",
        parameter_names: list[str] | None = None,
        zero_second_moments: bool | None = None,
        name: str | None = None,
    ) -> None:
        cls = type(self).__name__
        target_sparsity = check_float(cls, "target_sparsity", target_sparsity, low=0.0, high=1.0, high_open=True)
        initial_sparsity = check_float(cls, "initial_sparsity", initial_sparsity, low=0.0, high=target_sparsity)
        start_fraction, end_fraction, start_step, end_step, every_n_steps = check_step_schedule(
            cls, start_fraction, end_fraction, start_step, end_step, every_n_steps
        )
        scope = check_choice(cls, "scope", scope, ("global", "layer"))
        parameter_names = check_parameter_names(cls, parameter_names)
        if zero_second_moments is not None:
            check_bool(cls, "zero_second_moments", zero_second_moments)
            warnings.warn(
                f"{cls}(zero_second_moments={zero_second_moments}) is deprecated and will be removed: pruned weights "
                "get an exactly zero update whatever their second moments, so zeroing them changes nothing and only "
                "costs time (sqrt(0) is slow on some CPUs)",
                FutureWarning,
                stacklevel=2,
            )
        super().__init__(name=name)
        self.zero_second_moments: bool = bool(zero_second_moments)
        self.target_sparsity: float = target_sparsity
        self.initial_sparsity: float = initial_sparsity
        self.start_fraction: float = start_fraction
        self.end_fraction: float = end_fraction
        self.start_step: int | None = start_step
        self.end_step: int | None = end_step
        self.every_n_steps: int = every_n_steps
        self.scope: Literal["global", "layer"] = scope
        self.parameter_names = parameter_names
        # state (checkpointed, with last_applied_step and the engine's masks)
        self.last_update_step: int = -1
        self.current_sparsity: float = 0.0
        # resolved at fit start (not checkpointed: derived from the Trainer)
        self._t0: int = 0
        self._t1: int = 1

    @classmethod
    def example(cls) -> Example:
        """Prunes ``TinyClassifier`` to 50 % during the first half of the run, updating every step."""
        from litmix.testing import TinyClassifier, TinyDataModule

        return Example(
            TinyClassifier(),
            TinyDataModule(),
            [cls(target_sparsity=0.5, start_fraction=0.0, end_fraction=0.5, every_n_steps=1)],
        )

    # ------------------------------------------------------------------ helpers
    def _params(self, pl_module: pl.LightningModule) -> list[tuple[str, nn.Parameter, Tensor]]:
        params = dict(pl_module.named_parameters())
        return [(n, params[n], self._masks[n]) for n in self._names]

    @property
    def _param_refs(self) -> dict[str, nn.Parameter]:
        return self._engine._params

    def _is_update_step(self, step: int) -> bool:
        if step < self._t0 or step <= self.last_update_step:
            return False
        if step <= self._t1:
            return (step - self._t0) % self.every_n_steps == 0 or step == self._t1
        return self.current_sparsity < self.target_sparsity  # t1 missed (e.g. resumed past it): catch up once

    def _target_sparsity(self) -> float:
        return self.target_sparsity

    def _on_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, names: list[str]) -> None:
        # a fresh fit starts the schedule afresh; on resume the checkpointed state is loaded after setup
        self.last_update_step, self.current_sparsity = -1, 0.0

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Resolve the schedule in optimizer steps; refuse one that the run does not reach."""
        self._t0, self._t1 = resolve_step_schedule(
            type(self).__name__,
            trainer,
            self.start_fraction,
            self.end_fraction,
            self.start_step,
            self.end_step,
            shortfall=lambda last: (
                f"the schedule would stop at {self._sparsity_reached(last):.4f} instead of "
                f"target_sparsity={self.target_sparsity}"
            ),
        )

    def _sparsity_reached(self, last: int) -> float:
        t0 = self.start_step if self.start_step is not None else 0
        t1 = self.end_step if self.end_step is not None else t0 + 1
        if last < t0:
            return 0.0
        done = t0 + (last - t0) // self.every_n_steps * self.every_n_steps
        return cubic_sparsity(done, t0, max(t1, t0 + 1), self.initial_sparsity, self.target_sparsity)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Apply the (possibly restored) masks to weights and first moments; pick the masking engine."""
        super().on_train_start(trainer, pl_module)
        inexact = [type(o).__name__ for o in trainer.optimizers if not keeps_pruned_weights_zero(o)]
        engine = (
            f"gradients and weights masked every step ({', '.join(inexact)} is not known to keep zeros at zero)"
            if inexact
            else "gradients masked every step"
        )
        rank_zero_info(
            f"{type(self).__name__}: {self.scope} magnitude pruning {self.initial_sparsity:.3f} -> "
            f"{self.target_sparsity:.3f} over steps {self._t0}..{self._t1} every {self.every_n_steps}; {engine}"
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """At scheduled steps: new masks on rank 0, broadcast, applied to weights and optimizer state."""
        step = trainer.global_step
        if not self._is_update_step(step):
            return
        sparsity = cubic_sparsity(step, self._t0, self._t1, self.initial_sparsity, self.target_sparsity)
        # masks never shrink: masks already on the module (e.g. from an earlier fit) are a floor
        layers = [v for n, v in self.layer_sparsity.items() if n != "global"]
        floor = self.layer_sparsity.get("global", 0.0) if self.scope == "global" else min(layers, default=0.0)
        sparsity = max(sparsity, floor)
        entries = self._params(pl_module)
        new_masks = self._decide_masks(trainer, entries, sparsity)
        # weights zeroed where pruned, first moments masked, regrown coordinates get fresh optimizer state
        self._engine.update(new_masks, trainer.optimizers, second_moments=self.zero_second_moments)
        self.last_update_step = step
        self.current_sparsity = sparsity
        self._refresh(pl_module)

    def _decide_masks(
        self, trainer: pl.Trainer, entries: list[tuple[str, nn.Parameter, Tensor]], sparsity: float
    ) -> dict[str, Tensor]:
        """Masks computed on global rank 0 (on CPU, so any device layout unpickles) and broadcast to all ranks."""
        new_masks: dict[str, Tensor] | None = None
        if trainer.is_global_zero:
            weights = {n: p.detach() for n, p, _ in entries}
            old = {n: m for n, _, m in entries}
            new_masks = {n: m.cpu() for n, m in magnitude_masks(weights, sparsity, self.scope, old).items()}
        new_masks = trainer.strategy.broadcast(new_masks, src=0)
        assert new_masks is not None
        return new_masks

    # ------------------------------------------------------------------ state and export
    def _extra_state(self) -> dict[str, Any]:
        """Schedule position (the masks follow at one bit per weight)."""
        return {
            "last_update_step": self.last_update_step,
            "last_applied_step": self.last_applied_step,
            "current_sparsity": self.current_sparsity,
        }

    def _load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        self.last_update_step = int(state_dict.get("last_update_step", -1))
        self.last_applied_step = int(state_dict.get("last_applied_step", -1))
        self.current_sparsity = float(state_dict.get("current_sparsity", 0.0))

    def _load_masks(self, state_dict: Mapping[str, Any]) -> None:
        if state_dict.get("masks") is None:  # version 1 kept the masks in the module's state_dict (see _migrate_v1)
            self._migrate_v1()
        else:
            super()._load_masks(state_dict)

    def _migrate_v1(self) -> None:
        """A version-1 checkpoint (litmix < 0.2) held the masks as ``*_mask`` keys of the module's ``state_dict``.

        Resuming one needs ``pl_module.strict_loading = False`` (those keys are no longer buffers in the
        ``state_dict``). The weights were restored before this callback's state and are exactly 0 where pruned, so
        the masks are rebuilt from their zeros.
        """
        if not self._names or not self._param_refs:
            return
        with torch.no_grad():
            for n in self._names:
                self._masks[n].copy_(self._param_refs[n] != 0)
        self._masks_changed()
        rank_zero_info(
            f"{type(self).__name__}: version-1 checkpoint state; masks rebuilt from the restored weights' zeros "
            f"(sparsity {self.layer_sparsity.get('global', 0.0):.4f})"
        )

    @staticmethod
    def make_permanent(module: nn.Module) -> list[str]:
        """Bake the masks into the weights (zeros stay) and delete the ``*_mask`` buffers.

        After a fit the pruned weights are already exactly 0 and the buffers are not in the ``state_dict``: this
        only frees their memory (and handles modules pruned by litmix < 0.2, whose masks were persistent buffers).

        Returns:
            The names of the parameters whose masks were removed.
        """
        return MaskEngine.make_permanent(module)
