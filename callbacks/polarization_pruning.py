"""Neuron-level structured pruning with the polarization regularizer on scaling gates, as a Lightning callback."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example
from litmix.data import split_batch
from litmix.functional.sparsity import magnitude_masks
from litmix.loss_terms import LossTermCallback
from litmix.registry import register
from litmix.sparsity import MaskEngine
from litmix.validation import check_bool, check_choice, check_float, check_int, check_str, check_type

__all__ = ["PolarizationPruning"]

PAPER = (
    "Neuron-level Structured Pruning using Polarization Regularizer (NeurIPS 2020, "
    "https://proceedings.neurips.cc/paper/2020/hash/703957b6dd9e3a7980e040bee50ded65-Abstract.html); "
    "consensus sub-network, one pass (https://arxiv.org/abs/2302.10798)"
)


def polarization(gates: Tensor, t: float) -> Tensor:
    """The polarization regularizer ``R(g) = t * ||g||_1 - ||g - mean(g)||_1`` of one flat gate vector.

    Example:
        >>> polarization(torch.tensor([0.0, 1.0]), 1.2)  # 1.2 * 1 - (0.5 + 0.5)
        tensor(0.2000)
    """
    return t * gates.abs().sum() - (gates - gates.mean()).abs().sum()


class _BNClassifier(pl.LightningModule):
    """``TinyClassifier`` with batch-statistics ``BatchNorm1d`` gates (DDP ranks agree); used by ``example``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(8, 16), nn.BatchNorm1d(16, track_running_stats=False), nn.ReLU(), nn.Linear(16, 4)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = split_batch(batch)
        assert y is not None
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.05)


