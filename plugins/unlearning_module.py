"""Unlearning of a trained classifier or causal LM with any registered forget loss, with DDP-safe metrics."""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

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
    sequence_nll,
)
from litmix.functional.unlearning_losses import (
    FORGET_LOSSES,
    RETAIN_LOSSES,
    ForgetLossSpec,
    activation_mse,
    idk_dpo_loss,
    resolve_forget_loss,
    rmu_direction,
    rmu_forget_loss,
    simnpo_loss,
    undial_loss,
    wga_loss,
)
from litmix.metrics._split_evaluation import SplitEvaluation
from litmix.metrics.mia_auc import MembershipInferenceAUC
from litmix.models import import_class, load_model, output_logits
from litmix.registry import register
from litmix.unlearning_peft import apply_lora, check_lora, is_peft_model, merge_lora
from litmix.validation import check_bool, check_choice, check_float, check_int, check_str, check_type

METHODS = ("grad_ascent", "grad_diff", "npo")
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


def _model_logits(owner: str, model: nn.Module, inputs: Any, who: str = "model") -> Tensor:
    """Logits of ``model`` on a batch side: dict inputs pass their model keys as keyword arguments."""
    if isinstance(inputs, dict):
        out = model(**{k: v for k, v in inputs.items() if k in MODEL_INPUT_KEYS})
    else:
        out = model(inputs)
    return output_logits(out, owner=owner, who=who)


