"""PHATGOOSE stages as a LightningModule: train one LoRA expert, then its gates, then route zero-shot."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from litmix.base import Example, LitmixModule
from litmix.data import split_batch
from litmix.functional.phatgoose import PAPER
from litmix.layers.phatgoose import MODES, ROUTINGS, PHATGOOSELinear, phatgoose_mode, to_phatgoose
from litmix.models import output_logits
from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int, check_type

Stage = Literal["expert", "gate", "route", "uniform", "base"]


@register("plugin", "optimization", paper=PAPER)
class PHATGOOSEModule(LitmixModule):
    """Train a classifier's LoRA experts and PHATGOOSE gates stage by stage, then route among them zero-shot.

    Muqeeth, Liu, Liu and Raffel, "Learning to Route Among Specialized Experts for Zero-Shot Generalization"
    (ICML 2024, https://arxiv.org/abs/2402.05859). The model's ``nn.Linear`` / HF ``Conv1D`` layers are wrapped by
    :func:`~litmix.layers.phatgoose.to_phatgoose` (unless it already holds
    :class:`~litmix.layers.phatgoose.PHATGOOSELinear` layers) and every other parameter is frozen. Stages
    (:meth:`set_stage` between fits; the current stage is checkpointed):

    * ``"expert"``: train expert ``expert``'s LoRA adapters on its task (cross-entropy);
    * ``"gate"``: train expert ``expert``'s gate vectors only, the adapter and the base frozen (the paper trains
      them for about 100 steps);
    * ``"route"`` (zero-shot inference with top-``k`` routing), ``"uniform"`` (the uniform merge of the adapters),
      ``"base"``: nothing to train; use ``trainer.validate`` / ``test`` / ``predict``.

    Frozen parameters get no gradient, so AdamW (``weight_decay`` included) leaves them bit-identical; under DDP
    the frozen ones are skipped by the reducer. Logs ``phatgoose/loss`` and, with validation data, ``val/acc`` and
    ``val/loss``.

    Args:
        model: the trained base classifier (any ``nn.Module`` mapping inputs to logits).
        stage: ``"expert"``, ``"gate"``, ``"route"``, ``"uniform"`` or ``"base"``.
        expert: the expert trained in the ``"expert"``/``"gate"`` stages (ignored by the others), >= 0.
        num_experts: experts per wrapped layer (>= 1; ignored if the model is already wrapped).
        rank: LoRA rank (>= 1).
        alpha: LoRA alpha (> 0).
        top_k: experts per token when routing, in ``[1, num_experts]``.
        routing: ``"token"`` or ``"example"``.
        lr: AdamW learning rate (> 0).
        weight_decay: AdamW weight decay (>= 0).

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for a value outside its range, a missing or out-of-range ``expert``, a model without a layer
            to wrap; in ``configure_optimizers``, a stage that trains nothing.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, _ = PHATGOOSEModule.example()
        >>> _ = fit_tiny(module=module, datamodule=datamodule, max_steps=2)
        >>> sorted({n.split(".", 2)[-1] for n, p in module.named_parameters() if p.requires_grad})
        ['lora_a.1', 'lora_b.1']
        >>> module.set_stage("gate", expert=1)
        >>> [n for n, p in module.named_parameters() if p.requires_grad]
        ['model.0.gates.1', 'model.2.gates.1']
    """

    def __init__(
        self,
        model: nn.Module,
        stage: Stage = "expert",
        expert: int | None = 0,
        num_experts: int = 4,
        rank: int = 8,
        alpha: float = 16.0,
        top_k: int = 2,
        routing: Literal["token", "example"] = "token",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        owner = type(self).__name__
        check_type(owner, "model", model, nn.Module)
        stage = check_choice(owner, "stage", stage, MODES)
        num_experts = check_int(owner, "num_experts", num_experts, low=1, high=4096)
        expert = check_int(owner, "expert", expert, low=0, allow_none=True)
        rank = check_int(owner, "rank", rank, low=1, high=1 << 16)
        alpha = check_float(owner, "alpha", alpha, low=0.0, low_open=True)
        top_k = check_int(owner, "top_k", top_k, low=1)
        routing = check_choice(owner, "routing", routing, ROUTINGS)
        lr = check_float(owner, "lr", lr, low=0.0, low_open=True)
        weight_decay = check_float(owner, "weight_decay", weight_decay, low=0.0)
        wrapped = any(isinstance(m, PHATGOOSELinear) for m in model.modules())
        if not wrapped and top_k > num_experts:
            raise ValueError(f"{owner}(top_k={top_k}, num_experts={num_experts}): top_k must be <= num_experts")
        if stage in ("expert", "gate") and expert is None:
            raise ValueError(f"{owner}(stage={stage!r}, expert=None): stage {stage!r} needs the expert index")
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        if not wrapped:
            try:
                to_phatgoose(model, num_experts, rank, alpha, top_k, routing)
            except ValueError as err:
                raise ValueError(f"{owner}(model=...): {err}") from None
        self.model = model
        self.lr, self.weight_decay = lr, weight_decay
        self.stage: str = stage
        self.expert: int | None = None
        self.set_stage(stage, expert, top_k)

    @classmethod
    def example(cls) -> Example:
        """Expert 1 of 3 (rank 2) on a small MLP and :class:`litmix.testing.TinyDataModule`."""
        from litmix.testing import TinyDataModule

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        return Example(cls(model, "expert", 1, num_experts=3, rank=2, lr=0.05), TinyDataModule(), [])

    def set_stage(self, stage: Stage, expert: int | None = None, top_k: int | None = None) -> None:
        """Switch every wrapped layer to ``stage`` (``expert`` for ``"expert"``/``"gate"``) and freeze the rest.

        Raises:
            TypeError: for a wrongly typed argument.
            ValueError: for an unknown stage, a missing or out-of-range ``expert``, a bad ``top_k``.
        """
        owner = type(self).__name__
        stage = check_choice(owner, "stage", stage, MODES)
        chosen = expert if stage in ("expert", "gate") else None
        if stage in ("expert", "gate") and chosen is None:
            raise ValueError(f"{owner}(stage={stage!r}, expert=None): stage {stage!r} needs the expert index")
        phatgoose_mode(self.model, stage, chosen, top_k)  # type: ignore[arg-type]
        self.stage, self.expert = stage, chosen

    def forward(self, x: Tensor) -> Tensor:
        """The model's logits in the current stage."""
        return output_logits(self.model(x), owner=type(self).__name__)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Cross-entropy of the current stage (expert adapter or gate training)."""
        x, y, _ = split_batch(batch)
        assert y is not None, "PHATGOOSEModule needs (x, y) batches"
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("phatgoose/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Accuracy and loss in the current stage (``"route"``: PHATGOOSE's zero-shot routing)."""
        x, y, _ = split_batch(batch)
        assert y is not None, "PHATGOOSEModule needs (x, y) batches"
        logits = self(x)
        self.log("val/acc", (logits.argmax(-1) == y).float().mean(), prog_bar=True, sync_dist=True)
        self.log("val/loss", nn.functional.cross_entropy(logits, y), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over the parameters the stage trains.

        Raises:
            ValueError: in a stage that trains nothing (``"route"``, ``"uniform"``, ``"base"``).
        """
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                f"{type(self).__name__}(stage={self.stage!r}): this stage trains nothing; fit in the 'expert' or "
                "'gate' stage, evaluate with trainer.validate/test/predict"
            )
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the current stage, expert and top-k."""
        super().on_save_checkpoint(checkpoint)
        layer = next(m for m in self.model.modules() if isinstance(m, PHATGOOSELinear))
        checkpoint["litmix"].update({"stage": self.stage, "expert": self.expert, "top_k": layer.top_k})

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the stage, expert and top-k."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("litmix", {})
        if "stage" in state:
            self.set_stage(state["stage"], state.get("expert"), state.get("top_k"))