@register("callback", "sparsity", paper=PAPER)
class PolarizationPruning(LossTermCallback):
    """Push per-neuron scaling gates to 0 or 1 with the polarization regularizer, then prune the gates near 0.

    Implements Zhuang et al., "Neuron-level Structured Pruning using Polarization Regularizer" (NeurIPS 2020,
    https://proceedings.neurips.cc/paper/2020/hash/703957b6dd9e3a7980e040bee50ded65-Abstract.html), the
    regularizer the one-pass consensus sub-network method (https://arxiv.org/abs/2302.10798) uses on its gates:

    * The gates are the per-channel scaling factors ``gamma`` of the module's ``BatchNorm`` layers (default), or the
      1-D parameters named in ``parameter_names``. With ``init_gates`` they start at that value (the paper: 0.5)
      when training starts from step 0.
    * Until the pruning point the loss gets ``weight * R(gamma)`` with ``R = t * ||gamma||_1 -
      ||gamma - mean(gamma)||_1`` over all gates together, added through the core's loss terms
      (:class:`~litmix.loss_terms.LossTermCallback`); with ``clamp`` the gates are kept in [0, 1] after each step.
      For gates above the mean the term's gradient is ``weight * (t - 1)`` (up when ``t < 1``), below it
      ``weight * (t + 1)`` (down): the gates split into a group at 0 and a group at the top.
    * After ``prune_at`` optimizer steps (``unit="step"``) or epochs (``"epoch"``) the ``sparsity`` fraction of
      gates with the smallest ``|gamma|`` (ranked globally) is pruned: structured masks on the gate and on the
      same module's ``bias`` (the neuron's output is 0), decided on rank 0 and broadcast, held by the shared
      :class:`~litmix.sparsity.MaskEngine` and checkpointed; training then continues without the regularizer and
      with the mask fixed (fine-tuning).

    Logs ``<prefix>/loss*`` (the term), ``<prefix>/middle_band`` (fraction of gates with
    ``0.1 < gamma / max(gamma) < 0.9``) at epoch ends and ``<prefix>/sparsity`` after pruning (``<prefix>`` is
    ``name`` when given, else ``polarization``).

    Args:
        sparsity: fraction of gates (neurons/channels) pruned, in [0, 1).
        weight: the regularizer's factor ``lambda`` (>= 0).
        t: the regularizer's ``t`` (> 0; below 1 pushes the kept gates up).
        prune_at: optimizer steps or epochs before pruning (>= 1).
        unit: ``"step"`` or ``"epoch"``.
        init_gates: initial gate value at step 0 (``None`` keeps the module's).
        clamp: keep the gates in [0, 1] after every optimizer step.
        parameter_names: 1-D gate parameters; default ``None``: every affine ``BatchNorm`` layer's ``weight``.
        name: optional instance name (checkpoint key and logging prefix).

    Raises:
        ValueError: for arguments out of range (in ``__init__``, e.g. ``sparsity`` outside [0, 1)) and, when fit
            starts, unknown or non-1-D gate parameters, or a module with nothing prunable (no affine BatchNorm).
        TypeError: for arguments of the wrong type.
        MisconfigurationException: under manual optimization or a sharded strategy (FSDP, DeepSpeed).

    Example:
        >>> from litmix.testing import fit_tiny
        >>> cb = PolarizationPruning(sparsity=0.5, weight=1e-2, prune_at=4, unit="step")
        >>> _ = fit_tiny([cb], module=_BNClassifier(), max_steps=6)
        >>> cb.pruned, cb.engine.sparsity_report()["net.1.weight"]
        (True, 0.5)
    """

    default_log_prefix: ClassVar[str] = "polarization"
    state_version: ClassVar[int] = 1

    def __init__(
        self,
        sparsity: float = 0.5,
        weight: float = 1e-4,
        t: float = 1.0,
        prune_at: int = 1,
        unit: Literal["step", "epoch"] = "epoch",
        init_gates: float | None = 0.5,
        clamp: bool = True,
        parameter_names: list[str] | None = None,
        name: str | None = None,
    ) -> None:
        cls = type(self).__name__
        sparsity = check_float(cls, "sparsity", sparsity, low=0.0, high=1.0, high_open=True)
        weight = check_float(cls, "weight", weight, low=0.0, high=1e6)
        t = check_float(cls, "t", t, low=0.0, high=1e3, low_open=True)
        prune_at = check_int(cls, "prune_at", prune_at, low=1)
        unit = check_choice(cls, "unit", unit, ("step", "epoch"))
        init_gates = check_float(cls, "init_gates", init_gates, low=0.0, high=1e3, allow_none=True)
        clamp = check_bool(cls, "clamp", clamp)
        if parameter_names is not None:
            check_type(cls, "parameter_names", parameter_names, (list, tuple))
            if not parameter_names:
                raise ValueError(
                    f"{cls}(parameter_names=[]): parameter_names must be a non-empty list of parameter names or None"
                )
            for n in parameter_names:
                check_str(cls, "parameter_names", n, allow_empty=False)
        super().__init__(name=name)
        self.sparsity: float = sparsity
        self.weight: float = weight
        self.loss_term_weight = weight
        self.t: float = t
        self.prune_at: int = prune_at
        self.unit: Literal["step", "epoch"] = unit
        self.init_gates: float | None = init_gates
        self.clamp: bool = clamp
        self.parameter_names: list[str] | None = list(parameter_names) if parameter_names is not None else None
        # state (checkpointed)
        self.pruned: bool = False
        self.pruned_step: int = -1
        self._engine = MaskEngine(cls)
        self._gates: list[str] = []
        self._biases: dict[str, str] = {}
        self._params: dict[str, nn.Parameter] = {}
        self._log_pending: bool = False

    @classmethod
    def example(cls) -> Example:
        """Polarization on the gates of a ``TinyClassifier`` with a ``BatchNorm1d``; half of them pruned at step 1."""
        from litmix.testing import TinyDataModule

        return Example(_BNClassifier(), TinyDataModule(), [cls(sparsity=0.5, weight=1e-2, prune_at=1, unit="step")])

    def _state_key_fields(self) -> dict[str, Any]:
        return {} if self.parameter_names is None else {"parameter_names": list(self.parameter_names)}

    @property
    def engine(self) -> MaskEngine:
        """The :class:`~litmix.sparsity.MaskEngine` owning the masks (gates and their biases)."""
        return self._engine

    def gates(self) -> Tensor:
        """All gate values, concatenated (detached)."""
        return torch.cat([self._params[n].detach().flatten() for n in self._gates])

    def middle_band(self, low: float = 0.1, high: float = 0.9) -> float:
        """Fraction of gates with ``low < |gamma| / max|gamma| < high`` (unpruned gates only after pruning)."""
        g = self.gates().abs()
        if self.pruned:
            keep = torch.cat([self._engine.masks[n].flatten() for n in self._gates])
            g = g[keep]
        if g.numel() == 0 or float(g.max()) == 0.0:
            return 0.0
        r = g / g.max()
        return float(((r > low) & (r < high)).float().mean())

    # ------------------------------------------------------------------ hooks
    def _select(self, pl_module: pl.LightningModule) -> list[str]:
        cls = type(self).__name__
        if self.parameter_names is None:
            names = [
                f"{m_name}.weight" if m_name else "weight"
                for m_name, m in pl_module.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
            ]
            if not names:
                raise ValueError(
                    f"{cls}(parameter_names=None): found nothing prunable (no affine BatchNorm layer whose scaling "
                    f"factors are the gates) in {type(pl_module).__name__}; add BatchNorm layers or pass the 1-D "
                    "gate parameters as parameter_names"
                )
            return names
        names, _ = self._engine.select(pl_module, self.parameter_names)
        params = dict(pl_module.named_parameters())
        bad = [n for n in names if params[n].dim() != 1]
        if bad:
            raise ValueError(f"{cls}(parameter_names={self.parameter_names}): gates must be 1-D parameters, got {bad}")
        return names

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Select the gates and their biases; register the mask buffers (before a checkpoint is loaded)."""
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        cls = type(self).__name__
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                f"{cls} supports automatic optimization only; the module sets automatic_optimization=False"
            )
        refuse_sharded_strategy(cls, trainer.strategy, "it ranks whole gate vectors")
        self._gates = self._select(pl_module)
        params = dict(pl_module.named_parameters())
        self._biases = {}
        for n in self._gates:
            bias = n[: -len("weight")] + "bias" if n.endswith("weight") else ""
            if bias in params and params[bias].shape == params[n].shape:
                self._biases[n] = bias
        self.pruned, self.pruned_step = False, -1
        self._engine.detach()
        self._engine.masks = {}
        self._engine.attach(pl_module, [*self._gates, *self._biases.values()], keep_existing=False)
        self._params = {n: params[n] for n in self._gates}
        rank_zero_info(f"{cls}: {sum(params[n].numel() for n in self._gates)} gates in {self._gates}")

    @torch.no_grad()
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Initialize the gates at step 0; re-apply restored masks after a resume."""
        params = dict(pl_module.named_parameters())
        self._params = {n: params[n] for n in self._gates}
        self._engine.refresh(pl_module)
        if trainer.global_step == 0 and self.init_gates is not None and not self.pruned:
            for p in self._params.values():
                p.fill_(self.init_gates)
        self._engine.apply()
        self._engine.mask_optimizer_state(trainer.optimizers)
        self._engine.remask_weights = self._engine.needs_remask(trainer.optimizers)

    def loss_term(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, outputs: Any
    ) -> Tensor | None:
        """``R(gamma)`` over all gates until pruning, then nothing."""
        if self.pruned:
            return None
        return polarization(torch.cat([self._params[n].flatten() for n in self._gates]), self.t)

    def _position(self, trainer: pl.Trainer) -> int:
        return trainer.global_step if self.unit == "step" else trainer.current_epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Epoch pruning happens before the first batch of epoch ``prune_at``."""
        super().on_train_epoch_start(trainer, pl_module)
        if self.unit == "epoch" and not self.pruned and self._position(trainer) >= self.prune_at:
            self._prune(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Step pruning happens before the forward of step ``prune_at``."""
        if self.unit == "step" and not self.pruned and self._position(trainer) >= self.prune_at:
            self._prune(trainer)

    @torch.no_grad()
    def _prune(self, trainer: pl.Trainer) -> None:
        new: dict[str, Tensor] = {}
        if trainer.is_global_zero:
            gate_masks = magnitude_masks({n: self._params[n].detach() for n in self._gates}, self.sparsity, "global")
            for n, m in gate_masks.items():
                new[n] = m.cpu()
                if n in self._biases:
                    new[self._biases[n]] = m.cpu()
        self._engine.update(new, trainer.optimizers, strategy=trainer.strategy)
        self.pruned, self.pruned_step = True, trainer.global_step
        self._log_pending = True
        rank_zero_info(
            f"{type(self).__name__}: pruned {self.sparsity:.0%} of the gates at step {trainer.global_step} "
            f"(gates in the middle band: {self.middle_band():.3f})"
        )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Mask the gradients of pruned gates and biases."""
        if self.pruned:
            self._engine.mask_gradients()

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Clamp the gates to [0, 1]; re-mask when needed; log the sparsity after pruning."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.clamp:
            for p in self._params.values():
                p.clamp_(0.0, 1.0)
        if self.pruned and self._engine.remask_weights:
            self._engine.apply()
        if self._log_pending:
            report = self._engine.sparsity_report()
            value = sum(report[n] * self._params[n].numel() for n in self._gates) / self.gates().numel()
            pl_module.log(f"{self.log_prefix}/sparsity", value, on_step=True, on_epoch=False, batch_size=1)
            self._log_pending = False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the fraction of gates in the middle band (bimodality)."""
        super().on_train_epoch_end(trainer, pl_module)
        pl_module.log(f"{self.log_prefix}/middle_band", self.middle_band(), on_epoch=True, sync_dist=True)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the loss wrapper; drop the engine's parameter references (the masks stay)."""
        super().teardown(trainer, pl_module, stage)
        self._engine.detach()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Whether and when the gates were pruned, and the masks (one bit per gate and bias)."""
        return {
            **super().state_dict(),
            "pruned": self.pruned,
            "pruned_step": self.pruned_step,
            **self._engine.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            ValueError: for a newer state version, or a mask whose shape differs from the parameter's.
        """
        super().load_state_dict(state_dict)
        self.pruned = bool(state_dict.get("pruned", False))
        self.pruned_step = int(state_dict.get("pruned_step", -1))
        self._engine.load_state_dict(state_dict, strict=bool(self._gates))