@register(
    "plugin",
    "unlearning",
    paper="Negative Preference Optimization: Towards Balancing Catastrophic Collapse and Unlearning "
    "(https://arxiv.org/abs/2404.05868)",
)
class UnlearningModule(SplitEvaluation, LitmixModule):
    """Unlearn a forget set from a trained model with any forget loss of the unlearning registry.

    Implements Negative Preference Optimization (Zhang et al., https://arxiv.org/abs/2404.05868) and the
    forget losses of TOFU / open-unlearning, chosen by name (``forget_loss``) from
    :data:`litmix.functional.unlearning_losses.FORGET_LOSSES` (formulas and papers there):

    - ``grad_ascent`` (``ga``): ``-mean(NLL_f)`` (Knowledge Unlearning, https://arxiv.org/abs/2210.01504);
    - ``grad_diff`` (``graddiff``): that plus a retain term (``retain_loss`` default ``"nll"``; TOFU,
      https://arxiv.org/abs/2401.06121);
    - ``npo``: ``-(2/beta) mean logsigmoid(beta (NLL_f - NLL_ref))``; ``retain_loss="nll"`` = NPO+RT,
      ``"kl"`` = NPO+KL with ``KL(ref || theta)``;
    - ``simnpo``: reference-free, length-normalised NPO with ``margin`` (https://arxiv.org/abs/2410.07163);
    - ``idkdpo`` (``idkpo``): DPO preferring an "I don't know" answer over the forget answer
      (https://arxiv.org/abs/2305.18290). LM forget items carry it as ``item["alternate"]`` (a dict with
      ``input_ids``, ``attention_mask``, ``labels``); for classifiers the alternative is the reference
      model's most likely *other* class;
    - ``undial``: self-distillation toward the reference logits with the forget label's logit lowered by
      ``beta`` (https://arxiv.org/abs/2402.10052);
    - ``wga``: gradient ascent weighted by the model's own probability ``p^beta`` (https://arxiv.org/abs/2502.19301);
    - ``rmu``: the output of the submodule ``rmu_layer`` on forget data is steered to ``rmu_coeff * u`` (u a fixed
      random unit vector, seeded by ``rmu_seed``); its retain term ``"activation"`` (default) keeps that layer's
      retain activations close to the frozen model's (WMDP, https://arxiv.org/abs/2403.03218). Upstream RMU trains
      only a few layers: set ``requires_grad_(False)`` on the others before passing the model (only trainable
      parameters are optimised).

    Retain losses: ``"nll"``, ``"kl"`` (``KL(ref || theta)``), ``"activation"`` (needs ``rmu_layer``).
    ``method`` is the former name of ``forget_loss`` (``grad_ascent``, ``grad_diff``, ``npo``) and keeps working.

    Training batches come from :class:`litmix.datamodules.ForgetRetainDataModule` (``{"forget", "retain",
    "index"}``; ``index`` = position in the forget set). The wrapped model is a classifier (returns logits;
    sides are ``(x, y)``) or a causal LM (returns an object with ``.logits``; sides are dicts with
    ``input_ids``, ``attention_mask``, ``labels`` with ``-100`` on prompt/padding, Hugging Face shift).
    LM NLLs are answer-token sums for NPO / IdkDPO and token means for gradient ascent (``nll_reduction``).

    **Reference model.** A deep copy of the original made in ``setup("fit")`` (before checkpoint weights
    load, so a resumed run keeps the original as reference), given rank 0's weights on every rank in
    ``on_fit_start``: frozen, in eval mode, outside the optimizer, the state_dict and DDP.
    With ``cache_reference=True`` (``npo``, ``idkdpo``, ``undial`` on classifiers) the reference values of
    every forget item (NLL; alternative NLL and class for IdkDPO; logits for UNDIAL) are computed **once** in
    ``on_fit_start``: each DDP rank scores its shard of the forget set (items ``rank::world``), the shards are
    all-gathered and assembled by index (equal on every rank), stored in the module's checkpoint entry
    (``checkpoint["litmix"]["ref_cache"]``, not the state_dict, so the user's class still loads the weights
    strictly) and the reference model is dropped unless the retain term needs it (``kl``, ``activation``). A
    resumed run restores the cache and runs no reference forward (:attr:`reference_forwards`).
    Dropout in the wrapped model makes step 0 of NPO differ from ``(2/beta) log 2``; a model in eval mode is
    unlearned without dropout.

    Sharded strategies (FSDP, DeepSpeed) are refused in ``setup``: the frozen reference is a whole copy of
    the model; use DDP.

    Logged metrics, named ``<stage>/<split>_<metric>`` (``stage`` = ``train``, ``val`` or ``test``):

    - ``train/forget_loss``: the forget term, per step and epoch mean;
    - ``train/forget_npo_weight``: NPO's mean per-sample weight on the forget batch (NPO only);
    - ``train/retain_loss``: the retain term, when there is one;
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
        method: former name of ``forget_loss`` (``"grad_ascent"``, ``"grad_diff"`` or ``"npo"``).
        beta: the forget loss's inverse temperature / strength (finite, > 0); None = its default (NPO and
            IdkDPO 0.1, SimNPO 4.5, UNDIAL 10, WGA 1); unused by ``grad_ascent``, ``grad_diff``, ``rmu``.
        forget_weight: weight of the forget term (finite, >= 0).
        retain_weight: weight of the retain term (finite, >= 0).
        retain_loss: ``"nll"``, ``"kl"``, ``"activation"`` or None (the forget loss's default: ``"nll"`` for
            ``grad_diff``, ``"activation"`` for ``rmu``, else no retain term).
        nll_reduction: LM NLL per sample, ``"sum"`` or ``"mean"`` over answer tokens (``grad_ascent``,
            ``grad_diff``, ``npo``, ``idkdpo`` only); None = ``"sum"`` for NPO / IdkDPO, ``"mean"`` for gradient
            ascent / GradDiff.
        cache_reference: precompute the reference values by forget index and drop the reference model.
        lr: learning rate (finite, > 0).
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"``.
        weight_decay: weight decay (finite, >= 0).
        model_class: ``"package.module.ClassName"`` of the class saved in a ``.ckpt`` given as ``model``
            (or of a Hugging Face class for a folder; default ``AutoModelForCausalLM``).
        forget_loss: registry name of the forget loss (see above); None = ``method``, else ``"npo"``.
        margin: SimNPO's margin ``delta`` (finite; ``simnpo`` only).
        rmu_layer: name of the submodule (``model.named_modules()``) whose output RMU steers (``rmu`` and the
            ``activation`` retain loss).
        rmu_coeff: RMU's steering coefficient ``c`` (finite, > 0).
        rmu_seed: seed of RMU's random direction ``u`` (>= 0).
        lora: train LoRA adapters instead of the whole model (LoRA, https://arxiv.org/abs/2106.09685): a dict with
            ``r`` (rank >= 1, default 8), ``alpha`` (> 0, default ``2 r``), ``dropout`` (in [0, 1), default 0) and
            ``target_modules`` (names of Linear / Conv1D layers; None = ``q_proj``/``v_proj`` of Llama-style models
            or ``c_attn``/``c_proj`` of GPT-2). The model is wrapped with ``peft.get_peft_model`` when the module is
            built (in place: the given model object gets the adapters; the Lightning checkpoint then loads strictly
            into a fresh module built with the same arguments). Only adapter parameters train; the reference model
            of NPO-type losses and the ``kl`` / ``activation`` retain terms is the same model with its adapters
            disabled (``disable_adapter()``, in eval mode): no second copy in memory. :meth:`merged_model` returns
            the merged plain model (``save_pretrained`` / ``from_pretrained``). Needs ``pip install 'litmix[peft]'``.

    Raises:
        TypeError: for an argument of the wrong type (e.g. ``beta='0.1'``), naming it.
        ValueError: for an unknown forget loss (the message lists the registry), retain loss, optimizer or
            reduction; ``method`` and ``forget_loss`` naming different losses; ``beta``/``lr``/``rmu_coeff``
            <= 0, negative weights, NaN or infinite numbers; a retain loss with ``grad_ascent``;
            ``cache_reference`` with a loss that has no reference values; a ``lora`` dict with unknown keys,
            ``r`` < 1, ``alpha`` <= 0, ``dropout`` outside [0, 1) or target modules the model does not have (or no
            default target modules for a model that is neither GPT-2 nor Llama-style), or a model that already has
            adapters; ``margin`` without ``simnpo``;
            ``nll_reduction`` with a loss that does not use it; ``rmu`` / ``activation`` without ``rmu_layer``
            or with a layer the model does not have; a malformed ``model_class``; a missing ``model`` path
            (also a ``FileNotFoundError``) or a ``.ckpt`` without ``model_class``. During training: an
            ``idkdpo`` LM batch without ``alternate`` answers, or a retain loss on batches without ``retain`` items.
        ImportError: ``lora`` without ``peft`` installed (names the extra ``litmix[peft]``).
        MisconfigurationException: in ``setup`` under FSDP or DeepSpeed; in ``on_fit_start`` when
            ``cache_reference=True`` and the datamodule has no ``forget_dataloader()``, or UNDIAL's cache is
            asked for LM logits.
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
        method: Literal["grad_ascent", "grad_diff", "npo"] | None = None,
        beta: float | None = None,
        forget_weight: float = 1.0,
        retain_weight: float = 1.0,
        retain_loss: Literal["nll", "kl", "activation"] | None = None,
        nll_reduction: Literal["sum", "mean"] | None = None,
        cache_reference: bool = False,
        lr: float = 1e-5,
        optimizer: Literal["adamw", "adam", "sgd"] = "adamw",
        weight_decay: float = 0.0,
        model_class: str | None = None,
        forget_loss: Literal[
            "grad_ascent", "grad_diff", "npo", "simnpo", "idkdpo", "undial", "wga", "rmu", "ga", "graddiff", "idkpo"
        ]
        | None = None,
        margin: float = 0.0,
        rmu_layer: str | None = None,
        rmu_coeff: float = 20.0,
        rmu_seed: int = 0,
        lora: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if method is not None:
            check_choice(name, "method", method, METHODS)
        spec = resolve_forget_loss(forget_loss if forget_loss is not None else method or "npo", name, "forget_loss")
        if method is not None and forget_loss is not None and resolve_forget_loss(method, name, "method") != spec:
            raise ValueError(
                f"{name}(method={method!r}, forget_loss={forget_loss!r}): method is the former name of forget_loss; "
                "give one of them"
            )
        arg = "method" if forget_loss is None and method is not None else "forget_loss"
        if beta is not None:
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
        check_float(name, "margin", margin)
        check_str(name, "rmu_layer", rmu_layer, allow_none=True, allow_empty=False)
        check_float(name, "rmu_coeff", rmu_coeff, low=0.0, low_open=True)
        check_int(name, "rmu_seed", rmu_seed, low=0)
        _check_class_path(name, "model_class", model_class)
        _check_model(name, model, model_class)
        lora_config = check_lora(name, lora)
        given = f"{name}({arg}={(forget_loss if arg == 'forget_loss' else method)!r}"
        if spec.name == "grad_ascent" and retain_loss is not None:
            raise ValueError(
                f"{given}, retain_loss={retain_loss!r}): gradient ascent has no retain term; use {arg}='grad_diff'"
            )
        if cache_reference and spec.needs not in ("ref_nll", "ref_logits"):
            cached = [k for k, s in FORGET_LOSSES.items() if s.needs in ("ref_nll", "ref_logits")]
            raise ValueError(f"{given}, cache_reference=True): only {', '.join(cached)} use cached reference values")
        if margin != 0.0 and spec.name != "simnpo":
            raise ValueError(f"{given}, margin={margin}): margin is SimNPO's; use forget_loss='simnpo'")
        if nll_reduction is not None and spec.name not in ("grad_ascent", "grad_diff", "npo", "idkdpo"):
            raise ValueError(
                f"{given}, nll_reduction={nll_reduction!r}): this loss fixes its own token reduction; "
                "nll_reduction applies to grad_ascent, grad_diff, npo and idkdpo"
            )
        resolved_retain = retain_loss if retain_loss is not None else spec.default_retain
        if (spec.name == "rmu" or resolved_retain == "activation") and rmu_layer is None:
            raise ValueError(
                f"{given}, retain_loss={resolved_retain!r}, rmu_layer=None): RMU and the activation retain loss "
                "need rmu_layer, the name of a submodule of the model (model.named_modules())"
            )
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
        if lora_config is not None:
            if is_peft_model(self.model):
                raise ValueError(f"{name}(lora={lora!r}): the model already has PEFT adapters; pass its base model")
            self.model = apply_lora(self.model, lora_config, owner=name)
        self.lora = lora_config
        if rmu_layer is not None:
            layers = dict(self._base(self.model).named_modules())
            if rmu_layer not in layers or rmu_layer == "":
                shown = [k for k in layers if k][:12]
                raise ValueError(f"{name}(rmu_layer={rmu_layer!r}): the model has no such submodule; some: {shown}")
        self.spec: ForgetLossSpec = spec
        self.method: str = spec.name
        self._arg = arg
        self.beta = float(beta) if beta is not None else float(spec.beta or 0.0)
        self.forget_weight, self.retain_weight = float(forget_weight), float(retain_weight)
        self.retain_loss: str | None = resolved_retain
        self.nll_reduction: str = nll_reduction or spec.reduction
        self.cache_reference = cache_reference
        self.margin, self.rmu_layer, self.rmu_coeff, self.rmu_seed = (
            float(margin),
            rmu_layer,
            float(rmu_coeff),
            rmu_seed,
        )
        self.lr, self.optimizer_name, self.weight_decay = float(lr), optimizer, float(weight_decay)
        self._init_split_metrics(SPLITS)
        self.mia_auc = MembershipInferenceAUC()
        # Outside nn.Module registration: not in state_dict, parameters(), DDP or the optimizer.
        object.__setattr__(self, "_ref_model", None)
        self.ref_cache: dict[str, Tensor] | None = None
        #: Forward passes of the reference model run by this module (0 on a resumed, cached run).
        self.reference_forwards = 0
        self._rmu_direction: Tensor | None = None
        self._nonfinite: Tensor | None = None  # device-side flag: some loss since the last check was not finite

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def example(cls) -> Example:
        """A tiny NPO+RT module around a 2-layer MLP (8 inputs, 4 classes) on Gaussian blobs (forget 10 items)."""
        module = cls(_example_net(), method="npo", retain_loss="nll", lr=1e-2, cache_reference=True)
        return Example(module, _example_datamodule(), [])

    @property
    def ref_model(self) -> nn.Module | None:
        """The frozen reference model (None before ``setup`` or once dropped after caching)."""
        ref: nn.Module | None = self.__dict__.get("_ref_model")
        return ref

    @property
    def ref_nll_cache(self) -> Tensor | None:
        """The cached reference NLL of every forget item (float64, by forget index), or None."""
        return None if self.ref_cache is None else self.ref_cache.get("nll")

    def _needs_ref(self) -> bool:
        return self.spec.needs in ("ref_nll", "ref_logits") or self.retain_loss in ("kl", "activation")

    def _ref_needed_after_cache(self) -> bool:
        return self.retain_loss in ("kl", "activation") or (
            self.spec.needs in ("ref_nll", "ref_logits") and self.ref_cache is None
        )

    # ------------------------------------------------------------------ forward helpers
    def _logits(self, model: nn.Module, inputs: Any, who: str = "model") -> Tensor:
        return _model_logits(type(self).__name__, model, inputs, who)

    def _logits_and_activations(self, model: nn.Module, inputs: Any, who: str = "model") -> tuple[Tensor, Tensor]:
        """Logits and the output of the submodule ``rmu_layer`` (first element if it returns a tuple)."""
        assert self.rmu_layer is not None
        captured: list[Tensor] = []

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple | list) else output)

        handle = self._base(model).get_submodule(self.rmu_layer).register_forward_hook(hook)
        try:
            logits = self._logits(model, inputs, who)
        finally:
            handle.remove()
        return logits, captured[0]

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

    @staticmethod
    def _base(model: nn.Module) -> nn.Module:
        """The wrapped model itself (with its LoRA layers) under a PEFT wrapper, else ``model``."""
        return model.get_base_model() if is_peft_model(model) else model  # type: ignore[operator]

    @contextlib.contextmanager
    def _reference(self) -> Iterator[nn.Module]:
        """The reference model: the frozen copy, or with LoRA the model with adapters disabled, in eval mode."""
        if self.lora is None:
            ref = self.ref_model
            if ref is None:
                raise RuntimeError("UnlearningModule: the reference model is not available (setup not run or dropped)")
            self.reference_forwards += 1
            yield ref
            return
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():  # type: ignore[operator]
                self.reference_forwards += 1
                yield self.model
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def _reference_logits(self, inputs: Any) -> Tensor:
        with self._reference() as ref:
            return self._logits(ref, inputs, who="reference model")

    @torch.no_grad()
    def _reference_activations(self, inputs: Any) -> Tensor:
        with self._reference() as ref:
            return self._logits_and_activations(ref, inputs, who="reference model")[1]

    def merged_model(self) -> nn.Module:
        """The unlearned model as a plain module, LoRA updates merged into a copy (``self.model`` is unchanged).

        For a Hugging Face model the result is its ``PreTrainedModel``: ``save_pretrained`` writes it and
        ``from_pretrained`` reloads it. Without ``lora`` it is a deep copy of the model.
        """
        return merge_lora(self.model)

    @staticmethod
    def _alternate_class(ref_logits: Tensor, targets: Tensor) -> Tensor:
        """Classifier "I don't know" answer: the reference model's most likely class other than the target."""
        masked = ref_logits.float().scatter(-1, targets.unsqueeze(-1), float("-inf"))
        return masked.argmax(-1)

    def _alternate(self, inputs: Any) -> tuple[Any, Tensor]:
        """LM alternative answers ``item["alternate"]`` (IdkDPO) as ``(inputs, labels)``."""
        alt = inputs.get("alternate") if isinstance(inputs, dict) else None
        if not isinstance(alt, dict) or "labels" not in alt:
            raise ValueError(
                f"UnlearningModule({self._arg}='idkdpo'): language-model forget items need an 'alternate' answer "
                "(a dict with input_ids, attention_mask and labels: the 'I don't know' response)"
            )
        return alt, alt["labels"]

    def _reference_values(self, inputs: Any, targets: Tensor) -> dict[str, Tensor]:
        """The per-item reference values the forget loss needs (float64), from one reference forward."""
        ref_logits = self._reference_logits(inputs)
        out: dict[str, Tensor] = {}
        if self.spec.name in ("npo", "idkdpo"):
            out["nll"] = self._nll(ref_logits, targets).double()
        if self.spec.name == "idkdpo":
            if ref_logits.dim() == 3:
                alt_inputs, alt_labels = self._alternate(inputs)
                out["alt_nll"] = self._nll(self._reference_logits(alt_inputs), alt_labels).double()
                out["alt_target"] = torch.full_like(out["alt_nll"], -1.0)  # unused for LMs
            else:
                alt = self._alternate_class(ref_logits, targets)
                out["alt_target"] = alt.double()
                out["alt_nll"] = classifier_nll(ref_logits, alt).double()
        if self.spec.name == "undial":
            if ref_logits.dim() == 3:
                raise MisconfigurationException(
                    f"UnlearningModule({self._arg}='undial', cache_reference=True): caching whole LM logits is not "
                    "supported (V floats per token); use cache_reference=False (resident reference)"
                )
            out["logits"] = ref_logits.double()
        return out

    # ------------------------------------------------------------------ lifecycle
    def setup(self, stage: str) -> None:
        """Refuse sharded strategies; copy the original model as the frozen reference (before weights load)."""
        if stage == "fit":
            refuse_sharded_strategy(
                type(self).__name__,
                self.trainer.strategy,
                "the frozen reference model is a whole copy of the model",
            )
        needs_copy = self.lora is None and self._needs_ref() and self._ref_needed_after_cache()
        if stage == "fit" and needs_copy and self.ref_model is None:
            ref = copy.deepcopy(self.model).eval()
            ref.requires_grad_(False)
            object.__setattr__(self, "_ref_model", ref)

    def on_fit_start(self) -> None:
        """Move the reference model (rank 0's copy on every rank); for ``cache_reference`` compute the cache."""
        if self.ref_model is not None:
            self.ref_model.to(self.device)
            self._broadcast_reference()
        if self.cache_reference and self.ref_cache is None:
            self._compute_reference_cache()
        if self.ref_cache is not None:
            self.ref_cache = {k: v.to(self.device) for k, v in self.ref_cache.items()}
            if not self._ref_needed_after_cache():
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
        """Each rank scores forget items ``rank::world``; the shards are all-gathered and assembled by index."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "forget_dataloader"):
            raise MisconfigurationException(
                "UnlearningModule(cache_reference=True) needs a datamodule with forget_dataloader() "
                "(e.g. ForgetRetainDataModule); pass cache_reference=False otherwise"
            )
        loader = dm.forget_dataloader()
        dataset = loader.dataset
        n = len(dataset)
        world, rank = max(1, int(self.trainer.world_size)), int(self.trainer.global_rank)
        shard = DataLoader(
            Subset(dataset, range(rank, n, world)), batch_size=loader.batch_size or 1, collate_fn=loader.collate_fn
        )
        indices: list[Tensor] = []
        values: dict[str, list[Tensor]] = {}
        for batch in shard:
            inputs, targets, index = self._split(batch, "forget evaluation")
            if index is None:
                raise ValueError("UnlearningModule(cache_reference=True): forget items must carry their index")
            out = self._reference_values(self._to_device(inputs), targets.to(self.device))
            indices.append(index.to(self.device).long())
            for key, val in out.items():
                values.setdefault(key, []).append(val)
        keys = sorted(self._cache_keys())
        per_rank = -(-n // world)
        local_index = torch.full((per_rank,), -1, dtype=torch.long, device=self.device)
        if indices:
            cat = torch.cat(indices)
            local_index[: len(cat)] = cat
        cache: dict[str, Tensor] = {}
        gathered_index = self._gather(local_index).reshape(-1)
        valid = gathered_index >= 0
        if sorted(gathered_index[valid].tolist()) != list(range(n)):
            raise RuntimeError("UnlearningModule: the gathered reference cache does not cover forget items 0..N-1")
        for key in keys:
            local = torch.cat(values[key]) if key in values else torch.zeros(0, dtype=torch.float64, device=self.device)
            padded = torch.zeros((per_rank, *local.shape[1:]), dtype=torch.float64, device=self.device)
            padded[: len(local)] = local
            gathered = self._gather(padded).reshape(world * per_rank, *local.shape[1:])
            full = torch.zeros((n, *local.shape[1:]), dtype=torch.float64, device=self.device)
            full[gathered_index[valid]] = gathered[valid]
            cache[key] = full.cpu()
        self.ref_cache = cache
        rank_zero_info(f"UnlearningModule: cached reference values ({', '.join(keys)}) of {n} forget items")

    def _cache_keys(self) -> set[str]:
        return {"npo": {"nll"}, "idkdpo": {"nll", "alt_nll", "alt_target"}, "undial": {"logits"}}.get(
            self.spec.name, set()
        )

    def _gather(self, tensor: Tensor) -> Tensor:
        if self.trainer.world_size < 2:
            return tensor.unsqueeze(0)
        return self.trainer.strategy.all_gather(tensor)  # type: ignore[no-any-return]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the reference cache in the module's litmix entry (not the state_dict)."""
        super().on_save_checkpoint(checkpoint)
        if self.ref_cache is not None:
            state = {k: v.detach().cpu().clone() for k, v in self.ref_cache.items()}
            checkpoint["litmix"]["ref_cache"] = state
            if "nll" in state:
                checkpoint["litmix"]["ref_nll_cache"] = state["nll"]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the reference cache, if the checkpoint has one."""
        super().on_load_checkpoint(checkpoint)
        entry = checkpoint.get("litmix", {})
        cache = entry.get("ref_cache")
        if cache is None and entry.get("ref_nll_cache") is not None:
            cache = {"nll": entry["ref_nll_cache"]}
        if cache is not None and self.cache_reference:
            self.ref_cache = {k: v.detach().clone() for k, v in cache.items()}

    def _to_device(self, obj: Any) -> Any:
        if isinstance(obj, Tensor):
            return obj.to(self.device)
        if isinstance(obj, dict):
            return {k: self._to_device(v) for k, v in obj.items()}
        return obj

    # ------------------------------------------------------------------ training
    def _cached(self, key: str, index: Tensor | None) -> Tensor | None:
        if self.ref_cache is None or key not in self.ref_cache:
            return None
        if index is None:
            raise ValueError("UnlearningModule(cache_reference=True): training batches must carry the forget 'index'")
        return self.ref_cache[key][index.long().to(self.ref_cache[key].device)]

    def _direction(self, dim: int, device: torch.device) -> Tensor:
        if self._rmu_direction is None or self._rmu_direction.shape[0] != dim:
            self._rmu_direction = rmu_direction(dim, self.rmu_coeff, self.rmu_seed)
        return self._rmu_direction.to(device)

    def _forget_term(self, batch: dict[str, Any]) -> Tensor:
        f_inputs, f_targets, _ = self._split(batch["forget"], "forget")
        index = batch.get("index")
        name = self.spec.name
        if name == "rmu":
            _, acts = self._logits_and_activations(self.model, f_inputs)
            mask = f_targets != -100 if acts.dim() == 3 else None
            return rmu_forget_loss(acts, self._direction(acts.shape[-1], acts.device), mask)
        logits = self._logits(self.model, f_inputs)
        lm = logits.dim() == 3
        if name in ("grad_ascent", "grad_diff"):
            return grad_ascent_loss(self._nll(logits, f_targets))
        if name == "simnpo":
            if lm:
                length = (f_targets[:, 1:] != -100).sum(-1)
                return simnpo_loss(sequence_nll(logits, f_targets, "sum"), length, self.beta, self.margin)
            return simnpo_loss(classifier_nll(logits, f_targets), None, self.beta, self.margin)
        if name == "wga":
            if lm:
                return wga_loss(logits[:, :-1], f_targets[:, 1:], self.beta)
            return wga_loss(logits, f_targets, self.beta)
        if name == "undial":
            ref_logits = self._cached("logits", index)
            if ref_logits is None:
                ref_logits = self._reference_logits(f_inputs)
            if lm:
                return undial_loss(logits[:, :-1], ref_logits[:, :-1], f_targets[:, 1:], self.beta)
            return undial_loss(logits, ref_logits.to(logits.dtype), f_targets, self.beta)
        nll = self._nll(logits, f_targets)
        ref_nll = self._cached("nll", index)
        ref_logits = None
        if ref_nll is None:
            ref_logits = self._reference_logits(f_inputs)
            ref_nll = self._nll(ref_logits, f_targets)
        ref_nll = ref_nll.to(nll.dtype)
        if name == "npo":
            weight = npo_weights(nll.detach(), ref_nll, self.beta).mean()
            self.log("train/forget_npo_weight", weight, sync_dist=True)
            return npo_loss(nll, ref_nll, self.beta)
        # idkdpo
        if lm:
            alt_inputs, alt_labels = self._alternate(f_inputs)
            alt_nll = self._nll(self._logits(self.model, alt_inputs), alt_labels)
            ref_alt = self._cached("alt_nll", index)
            if ref_alt is None:
                ref_alt = self._nll(self._reference_logits(alt_inputs), alt_labels)
        else:
            alt_target = self._cached("alt_target", index)
            if alt_target is None:
                if ref_logits is None:
                    ref_logits = self._reference_logits(f_inputs)
                alt_target = self._alternate_class(ref_logits, f_targets)
                ref_alt = classifier_nll(ref_logits, alt_target)
            else:
                ref_alt = self._cached("alt_nll", index)
            alt_nll = classifier_nll(logits, alt_target.long())
        assert ref_alt is not None
        return idk_dpo_loss(nll, ref_nll, alt_nll, ref_alt.to(alt_nll.dtype), self.beta)

    def _retain_term(self, batch: dict[str, Any]) -> Tensor:
        if batch.get("retain") is None:
            raise ValueError(
                f"UnlearningModule(retain_loss={self.retain_loss!r}): the training batch has no 'retain' items; "
                "give retain data (ForgetRetainDataModule pairs every forget item with one) or retain_loss=None"
            )
        r_inputs, r_targets, _ = self._split(batch["retain"], "retain")
        if self.retain_loss == "activation":
            _, acts = self._logits_and_activations(self.model, r_inputs)
            ref_acts = self._reference_activations(r_inputs)
            mask = r_targets != -100 if acts.dim() == 3 else None
            return activation_mse(acts, ref_acts, mask)
        r_logits = self._logits(self.model, r_inputs)
        if self.retain_loss == "nll":
            return retain_nll_loss(self._nll(r_logits, r_targets, reduction="mean"))
        mask = None
        ref_logits = self._reference_logits(r_inputs)
        if r_logits.dim() == 3:
            r_logits, ref_logits, mask = r_logits[:, :-1], ref_logits[:, :-1], r_targets[:, 1:] != -100
        return kl_retain_loss(r_logits, ref_logits, mask)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Weighted forget term (+ retain term) on a forget-anchored pair batch."""
        forget_term = self._forget_term(batch)
        loss = self.forget_weight * forget_term
        self.log("train/forget_loss", forget_term.detach(), on_step=True, on_epoch=True, sync_dist=True)
        if self.retain_loss is not None:
            retain_term = self._retain_term(batch)
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
            shown = self.hparams.get(self._arg) or self.method
            raise FloatingPointError(
                f"UnlearningModule({self._arg}={shown!r}): the training loss became NaN or infinite by global step "
                f"{self.trainer.global_step}; lower lr (now {self.lr}) or forget_weight, or use a bounded loss such "
                "as forget_loss='npo' (gradient ascent is unbounded below)"
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
    def _eval_step(self, batch: Any, dataloader_idx: int) -> None:
        split = self._split_names()[dataloader_idx]
        inputs, targets, index = self._split(batch, f"{split} evaluation")
        if index is None:
            raise ValueError(
                f"UnlearningModule: {split} evaluation items must carry their index as the third element (or "
                "'index' key), as ForgetRetainDataModule's loaders do"
            )
        score = self._update_split(split, self._logits(self.model, inputs), targets, index)
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
        self._log_splits(stage)
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


def _example_net() -> nn.Module:
    """The seeded 2-layer MLP (8 inputs, 4 classes) of the unlearning modules' examples."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return net


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
