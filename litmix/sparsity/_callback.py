"""The Lightning shell shared by every litmix pruner that owns masks (defined in a private module).

:class:`MaskedPruningCallback` holds a :class:`~litmix.sparsity.MaskEngine` and does what every pruner does with
it: check the strategy and select the parameters in ``setup``, apply the masks and mask the optimizer state when
training starts, mask the gradients before every optimizer step and re-mask the weights after it where the optimizer
needs it, log the sparsity (per layer and overall, plus a per-layer image) at every mask change, log the final
values, detach at teardown and checkpoint the masks. A pruner only decides the masks (``engine.update(...)``, then
:meth:`MaskedPruningCallback._masks_changed`).

It lives in a ``_``-module, unregistered, so that LightningCLI never offers the base itself as a callback.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from litmix._sharded import refuse_sharded_strategy
from litmix.base import LitmixCallback
from litmix.sparsity.engine import MaskEngine
from litmix.validation import check_str, check_type

__all__ = ["MaskedPruningCallback", "check_parameter_names", "sparsity_figure", "sync_generator"]


def check_parameter_names(
    owner: str,
    parameter_names: Sequence[str] | None,
    *,
    argument: str = "parameter_names",
    what: str = "parameter names",
) -> list[str] | None:
    """Validate a pruner's ``parameter_names`` argument: ``None`` or a non-empty list of non-empty names.

    ``argument`` / ``what`` name another argument of the same form (``layers``: module names) in the errors.

    Raises:
        TypeError: for anything but a list/tuple of ``str`` (or ``None``).
        ValueError: for an empty list or an empty name.

    Example:
        >>> check_parameter_names("P", ("net.0.weight",)), check_parameter_names("P", None)
        (['net.0.weight'], None)
    """
    if parameter_names is None:
        return None
    check_type(owner, argument, parameter_names, (list, tuple))
    if not parameter_names:
        raise ValueError(f"{owner}({argument}=[]): {argument} must be a non-empty list of {what} or None")
    for n in parameter_names:
        check_str(owner, argument, n, allow_empty=False)
    return list(parameter_names)


def sync_generator(trainer: pl.Trainer, generator: torch.Generator) -> None:
    """Every rank continues from global rank 0's generator (only rank 0 draws), so the checkpointed states agree."""
    if trainer.world_size > 1:
        generator.set_state(trainer.strategy.broadcast(generator.get_state(), src=0))


