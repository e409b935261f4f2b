"""Gradual magnitude pruning (Zhu & Gupta) as a Lightning callback."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from litmix.base import LitmixCallback
from litmix.functional.sparsity import (
    MASK_SUFFIX,
    SECOND_MOMENTS,
    cubic_sparsity,
    default_parameter_names,
    magnitude_masks,
    mask_optimizer_state,
    remove_masks,
)
from litmix.registry import register

__all__ = ["GradualPruning"]

PAPER = (
    "To prune, or not to prune: exploring the efficacy of pruning for model compression "
    "(https://arxiv.org/abs/1710.01878)"
)


@register("callback", "sparsity", paper=PAPER)
class GradualPruning(LitmixCallback):
    """Gradual magnitude pruning to an absolute target sparsity with a cubic schedule.

    Implements Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model
    compression" (https://arxiv.org/abs/1710.01878): the sparsity follows
    ``s_t = s_f + (s_i - s_f) (1 - (t - t0) / (t1 - t0))^3`` over optimizer steps ``t``; every
    ``every_n_steps`` steps between ``t0`` and ``t1`` the smallest-magnitude weights (globally or per layer)
    are pruned up to ``s_t`` of the pruned parameters; the mask is fixed afterwards. Masks only grow: pruned
    weights stay pruned, and masks already on the module (from an earlier fit) are kept as a floor.

    Masks are persistent bool buffers ``<param>_mask`` on the owning module (``net.0.weight_mask``), created
    in ``setup(stage="fit")`` so they are saved with the model and restored by ``ckpt_path`` resume. There
    are no forward hooks: gradients are masked in ``on_before_optimizer_step``, the weights re-masked after
    each optimizer step (``on_train_batch_end``), and the optimizer state (``exp_avg``, ``exp_avg_sq``,
    ``momentum_buffer``, ...) zeroed at pruned coordinates whenever the masks change. Under DDP the masks
    are computed on global rank 0 and broadcast. Call :meth:`make_permanent` to drop the buffers for export.
    Pruning does not make dense kernels faster; it saves nothing until the weights are stored sparse.

    Logs ``pruning/sparsity`` (mask sparsity, progress bar) whenever the masks change and every
    ``Trainer(log_every_n_steps)`` steps, and ``pruning/sparsity/<param>`` at each epoch end; at the end of fit
    every logger gets ``pruning/final_sparsity/<param>`` through ``log_metrics`` and a ``WandbLogger`` also a
    bar chart image. ``name`` replaces the ``pruning`` prefix.

    Args:
        target_sparsity: final fraction of pruned weights ``s_f``, in [0, 1).
        initial_sparsity: sparsity ``s_i`` applied at ``t0``, in [0, ``target_sparsity``].
        start_fraction: ``t0`` as a fraction of ``trainer.estimated_stepping_batches``, in [0, 1).
        end_fraction: ``t1`` as a fraction of ``trainer.estimated_stepping_batches``, in (``start_fraction``, 1].
        start_step: absolute ``t0`` (optimizer steps, >= 0); overrides ``start_fraction``.
        end_step: absolute ``t1`` (> ``start_step``); overrides ``end_fraction``.
        every_n_steps: optimizer steps between mask updates (>= 1).
        scope: ``"global"`` (one magnitude ranking over all pruned parameters) or ``"layer"`` (each to
            the same sparsity).
        parameter_names: parameters to prune as in ``named_parameters`` (``"net.0.weight"``); default: the
            ``weight`` of every ``nn.Linear`` and ``nn.Conv{1,2,3}d``.
        zero_second_moments: also zero second-moment states (Adam's ``exp_avg_sq``, ``max_exp_avg_sq``) at
            pruned coordinates. First moments and momentum buffers are always zeroed, and since gradients are
            masked a pruned weight gets no update either way; ``False`` only skips work that is slow on CPUs where
            ``sqrt(0)`` is slow (``benchmarks/results/pruning.md``: 1.38x vs 1.07x the dense step).
        name: optional instance name (checkpoint key and logging prefix).

    Raises:
        ValueError: for arguments out of range (in ``__init__``) and, in ``setup``, for parameter names the
            module lacks (listing the available ones) or a schedule that does not fit the run.
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
        >>> GradualPruning.make_permanent(model)
        ['net.0.weight', 'net.2.weight']
    """

    family: ClassVar[str] = "sparsity"
    modifies_structure: ClassVar[bool] = True

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
        zero_second_moments: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        cls = type(self).__name__

        def fail(arg: str, value: Any, allowed: str, exc: type[Exception] = ValueError) -> None:
            raise exc(f"{cls}({arg}={value!r}): {arg} must be {allowed}, got {value!r}")

        for arg, value in (
            ("target_sparsity", target_sparsity),
            ("initial_sparsity", initial_sparsity),
            ("start_fraction", start_fraction),
            ("end_fraction", end_fraction),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float):
                fail(arg, value, "a float", TypeError)
        for arg, opt in (("start_step", start_step), ("end_step", end_step), ("every_n_steps", every_n_steps)):
            if opt is not None and (isinstance(opt, bool) or not isinstance(opt, int)):
                fail(arg, opt, "an int", TypeError)
        if not 0.0 <= target_sparsity < 1.0:
            fail("target_sparsity", target_sparsity, "in [0, 1)")
        if not 0.0 <= initial_sparsity <= target_sparsity:
            fail("initial_sparsity", initial_sparsity, f"in [0, target_sparsity={target_sparsity}]")
        if not 0.0 <= start_fraction < 1.0:
            fail("start_fraction", start_fraction, "in [0, 1)")
        if not start_fraction < end_fraction <= 1.0:
            fail("end_fraction", end_fraction, f"in (start_fraction={start_fraction}, 1]")
        if start_step is not None and start_step < 0:
            fail("start_step", start_step, ">= 0")
        if end_step is not None and end_step < 1:
            fail("end_step", end_step, ">= 1")
        if start_step is not None and end_step is not None and end_step <= start_step:
            fail("end_step", end_step, f"> start_step={start_step}")
        if every_n_steps < 1:
            fail("every_n_steps", every_n_steps, ">= 1")
        if scope not in ("global", "layer"):
            fail("scope", scope, "'global' or 'layer'")
        if parameter_names is not None and (
            not isinstance(parameter_names, list | tuple)
            or not parameter_names
            or not all(isinstance(n, str) for n in parameter_names)
        ):
            fail("parameter_names", parameter_names, "a non-empty list of parameter names or None", TypeError)
        if not isinstance(zero_second_moments, bool):
            fail("zero_second_moments", zero_second_moments, "a bool", TypeError)
        self.zero_second_moments = zero_second_moments
        self.target_sparsity: float = float(target_sparsity)
        self.initial_sparsity: float = float(initial_sparsity)
        self.start_fraction: float = float(start_fraction)
        self.end_fraction: float = float(end_fraction)
        self.start_step: int | None = start_step
        self.end_step: int | None = end_step
        self.every_n_steps: int = every_n_steps
        self.scope: Literal["global", "layer"] = scope
        self.parameter_names: list[str] | None = list(parameter_names) if parameter_names is not None else None
        self.log_prefix: str = name or "pruning"
        # state (checkpointed)
        self.last_update_step: int = -1
        self.last_applied_step: int = -1
        self.current_sparsity: float = 0.0
        # resolved at setup / train start (not checkpointed: derived from the module and the Trainer)
        self._names: list[str] = []
        self._t0: int = 0
        self._t1: int = 1
        self._layer_sparsity: dict[str, float] = {}
        self._dense_masks: list[tuple[nn.Parameter, Tensor]] = []  # (param, mask in param dtype) for fast mul_
        self._log_pending: bool = True

    @classmethod
    def example(cls) -> GradualPruning:
        """Prunes ``TinyClassifier`` to 50 % during the first half of the run, updating every step."""
        return cls(target_sparsity=0.5, start_fraction=0.0, end_fraction=0.5, every_n_steps=1)

    # ------------------------------------------------------------------ helpers
    def _params(self, pl_module: pl.LightningModule) -> list[tuple[str, nn.Parameter, Tensor]]:
        params = dict(pl_module.named_parameters())
        out = []
        for n in self._names:
            path, _, leaf = n.rpartition(".")
            owner = pl_module.get_submodule(path) if path else pl_module
            mask = owner._buffers[leaf + MASK_SUFFIX]
            assert mask is not None
            out.append((n, params[n], mask))
        return out

    def _refresh(self, pl_module: pl.LightningModule) -> None:
        """Recompute the per-parameter mask sparsity and the masks in parameter dtype (mul_ beats masked_fill_)."""
        self._dense_masks = [(p, mask.to(p.dtype)) for _, p, mask in self._params(pl_module)]
        self._log_pending = True
        self._refresh_layer_sparsity(pl_module)

    def _apply_masks(self) -> None:
        with torch.no_grad():
            for p, mask in self._dense_masks:
                p.mul_(mask)

    def _refresh_layer_sparsity(self, pl_module: pl.LightningModule) -> None:
        stats, pruned, total = {}, 0, 0
        for n, _, mask in self._params(pl_module):
            k = int((~mask).sum())
            stats[n] = k / mask.numel()
            pruned, total = pruned + k, total + mask.numel()
        stats["global"] = pruned / max(total, 1)
        self._layer_sparsity = stats

    def _is_update_step(self, step: int) -> bool:
        if step < self._t0 or step <= self.last_update_step:
            return False
        if step <= self._t1:
            return (step - self._t0) % self.every_n_steps == 0 or step == self._t1
        return self.current_sparsity < self.target_sparsity  # t1 missed (e.g. resumed past it): catch up once

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the environment and the parameter names; register the mask buffers (before weights load)."""
        if stage != "fit":
            return
        cls = type(self).__name__
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                f"{cls} supports automatic optimization only; the module sets automatic_optimization=False"
            )
        strategy = type(trainer.strategy).__name__
        if any(s in strategy for s in ("FSDP", "DeepSpeed", "ModelParallel")):
            raise MisconfigurationException(
                f"{cls} does not support Trainer(strategy={strategy}); use a single device or DDP"
            )
        params = dict(pl_module.named_parameters())
        if self.parameter_names is None:
            names = default_parameter_names(pl_module)
            if not names:
                raise ValueError(f"{cls}: the module has no nn.Linear/nn.Conv*d weights; pass parameter_names")
        else:
            unknown = [n for n in self.parameter_names if n not in params]
            if unknown:
                raise ValueError(
                    f"{cls}(parameter_names=...): unknown parameters {unknown}; available: {sorted(params)}"
                )
            names = list(dict.fromkeys(self.parameter_names))
        self._names = names
        # a fresh fit starts the schedule afresh; on resume the checkpointed state is loaded after setup
        self.last_update_step, self.last_applied_step, self.current_sparsity = -1, -1, 0.0
        for n in names:
            path, _, leaf = n.rpartition(".")
            owner = pl_module.get_submodule(path) if path else pl_module
            buf = owner._buffers.get(leaf + MASK_SUFFIX)
            if buf is None or buf.shape != params[n].shape:
                owner.register_buffer(leaf + MASK_SUFFIX, torch.ones_like(params[n], dtype=torch.bool), persistent=True)
        self._refresh_layer_sparsity(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Resolve the schedule in steps and apply the (possibly restored) masks to the weights."""
        cls = type(self).__name__
        if self.start_step is None or self.end_step is None:
            total = trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise ValueError(
                    f"{cls}: the run length is unknown (estimated_stepping_batches={total}); "
                    "pass start_step and end_step or set max_steps/max_epochs"
                )
        t0 = self.start_step if self.start_step is not None else int(self.start_fraction * total)
        t1 = self.end_step if self.end_step is not None else max(round(self.end_fraction * total), t0 + 1)
        if t1 <= t0:
            raise ValueError(f"{cls}: end step {t1} must be after start step {t0}")
        self._t0, self._t1 = t0, t1
        self._refresh(pl_module)
        self._apply_masks()
        rank_zero_info(
            f"{cls}: {len(self._names)} parameters, {self.scope} magnitude pruning "
            f"{self.initial_sparsity:.3f} -> {self.target_sparsity:.3f} over steps {t0}..{t1} "
            f"every {self.every_n_steps}"
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
        with torch.no_grad():
            for n, p, mask in entries:
                mask.copy_(new_masks[n].to(mask.device))
                p.masked_fill_(~mask, 0)
                for opt in trainer.optimizers:
                    mask_optimizer_state(opt, p, mask, skip=() if self.zero_second_moments else SECOND_MOMENTS)
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
        """Zero the gradients of pruned weights."""
        for p, mask in self._dense_masks:
            if p.grad is not None:
                p.grad.mul_(mask)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Re-apply the masks once per optimizer step (weight decay etc. cannot revive pruned weights); log."""
        if trainer.global_step > self.last_applied_step:
            self._apply_masks()
            self.last_applied_step = trainer.global_step
        # `log` costs ~0.3 ms on CPU and the value only changes with the masks: log when it changed and on the
        # steps the loggers record (the progress bar and callback_metrics keep the last value in between)
        every = int(getattr(trainer, "log_every_n_steps", 50) or 0)
        if self._log_pending or (every > 0 and trainer.global_step % every == 0):
            pl_module.log(
                f"{self.log_prefix}/sparsity",
                self._layer_sparsity.get("global", 0.0),
                on_step=True,
                on_epoch=False,
                prog_bar=True,
                batch_size=1,
            )
            self._log_pending = False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Per-parameter mask sparsity."""
        for n, value in self._layer_sparsity.items():
            if n != "global":
                pl_module.log(f"{self.log_prefix}/sparsity/{n}", value, on_epoch=True)

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
        """Drop the cached references to parameters (the mask buffers stay on the module)."""
        self._dense_masks = []

    # ------------------------------------------------------------------ state and export
    def state_dict(self) -> dict[str, Any]:
        """Schedule position: last mask update, last re-masked step and the current target sparsity."""
        return {
            **super().state_dict(),
            "last_update_step": self.last_update_step,
            "last_applied_step": self.last_applied_step,
            "current_sparsity": self.current_sparsity,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.last_update_step = int(state_dict.get("last_update_step", -1))
        self.last_applied_step = int(state_dict.get("last_applied_step", -1))
        self.current_sparsity = float(state_dict.get("current_sparsity", 0.0))

    @staticmethod
    def make_permanent(module: nn.Module) -> list[str]:
        """Bake the masks into the weights (zeros stay) and delete the ``*_mask`` buffers.

        Returns:
            The names of the parameters whose masks were removed.
        """
        return remove_masks(module)
