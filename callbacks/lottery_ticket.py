"""Lottery tickets with weight rewinding (iterative magnitude pruning), as a Lightning callback."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from litmix.base import Example
from litmix.functional.sparsity import magnitude_masks, random_masks
from litmix.registry import register
from litmix.sparsity._callback import MaskedPruningCallback, check_parameter_names, sync_generator
from litmix.validation import check_bool, check_choice, check_float, check_int

__all__ = ["LotteryTicket"]

PAPER = (
    "Grokking Tickets: Lottery Tickets Accelerate Grokking (https://arxiv.org/abs/2310.19470); "
    "Linear Mode Connectivity and the Lottery Ticket Hypothesis (https://arxiv.org/abs/1912.05668)"
)


@register("callback", "sparsity", paper=PAPER)
class LotteryTicket(MaskedPruningCallback):
    """Find a lottery ticket in one ``fit``: train, prune by magnitude, rewind the survivors, retrain with the mask.

    Implements the lottery-ticket procedure with rewinding used by Grokking Tickets (Minegishi et al., "Grokking
    Tickets: Lottery Tickets Accelerate Grokking", https://arxiv.org/abs/2310.19470) and by Frankle et al. ("Linear
    Mode Connectivity and the Lottery Ticket Hypothesis", https://arxiv.org/abs/1912.05668):

    * Before optimizer step ``rewind_step`` (0: the initialization ``theta_0``) every trainable parameter is copied
      to the CPU (the rewind point, kept in this callback's checkpointed state).
    * Round ``r = 1 .. rounds`` happens after ``r * prune_every`` optimizer steps (``unit="step"``) or epochs
      (``unit="epoch"``): the selected weights get a magnitude mask (``scope="global"``: one threshold over all of
      them; ``"layer"``: each tensor on its own) at the sparsity ``1 - (1 - sparsity) ** (r / rounds)`` (already
      pruned weights stay pruned), decided on global rank 0 and broadcast; then every trainable parameter is
      rewound to the snapshot (pruned weights stay 0) and, with ``reset_optimizer``, the optimizer state is
      cleared (a fresh optimizer, as a new IMP level in open_lth). The learning-rate schedule is not rewound.
      With ``retrain_weight_decay`` set, every optimizer param group's ``weight_decay`` becomes that value at the
      rewind (Grokking Tickets: the base run uses weight decay, the ticket is retrained without it); the value in
      force is checkpointed and set again when a resumed run starts.
    * After the last round training continues with the mask fixed (gradients masked before each step, weights
      re-masked after it when the optimizer needs it).

    ``scoring="random"`` draws a uniformly random mask at the same per-tensor density instead (the random-ticket
    control of the papers). Masks are held by the shared :class:`~litmix.sparsity.MaskEngine` (non-persistent
    ``<param>_mask`` buffers; the module's checkpoint still loads strictly into its class) and checkpointed (one
    bit per weight) with the snapshot and the round count, so a resumed run repeats the uninterrupted one exactly.

    Logs like every litmix pruner (see :class:`~litmix.callbacks.GradualPruning`: sparsity per layer and overall
    and a per-layer image at each round, final values and ``<prefix>/rounds`` at the end of fit; ``<prefix>`` is
    ``name`` when given, else ``lottery``).

    Args:
        sparsity: fraction of the selected weights pruned after the last round, in [0, 1).
        prune_every: optimizer steps (or epochs) of training before each round (>= 1).
        unit: ``"step"`` or ``"epoch"``: the unit of ``prune_every``.
        rounds: number of pruning rounds (iterative magnitude pruning when > 1).
        rewind_step: optimizer step whose weights are the rewind point (0: the initialization). With
            ``unit="step"`` it must be smaller than ``prune_every``.
        scope: ``"global"`` or ``"layer"`` magnitude ranking.
        scoring: ``"magnitude"`` (the ticket) or ``"random"`` (the control).
        reset_optimizer: clear the optimizer state at each rewind.
        parameter_names: parameters to prune (``named_parameters`` names); default ``None``: the weights of
            ``nn.Linear``, ``nn.Conv*``, ``nn.Bilinear``, HF ``Conv1D`` and PyG ``Linear`` layers.
        seed: seed of the random control's masks (>= 0).
        retrain_weight_decay: ``weight_decay`` of every optimizer param group from the first rewind on (>= 0,
            finite); ``None`` (default): left unchanged.
        name: optional instance name (checkpoint key and logging prefix).

    Raises:
        ValueError: for arguments out of range (in ``__init__``, e.g. ``sparsity`` outside [0, 1)) and, when fit
            starts, unknown parameter names or a module without prunable layers.
        TypeError: for arguments of the wrong type.
        MisconfigurationException: under manual optimization or a sharded strategy (FSDP, DeepSpeed).

    Example:
        >>> from litmix.testing import fit_tiny, TinyClassifier
        >>> model = TinyClassifier()
        >>> cb = LotteryTicket(sparsity=0.75, prune_every=4, unit="step")
        >>> _ = fit_tiny([cb], module=model, max_steps=8)
        >>> cb.rounds_done, cb.engine.sparsity_report()["global"]
        (1, 0.75)
    """

    default_log_prefix: ClassVar[str] = "lottery"
    state_version: ClassVar[int] = 1
    sharded_reason: ClassVar[str] = "it snapshots and ranks whole parameters"

    def __init__(
        self,
        sparsity: float = 0.8,
        prune_every: int = 1,
        unit: Literal["step", "epoch"] = "epoch",
        rounds: int = 1,
        rewind_step: int = 0,
        scope: Literal["global", "layer"] = "global",
        scoring: Literal["magnitude", "random"] = "magnitude",
        reset_optimizer: bool = True,
        parameter_names: list[str] | None = None,
        seed: int = 0,
        retrain_weight_decay: float | None = None,
        name: str | None = None,
    ) -> None:
        cls = type(self).__name__
        sparsity = check_float(cls, "sparsity", sparsity, low=0.0, high=1.0, high_open=True)
        prune_every = check_int(cls, "prune_every", prune_every, low=1)
        unit = check_choice(cls, "unit", unit, ("step", "epoch"))
        rounds = check_int(cls, "rounds", rounds, low=1, high=1000)
        rewind_step = check_int(cls, "rewind_step", rewind_step, low=0)
        if unit == "step" and rewind_step >= prune_every:
            raise ValueError(
                f"{cls}(rewind_step={rewind_step}): the rewind point must come before the first round, "
                f"i.e. rewind_step < prune_every={prune_every} with unit='step'"
            )
        scope = check_choice(cls, "scope", scope, ("global", "layer"))
        scoring = check_choice(cls, "scoring", scoring, ("magnitude", "random"))
        reset_optimizer = check_bool(cls, "reset_optimizer", reset_optimizer)
        parameter_names = check_parameter_names(cls, parameter_names)
        seed = check_int(cls, "seed", seed, low=0, high=2**63 - 1)
        retrain_weight_decay = check_float(cls, "retrain_weight_decay", retrain_weight_decay, low=0.0, allow_none=True)
        super().__init__(name=name)
        self.sparsity: float = sparsity
        self.prune_every: int = prune_every
        self.unit: Literal["step", "epoch"] = unit
        self.rounds: int = rounds
        self.rewind_step: int = rewind_step
        self.scope: Literal["global", "layer"] = scope
        self.scoring: Literal["magnitude", "random"] = scoring
        self.reset_optimizer: bool = reset_optimizer
        self.parameter_names = parameter_names
        self.seed: int = seed
        self.retrain_weight_decay: float | None = retrain_weight_decay
        # state (checkpointed)
        self.rounds_done: int = 0
        self.weight_decay_set: float | None = None
        self.snapshot: dict[str, Tensor] = {}
        self.round_steps: list[int] = []
        self._generator = torch.Generator().manual_seed(seed)

    @classmethod
    def example(cls) -> Example:
        """A ticket at 50 % sparsity after one step of ``TinyClassifier``, rewound to the initialization."""
        from litmix.testing import TinyClassifier, TinyDataModule

        return Example(TinyClassifier(), TinyDataModule(), [cls(sparsity=0.5, prune_every=1, unit="step")])

    def round_sparsity(self, r: int) -> float:
        """Target sparsity after round ``r`` (1-based): ``1 - (1 - sparsity) ** (r / rounds)``."""
        return 1.0 - (1.0 - self.sparsity) ** (r / self.rounds)

    @property
    def masks_active(self) -> bool:
        """The mask is in force once the first round pruned."""
        return self.rounds_done > 0

    # ------------------------------------------------------------------ hooks
    def _on_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, names: list[str]) -> None:
        self.rounds_done, self.snapshot, self.round_steps = 0, {}, []
        self.weight_decay_set = None
        self._generator = torch.Generator().manual_seed(self.seed)

    def _selection_detail(self) -> str:
        return f"; target sparsity {self.sparsity}"

    def _target_sparsity(self) -> float:
        return self.sparsity

    def _position(self, trainer: pl.Trainer) -> int:
        return trainer.global_step if self.unit == "step" else trainer.current_epoch

    def _maybe_act(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.snapshot and trainer.global_step >= self.rewind_step:
            self._take_snapshot(pl_module)
        if (
            self.snapshot
            and self.rounds_done < self.rounds
            and self._position(trainer) >= (self.rounds_done + 1) * self.prune_every
        ):
            self._prune_and_rewind(trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Masks as in every pruner; a resumed run past a rewind gets the retrain weight decay again."""
        super().on_train_start(trainer, pl_module)
        if self.weight_decay_set is not None:
            self._set_weight_decay(trainer, self.weight_decay_set)

    def _set_weight_decay(self, trainer: pl.Trainer, value: float) -> None:
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["weight_decay"] = value
        self.weight_decay_set = value

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Epoch rounds happen before the first batch of epoch ``r * prune_every``."""
        if self.unit == "epoch":
            self._maybe_act(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Snapshot before step ``rewind_step``; step rounds happen before the forward of step ``r * prune_every``."""
        self._maybe_act(trainer, pl_module)

    @torch.no_grad()
    def _take_snapshot(self, pl_module: pl.LightningModule) -> None:
        self.snapshot = {n: p.detach().cpu().clone() for n, p in pl_module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def _prune_and_rewind(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        r = self.rounds_done + 1
        target = self.round_sparsity(r)
        new: dict[str, Tensor] = {}
        if trainer.is_global_zero:
            params = self._engine.parameters()
            if self.scoring == "magnitude":
                weights = {n: p.detach() for n, p, _ in params}
                masks = {n: m for n, _, m in params}
                new = {n: m.cpu() for n, m in magnitude_masks(weights, target, self.scope, masks=masks).items()}
            else:
                shapes = {n: tuple(p.shape) for n, p, _ in params}
                fresh = random_masks(shapes, dict.fromkeys(shapes, 1.0 - target), self._generator)
                # nested random tickets: keep previous prunes, top up at random among the kept weights
                new = {}
                for n, _, m in params:
                    keep = m.cpu() & fresh[n]
                    need = round((1.0 - target) * m.numel()) - int(keep.sum())
                    if need > 0:
                        candidates = (m.cpu() & ~keep).flatten().nonzero().flatten()
                        order = torch.randperm(len(candidates), generator=self._generator)[:need]
                        keep.view(-1)[candidates[order]] = True
                    new[n] = keep
        self._engine.update(new, trainer.optimizers, strategy=trainer.strategy)
        sync_generator(trainer, self._generator)
        # rewind every trainable parameter to the snapshot (pruned weights stay 0)
        for n, p in pl_module.named_parameters():
            if n in self.snapshot:
                p.copy_(self.snapshot[n].to(p.device, p.dtype))
        self._engine.apply()
        if self.reset_optimizer:
            for opt in trainer.optimizers:
                opt.state = defaultdict(dict)
        else:
            self._engine.mask_optimizer_state(trainer.optimizers)
        if self.retrain_weight_decay is not None:
            self._set_weight_decay(trainer, self.retrain_weight_decay)
        self.rounds_done = r
        self.round_steps.append(trainer.global_step)
        self._masks_changed()
        rank_zero_info(
            f"{type(self).__name__}: round {r}/{self.rounds} at step {trainer.global_step}: sparsity "
            f"{self.layer_sparsity['global']:.4f}, rewound to step {self.rewind_step}"
        )

    def _final_metrics(self) -> dict[str, float]:
        return {"rounds": float(self.rounds_done)}

    # ------------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:
        """Rounds, snapshot (CPU), retrain weight decay in force, random control's generator (then the masks)."""
        return {
            "rounds_done": self.rounds_done,
            "weight_decay_set": self.weight_decay_set,
            "round_steps": list(self.round_steps),
            "snapshot": dict(self.snapshot),
            "generator": self._generator.get_state(),
        }

    def _load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        self.rounds_done = int(state_dict.get("rounds_done", 0))
        self.round_steps = [int(s) for s in state_dict.get("round_steps", [])]
        wd = state_dict.get("weight_decay_set")
        self.weight_decay_set = None if wd is None else float(wd)
        self.snapshot = {n: t.detach().cpu().clone() for n, t in state_dict.get("snapshot", {}).items()}
        if "generator" in state_dict:
            self._generator.set_state(state_dict["generator"])
