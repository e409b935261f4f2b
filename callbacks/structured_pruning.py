"""Structured pruning (whole output channels / filters and attention heads) that physically shrinks the model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from litmix.base import Example
from litmix.data import split_batch
from litmix.functional.head_importance import (
    find_attention,
    head_masks,
    head_parameter_masks,
    head_scores,
    kept_heads,
)
from litmix.functional.sparsity import cubic_sparsity, magnitude_masks, structured_masks
from litmix.registry import register
from litmix.sparsity._callback import MaskedPruningCallback, check_parameter_names
from litmix.sparsity._schedule import check_step_schedule, resolve_step_schedule
from litmix.sparsity.removal import (
    ChannelGroup,
    RemovalReport,
    channel_groups,
    channel_parameter_masks,
    require_torch_pruning,
    shrink_model,
)
from litmix.validation import check_bool, check_choice, check_float, check_int

__all__ = ["StructuredPruning"]

PAPER = (
    "DepGraph: Towards Any Structural Pruning (https://arxiv.org/abs/2301.12900); Pruning Filters for Efficient "
    "ConvNets (https://arxiv.org/abs/1608.08710); Are Sixteen Heads Really Better than One? "
    "(https://arxiv.org/abs/1905.10650)"
)


def _rows_kept(mask: Tensor, dim: int) -> Tensor:
    return mask.movedim(dim, 0).reshape(mask.shape[dim], -1).any(dim=1).cpu()


@register("callback", "sparsity", paper=PAPER)
class StructuredPruning(MaskedPruningCallback):
    """Mask whole output channels and attention heads on a schedule, then remove them so the model really shrinks.

    Channel (filter) pruning after Li et al., "Pruning Filters for Efficient ConvNets"
    (https://arxiv.org/abs/1608.08710: remove the filters with the smallest norms), with the coupled tensors of each
    channel found by Torch-Pruning's dependency graph (Fang et al., "DepGraph: Towards Any Structural Pruning",
    https://arxiv.org/abs/2301.12900); head pruning after Michel et al., "Are Sixteen Heads Really Better than One?"
    (https://arxiv.org/abs/1905.10650).

    * **Channels** (``channel_sparsity > 0``): at the first training batch the module is traced once on two samples
      of the batch (Torch-Pruning's dependency graph, eval mode, RNG untouched) and the removable channel groups are
      listed (:func:`~litmix.sparsity.removal.channel_groups`: one producing layer, at least one consumer, no
      residual coupling; the reasons for the others are logged). At each update the channels with the smallest L2
      norm of their producing layer's row (:func:`~litmix.functional.sparsity.structured_masks`, per layer or
      global) or random ones (``importance="random"``, the baseline) are masked in *every* tensor of their group
      (the producer's row and bias, norm layers, the consumers' columns), so the masked model computes exactly what
      the shrunk model will.
    * **Heads** (``head_sparsity > 0``): ``nn.MultiheadAttention`` and Hugging Face GPT-2 attention; the heads with
      the smallest RMS of their q/k/v rows and output-projection columns
      (:func:`~litmix.functional.head_importance.head_scores`) or random ones are masked.
    * **Schedule**: Zhu & Gupta's cubic ramp (:func:`~litmix.functional.sparsity.cubic_sparsity`) from 0 to the
      target between ``t0`` and ``t1``, updated every ``every_n_steps`` optimizer steps; masked units stay masked.
    * **Masks** live in the shared :class:`~litmix.sparsity.MaskEngine` (``callback.engine``) and are driven by the
      shell every litmix pruner shares (see :class:`~litmix.callbacks.GradualPruning`): gradients masked before
      each optimizer step, optimizer state masked at each update, masks decided on rank 0 and broadcast under DDP,
      checkpointed in this callback's state at one bit per weight (``Trainer.fit(ckpt_path=...)`` resumes exactly),
      not in the module's ``state_dict`` (checkpoints load strictly into the user's class).
    * **Removal** (``remove=True``): at the end of fit :func:`~litmix.sparsity.removal.shrink_model` removes the
      masked channels and heads in place: fewer parameters, a faster forward pass. ``callback.report`` holds the
      parameter counts and the new widths. To load the shrunk ``state_dict`` later, build the model at
      ``report.widths`` or build it dense and call ``shrink_model(model, callback.engine.masks, example_inputs)``
      (same shapes), then ``load_state_dict(..., strict=True)``. To keep training the shrunk model, start a new fit
      (the optimizer is re-created). ``nn.MultiheadAttention`` heads can be masked but not removed.

    **Logging** (the shared pruner shell's, per *unit*): a layer's sparsity is the fraction of its channels (keyed by
    the producing layer, ``net.0``) or of its heads (keyed by the attention module) that are masked, and
    ``<prefix>/sparsity`` the fraction of all channels and heads together. ``<prefix>/sparsity`` (progress bar),
    ``<prefix>/channel_sparsity`` and ``<prefix>/head_sparsity`` (only for what is pruned) whenever the masks change
    and every ``Trainer(log_every_n_steps)`` steps; at every mask change every logger also gets them with
    ``<prefix>/sparsity/<layer>`` through ``log_metrics`` and a per-layer bar chart (``<prefix>/sparsity_per_layer``
    on a ``WandbLogger``; a PNG under ``images/`` of a ``CSVLogger``'s ``log_dir``; skipped without matplotlib);
    ``<prefix>/sparsity/<layer>`` at each epoch end; at the end of fit ``<prefix>/final_sparsity`` and
    ``<prefix>/final_sparsity/<layer>``. ``<prefix>`` is ``name`` when given, else ``structured``.

    Args:
        channel_sparsity: final fraction of the removable channels masked, in [0, 1).
        head_sparsity: final fraction of attention heads masked, in [0, 1) (at least one head per module stays).
        scope: ``"layer"`` (every layer / attention module to the same fraction) or ``"global"`` (one ranking).
        importance: ``"l2"`` (weight norms) or ``"random"`` (baseline).
        start_fraction: ``t0`` as a fraction of ``trainer.estimated_stepping_batches``, in [0, 1).
        end_fraction: ``t1`` as a fraction, in (``start_fraction``, 1].
        start_step: absolute ``t0`` (>= 0); overrides ``start_fraction``.
        end_step: absolute ``t1`` (> ``start_step``); overrides ``end_fraction``.
        every_n_steps: optimizer steps between mask updates (>= 1).
        layers: producing layers whose output channels may be pruned (module names of the LightningModule,
            ``"net.0"``); default: every removable one.
        remove: physically remove the masked channels/heads at the end of fit (needs Torch-Pruning).
        seed: seed of ``importance="random"``.
        name: optional instance name (checkpoint key and logging prefix).

    Raises:
        ValueError: for arguments out of range (``channel_sparsity``/``head_sparsity`` outside [0, 1), both 0, ...);
            when fit starts, heads requested on a module without attention modules; at the first batch, a module
            with no removable channel group (listing why each layer is not).
        TypeError: for arguments of the wrong type.
        ImportError: ``remove=True`` or ``channel_sparsity > 0`` without Torch-Pruning (``pip install
            "litmix[pruning]"``).
        MisconfigurationException: under manual optimization, a sharded strategy, or ``remove=True`` with a
            spawn/fork launcher (the parent process could not receive the shrunk weights; use ``strategy="ddp"``
            or call ``shrink_model`` after fit).

    Example:
        >>> from litmix.testing import fit_tiny, TinyClassifier
        >>> model = TinyClassifier()
        >>> cb = StructuredPruning(channel_sparsity=0.5, start_step=0, end_step=2, every_n_steps=1, remove=True)
        >>> _ = fit_tiny([cb], module=model, max_steps=4)
        >>> model.net
        Sequential(
          (0): Linear(in_features=8, out_features=8, bias=True)
          (1): ReLU()
          (2): Linear(in_features=8, out_features=4, bias=True)
        )
        >>> cb.report.params_before, cb.report.params_after, cb.report.widths
        (212, 108, {'net.0': 8})
    """

    default_log_prefix: ClassVar[str] = "structured"
    state_version: ClassVar[int] = 1
    sharded_reason: ClassVar[str] = "it masks and removes whole rows of unsharded parameters"
    deferred_selection: ClassVar[str] = (
        "the channels and heads to prune are chosen at the first batch (which traces the model)"
    )

    def __init__(
        self,
        channel_sparsity: float = 0.5,
        head_sparsity: float = 0.0,
        scope: Literal["layer", "global"] = "layer",
        importance: Literal["l2", "random"] = "l2",
        start_fraction: float = 0.0,
        end_fraction: float = 0.5,
        start_step: int | None = None,
        end_step: int | None = None,
        every_n_steps: int = 10,
        layers: list[str] | None = None,
        remove: bool = False,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        cls = type(self).__name__
        channel_sparsity = check_float(cls, "channel_sparsity", channel_sparsity, low=0.0, high=1.0, high_open=True)
        head_sparsity = check_float(cls, "head_sparsity", head_sparsity, low=0.0, high=1.0, high_open=True)
        if channel_sparsity == 0.0 and head_sparsity == 0.0:
            raise ValueError(
                f"{cls}(channel_sparsity=0.0, head_sparsity=0.0): nothing to prune; set channel_sparsity and/or "
                "head_sparsity in (0, 1)"
            )
        scope = check_choice(cls, "scope", scope, ("layer", "global"))
        importance = check_choice(cls, "importance", importance, ("l2", "random"))
        start_fraction, end_fraction, start_step, end_step, every_n_steps = check_step_schedule(
            cls, start_fraction, end_fraction, start_step, end_step, every_n_steps
        )
        layers = check_parameter_names(cls, layers, argument="layers", what="module names")
        if layers is not None and channel_sparsity == 0.0:
            raise ValueError(f"{cls}(layers={layers}): layers select channels, but channel_sparsity=0.0")
        remove = check_bool(cls, "remove", remove)
        seed = check_int(cls, "seed", seed, low=0)
        if remove:
            require_torch_pruning(cls, "remove=True")
        if channel_sparsity > 0.0:
            require_torch_pruning(cls, f"channel_sparsity={channel_sparsity}")
        super().__init__(name=name)
        self.channel_sparsity = channel_sparsity
        self.head_sparsity = head_sparsity
        self.scope: Literal["layer", "global"] = scope
        self.importance: Literal["l2", "random"] = importance
        self.start_fraction, self.end_fraction = start_fraction, end_fraction
        self.start_step, self.end_step = start_step, end_step
        self.every_n_steps = every_n_steps
        self.layers: list[str] | None = layers
        self.remove = remove
        self.seed = seed
        # checkpointed (with the masks)
        self.last_update_step = -1
        self.current_channel_sparsity = 0.0
        self.current_head_sparsity = 0.0
        # per fit (derived from the module and the first batch)
        self._groups: list[ChannelGroup] = []
        self._attention: list[str] = []
        self._module: pl.LightningModule | None = None
        self._example: Any = None
        self._prepared = False
        self._t0, self._t1 = 0, 1
        self._unit_sparsity: dict[str, float] = {"channels": 0.0, "heads": 0.0}
        #: what ``remove=True`` removed (set at the end of fit)
        self.report: RemovalReport | None = None

    @classmethod
    def example(cls) -> Example:
        """Masks half the hidden channels of ``TinyClassifier`` over the first two steps (no removal)."""
        from litmix.testing import TinyClassifier, TinyDataModule

        return Example(
            TinyClassifier(), TinyDataModule(), [cls(channel_sparsity=0.5, start_step=0, end_step=1, every_n_steps=1)]
        )

    # ------------------------------------------------------------------ setup (shell hooks)
    def _select(self, pl_module: pl.LightningModule) -> tuple[list[str], dict[str, str]]:
        """Nothing yet: the channel groups need a traced forward pass; :meth:`_prepare` selects at the first batch."""
        return [], {}

    def _on_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, names: list[str]) -> None:
        """Check the launcher and the module (attention modules for heads); reset the per-fit state."""
        cls = type(self).__name__
        launcher = getattr(trainer.strategy, "launcher", None)
        if self.remove and type(launcher).__name__ == "_MultiProcessingLauncher":
            raise MisconfigurationException(
                f"{cls}(remove=True): under a spawn/fork launcher the parent process loads rank 0's weights into its "
                "own (dense) module after fit, which fails once they are shrunk; use strategy='ddp' (subprocess "
                "launcher) or remove=False and call litmix.sparsity.removal.shrink_model after fit"
            )
        self._attention = list(find_attention(pl_module)) if self.head_sparsity > 0 else []
        if self.head_sparsity > 0 and not self._attention:
            raise ValueError(
                f"{cls}(head_sparsity={self.head_sparsity}): {type(pl_module).__name__} holds no supported attention "
                "module (torch nn.MultiheadAttention or Hugging Face GPT-2 attention); set head_sparsity=0.0"
            )
        mha = [a for a in self._attention if isinstance(pl_module.get_submodule(a), nn.MultiheadAttention)]
        if self.remove and mha:
            raise ValueError(
                f"{cls}(remove=True, head_sparsity={self.head_sparsity}): heads of nn.MultiheadAttention ({mha}) can "
                "be masked but not removed (its embed_dim is both the input width and num_heads * head_dim); pass "
                "remove=False to keep them masked"
            )
        # a fresh fit starts the schedule afresh; on resume the checkpointed state is loaded after setup
        self.last_update_step, self.current_channel_sparsity, self.current_head_sparsity = -1, 0.0, 0.0
        self._groups, self._example, self._prepared, self.report = [], None, False, None
        self._module = pl_module

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Resolve the schedule in optimizer steps; refuse one the run does not reach."""
        self._t0, self._t1 = resolve_step_schedule(
            type(self).__name__, trainer, self.start_fraction, self.end_fraction, self.start_step, self.end_step
        )

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        """First batch of the fit: trace the channel groups, attach the (possibly restored) masks, apply them."""
        cls = type(self).__name__
        inputs, _, _ = split_batch(batch)
        self._example = inputs[:2].detach() if isinstance(inputs, Tensor) else inputs
        excluded: dict[str, str] = {}
        if self.channel_sparsity > 0:
            self._groups, excluded = channel_groups(pl_module, self._example, self.layers)
            if not self._groups:
                reasons = (
                    "; ".join(f"{n}: {why}" for n, why in excluded.items()) or "no nn.Linear/nn.Conv*/Conv1D layer"
                )
                raise ValueError(
                    f"{cls}(channel_sparsity={self.channel_sparsity}, layers={self.layers}): "
                    f"{type(pl_module).__name__} has no removable channel group ({reasons})"
                )
        names: list[str] = []
        for g in self._groups:
            names += [n for n, _, _ in g.members]
        if self._attention:
            names += list(head_parameter_masks(pl_module, {a: _all_heads(pl_module, a) for a in self._attention}))
        restored = self._engine.masks
        unknown = [n for n in restored if n not in names]
        if unknown:
            raise ValueError(f"{cls}: the checkpoint holds masks for {unknown}, which this fit does not prune")
        self._names = list(dict.fromkeys(names))
        self._engine.attach(pl_module, {n: restored.get(n) for n in self._names}, keep_existing=False)
        self._engine.apply()
        self._engine.mask_optimizer_state(trainer.optimizers)
        self._prepared = True
        self._masks_changed()
        self._published = dict.fromkeys(self.layer_sparsity, 0.0)  # as the shell's setup: restored masks get logged
        roots = ", ".join(f"{g.root} ({g.size})" for g in self._groups)
        left = "; not removable: " + ", ".join(f"{n} ({why})" for n, why in excluded.items()) if excluded else ""
        rank_zero_info(
            f"{cls}: channels of [{roots}] to {self.channel_sparsity}, heads of {self._attention} to "
            f"{self.head_sparsity}, {self.importance} importance, steps {self._t0}..{self._t1} every "
            f"{self.every_n_steps}{left}"
        )

    # ------------------------------------------------------------------ masks
    def _is_update_step(self, step: int) -> bool:
        if step <= self.last_update_step or step < self._t0:
            return False
        if step <= self._t1:
            return (step - self._t0) % self.every_n_steps == 0 or step == self._t1
        target = (self.channel_sparsity, self.head_sparsity)
        return (self.current_channel_sparsity, self.current_head_sparsity) != target  # resumed past t1: catch up

    def _decide(self, pl_module: pl.LightningModule, step: int, s_ch: float, s_h: float) -> dict[str, Tensor]:
        masks = dict(self._engine.masks)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        new: dict[str, Tensor] = {n: torch.ones_like(m, dtype=torch.bool, device="cpu") for n, m in masks.items()}
        if self._groups:
            params = dict(pl_module.named_parameters())
            current = {g.root: _rows_kept(masks[g.members[0][0]], g.members[0][1]) for g in self._groups}
            if self.importance == "l2":
                rows = {
                    g.root: params[g.members[0][0]].detach().movedim(g.members[0][1], 0).cpu() for g in self._groups
                }
                keep = {n: m.flatten(1).all(dim=1) for n, m in structured_masks(rows, s_ch, self.scope).items()}
                keep = {n: k & current[n] for n, k in keep.items()}  # masked channels have zero rows: they stay out
            else:
                scores = {g.root: torch.rand(g.size, generator=gen) + 1e-6 for g in self._groups}
                keep = magnitude_masks(scores, s_ch, self.scope, masks=current)
            for n, m in channel_parameter_masks(pl_module, self._groups, keep).items():
                new[n] &= m.cpu()
        if self._attention:
            current_h = kept_heads(pl_module, masks, self._attention)
            if self.importance == "l2":
                scores_h = head_scores(pl_module, self._attention)
            else:
                scores_h = {a: torch.rand(k.numel(), generator=gen) + 1e-6 for a, k in current_h.items()}
            keep_h = head_masks(scores_h, s_h, self.scope, keep=current_h)
            for n, m in head_parameter_masks(pl_module, keep_h).items():
                new[n] &= m.cpu()
        return new

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """First batch: prepare; at scheduled steps: new masks on rank 0, broadcast and applied."""
        if not self._prepared:
            self._prepare(trainer, pl_module, batch)
        step = trainer.global_step
        if not self._is_update_step(step):
            return
        s_ch = cubic_sparsity(step, self._t0, self._t1, 0.0, self.channel_sparsity)
        s_h = cubic_sparsity(step, self._t0, self._t1, 0.0, self.head_sparsity)
        new = self._decide(pl_module, step, s_ch, s_h) if trainer.is_global_zero else {}
        self._engine.update(new, trainer.optimizers, strategy=trainer.strategy)
        self.last_update_step = step
        self.current_channel_sparsity, self.current_head_sparsity = s_ch, s_h
        self._masks_changed()

    # ------------------------------------------------------------------ reports (shell hooks)
    def _refresh_layer_sparsity(self) -> None:
        """Fraction of channels / heads masked per producing layer / attention module; ``global``: of all units."""
        masks = self._engine.masks
        report: dict[str, float] = {}
        channels = masked_channels = heads = masked_heads = 0
        for g in self._groups:
            kept = int(_rows_kept(masks[g.members[0][0]], g.members[0][1]).sum())
            report[g.root] = 1.0 - kept / g.size
            channels, masked_channels = channels + g.size, masked_channels + g.size - kept
        if self._attention and self._module is not None:
            for a, k in kept_heads(self._module, masks, self._attention).items():
                report[a] = 1.0 - float(k.float().mean())
                heads, masked_heads = heads + k.numel(), masked_heads + int((~k).sum())
        self._unit_sparsity = {"channels": masked_channels / max(channels, 1), "heads": masked_heads / max(heads, 1)}
        report["global"] = (masked_channels + masked_heads) / max(channels + heads, 1)
        self.layer_sparsity = report

    def _target_sparsity(self) -> float | None:
        """The dashed line of the per-layer image: the one target, unless channels and heads differ."""
        targets = {t for t, on in ((self.channel_sparsity, self._groups), (self.head_sparsity, self._attention)) if on}
        return targets.pop() if len(targets) == 1 else None

    def _step_metrics(self) -> dict[str, float]:
        """``channel_sparsity`` / ``head_sparsity``: fractions of the channels / heads masked (what is pruned)."""
        out = {}
        if self._groups:
            out["channel_sparsity"] = self._unit_sparsity["channels"]
        if self._attention:
            out["head_sparsity"] = self._unit_sparsity["heads"]
        return out

    # ------------------------------------------------------------------ removal
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``remove=True``: physically remove the masked channels and heads."""
        super().on_fit_end(trainer, pl_module)
        if not self.remove or not self._prepared:
            return
        masks = {n: m.detach().cpu().clone() for n, m in self._engine.masks.items()}
        self._engine.detach()
        self.report = shrink_model(pl_module, masks, self._example)
        self._engine.masks = masks
        rank_zero_info(
            f"{type(self).__name__}: removed {sum(len(v) for v in self.report.channels.values())} channels and "
            f"{sum(len(v) for v in self.report.heads.values())} heads: {self.report.params_before} -> "
            f"{self.report.params_after} parameters"
        )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Drop the references to the module and its parameters (the masks stay, for :meth:`state_dict`)."""
        super().teardown(trainer, pl_module, stage)
        self._module = None

    # ------------------------------------------------------------------ state (shell hooks)
    def _extra_state(self) -> dict[str, Any]:
        """Schedule position (the masks follow at one bit per weight)."""
        return {
            "last_update_step": self.last_update_step,
            "current_channel_sparsity": self.current_channel_sparsity,
            "current_head_sparsity": self.current_head_sparsity,
        }

    def _load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        self.last_update_step = int(state_dict.get("last_update_step", -1))
        self.current_channel_sparsity = float(state_dict.get("current_channel_sparsity", 0.0))
        self.current_head_sparsity = float(state_dict.get("current_head_sparsity", 0.0))

    def _load_masks(self, state_dict: Mapping[str, Any]) -> None:
        """Masks restored before the first batch are kept and attached there (:meth:`_prepare`)."""
        if not self._engine.attached:
            self._engine.masks = {}
        self._engine.load_state_dict(state_dict, strict=False)


def _all_heads(module: nn.Module, name: str) -> Tensor:
    from litmix.functional.head_importance import head_layout

    return torch.ones(head_layout(module.get_submodule(name))[0], dtype=torch.bool)