def sparsity_figure(layers: Mapping[str, float], target: float | None = None) -> Any:
    """A bar chart of the sparsity per layer (a ``matplotlib.figure.Figure``, no pyplot, no global backend).

    Raises:
        ImportError: when matplotlib is not installed (callers skip the image).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 0.6 * len(layers) + 2), 3))
    ax = fig.add_subplot()
    ax.bar(range(len(layers)), list(layers.values()))
    ax.set_xticks(range(len(layers)), list(layers), rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("sparsity")
    if target is not None:
        ax.axhline(target, color="k", ls="--", lw=0.8)
    fig.tight_layout()
    return fig


class MaskedPruningCallback(LitmixCallback):
    """Base of the litmix pruners built on :class:`~litmix.sparsity.MaskEngine` (``callback.engine``).

    What it does for every subclass:

    * ``setup`` (fit): refuses manual optimization (when :attr:`requires_automatic_optimization`) and sharded
      strategies, selects the parameters (:meth:`_select`), attaches the masks as non-persistent buffers and logs
      the selection.
    * ``on_train_start``: re-takes the parameters, lets the subclass prepare its masks (:meth:`_prepare_masks`),
      zeroes the pruned weights and the first moments there, and decides whether the weights must be re-masked
      after every step (an optimizer not known to keep zeros at zero).
    * ``on_before_optimizer_step``: zeroes the gradients of pruned weights (while :attr:`masks_active`).
    * ``on_train_batch_end``: once per optimizer step re-masks the weights when needed, else every
      :attr:`check_every_n_steps` steps checks that pruned weights are still 0 (if something else wrote them: a
      warning, and re-masking after every step from then on). Logs ``<prefix>/sparsity`` (progress bar) when the
      masks changed and on the loggers' steps; at every mask change every logger also gets
      ``<prefix>/sparsity`` and ``<prefix>/sparsity/<param>`` (``log_metrics`` at the global step) and, on global
      rank 0 with matplotlib installed, a per-layer bar chart: ``<prefix>/sparsity_per_layer`` on a
      ``WandbLogger``, a PNG ``images/<prefix>_sparsity_per_layer_step<step>.png`` in a ``CSVLogger``'s
      ``log_dir``.
    * ``on_train_epoch_end``: ``<prefix>/sparsity/<param>``; ``on_train_end``: ``<prefix>/final_sparsity`` and
      ``<prefix>/final_sparsity/<param>`` (plus :meth:`_final_metrics`) to every logger.
    * ``teardown``: drops the engine's parameter references (the masks stay, for ``state_dict``).
    * ``state_dict``: ``version``, the subclass's :meth:`_extra_state`, then the masks at one bit per weight.

    Subclasses decide masks and call ``self.engine.update(...)`` followed by :meth:`_masks_changed`.
    """

    default_log_prefix: ClassVar[str] = "pruning"
    #: optimizer steps between checks that pruned weights are still exactly 0 (a few bool passes each)
    check_every_n_steps: ClassVar[int] = 500
    #: refuse modules with ``automatic_optimization = False``
    requires_automatic_optimization: ClassVar[bool] = True
    #: why a sharded strategy (FSDP, DeepSpeed) is refused, and what to use instead
    sharded_reason: ClassVar[str] = "it ranks whole parameters and sharding gives each rank a shard"
    sharded_instead: ClassVar[str] = "strategy='ddp'"
    #: reuse mask buffers already on the module (an earlier fit of the same object) as a floor
    keep_existing_masks: ClassVar[bool] = False
    #: optimizer steps between refills of the pruned coordinates' second moments (see ``on_train_batch_end``)
    refill_every: ClassVar[int] = 1000
    #: for a pruner that selects later (``_select`` returns nothing in ``setup``): the ``setup`` info line's text
    #: instead of "pruning 0 parameters"
    deferred_selection: ClassVar[str] = ""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self.parameter_names: list[str] | None = getattr(self, "parameter_names", None)
        #: also zero second moments at pruned coordinates when masking the optimizer state
        self.zero_second_moments: bool = getattr(self, "zero_second_moments", False)
        #: mask sparsity per parameter and overall (``"global"``) as of the last mask change
        self.layer_sparsity: dict[str, float] = {}
        #: the last optimizer step after which the weights were re-masked or checked
        self.last_applied_step: int = -1
        self._engine = MaskEngine(type(self).__name__)
        self._names: list[str] = []
        self._log_pending: bool = True
        self._published: dict[str, float] = {}
        self._fill_pending: bool = True
        self._filled_step: int = -1

    # ------------------------------------------------------------------ engine access
    @property
    def engine(self) -> MaskEngine:
        """The :class:`~litmix.sparsity.MaskEngine` owning the masks."""
        return self._engine

    @property
    def masks_active(self) -> bool:
        """Whether the masks are in force (gradients masked, weights re-masked); subclasses may wait for a round."""
        return True

    @property
    def _masks(self) -> dict[str, Tensor]:
        return self._engine.masks

    @property
    def _fast(self) -> list[tuple[torch.nn.Parameter, Tensor]]:
        return self._engine._fast

    @property
    def _remask_weights(self) -> bool:
        return self._engine.remask_weights

    @_remask_weights.setter
    def _remask_weights(self, value: bool) -> None:
        self._engine.remask_weights = value

    def _state_key_fields(self) -> dict[str, Any]:
        """Unnamed instances on explicit parameters differ by them; the default selection keeps the class name."""
        return {} if self.parameter_names is None else {"parameter_names": list(self.parameter_names)}

    # ------------------------------------------------------------------ subclass hooks
    def _select(self, pl_module: pl.LightningModule) -> tuple[list[str], dict[str, str]]:
        """Canonical names to mask and the aliases mapped or left out (alias -> why)."""
        names, excluded = self._engine.select(pl_module, self.parameter_names)
        return names, excluded

    def _initial_masks(self, names: list[str]) -> Mapping[str, Tensor | None] | list[str]:
        """What :meth:`MaskEngine.attach` gets in ``setup`` (default: the names: existing buffers or all ones)."""
        return names

    def _on_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, names: list[str]) -> None:
        """After the masks are attached in ``setup``: reset the state of a fresh fit, resolve derived settings."""

    def _selection_detail(self) -> str:
        """Appended to the selection's info line."""
        return ""

    def _prepare_masks(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """In ``on_train_start`` before the masks are applied (e.g. initial masks when none were restored)."""

    def _target_sparsity(self) -> float | None:
        """The dashed line of the per-layer image."""
        return None

    def _global_sparsity(self, report: Mapping[str, float]) -> float:
        """The ``<prefix>/sparsity`` value from a sparsity report."""
        return float(report.get("global", 0.0))

    def _step_metrics(self) -> dict[str, float]:
        """Extra ``<prefix>/<key>`` values logged with the sparsity at every mask change."""
        return {}

    def _final_metrics(self) -> dict[str, float]:
        """Extra ``<prefix>/<key>`` values logged at the end of fit."""
        return {}

    def _extra_state(self) -> dict[str, Any]:
        """The subclass's checkpointed fields (before the masks in :meth:`state_dict`)."""
        return {}

    def _load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`_extra_state`."""

    def _load_masks(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the masks (copied into the live buffers once set up)."""
        self._engine.load_state_dict(state_dict, strict=bool(self._names))

    # ------------------------------------------------------------------ helpers
    def _refresh_layer_sparsity(self) -> None:
        self.layer_sparsity = self._engine.sparsity_report()

    def _masks_changed(self) -> None:
        """Call after every mask change: the report is recomputed and logged at the end of the step."""
        self._refresh_layer_sparsity()
        self._log_pending = True
        self._fill_pending = True

    def _refresh(self, pl_module: pl.LightningModule) -> None:
        """Re-take the parameters and masks (after device moves); recompute the report."""
        self._engine.refresh(pl_module)
        self._masks_changed()

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
        self._engine.remask_weights = True
        self._engine.apply()

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the optimization mode and strategy; select the parameters and attach their mask buffers.

        Runs before a resumed checkpoint's state is loaded, so the restored masks are copied into the buffers.
        """
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        cls = type(self).__name__
        if self.requires_automatic_optimization and not pl_module.automatic_optimization:
            raise MisconfigurationException(
                f"{cls} supports automatic optimization only; the module sets automatic_optimization=False"
            )
        refuse_sharded_strategy(cls, trainer.strategy, self.sharded_reason, instead=self.sharded_instead)
        names, excluded = self._select(pl_module)
        masks = self._initial_masks(names)
        self._names = names
        self.last_applied_step = -1
        self._engine.detach()
        self._engine.masks = {}
        self._engine.attach(pl_module, masks, keep_existing=self.keep_existing_masks)
        self._on_setup(trainer, pl_module, names)
        self._refresh_layer_sparsity()
        self._published = dict.fromkeys(self.layer_sparsity, 0.0)
        shown = ", ".join(names[:50]) + (f", ... ({len(names) - 50} more)" if len(names) > 50 else "")
        how = "default selection" if self.parameter_names is None else "parameter_names"
        left_out = "; not pruned: " + ", ".join(f"{n} ({why})" for n, why in excluded.items()) if excluded else ""
        detail = f"{shown}{left_out}{self._selection_detail()}"
        deferred = not names and self.deferred_selection
        rank_zero_info(
            f"{cls}: {self.deferred_selection}"
            if deferred
            else f"{cls}: pruning {len(names)} parameters ({how}): {detail}"
        )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Apply the (possibly restored) masks to weights and optimizer state; pick the re-masking rule."""
        super().on_train_start(trainer, pl_module)
        self._engine.refresh(pl_module)
        self._prepare_masks(trainer, pl_module)
        self._engine.apply()
        self._engine.mask_optimizer_state(trainer.optimizers, second_moments=self.zero_second_moments)
        self._engine.remask_weights = False
        self._engine.remask_weights = self._engine.needs_remask(trainer.optimizers)
        self._masks_changed()
        self._filled_step = -1

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Zero the gradients of pruned weights (one in-place multiply per masked tensor)."""
        if self.masks_active:
            self._engine.mask_gradients()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Re-mask the weights when the optimizer needs it; check them periodically; log the sparsity."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if step > self.last_applied_step:
            self.last_applied_step = step
            if self.masks_active:
                if self._engine.remask_weights:
                    self._engine.apply()
                elif step % self.check_every_n_steps == 0:
                    self._check_pruned_weights(pl_module)
                self._fill_second_moments(trainer, step)
        # `log` costs ~0.3 ms on CPU and the value only changes with the masks: log when it changed and on the
        # steps the loggers record (the progress bar and callback_metrics keep the last value in between)
        every = int(getattr(trainer, "log_every_n_steps", 50) or 0)
        if self._log_pending or (every > 0 and step % every == 0):
            self._log_sparsity(trainer, pl_module)

    def _fill_second_moments(self, trainer: pl.Trainer, step: int) -> None:
        """Second moments at pruned coordinates set to 1 after a mask change and every :attr:`refill_every` steps.

        A pruned coordinate's update is exactly zero whatever its second moment holds (zero gradient and first
        moment), but coordinates pruned before they ever had a gradient (a mask set before the first step, an
        optimizer reset) hold ``exp_avg_sq == 0`` exactly, and decayed ones end in denormals: on some CPUs Adam's
        ``sqrt`` is then several times slower (:meth:`MaskEngine.fill_second_moments`; measured in
        ``benchmarks/results/pruner_step_ratios.md``). Not with ``zero_second_moments``.
        """
        if self.zero_second_moments or not (self._fill_pending or step - self._filled_step >= self.refill_every):
            return
        optimizers = trainer.optimizers
        if self._engine.fill_second_moments(optimizers) or any(opt.state for opt in optimizers):
            self._fill_pending, self._filled_step = False, step  # once the optimizer has state

    def _log_sparsity(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        prefix = self.log_prefix
        value = self._global_sparsity(self.layer_sparsity)
        pl_module.log(f"{prefix}/sparsity", value, on_step=True, on_epoch=False, prog_bar=True, batch_size=1)
        extra = self._step_metrics()
        for key, v in extra.items():
            pl_module.log(f"{prefix}/{key}", v, on_step=True, on_epoch=False, batch_size=1)
        self._log_pending = False
        if self.layer_sparsity == self._published:
            return
        # a mask change: every logger gets the sparsity per layer and overall now, and the per-layer image
        self._published = dict(self.layer_sparsity)
        if not trainer.loggers:
            return
        layers = {n: v for n, v in self.layer_sparsity.items() if n != "global"}
        metrics = {f"{prefix}/sparsity/{n}": v for n, v in layers.items()}
        metrics[f"{prefix}/sparsity"] = value
        metrics.update({f"{prefix}/{k}": v for k, v in extra.items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if trainer.is_global_zero:
            self._log_sparsity_image(trainer, layers)

    def _log_sparsity_image(self, trainer: pl.Trainer, layers: Mapping[str, float]) -> None:
        """The per-layer bar chart to W&B and as a PNG into a CSV logger's folder (skipped without matplotlib)."""
        from lightning.pytorch.loggers import CSVLogger, WandbLogger

        targets = [lg for lg in trainer.loggers if isinstance(lg, (WandbLogger, CSVLogger))]
        if not targets or not layers:
            return
        try:
            fig = sparsity_figure(layers, self._target_sparsity())
        except ImportError:
            return
        step, prefix = trainer.global_step, self.log_prefix
        stem = f"{prefix.replace('/', '_')}_sparsity_per_layer_step{step}"
        for logger in targets:
            if isinstance(logger, CSVLogger):
                folder = Path(logger.log_dir) / "images"
                folder.mkdir(parents=True, exist_ok=True)
                fig.savefig(folder / f"{stem}.png")
                continue
            try:
                import wandb
            except ImportError:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{stem}.png"
                fig.savefig(path)
                logger.experiment.log(
                    {f"{prefix}/sparsity_per_layer": wandb.Image(str(path)), "trainer/global_step": step}
                )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Per-parameter mask sparsity."""
        super().on_train_epoch_end(trainer, pl_module)
        for n, value in self.layer_sparsity.items():
            if n != "global":
                # identical on every rank; sync_dist only silences Lightning's DDP advice (one scalar per epoch)
                pl_module.log(f"{self.log_prefix}/sparsity/{n}", value, on_epoch=True, sync_dist=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Final per-parameter and overall sparsity (and the subclass's final metrics) to every logger."""
        super().on_train_end(trainer, pl_module)
        if not trainer.loggers:
            return
        prefix = self.log_prefix
        metrics = {f"{prefix}/final_sparsity/{n}": v for n, v in self.layer_sparsity.items() if n != "global"}
        metrics[f"{prefix}/final_sparsity"] = self._global_sparsity(self.layer_sparsity)
        metrics.update({f"{prefix}/{k}": v for k, v in self._final_metrics().items()})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Drop the engine's references to the parameters (the masks stay, for :meth:`state_dict`)."""
        super().teardown(trainer, pl_module, stage)
        self._engine.detach()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``version``, the subclass's fields and every mask at one bit per weight (``{name: {"shape", "bits"}}``)."""
        return {**super().state_dict(), **self._extra_state(), **self._engine.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; masks are copied into the module's mask buffers when fit has set them up.

        Raises:
            ValueError: for a newer state version, or a mask whose shape differs from the parameter's.
        """
        super().load_state_dict(state_dict)
        self._load_extra_state(state_dict)
        self._load_masks(state_dict)
        if self._names:
            self._masks_changed()
