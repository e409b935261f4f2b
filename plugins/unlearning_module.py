"""Unlearning of a trained classifier or causal LM: gradient ascent, GradDiff and NPO, with DDP-safe metrics."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Literal, cast

import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example, LitmixModule
from litmix.data import split_batch
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
from litmix.models import import_class, load_model, output_logits
from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_float, check_str, check_type

METHODS = ("grad_ascent", "grad_diff", "npo")
RETAIN_LOSSES = ("nll", "kl")
OPTIMIZERS = ("adamw", "adam", "sgd")
SPLITS = ("forget", "retain", "test", "holdout")
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "position_ids", "token_type_ids")


def _check_class_path(owner: str, name: str, value: Any) -> str | None:
    """``None`` or a ``"package.module.ClassName"`` string (syntax only; imported when needed)."""
    check_str(owner, name, value, allow_none=True, allow_empty=False)
    if value is not None:
        parts = value.split(".")
        if len(parts) < 2 or not all(part.isidentifier() for part in parts):
            raise ValueError(f"{owner}({name}={value!r}): {name} must be 'package.module.ClassName'")
    return value  # type: ignore[no-any-return]


def _check_model(owner: str, value: Any, model_class: str | None) -> None:
    """``model`` is a module or an existing path of a kind :func:`litmix.models.load_model` reads."""
    check_type(owner, "model", value, (nn.Module, str, os.PathLike))
    if isinstance(value, nn.Module):
        return
    if not str(value).strip():
        raise ValueError(f"{owner}(model={value!r}): model must be an nn.Module or a non-empty path")
    path = Path(value).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(
            f"{owner}(model={str(value)!r}): a folder must hold a Hugging Face model saved with save_pretrained "
            "(no config.json found)"
        )
    if path.suffix == ".ckpt" and path.is_file() and model_class is None:
        raise ValueError(
            f"{owner}(model={str(value)!r}, model_class=None): a .ckpt needs model_class, "
            "the 'package.module.ClassName' of the saved class"
        )


@register(
    "plugin",
    "unlearning",
    paper="Negative Preference Optimization: Towards Balancing Catastrophic Collapse and Unlearning "
    "(https://arxiv.org/abs/2404.05868)",
)
class UnlearningModule(LitmixModule):
    """Unlearn a forget set from a trained model with gradient ascent, GradDiff or NPO.

    Implements Negative Preference Optimization (Zhang et al., https://arxiv.org/abs/2404.05868) and
    its baselines, as in TOFU / open-unlearning. Training batches come from
    :class:`litmix.datamodules.ForgetRetainDataModule` (``{"forget", "retain", "index"}``; ``index`` =
    position in the forget set). The wrapped model is a classifier (returns logits; sides are
    ``(x, y)``) or a causal LM (returns an object with ``.logits``; sides are dicts with ``input_ids``,
    ``attention_mask``, ``labels`` with ``-100`` on prompt/padding, Hugging Face shift). Logits are read
    with :func:`litmix.models.output_logits` and batches split with :func:`litmix.data.split_batch`. Losses:

    - ``grad_ascent``: ``forget_weight * -mean(NLL_f)``;
    - ``grad_diff``: that plus ``retain_weight * retain term`` (``retain_loss`` default ``"nll"``);
    - ``npo``: ``forget_weight * -(2/beta) mean logsigmoid(beta (NLL_f - NLL_ref))``, plus an optional
      retain term (``retain_loss="nll"`` = NPO+RT, ``"kl"`` = NPO+KL with ``KL(ref || theta)``).

    LM NLLs are answer-token sums for NPO and token means for gradient ascent (``nll_reduction``).
    The reference model is a deep copy of the original made in ``setup("fit")`` (before checkpoint
    weights load, so a resumed run keeps the original as reference), broadcast from rank 0 in
    ``on_fit_start`` (so every rank holds the same reference): frozen, in eval mode, outside the
    optimizer, the state_dict and DDP. With ``cache_reference=True`` (NPO) the reference NLL of every
    forget item is computed once in ``on_fit_start`` on rank 0, broadcast (equal on every rank), stored
    in the checkpoint (``checkpoint["litmix"]["ref_nll_cache"]``), and the reference model is dropped
    (kept if ``retain_loss="kl"``). Dropout in the wrapped model makes step 0 differ from
    ``(2/beta) log 2``; Lightning keeps the wrapped model's train/eval mode (``from_pretrained`` returns
    eval mode), so a model in eval mode is unlearned without dropout.

    Sharded strategies (FSDP, DeepSpeed) are refused in ``setup``: the frozen reference is a whole copy of
    the model and the reference cache is computed by rank 0 alone; use DDP.

    Logged metrics, named ``<stage>/<split>_<metric>`` (``stage`` = ``train``, ``val`` or ``test``):

    - ``train/forget_loss``: the forget term (gradient ascent or NPO loss), per step and epoch mean;
    - ``train/forget_npo_weight``: NPO's mean per-sample weight on the forget batch (NPO only);
    - ``train/retain_loss``: the retain term (NLL or KL), when there is one;
    - ``train/loss``: the weighted total (progress bar);
    - ``val/<split>_acc``, ``test/<split>_acc``: accuracy of each evaluation split (token accuracy for LMs);
    - ``val/<split>_nll``, ``test/<split>_nll``: mean per-sample NLL of each evaluation split;
    - ``val/forget_mia_auc``, ``test/forget_mia_auc``: loss-threshold membership-inference AUC of the forget
      split.

    Evaluation splits are the datamodule's ``val_loader_names`` (default ``forget``, ``retain``, ``test``,
    ``holdout``). ``forget_mia_auc`` attacks the forget split against the holdout split (the test split when
    there is no holdout): **1 = memorised, 0.5 = indistinguishable, < 0.5 = over-unlearned**
    (:class:`~litmix.metrics.MembershipInferenceAUC`). Evaluation states are torchmetrics ``cat`` states
    de-duplicated by item index, so values do not depend on the number of ranks.

    Args:
        model: the trained model, or a path (see :func:`litmix.models.load_model`) so the CLI can build it.
        method: ``"grad_ascent"``, ``"grad_diff"`` or ``"npo"``.
        beta: NPO inverse temperature (finite, > 0).
        forget_weight: weight of the forget term (finite, >= 0).
        retain_weight: weight of the retain term (finite, >= 0).
        retain_loss: ``"nll"``, ``"kl"`` or None (no retain term; for ``grad_diff`` None means ``"nll"``).
        nll_reduction: LM NLL per sample, ``"sum"`` or ``"mean"`` over answer tokens; None = ``"sum"``
            for NPO, ``"mean"`` for gradient ascent / GradDiff.
        cache_reference: precompute the NPO reference NLLs by forget index and drop the reference model.
        lr: learning rate (finite, > 0).
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"``.
        weight_decay: weight decay (finite, >= 0).
        model_class: ``"package.module.ClassName"`` of the class saved in a ``.ckpt`` given as ``model``
            (or of a Hugging Face class for a folder; default ``AutoModelForCausalLM``).

    Raises:
        TypeError: for an argument of the wrong type (e.g. ``beta='0.1'``), naming it.
        ValueError: for an unknown method/retain loss/optimizer/reduction, ``beta``/``lr`` <= 0, negative
            weights, NaN or infinite numbers, a retain loss with ``grad_ascent``, ``cache_reference`` without
            NPO, a malformed ``model_class``, a missing ``model`` path (also a ``FileNotFoundError``) or a
            ``.ckpt`` without ``model_class``.
        MisconfigurationException: in ``setup`` under FSDP or DeepSpeed; in ``on_fit_start`` when
            ``cache_reference=True`` and the datamodule has no ``forget_dataloader()``.
        FloatingPointError: during training, at the next logging step or epoch end after the loss became NaN
            or infinite (checked on every rank together).

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> module, datamodule, callbacks = UnlearningModule.example()
        >>> from litmix.testing import make_trainer
        >>> trainer = make_trainer(max_epochs=1, limit_val_batches=1.0, callbacks=callbacks)
        >>> trainer.fit(module, datamodule=datamodule)
        >>> sorted(k for k in trainer.callback_metrics if k.endswith(("acc", "auc")))
        ['val/forget_acc', 'val/forget_mia_auc', 'val/retain_acc', 'val/test_acc']
    """

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
        check_choice(name, "method", method, METHODS)
        check_float(name, "beta", beta, low=0.0, low_open=True)
        check_float(name, "forget_weight", forget_weight, low=0.0)
        check_float(name, "retain_weight", retain_weight, low=0.0)
        if retain_loss is not None:
            check_choice(name, "retain_loss", retain_loss, RETAIN_LOSSES)
        if nll_reduction is not None:
            check_choice(name, "nll_reduction", nll_reduction, ("sum", "mean"))
        check_bool(name, "cache_reference", cache_reference)
        check_float(name, "lr", lr, low=0.0, low_open=True)
        check_choice(name, "optimizer", optimizer, OPTIMIZERS)
        check_float(name, "weight_decay", weight_decay, low=0.0)
        _check_class_path(name, "model_class", model_class)
        _check_model(name, model, model_class)
        if method == "grad_ascent" and retain_loss is not None:
            raise ValueError(
                f"{name}(method='grad_ascent', retain_loss={retain_loss!r}): gradient ascent has no retain term; "
                "use method='grad_diff'"
            )
        if cache_reference and method != "npo":
            raise ValueError(f"{name}(cache_reference=True, method={method!r}): only npo uses reference NLLs")
        if model_class is not None and not isinstance(model, nn.Module):
            import_class(model_class, owner=name, argument="model_class")
        self.save_hyperparameters(ignore=["model"])
        if isinstance(model, str | os.PathLike):
            self.hparams["model"] = str(model)
        try:
            self.model = load_model(
                model, class_path=model_class, owner=name, argument="model", class_argument="model_class"
            )
        except (TypeError, ValueError):
            raise
        except Exception as err:  # e.g. a file that is not a torch.save'd module, a broken HF folder
            raise ValueError(
                f"{name}(model={str(model)!r}): cannot load the model ({type(err).__name__}: {err})"
            ) from err
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
        self._nonfinite: Tensor | None = None  # device-side flag: some loss since the last check was not finite

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def example(cls) -> Example:
        """A tiny NPO+RT module around a 2-layer MLP (8 inputs, 4 classes) on Gaussian blobs (forget 10 items)."""
        gen = torch.Generator().manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        module = cls(net, method="npo", retain_loss="nll", lr=1e-2, cache_reference=True)
        return Example(module, _example_datamodule(), [])

    @property
    def ref_model(self) -> nn.Module | None:
        """The frozen reference model (None before ``setup`` or once dropped after caching)."""
        ref: nn.Module | None = self.__dict__.get("_ref_model")
        return ref

    def _needs_ref(self) -> bool:
        return self.method == "npo" or self.retain_loss == "kl"

    # ------------------------------------------------------------------ forward helpers
    def _logits(self, model: nn.Module, inputs: Any, who: str = "model") -> Tensor:
        if isinstance(inputs, dict):
            out = model(**{k: v for k, v in inputs.items() if k in MODEL_INPUT_KEYS})
        else:
            out = model(inputs)
        return output_logits(out, owner=type(self).__name__, who=who)

    @staticmethod
    def _split(batch: Any, part: str) -> tuple[Any, Tensor, Tensor | None]:
        """``(inputs, targets, index)`` of a batch (dict batches keep the whole dict as the model input)."""
        x, y, index = split_batch(batch)
        if y is None:
            raise ValueError(
                f"UnlearningModule: the {part} batch has no targets; items must be (x, y[, index]) or dicts with "
                "'labels'"
            )
        return (batch if isinstance(batch, dict) else x), y, index

    def _nll(self, logits: Tensor, targets: Tensor, reduction: str | None = None) -> Tensor:
        if logits.dim() == 3:
            return sequence_nll(logits, targets, reduction=reduction or self.nll_reduction)  # type: ignore[arg-type]
        return classifier_nll(logits, targets)

    @torch.no_grad()
    def _reference_logits(self, inputs: Any) -> Tensor:
        ref = self.ref_model
        if ref is None:
            raise RuntimeError("UnlearningModule: the reference model is not available (setup not run or dropped)")
        return self._logits(ref, inputs, who="reference model")

    # ------------------------------------------------------------------ lifecycle
    def setup(self, stage: str) -> None:
        """Refuse sharded strategies; copy the original model as the frozen reference (before weights load)."""
        if stage == "fit":
            refuse_sharded_strategy(
                type(self).__name__,
                self.trainer.strategy,
                "the frozen reference model is a whole copy of the model and rank 0 alone computes the reference cache",
            )
        if stage == "fit" and self._needs_ref() and self.ref_model is None and self.ref_nll_cache is None:
            ref = copy.deepcopy(self.model).eval()
            ref.requires_grad_(False)
            object.__setattr__(self, "_ref_model", ref)

    def on_fit_start(self) -> None:
        """Move the reference model (rank 0's copy on every rank); for ``cache_reference`` compute the cache."""
        if self.ref_model is not None:
            self.ref_model.to(self.device)
            self._broadcast_reference()
        if self.cache_reference and self.ref_nll_cache is None:
            self._compute_reference_cache()
        if self.ref_nll_cache is not None:
            self.ref_nll_cache = self.ref_nll_cache.to(self.device)
            if self.retain_loss != "kl":
                object.__setattr__(self, "_ref_model", None)

    def _broadcast_reference(self) -> None:
        """Give every rank rank 0's reference weights (DDP broadcasts the trained model, not this copy)."""
        ref = self.ref_model
        if ref is None or self.trainer.world_size < 2:
            return
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        with torch.no_grad():
            for tensor in [*ref.parameters(), *ref.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def _compute_reference_cache(self) -> None:
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
                inputs, targets, index = self._split(batch, "forget evaluation")
                if index is None:
                    raise ValueError("UnlearningModule(cache_reference=True): forget items must carry their index")
                nll = self._nll(self._reference_logits(self._to_device(inputs)), targets.to(self.device))
                values.update(zip(index.tolist(), nll.double().cpu().tolist(), strict=True))
            cache = torch.tensor([values[i] for i in range(len(values))], dtype=torch.float64)
        cache = self.trainer.strategy.broadcast(cache, src=0)
        assert cache is not None
        self.ref_nll_cache = cache
        rank_zero_info(f"UnlearningModule: cached reference NLL of {len(cache)} forget items")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the reference cache (so a resumed run does not depend on recomputing it)."""
        super().on_save_checkpoint(checkpoint)
        if self.ref_nll_cache is not None:
            checkpoint["litmix"]["ref_nll_cache"] = self.ref_nll_cache.detach().cpu().clone()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the reference cache, if the checkpoint has one."""
        super().on_load_checkpoint(checkpoint)
        cache = checkpoint.get("litmix", {}).get("ref_nll_cache")
        if cache is not None and self.cache_reference:
            self.ref_nll_cache = cache.detach().clone()

    def _to_device(self, obj: Any) -> Any:
        if isinstance(obj, Tensor):
            return obj.to(self.device)
        if isinstance(obj, dict):
            return {k: self._to_device(v) for k, v in obj.items()}
        return obj

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Weighted forget term (+ retain term) on a forget-anchored pair batch."""
        f_inputs, f_targets, _ = self._split(batch["forget"], "forget")
        f_nll = self._nll(self._logits(self.model, f_inputs), f_targets)
        if self.method == "npo":
            if self.ref_nll_cache is not None:
                ref_nll = self.ref_nll_cache[batch["index"].long()].to(f_nll.dtype)
            else:
                ref_nll = self._nll(self._reference_logits(f_inputs), f_targets)
            forget_term = npo_loss(f_nll, ref_nll, self.beta)
            weight = npo_weights(f_nll.detach(), ref_nll, self.beta).mean()
            self.log("train/forget_npo_weight", weight, sync_dist=True)
        else:
            forget_term = grad_ascent_loss(f_nll)
        loss = self.forget_weight * forget_term
        self.log("train/forget_loss", forget_term.detach(), on_step=True, on_epoch=True, sync_dist=True)
        if self.retain_loss is not None:
            r_inputs, r_targets, _ = self._split(batch["retain"], "retain")
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
            self.log("train/retain_loss", retain_term.detach(), on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, sync_dist=True, prog_bar=True)
        bad = ~torch.isfinite(loss.detach())
        self._nonfinite = bad if self._nonfinite is None else self._nonfinite | bad
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """At logging steps and epoch ends, stop the run (on every rank) if a loss was NaN or infinite."""
        trainer = self.trainer
        every = int(getattr(trainer, "log_every_n_steps", 0) or 50)  # set by Lightning's logger connector
        if trainer.global_step % every == 0 or trainer.is_last_batch:
            self._check_finite()

    def _check_finite(self) -> None:
        flag, self._nonfinite = self._nonfinite, None
        bad = bool(flag) if flag is not None else False
        if self.trainer.world_size > 1:  # the same schedule on every rank: all raise together, none hangs
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise FloatingPointError(
                f"UnlearningModule(method={self.method!r}): the training loss became NaN or infinite by global step "
                f"{self.trainer.global_step}; lower lr (now {self.lr}) or forget_weight, or use method='npo' "
                "(gradient ascent is unbounded below)"
            )

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

    def _eval_step(self, batch: Any, dataloader_idx: int) -> None:
        split = self._split_names()[dataloader_idx]
        inputs, targets, index = self._split(batch, f"{split} evaluation")
        if index is None:
            raise ValueError(
                f"UnlearningModule: {split} evaluation items must carry their index as the third element (or "
                "'index' key), as ForgetRetainDataModule's loaders do"
            )
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

    def _log_eval(self, stage: str) -> None:
        for split in SPLITS:
            acc, nll = cast(IndexedMean, self.accuracy[split]), cast(IndexedMean, self.mean_nll[split])
            if acc.update_count > 0:
                self.log(f"{stage}/{split}_acc", acc.compute(), sync_dist=True, add_dataloader_idx=False)
                self.log(f"{stage}/{split}_nll", nll.compute(), sync_dist=True, add_dataloader_idx=False)
            acc.reset()
            nll.reset()
        if self.mia_auc.update_count > 0:
            auc = self.mia_auc.compute()
            if not math.isnan(float(auc)):
                self.log(f"{stage}/forget_mia_auc", auc, sync_dist=True, add_dataloader_idx=False)
        self.mia_auc.reset()

    def on_validation_epoch_end(self) -> None:
        """Compute (synced across ranks) and log the ``val/*`` evaluation metrics."""
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        """Compute (synced across ranks) and log the ``test/*`` evaluation metrics."""
        self._log_eval("test")


def _example_datamodule() -> Any:
    """Tiny forget/retain/test data for :meth:`UnlearningModule.example` (Gaussian blobs, 10 forget items)."""
    from litmix.datamodules.forget_retain import ForgetRetainDataModule
    from litmix.testing import TinyDataModule

    return ForgetRetainDataModule.from_dataset(
        TinyDataModule(n=64).dataset,
        test_dataset=TinyDataModule(n=32).dataset,
        forget_indices=list(range(10)),
        batch_size=4,
        eval_batch_size=16,
    )
