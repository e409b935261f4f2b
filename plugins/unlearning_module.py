"""Unlearning of a trained classifier or causal LM: gradient ascent, GradDiff and NPO, with DDP-safe metrics."""

from __future__ import annotations

import copy
import importlib
import math
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from litmix.functional.unlearning import (
    classifier_nll,
    grad_ascent_loss,
    kl_retain_loss,
    npo_loss,
    npo_weights,
    retain_nll_loss,
    sequence_correct,
    sequence_nll,
)
from litmix.metrics.indexed_mean import IndexedMean
from litmix.metrics.mia_auc import MembershipInferenceAUC
from litmix.registry import register

METHODS = ("grad_ascent", "grad_diff", "npo")
RETAIN_LOSSES = ("nll", "kl")
OPTIMIZERS = ("adamw", "adam", "sgd")
SPLITS = ("forget", "retain", "test", "holdout")
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "position_ids", "token_type_ids")


def load_model(model: nn.Module | str, model_class: str | None = None) -> nn.Module:
    """Resolve ``model``: a module, a Hugging Face directory, a ``torch.save``'d module, or a ``.ckpt``.

    Args:
        model: an ``nn.Module`` or a path. A directory is loaded with
            ``transformers.AutoModelForCausalLM.from_pretrained``; a ``.ckpt`` needs ``model_class``
            (``"package.module.Class"``: a LightningModule is loaded with ``load_from_checkpoint``, any
            other ``nn.Module`` is built without arguments and given the checkpoint's ``state_dict``);
            any other file must hold a whole module saved with ``torch.save``.
        model_class: import path of the class stored in a ``.ckpt``.

    Raises:
        FileNotFoundError: for a path that does not exist.
        ValueError: for a ``.ckpt`` without ``model_class`` or a file not holding an ``nn.Module``.
        TypeError: for a ``model`` that is neither a module nor a path.
    """
    if isinstance(model, nn.Module):
        return model
    if not isinstance(model, str | Path):
        raise TypeError(f"UnlearningModule(model={model!r}): model must be an nn.Module or a path")
    path = Path(model).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"UnlearningModule(model={str(model)!r}): no such file or directory")
    if path.is_dir():
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(path))
    if path.suffix == ".ckpt":
        if not model_class:
            raise ValueError(
                f"UnlearningModule(model={str(model)!r}, model_class=None): a .ckpt needs model_class, "
                "the import path of the saved class"
            )
        module_name, _, cls_name = model_class.rpartition(".")
        cls = getattr(importlib.import_module(module_name), cls_name)
        if issubclass(cls, pl.LightningModule):
            return cls.load_from_checkpoint(str(path), map_location="cpu")
        net = cls()
        net.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=False)["state_dict"])
        return net
    loaded = torch.load(str(path), map_location="cpu", weights_only=False)
    if not isinstance(loaded, nn.Module):
        raise ValueError(f"UnlearningModule(model={str(model)!r}): file holds {type(loaded).__name__}, not a module")
    return loaded


