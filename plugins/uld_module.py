"""ULD: train an assistant that remembers the forget set; serve base logits minus the assistant's (filtered)."""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch import Tensor, nn

from litmix.base import Example, LitmixModule
from litmix.functional.uld import truncate_layers, uld_assistant_loss, uld_logits
from litmix.metrics._split_evaluation import SplitEvaluation
from litmix.models import load_model
from litmix.plugins.unlearning_module import (
    SPLITS,
    UnlearningModule,
    _check_class_path,
    _check_model,
    _example_datamodule,
    _example_net,
    _model_logits,
)
from litmix.registry import register
from litmix.validation import check_float, check_int, check_type


@register(
    "plugin",
    "unlearning",
    paper="Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning Framework from Logit Difference "
    "(https://arxiv.org/abs/2406.08607)",
)
class ULDAssistantModule(SplitEvaluation, LitmixModule):
    """ULD (unlearning from logit difference): train an assistant on reversed objectives; serve the difference.

    Ji et al., "Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning Framework from Logit
    Difference" (NeurIPS 2024, https://arxiv.org/abs/2406.08607). The trained ``model`` (the **base**) is frozen
    (no gradient, eval mode, outside the optimizer; it stays in the state_dict so a checkpoint holds the whole
    unlearned system). The **assistant** (``assistant``; else the base's first ``assistant_layers`` blocks via
    :func:`~litmix.functional.uld.truncate_layers`; else a full copy of the base) is trained with
    :func:`~litmix.functional.uld.uld_assistant_loss`: the NLL of the forget items (it *remembers* them) plus
    ``retain_weight`` times ``KL(U || p_assistant)`` on the retain items (it *forgets* them). The unlearned model,
    :meth:`forward`, returns :func:`~litmix.functional.uld.uld_logits`: ``base + weight * assistant`` with the
    assistant's logits zeroed where the base finds a token implausible (``log p < max log p + log(top)``).

    Batches come from :class:`~litmix.datamodules.ForgetRetainDataModule` (classifiers: ``(x, y)`` sides) or
    :class:`~litmix.datamodules.TOFUDataModule` (causal LMs: dicts with ``input_ids``, ``attention_mask``,
    ``labels``; the model returns logits or an object with ``.logits``). Evaluation loaders (the datamodule's
    ``val_loader_names``) are scored with the **unlearned** (logit-difference) model.

    Logged: ``train/forget_loss`` (assistant NLL on forget items), ``train/retain_kl`` (its ``KL(U || p)`` on
    retain items), ``train/loss``; ``val/<split>_acc`` and ``val/<split>_nll`` (and ``test/...``) of the
    unlearned model, de-duplicated by item index (independent of the number of DDP ranks).

    Args:
        model: the trained base model, or a path :func:`litmix.models.load_model` reads.
        assistant: the assistant network (same output classes / vocabulary); None = built from the base.
        assistant_layers: keep the base's first ``K`` blocks for the assistant (None = a full copy); ignored
            when ``assistant`` is given (then it must be None).
        weight: the assistant's coefficient in the served logits (finite; ULD: -1, its eval scripts -0.8).
        top: relative-top plausibility threshold in (0, 1], None = no filter (ULD: 0.1; eval scripts 1e-2).
        retain_weight: weight of the retain ``KL(U || p)`` term (finite, >= 0; ULD: 5).
        lr: AdamW learning rate (finite, > 0; ULD 1e-3).
        weight_decay: AdamW weight decay (finite, >= 0; ULD 0.01).
        model_class: ``"package.module.ClassName"`` for a ``.ckpt`` path given as ``model``.

    Raises:
        TypeError: an argument of the wrong type, naming it.
        ValueError: a non-finite ``weight``, ``top`` outside (0, 1], negative ``retain_weight`` /
            ``weight_decay``, ``lr <= 0``, both ``assistant`` and ``assistant_layers``, an ``assistant_layers``
            the base cannot be cut to, a missing model path; during training, batches without retain items when
            ``retain_weight > 0``, or assistant outputs whose shape differs from the base's (another vocabulary).

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> module, datamodule, callbacks = ULDAssistantModule.example()
        >>> from litmix.testing import make_trainer
        >>> trainer = make_trainer(max_epochs=1, limit_val_batches=1.0, callbacks=callbacks)
        >>> trainer.fit(module, datamodule=datamodule)
        >>> sorted(k for k in trainer.callback_metrics if k.startswith("val/") and k.endswith("acc"))
        ['val/forget_acc', 'val/retain_acc', 'val/test_acc']
    """

    def __init__(
        self,
        model: nn.Module | str,
        assistant: nn.Module | None = None,
        assistant_layers: int | None = None,
        weight: float = -1.0,
        top: float | None = 0.1,
        retain_weight: float = 5.0,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        model_class: str | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_type(name, "assistant", assistant, nn.Module, allow_none=True)
        check_int(name, "assistant_layers", assistant_layers, low=1, allow_none=True)
        check_float(name, "weight", weight)
        check_float(name, "top", top, low=0.0, high=1.0, low_open=True, allow_none=True)
        check_float(name, "retain_weight", retain_weight, low=0.0)
        check_float(name, "lr", lr, low=0.0, low_open=True)
        check_float(name, "weight_decay", weight_decay, low=0.0)
        _check_class_path(name, "model_class", model_class)
        _check_model(name, model, model_class)
        if assistant is not None and assistant_layers is not None:
            raise ValueError(
                f"{name}(assistant=..., assistant_layers={assistant_layers}): give an assistant or the number of base "
                "layers to build it from, not both"
            )
        self.save_hyperparameters(ignore=["model", "assistant"])
        if isinstance(model, str | os.PathLike):
            self.hparams["model"] = str(model)
        self.base = load_model(
            model, class_path=model_class, owner=name, argument="model", class_argument="model_class"
        )
        if assistant is not None:
            helper = assistant
        elif assistant_layers is not None:
            try:
                helper = truncate_layers(self.base, assistant_layers)
            except ValueError as err:
                raise ValueError(f"{name}(assistant_layers={assistant_layers}): {err}") from err
        else:
            helper = copy.deepcopy(self.base)
        self.assistant = helper.train().requires_grad_(True)
        self.base.eval().requires_grad_(False)
        self.weight, self.top, self.retain_weight = float(weight), None if top is None else float(top), retain_weight
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self._init_split_metrics(SPLITS)

    @classmethod
    def example(cls) -> Example:
        """ULD on the 2-layer MLP blob classifier of :meth:`UnlearningModule.example` (forget 10 items)."""
        return Example(cls(_example_net(), lr=1e-2), _example_datamodule(), [])

    # ------------------------------------------------------------------ forward
    def _logits(self, model: nn.Module, inputs: Any, who: str) -> Tensor:
        return _model_logits(type(self).__name__, model, inputs, who)

    def forward(self, inputs: Any) -> Tensor:
        """Logits of the unlearned model: ``base + weight * filtered assistant`` (the base without gradient)."""
        with torch.no_grad():
            base = self._logits(self.base.eval(), inputs, "base model")
        helper = self._logits(self.assistant, inputs, "assistant")
        if helper.shape != base.shape:
            raise ValueError(
                f"{type(self).__name__}: the assistant's outputs {tuple(helper.shape)} differ from the base model's "
                f"{tuple(base.shape)}; it must share the base's classes / vocabulary"
            )
        return uld_logits(base, helper, self.weight, self.top)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Assistant NLL on the forget side plus ``retain_weight`` KL-to-uniform on the retain side."""
        f_inputs, f_targets, _ = UnlearningModule._split(batch["forget"], "forget")
        f_logits = self._logits(self.assistant, f_inputs, "assistant")
        r_logits = r_targets = None
        if self.retain_weight > 0:
            if batch.get("retain") is None:
                raise ValueError(
                    f"{type(self).__name__}(retain_weight={self.retain_weight}): the training batch has no 'retain' "
                    "items; use ForgetRetainDataModule or TOFUDataModule (they pair every forget item) or "
                    "retain_weight=0"
                )
            r_inputs, r_targets, _ = UnlearningModule._split(batch["retain"], "retain")
            r_logits = self._logits(self.assistant, r_inputs, "assistant")
        forget_term = uld_assistant_loss(f_logits, f_targets)
        loss = forget_term
        self.log("train/forget_loss", forget_term.detach(), on_step=True, on_epoch=True, sync_dist=True)
        if r_logits is not None and r_targets is not None:
            total = uld_assistant_loss(f_logits, f_targets, r_logits, r_targets, self.retain_weight)
            retain_term = (total - forget_term) / self.retain_weight
            loss = total
            self.log("train/retain_kl", retain_term.detach(), on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, sync_dist=True, prog_bar=True)
        return loss

    def on_train_epoch_start(self) -> None:
        """Keep the frozen base in eval mode (Lightning puts the whole module in train mode)."""
        self.base.eval()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over the assistant's trainable parameters."""
        params = [p for p in self.assistant.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: Any, dataloader_idx: int) -> None:
        split = self._split_names()[dataloader_idx]
        inputs, targets, index = UnlearningModule._split(batch, f"{split} evaluation")
        if index is None:
            raise ValueError(f"{type(self).__name__}: {split} evaluation items must carry their index")
        self._update_split(split, self(inputs), targets, index)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Accuracy and mean NLL of the unlearned model on this loader's split."""
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """As :meth:`validation_step`."""
        self._eval_step(batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        """Log ``val/<split>_acc`` and ``val/<split>_nll``."""
        self._log_splits("val")

    def on_test_epoch_end(self) -> None:
        """Log ``test/<split>_acc`` and ``test/<split>_nll``."""
        self._log_splits("test")
