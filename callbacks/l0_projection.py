"""Projected gradient descent on the l0 ball: after every optimizer step keep only the largest weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch

from litmix.base import Example
from litmix.functional.sparsity import magnitude_masks
from litmix.functional.teddy import PAPER
from litmix.registry import register
from litmix.sparsity._callback import MaskedPruningCallback, check_parameter_names
from litmix.validation import check_choice, check_float

__all__ = ["L0Projection"]


@register("callback", "sparsity", paper=PAPER)
class L0Projection(MaskedPruningCallback):
    """Zero the ``round(sparsity * P)`` smallest-magnitude weights after every optimizer step (projected GD on l0).

    The one-shot weight sparsification of TEDDY (Seo et al., "TEDDY: Trimming Edges with Degree-based
    Discrimination strategY", ICLR 2024, https://arxiv.org/abs/2402.01261): training is projected gradient descent
    onto the l0 ball ``{w : ||w||_0 <= (1 - sparsity) P}``: every weight takes the optimizer's step (gradients are
    not masked, so pruned weights may come back), then the projection keeps the largest magnitudes
    (``scope="global"``: one threshold over all selected weights, as the paper; ``"layer"``: per tensor) and zeroes
    the rest. The optimizer state is left as it is (a pure projection of the weights, as the paper; masking the
    momentum too cost 2-5 points on Cora, seeds 0-2). The mask of the last
    projection is held by the shared :class:`~litmix.sparsity.MaskEngine` and checkpointed; the sparsity is logged
    as by every litmix pruner (prefix ``l0``), once when the projection starts and at the end of fit.

    TEDDY's distillation regulariser (``CE + lambda * KL(teacher || student)`` over all nodes) is
    :class:`~litmix.callbacks.KnowledgeDistillation` with ``temperature=1`` composed with this callback (see the
    module docstring of ``tests/test_l0_projection.py``).

    Args:
        sparsity: fraction of the selected weights zeroed after every step, in [0, 1).
        scope: ``"global"`` or ``"layer"`` magnitude ranking.
        parameter_names: parameters to project (``named_parameters`` names); default ``None``: the weights of
            ``nn.Linear``, ``nn.Conv*``, HF ``Conv1D`` and PyG ``Linear`` layers (GCNConv's ``lin.weight``).
        name: optional instance name (checkpoint key and logging prefix).

    Raises:
        ValueError: for ``sparsity`` outside [0, 1) or an unknown scope (in ``__init__``) and, when fit starts,
            unknown parameter names or a module without prunable layers.
        TypeError: for arguments of the wrong type.
        MisconfigurationException: under manual optimization or a sharded strategy (FSDP, DeepSpeed).

    Example:
        >>> from litmix.testing import fit_tiny, TinyClassifier
        >>> cb = L0Projection(sparsity=0.75)
        >>> _ = fit_tiny([cb], module=TinyClassifier(), max_steps=3)
        >>> cb.projections, cb.engine.sparsity_report()["global"]
        (3, 0.75)
    """

    default_log_prefix: ClassVar[str] = "l0"
    state_version: ClassVar[int] = 1
    sharded_reason: ClassVar[str] = "it ranks whole parameters after every step"

    def __init__(
        self,
        sparsity: float = 0.5,
        scope: Literal["global", "layer"] = "global",
        parameter_names: list[str] | None = None,
        name: str | None = None,
    ) -> None:
        cls = type(self).__name__
        sparsity = check_float(cls, "sparsity", sparsity, low=0.0, high=1.0, high_open=True)
        scope = check_choice(cls, "scope", scope, ("global", "layer"))
        parameter_names = check_parameter_names(cls, parameter_names)
        super().__init__(name=name)
        self.sparsity: float = sparsity
        self.scope: Literal["global", "layer"] = scope
        self.parameter_names = parameter_names
        self.projections: int = 0

    @classmethod
    def example(cls) -> Example:
        """Projection to 50 % sparsity after every step of ``TinyClassifier``."""
        from litmix.testing import TinyClassifier, TinyDataModule

        return Example(TinyClassifier(), TinyDataModule(), [cls(sparsity=0.5)])

    @property
    def masks_active(self) -> bool:
        """Gradients are never masked (projected GD lets every weight move); the projection re-decides the mask."""
        return False

    def _on_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, names: list[str]) -> None:
        self.projections = 0

    def _prepare_masks(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At train start nothing is imposed (all kept).

        The weights of a resumed run are already projected, and the optimizer state must stay untouched for the
        resumed run to repeat the uninterrupted one.
        """
        for mask in self._engine.masks.values():
            mask.fill_(True)

    def _selection_detail(self) -> str:
        return f"; l0 projection to sparsity {self.sparsity} ({self.scope}) after every step"

    def _target_sparsity(self) -> float:
        return self.sparsity

    @torch.no_grad()
    def project(self) -> None:
        """Zero the ``round(sparsity * P)`` smallest selected weights (the paper: ``ceil``; one weight apart)."""
        params = self._engine.parameters()
        weights = {n: p.detach() for n, p, _ in params}
        self._engine.update(magnitude_masks(weights, self.sparsity, self.scope))
        self.projections += 1

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Project after each optimizer step (once per step under gradient accumulation), then log as the base."""
        if trainer.global_step > self.last_applied_step:
            self.project()
            if self.projections == 1:
                self._masks_changed()
            else:
                self._refresh_layer_sparsity()
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _final_metrics(self) -> dict[str, float]:
        return {"projections": float(self.projections)}

    def _extra_state(self) -> dict[str, Any]:
        return {"projections": self.projections}

    def _load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        self.projections = int(state_dict.get("projections", 0))
