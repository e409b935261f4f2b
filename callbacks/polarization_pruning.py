"""Neuron-level structured pruning with the polarization regularizer on scaling gates, as a Lightning callback."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from litmix.base import Example
from litmix.data import split_batch
from litmix.functional.sparsity import magnitude_masks
from litmix.loss_terms import LossTermCallback
from litmix.registry import register
from litmix.sparsity._callback import MaskedPruningCallback, check_parameter_names
from litmix.validation import check_bool, check_choice, check_float, check_int

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
class PolarizationPruning(MaskedPruningCallback, LossTermCallback):
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
    ``0.1 < gamma / max(gamma) < 0.9``) at epoch ends and, like every litmix pruner (see
    :class:`~litmix.callbacks.GradualPruning`), the sparsity per gate/bias tensor and ``<prefix>/sparsity`` (the
    fraction of gates pruned) with a per-layer image when the gates are pruned (``<prefix>`` is ``name`` when
    given, else ``polarization``).

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
    sharded_reason: ClassVar[str] = "it ranks whole gate vectors"

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
        parameter_names = check_parameter_names(cls, parameter_names)
        super().__init__(name=name)
        self.sparsity: float = sparsity
        self.weight: float = weight
        self.loss_term_weight = weight
        self.t: float = t
        self.prune_at: int = prune_at
        self.unit: Literal["step", "epoch"] = unit
        self.init_gates: float | None = init_gates
        self.clamp: bool = clamp
        self.parameter_names = parameter_names
        # state (checkpointed)
        self.pruned: bool = False
        self.pruned_step: int = -1
        self._gates: list[str] = []
        self._biases: dict[str, str] = {}
        self._gate_params: dict[str, nn.Parameter] = {}

    @classmethod
    def example(cls) -> Example:
        """Polarization on the gates of a ``TinyClassifier`` with a ``BatchNorm1d``; half of them pruned at step 1."""
        from litmix.testing import TinyDataModule

        return Example(_BNClassifier(), TinyDataModule(), [cls(sparsity=0.5, weight=1e-2, prune_at=1, unit="step")])

    def gates(self) -> Tensor:
        """All gate values, concatenated (detached)."""
        return torch.cat([self._gate_params[n].detach().flatten() for n in self._gates])

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

    @property
    def masks_active(self) -> bool:
        """The masks are in force once the gates were pruned."""
        return self.pruned

    # ------------------------------------------------------------------ hooks
    def _select_gates(self, pl_module: pl.LightningModule) -> list[str]:
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

    def _select(self, pl_module: pl.LightningModule) -> tuple[list[str], dict[str, str]]:
        """The gates and, per gate, the same module's ``bias`` of the same shape (the neuron's shift)."""
        self._gates = self._select_gates(pl_module)
        params = dict(pl_module.named_parameters())
        self._biases = {}
        for n in self._gates:
            bias = n[: -len("weight")] + "bias" if n.endswith("weight") else ""
            if bias in params and params[bias].shape == params[n].shape:
                self._biases[n] = bias
        self._gate_params = {n: params[n] for n in self._gates}
        return [*self._gates, *self._biases.values()], {}

    def _on_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, names: list[str]) -> None:
        self.pruned, self.pruned_step = False, -1

    def _selection_detail(self) -> str:
        return f"; {sum(p.numel() for p in self._gate_params.values())} gates in {self._gates}"

    def _target_sparsity(self) -> float:
        return self.sparsity

    def _global_sparsity(self, report: Mapping[str, float]) -> float:
        """Fraction of the gates pruned (their biases follow them)."""
        total = sum(p.numel() for p in self._gate_params.values())
        return sum(report.get(n, 0.0) * p.numel() for n, p in self._gate_params.items()) / max(total, 1)

    @torch.no_grad()
    def _prepare_masks(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Initialize the gates at step 0 (restored masks are applied after this)."""
        params = dict(pl_module.named_parameters())
        self._gate_params = {n: params[n] for n in self._gates}
        if trainer.global_step == 0 and self.init_gates is not None and not self.pruned:
            for p in self._gate_params.values():
                p.fill_(self.init_gates)

    def loss_term(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, outputs: Any
    ) -> Tensor | None:
        """``R(gamma)`` over all gates until pruning, then nothing."""
        if self.pruned:
            return None
        return polarization(torch.cat([self._gate_params[n].flatten() for n in self._gates]), self.t)

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
            gate_masks = magnitude_masks(
                {n: self._gate_params[n].detach() for n in self._gates}, self.sparsity, "global"
            )
            for n, m in gate_masks.items():
                new[n] = m.cpu()
                if n in self._biases:
                    new[self._biases[n]] = m.cpu()
        self._engine.update(new, trainer.optimizers, strategy=trainer.strategy)
        self.pruned, self.pruned_step = True, trainer.global_step
        self._masks_changed()
        rank_zero_info(
            f"{type(self).__name__}: pruned {self.sparsity:.0%} of the gates at step {trainer.global_step} "
            f"(gates in the middle band: {self.middle_band():.3f})"
        )

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Clamp the gates to [0, 1]; then re-mask when needed and log the sparsity (the shared engine)."""
        if self.clamp:
            for p in self._gate_params.values():
                p.clamp_(0.0, 1.0)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the fraction of gates in the middle band (bimodality)."""
        super().on_train_epoch_end(trainer, pl_module)
        pl_module.log(f"{self.log_prefix}/middle_band", self.middle_band(), on_epoch=True, sync_dist=True)

    # ------------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:
        """Whether and when the gates were pruned (then the masks, one bit per gate and bias)."""
        return {"pruned": self.pruned, "pruned_step": self.pruned_step}

    def _load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        self.pruned = bool(state_dict.get("pruned", False))
        self.pruned_step = int(state_dict.get("pruned_step", -1))