@register(
    "plugin",
    "unlearning",
    paper="Negative Preference Optimization: Towards Balancing Catastrophic Collapse and Unlearning "
    "(https://arxiv.org/abs/2404.05868)",
)
class UnlearningModule(pl.LightningModule):
    """Unlearn a forget set from a trained model with gradient ascent, GradDiff or NPO.

    Implements Negative Preference Optimization (Zhang et al., https://arxiv.org/abs/2404.05868) and
    its baselines, as in TOFU / open-unlearning. Training batches come from
    :class:`litmix.datamodules.ForgetRetainDataModule` (``{"forget", "retain", "index"}``; ``index`` =
    position in the forget set). The wrapped model is a classifier (returns logits; sides are
    ``(x, y)``) or a causal LM (returns an object with ``.logits``; sides are dicts with ``input_ids``,
    ``attention_mask``, ``labels`` with ``-100`` on prompt/padding, Hugging Face shift). Losses:

    - ``grad_ascent``: ``forget_weight * -mean(NLL_f)``;
    - ``grad_diff``: that plus ``retain_weight * retain term`` (``retain_loss`` default ``"nll"``);
    - ``npo``: ``forget_weight * -(2/beta) mean logsigmoid(beta (NLL_f - NLL_ref))``, plus an optional
      retain term (``retain_loss="nll"`` = NPO+RT, ``"kl"`` = NPO+KL with ``KL(ref || theta)``).

    LM NLLs are answer-token sums for NPO and token means for gradient ascent (``nll_reduction``).
    The reference model is a deep copy of the original made in ``setup("fit")`` (before checkpoint
    weights load, so a resumed run keeps the original as reference): frozen, in eval mode, outside the
    optimizer, the state_dict and DDP. With ``cache_reference=True`` (NPO) the reference NLL of every
    forget item is computed once in ``on_fit_start`` on rank 0, broadcast, and the reference model is
    dropped (kept if ``retain_loss="kl"``). Dropout in the wrapped model makes step 0 differ from
    ``(2/beta) log 2``; Lightning keeps the wrapped model's train/eval mode (``from_pretrained`` returns
    eval mode), so a model in eval mode is unlearned without dropout.

    Metrics (validation and test; loaders named by the datamodule's ``val_loader_names``, default
    forget, retain, test, holdout): ``unlearn/{split}_acc`` (token accuracy for LMs) and
    ``unlearn/{split}_nll`` per split, and ``unlearn/mia_auc``: loss-threshold membership inference,
    forget vs holdout (the test split when there is no holdout), **1 = memorised, 0.5 =
    indistinguishable, < 0.5 = over-unlearned** (:class:`~litmix.metrics.MembershipInferenceAUC`).
    States are torchmetrics ``cat`` states de-duplicated by item index, so values do not depend on
    the number of ranks. Training logs ``unlearn/forget_loss``, ``unlearn/retain_loss``,
    ``unlearn/loss`` (and ``unlearn/npo_weight`` for NPO).

    Args:
        model: the trained model, or a path (see :func:`load_model`) so the CLI can build it.
        method: ``"grad_ascent"``, ``"grad_diff"`` or ``"npo"``.
        beta: NPO inverse temperature (> 0).
        forget_weight: weight of the forget term (>= 0).
        retain_weight: weight of the retain term (>= 0).
        retain_loss: ``"nll"``, ``"kl"`` or None (no retain term; for ``grad_diff`` None means ``"nll"``).
        nll_reduction: LM NLL per sample, ``"sum"`` or ``"mean"`` over answer tokens; None = ``"sum"``
            for NPO, ``"mean"`` for gradient ascent / GradDiff.
        cache_reference: precompute the NPO reference NLLs by forget index and drop the reference model.
        lr: learning rate (> 0).
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"``.
        weight_decay: weight decay (>= 0).
        model_class: import path of the class in a ``.ckpt`` given as ``model``.

    Raises:
        ValueError: for an unknown method/retain loss/optimizer/reduction, ``beta``/``lr`` <= 0, negative
            weights, a retain loss with ``grad_ascent``, or ``cache_reference`` without NPO.
        MisconfigurationException: in ``on_fit_start`` when ``cache_reference=True`` and the datamodule has
            no ``forget_dataloader()``.

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> module = UnlearningModule.example()
        >>> from litmix.testing import make_trainer
        >>> trainer = make_trainer(max_epochs=1, limit_val_batches=1.0)
        >>> trainer.fit(module, datamodule=UnlearningModule.example_datamodule())
        >>> sorted(k for k in trainer.callback_metrics if k.endswith("acc") or k.endswith("auc"))
        ['unlearn/forget_acc', 'unlearn/mia_auc', 'unlearn/retain_acc', 'unlearn/test_acc']
    """

    family: ClassVar[str] = "unlearning"

    def __init__(
        self,
        model: nn.Module | str,
        method: Literal["grad_ascent", "grad_diff", "npo"] = "npo",
        beta: float = 0.1,
        forget_weight: float = 1.0,
        retain_weight: float = 1.0,
        retain_loss: Literal["nll", "kl"] | None = None,
        nll_reduction: Literal["sum", "mean"] | None = None,
        cache_reference: bool = False,
        lr: float = 1e-5,
        optimizer: Literal["adamw", "adam", "sgd"] = "adamw",
        weight_decay: float = 0.0,
        model_class: str | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if method not in METHODS:
            raise ValueError(f"{name}(method={method!r}): method must be one of {METHODS}")
        if retain_loss is not None and retain_loss not in RETAIN_LOSSES:
            raise ValueError(f"{name}(retain_loss={retain_loss!r}): retain_loss must be one of {RETAIN_LOSSES} or None")
        if method == "grad_ascent" and retain_loss is not None:
            raise ValueError(
                f"{name}(method='grad_ascent', retain_loss={retain_loss!r}): gradient ascent has no retain term; "
                "use method='grad_diff'"
            )
        if nll_reduction is not None and nll_reduction not in ("sum", "mean"):
            raise ValueError(f"{name}(nll_reduction={nll_reduction!r}): nll_reduction must be 'sum', 'mean' or None")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"{name}(optimizer={optimizer!r}): optimizer must be one of {OPTIMIZERS}")
        for arg, value in (("beta", beta), ("lr", lr)):
            if not value > 0:
                raise ValueError(f"{name}({arg}={value}): {arg} must be > 0")
        for arg, value in (
            ("forget_weight", forget_weight),
            ("retain_weight", retain_weight),
            ("weight_decay", weight_decay),
        ):
            if value < 0:
                raise ValueError(f"{name}({arg}={value}): {arg} must be >= 0")
        if cache_reference and method != "npo":
            raise ValueError(f"{name}(cache_reference=True, method={method!r}): only npo uses reference NLLs")
        self.save_hyperparameters(ignore=["model"])
        if isinstance(model, str | Path):
            self.hparams["model"] = str(model)
        self.model = load_model(model, model_class)
        self.method: str = method
        self.beta, self.forget_weight, self.retain_weight = float(beta), float(forget_weight), float(retain_weight)
        self.retain_loss: str | None = "nll" if method == "grad_diff" and retain_loss is None else retain_loss
        self.nll_reduction: str = nll_reduction or ("sum" if method == "npo" else "mean")
        self.cache_reference = cache_reference
        self.lr, self.optimizer_name, self.weight_decay = float(lr), optimizer, float(weight_decay)
        self.accuracy = nn.ModuleDict({s: IndexedMean() for s in SPLITS})
        self.mean_nll = nn.ModuleDict({s: IndexedMean() for s in SPLITS})
        self.mia_auc = MembershipInferenceAUC()
        # Outside nn.Module registration: not in state_dict, parameters(), DDP or the optimizer.
        object.__setattr__(self, "_ref_model", None)
        self.ref_nll_cache: Tensor | None = None

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def example(cls) -> UnlearningModule:
        """A tiny NPO module around a 2-layer MLP (8 inputs, 4 classes) for contract tests and docs."""
        gen = torch.Generator().manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        return cls(net, method="npo", retain_loss="nll", lr=1e-2, cache_reference=True)

    @classmethod
    def example_datamodule(cls) -> pl.LightningDataModule:
        """Tiny forget/retain/test data matching :meth:`example` (Gaussian blobs, forget class 0)."""
        from litmix.datamodules.forget_retain import ForgetRetainDataModule
        from litmix.testing import TinyDataModule

        return ForgetRetainDataModule.from_dataset(
            TinyDataModule(n=64).dataset,
            test_dataset=TinyDataModule(n=32).dataset,
            forget_indices=list(range(10)),
            batch_size=4,
            eval_batch_size=16,
        )

    @property
    def ref_model(self) -> nn.Module | None:
        """The frozen reference model (None before ``setup`` or once dropped after caching)."""
        ref: nn.Module | None = self.__dict__.get("_ref_model")
        return ref

    def _needs_ref(self) -> bool:
        return self.method == "npo" or self.retain_loss == "kl"

    # ------------------------------------------------------------------ forward helpers
    def _logits(self, model: nn.Module, inputs: Any) -> Tensor:
        if isinstance(inputs, dict):
            out = model(**{k: v for k, v in inputs.items() if k in MODEL_INPUT_KEYS})
        else:
            out = model(inputs)
        logits = getattr(out, "logits", out)
        assert isinstance(logits, Tensor)
        return logits

    @staticmethod
    def _targets(side: Any) -> tuple[Any, Tensor]:
        if isinstance(side, dict):
            return side, side["labels"]
        return side[0], side[1]

    def _nll(self, logits: Tensor, targets: Tensor, reduction: str | None = None) -> Tensor:
        if logits.dim() == 3:
            return sequence_nll(logits, targets, reduction=reduction or self.nll_reduction)  # type: ignore[arg-type]
        return classifier_nll(logits, targets)

    @torch.no_grad()
    def _reference_logits(self, inputs: Any) -> Tensor:
        ref = self.ref_model
        if ref is None:
            raise RuntimeError("UnlearningModule: the reference model is not available (setup not run or dropped)")
        return self._logits(ref, inputs)

    # ------------------------------------------------------------------ lifecycle
    def setup(self, stage: str) -> None:
        """Copy the original model as the frozen reference (before checkpoint weights are loaded)."""
        if stage == "fit" and self._needs_ref() and self.ref_model is None and self.ref_nll_cache is None:
            ref = copy.deepcopy(self.model).eval()
            ref.requires_grad_(False)
            object.__setattr__(self, "_ref_model", ref)

    def on_fit_start(self) -> None:
        """Move the reference model; for ``cache_reference`` compute the forget reference NLLs once."""
        if self.ref_model is not None:
            self.ref_model.to(self.device)
        if not (self.cache_reference and self.ref_nll_cache is None):
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "forget_dataloader"):
            raise MisconfigurationException(
                "UnlearningModule(cache_reference=True) needs a datamodule with forget_dataloader() "
                "(e.g. ForgetRetainDataModule); pass cache_reference=False otherwise"
            )
        cache: Tensor | None = None
        if self.trainer.is_global_zero:
            values: dict[int, float] = {}
            for batch in dm.forget_dataloader():
                inputs, targets, index = self._split_eval(batch)
                inputs = self._to_device(inputs)
                nll = self._nll(self._reference_logits(inputs), targets.to(self.device))
                values.update(zip(index.tolist(), nll.double().cpu().tolist(), strict=True))
            cache = torch.tensor([values[i] for i in range(len(values))], dtype=torch.float64)
        cache = self.trainer.strategy.broadcast(cache, src=0)
        assert cache is not None
        self.ref_nll_cache = cache.to(self.device)
        rank_zero_info(f"UnlearningModule: cached reference NLL of {len(cache)} forget items")
        if self.retain_loss != "kl":
            object.__setattr__(self, "_ref_model", None)

    def _to_device(self, obj: Any) -> Any:
        if isinstance(obj, Tensor):
            return obj.to(self.device)
        if isinstance(obj, dict):
            return {k: self._to_device(v) for k, v in obj.items()}
        return obj

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Weighted forget term (+ retain term) on a forget-anchored pair batch."""
        f_inputs, f_targets = self._targets(batch["forget"])
        f_nll = self._nll(self._logits(self.model, f_inputs), f_targets)
        if self.method == "npo":
            if self.ref_nll_cache is not None:
                ref_nll = self.ref_nll_cache[batch["index"].long()].to(f_nll.dtype)
            else:
                ref_nll = self._nll(self._reference_logits(f_inputs), f_targets)
            forget_term = npo_loss(f_nll, ref_nll, self.beta)
            self.log("unlearn/npo_weight", npo_weights(f_nll.detach(), ref_nll, self.beta).mean(), sync_dist=True)
        else:
            forget_term = grad_ascent_loss(f_nll)
        loss = self.forget_weight * forget_term
        self.log("unlearn/forget_loss", forget_term.detach(), on_step=True, on_epoch=True, sync_dist=True)
        if self.retain_loss is not None:
            r_inputs, r_targets = self._targets(batch["retain"])
            r_logits = self._logits(self.model, r_inputs)
            if self.retain_loss == "nll":
                retain_term = retain_nll_loss(self._nll(r_logits, r_targets, reduction="mean"))
            else:
                mask = None
                ref_logits = self._reference_logits(r_inputs)
                if r_logits.dim() == 3:
                    r_logits, ref_logits, mask = r_logits[:, :-1], ref_logits[:, :-1], r_targets[:, 1:] != -100
                retain_term = kl_retain_loss(r_logits, ref_logits, mask)
            loss = loss + self.retain_weight * retain_term
            self.log("unlearn/retain_loss", retain_term.detach(), on_step=True, on_epoch=True, sync_dist=True)
        self.log("unlearn/loss", loss.detach(), on_step=True, on_epoch=True, sync_dist=True, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The chosen optimizer over the trainable parameters of the wrapped model."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.optimizer_name == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    # ------------------------------------------------------------------ evaluation
    def _split_names(self) -> list[str]:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(dm, "val_loader_names", None)
        return list(names) if names else list(SPLITS)

    @staticmethod
    def _split_eval(batch: Any) -> tuple[Any, Tensor, Tensor]:
        if isinstance(batch, dict):
            return batch, batch["labels"], batch["index"]
        return batch[0], batch[1], batch[-1]

    def _eval_step(self, batch: Any, dataloader_idx: int) -> None:
        split = self._split_names()[dataloader_idx]
        inputs, targets, index = self._split_eval(batch)
        logits = self._logits(self.model, inputs)
        if logits.dim() == 3:
            correct, count = sequence_correct(logits, targets)
            score = sequence_nll(logits, targets, reduction="mean")
        else:
            correct, count = (logits.argmax(-1) == targets).long(), torch.ones_like(targets)
            score = classifier_nll(logits, targets)
        cast(IndexedMean, self.accuracy[split]).update(correct, index, weight=count)
        cast(IndexedMean, self.mean_nll[split]).update(score, index)
        holdout_name = "holdout" if "holdout" in self._split_names() else "test"
        if split == "forget":
            self.mia_auc.update(score, index, holdout=False)
        elif split == holdout_name:
            self.mia_auc.update(score, index, holdout=True)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Update accuracy, mean NLL and membership-inference states of this loader's split."""
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """As :meth:`validation_step`."""
        self._eval_step(batch, dataloader_idx)

    def _log_eval(self) -> None:
        for split in SPLITS:
            acc, nll = cast(IndexedMean, self.accuracy[split]), cast(IndexedMean, self.mean_nll[split])
            if acc.update_count > 0:
                self.log(f"unlearn/{split}_acc", acc.compute(), sync_dist=True, add_dataloader_idx=False)
                self.log(f"unlearn/{split}_nll", nll.compute(), sync_dist=True, add_dataloader_idx=False)
            acc.reset()
            nll.reset()
        if self.mia_auc.update_count > 0:
            auc = self.mia_auc.compute()
            if not math.isnan(float(auc)):
                self.log("unlearn/mia_auc", auc, sync_dist=True, add_dataloader_idx=False)
        self.mia_auc.reset()

    def on_validation_epoch_end(self) -> None:
        """Compute (synced across ranks) and log the ``unlearn/*`` evaluation metrics."""
        self._log_eval()

    def on_test_epoch_end(self) -> None:
        """As :meth:`on_validation_epoch_end`."""
        self._log_eval()
