"""Gradual magnitude pruning (Zhu & Gupta) as a Lightning callback."""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example, LitmixCallback
from litmix.functional.sparsity import (
    cubic_sparsity,
    keeps_pruned_weights_zero,
    magnitude_masks,
)
from litmix.registry import register
from litmix.sparsity import MaskEngine
from litmix.validation import check_bool, check_choice, check_float, check_int, check_str, check_type

__all__ = ["GradualPruning"]

PAPER = (
    "To prune, or not to prune: exploring the efficacy of pruning for model compression "
    "(https://arxiv.org/abs/1710.01878)"
)


#: strategies that shard parameters: a mask decided on a shard is not a global magnitude ranking
@register("callback", "sparsity", paper=PAPER)
class GradualPruning(LitmixCallback):
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
    (``exp_avg_sq``) are left alone: they only scale an update that is already zero. Any other optimizer
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

    Logs ``<prefix>/sparsity`` (mask sparsity, progress bar) whenever the masks change and every
    ``Trainer(log_every_n_steps)`` steps, and ``<prefix>/sparsity/<param>`` at each epoch end; at the end of fit
    every logger gets ``<prefix>/final_sparsity`` and ``<prefix>/final_sparsity/<param>`` through ``log_metrics``
    and a ``WandbLogger`` also a bar chart image. ``<prefix>`` is ``name`` when given, else ``pruning``.

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
    #: optimizer steps between checks that pruned weights are still exactly 0 (a few bool passes each)
    check_every_n_steps: ClassVar[int] = 500

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
        start_fraction = check_float(cls, "start_fraction", start_fraction, low=0.0, high=1.0, high_open=True)
        end_fraction = check_float(cls, "end_fraction", end_fraction, low=0.0, high=1.0, low_open=True)
        if end_fraction <= start_fraction:
            raise ValueError(
                f"{cls}(start_fraction={start_fraction}, end_fraction={end_fraction}): start_fraction must be below "
                "end_fraction (pruning starts before it ends)"
            )
        start_step = check_int(cls, "start_step", start_step, low=0, allow_none=True)
        end_step = check_int(
            cls, "end_step", end_step, low=1 if start_step is None else start_step + 1, allow_none=True
        )
        every_n_steps = check_int(cls, "every_n_steps", every_n_steps, low=1)
        scope = check_choice(cls, "scope", scope, ("global", "layer"))
        if parameter_names is not None:
            check_type(cls, "parameter_names", parameter_names, (list, tuple))
            if not parameter_names:
                raise ValueError(
                    f"{cls}(parameter_names=[]): parameter_names must be a non-empty list of parameter names or None"
                )
            for n in parameter_names:
                check_str(cls, "parameter_names", n, allow_empty=False)
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
        self.parameter_names: list[str] | None = list(parameter_names) if parameter_names is not None else None
        # state (checkpointed)
        self.last_update_step: int = -1
        self.last_applied_step: int = -1
        self.current_sparsity: float = 0.0
        # the masks (name -> bool, the module's non-persistent buffers once set up) live in the shared engine
        self._engine = MaskEngine(type(self).__name__)
        # resolved at setup / fit start (not checkpointed: derived from the module and the Trainer)
        self._names: list[str] = []
        self._t0: int = 0
        self._t1: int = 1
        self._layer_sparsity: dict[str, float] = {}
        self._log_pending: bool = True

    @classmethod
    def example(cls) -> Example:
        """Prunes ``TinyClassifier`` to 50 % during the first half of the run, updating every step."""
        from litmix.testing import TinyClassifier, TinyDataModule

        return Example(
            TinyClassifier(),
            TinyDataModule(),
            [cls(target_sparsity=0.5, start_fraction=0.0, end_fraction=0.5, every_n_steps=1)],
        )

    def _state_key_fields(self) -> dict[str, Any]:
        """Unnamed instances on explicit parameters differ by them; the default selection keeps the class name."""
        return {} if self.parameter_names is None else {"parameter_names": list(self.parameter_names)}

    # ------------------------------------------------------------------ helpers
    @property
    def engine(self) -> MaskEngine:
        """The :class:`~litmix.sparsity.MaskEngine` owning the masks."""
        return self._engine

    @property
    def _masks(self) -> dict[str, Tensor]:
        return self._engine.masks

    @property
    def _fast(self) -> list[tuple[nn.Parameter, Tensor]]:
        return self._engine._fast

    @property
    def _param_refs(self) -> dict[str, nn.Parameter]:
        return self._engine._params

    @property
    def _remask_weights(self) -> bool:
        return self._engine.remask_weights

    @_remask_weights.setter
    def _remask_weights(self, value: bool) -> None:
        self._engine.remask_weights = value

    def _params(self, pl_module: pl.LightningModule) -> list[tuple[str, nn.Parameter, Tensor]]:
        params = dict(pl_module.named_parameters())
        return [(n, params[n], self._masks[n]) for n in self._names]

    def _refresh(self, pl_module: pl.LightningModule) -> None:
        """Recompute the per-parameter mask sparsity and the uint8 views of the masks (no copies)."""
        self._engine.refresh(pl_module)
        self._log_pending = True
        self._refresh_layer_sparsity()

    def _apply_masks(self) -> None:
        self._engine.apply()

    def _refresh_layer_sparsity(self) -> None:
        self._layer_sparsity = self._engine.sparsity_report()

    def _is_update_step(self, step: int) -> bool:
        if step < self._t0 or step <= self.last_update_step:
            return False
        if step <= self._t1:
            return (step - self._t0) % self.every_n_steps == 0 or step == self._t1
        return self.current_sparsity < self.target_sparsity  # t1 missed (e.g. resumed past it): catch up once

    def _select(self, pl_module: pl.LightningModule) -> tuple[list[str], dict[str, str]]:
        """Canonical names to prune and the aliases mapped or left out (alias -> why)."""
        names, excluded = self._engine.select(pl_module, self.parameter_names)
        return names, excluded

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the strategy and the parameters; register the masks (before a resumed checkpoint is loaded)."""
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        cls = type(self).__name__
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                f"{cls} supports automatic optimization only; the module sets automatic_optimization=False"
            )
        refuse_sharded_strategy(
            cls, trainer.strategy, "it ranks whole parameters by magnitude and sharding gives each rank a shard"
        )
        names, excluded = self._select(pl_module)
        self._names = names
        # a fresh fit starts the schedule afresh; on resume the checkpointed state is loaded after setup
        self.last_update_step, self.last_applied_step, self.current_sparsity = -1, -1, 0.0
        # masks already on the module (an earlier fit of the same object) are kept: a floor for the schedule
        self._engine.detach()
        self._engine.masks = {}
        self._engine.attach(pl_module, names, keep_existing=True)
        self._refresh_layer_sparsity()
        shown = ", ".join(names[:50]) + (f", ... ({len(names) - 50} more)" if len(names) > 50 else "")
        how = "default selection" if self.parameter_names is None else "parameter_names"
        left_out = "; not pruned: " + ", ".join(f"{n} ({why})" for n, why in excluded.items()) if excluded else ""
        rank_zero_info(f"{cls}: pruning {len(names)} parameters ({how}): {shown}{left_out}")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Resolve the schedule in optimizer steps; refuse one that the run does not reach."""
        cls = type(self).__name__
        total = trainer.estimated_stepping_batches
        if total <= 0:  # an iterable dataset without max_steps: unknown
            total = math.inf
        if (self.start_step is None or self.end_step is None) and not math.isfinite(total):
            raise ValueError(
                f"{cls}(start_fraction={self.start_fraction}, end_fraction={self.end_fraction}): the run length is "
                f"unknown (trainer.estimated_stepping_batches={total}); pass start_step and end_step or set "
                "max_steps/max_epochs"
            )
        last = int(total) - 1 if math.isfinite(total) else None  # the last optimizer step the run makes
        for arg, value in (("start_step", self.start_step), ("end_step", self.end_step)):
            if value is not None and last is not None and value > last:
                raise ValueError(
                    f"{cls}({arg}={value}): the run makes only {int(total)} optimizer steps (0..{last}, "
                    f"trainer.estimated_stepping_batches={int(total)}), so the schedule would stop at "
                    f"{self._sparsity_reached(last):.4f} instead of target_sparsity={self.target_sparsity}; "
                    f"pass {arg} <= {last} or lengthen the run"
                )
        t0 = self.start_step if self.start_step is not None else int(self.start_fraction * total)
        if self.end_step is not None:
            t1 = self.end_step
        else:
            t1 = max(min(round(self.end_fraction * total), int(total) - 1), t0 + 1)
        if t1 <= t0:
            raise ValueError(
                f"{cls}(end_step={self.end_step}): the schedule must end after it starts (start step {t0}, from "
                f"start_fraction={self.start_fraction} of {total} steps); pass a larger end_step or start_step"
            )
        self._t0, self._t1 = t0, t1

    def _sparsity_reached(self, last: int) -> float:
        t0 = self.start_step if self.start_step is not None else 0
        t1 = self.end_step if self.end_step is not None else t0 + 1
        if last < t0:
            return 0.0
        done = t0 + (last - t0) // self.every_n_steps * self.every_n_steps
        return cubic_sparsity(done, t0, max(t1, t0 + 1), self.initial_sparsity, self.target_sparsity)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Apply the (possibly restored) masks to weights and first moments; pick the masking engine."""
        cls = type(self).__name__
        self._refresh(pl_module)
        self._apply_masks()
        self._engine.mask_optimizer_state(trainer.optimizers, second_moments=self.zero_second_moments)
        inexact = [type(o).__name__ for o in trainer.optimizers if not keeps_pruned_weights_zero(o)]
        self._remask_weights = bool(inexact)
        engine = (
            f"gradients and weights masked every step ({', '.join(inexact)} is not known to keep zeros at zero)"
            if inexact
            else "gradients masked every step"
        )
        rank_zero_info(
            f"{cls}: {self.scope} magnitude pruning {self.initial_sparsity:.3f} -> {self.target_sparsity:.3f} "
            f"over steps {self._t0}..{self._t1} every {self.every_n_steps}; {engine}"
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
        layers = [v for n, v in self._layer_sparsity.items() if n != "global"]
        floor = self._layer_sparsity.get("global", 0.0) if self.scope == "global" else min(layers, default=0.0)
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

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Zero the gradients of pruned weights (one in-place multiply per masked tensor)."""
        for p, mask in self._fast:
            grad = p.grad
            if grad is not None:
                grad.mul_(mask)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Re-mask the weights when the optimizer needs it; check them periodically; log the sparsity."""
        step = trainer.global_step
        every = int(getattr(trainer, "log_every_n_steps", 50) or 0)
        if step > self.last_applied_step:
            self.last_applied_step = step
            if self._remask_weights:
                self._apply_masks()
            elif step % self.check_every_n_steps == 0:
                self._check_pruned_weights(pl_module)
        # `log` costs ~0.3 ms on CPU and the value only changes with the masks: log when it changed and on the
        # steps the loggers record (the progress bar and callback_metrics keep the last value in between)
        if self._log_pending or (every > 0 and step % every == 0):
            pl_module.log(
                f"{self.log_prefix}/sparsity",
                self._layer_sparsity.get("global", 0.0),
                on_step=True,
                on_epoch=False,
                prog_bar=True,
                batch_size=1,
            )
            self._log_pending = False

    def _check_pruned_weights(self, pl_module: pl.LightningModule) -> None:
        """Pruned weights must still be 0; if something wrote them, warn and re-mask after every step from now on."""
        bad = self._engine.check_weights()
        if not bad:
            return
        rank_zero_warn(
            f"{type(self).__name__}: pruned weights became non-zero between optimizer steps ({bad}); something "
            "other than the optimizer writes the weights (another callback, a custom step). Re-masking the weights "
            "after every optimizer step from now on."
        )
        self._remask_weights = True
        self._apply_masks()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Per-parameter mask sparsity."""
        for n, value in self._layer_sparsity.items():
            if n != "global":
                # identical on every rank; sync_dist only silences Lightning's DDP advice (one scalar per epoch)
                pl_module.log(f"{self.log_prefix}/sparsity/{n}", value, on_epoch=True, sync_dist=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Final per-parameter sparsity to every logger; a bar chart image to W&B (rank 0)."""
        if not trainer.loggers:
            return
        layers = {n: v for n, v in self._layer_sparsity.items() if n != "global"}
        metrics = {f"{self.log_prefix}/final_sparsity/{n}": v for n, v in layers.items()}
        metrics[f"{self.log_prefix}/final_sparsity"] = self._layer_sparsity.get("global", 0.0)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if not trainer.is_global_zero:
            return
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb_chart(logger, layers, trainer.global_step)

    def _log_wandb_chart(self, logger: Any, layers: dict[str, float], step: int) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import wandb

        fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(layers) + 2), 3))
        ax.bar(range(len(layers)), list(layers.values()))
        ax.set_xticks(range(len(layers)), list(layers), rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("sparsity")
        ax.axhline(self.target_sparsity, color="k", ls="--", lw=0.8)
        fig.tight_layout()
        logger.experiment.log({f"{self.log_prefix}/sparsity_per_layer": wandb.Image(fig), "trainer/global_step": step})
        plt.close(fig)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Drop the cached references to parameters (the masks stay, for :meth:`state_dict`)."""
        self._engine.detach()

    # ------------------------------------------------------------------ state and export
    def state_dict(self) -> dict[str, Any]:
        """Schedule position and every mask at one bit per weight (``{name: {"shape", "bits"}}``)."""
        return {
            **super().state_dict(),
            "last_update_step": self.last_update_step,
            "last_applied_step": self.last_applied_step,
            "current_sparsity": self.current_sparsity,
            **self._engine.state_dict(),  # {"masks": {name: {"shape", "bits"}}}, one bit per weight
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; masks are copied into the module's mask buffers when fit has set them up.

        Raises:
            ValueError: for a newer state version, or a mask whose shape differs from the parameter's.
        """
        super().load_state_dict(state_dict)
        self.last_update_step = int(state_dict.get("last_update_step", -1))
        self.last_applied_step = int(state_dict.get("last_applied_step", -1))
        self.current_sparsity = float(state_dict.get("current_sparsity", 0.0))
        masks = state_dict.get("masks")
        if masks is None:  # version 1 kept the masks in the module's state_dict (see _migrate_v1)
            self._migrate_v1()
            return
        self._engine.load_state_dict(state_dict, strict=bool(self._names))
        if self._names:
            self._refresh_layer_sparsity()

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
        self._refresh_layer_sparsity()
        rank_zero_info(
            f"{type(self).__name__}: version-1 checkpoint state; masks rebuilt from the restored weights' zeros "
            f"(sparsity {self._layer_sparsity.get('global', 0.0):.4f})"
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
