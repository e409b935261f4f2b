"""KD³: knowledge distillation on webly collected (shifted, unlabeled) data, as a LightningModule."""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from torch import Tensor, nn

from litmix.base import Example, LitmixModule
from litmix.data import split_batch
from litmix.distill import FeatureProjector
from litmix.functional.distill_losses import info_nce_loss
from litmix.functional.kd3 import (
    classifier_alignment_loss,
    mix_distribution,
    select_instances,
    selected_kd_loss,
    teacher_weight_at,
    weighted_feature_loss,
)
from litmix.models import load_model, output_logits
from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int, check_str, check_type

__all__ = ["KD3Module"]

_PAPER = (
    "Distribution Shift Matters for Knowledge Distillation with Webly Collected Images "
    "(https://arxiv.org/abs/2307.11469)"
)
OPTIMIZERS = ("adam", "adamw", "sgd")
#: Logged terms, in the order of the running sums.
TERMS = ("kd", "feature", "classifier", "contrast", "total", "selected", "teacher_weight")


def _classifier(model: nn.Module, path: str | None, owner: str, argument: str) -> tuple[str, nn.Linear]:
    """The model's linear classifier: the module at ``path``, or its last ``nn.Linear`` when ``path`` is None."""
    if path is None:
        linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(
                f"{owner}({argument}=None): {type(model).__name__} has no nn.Linear classifier; name the "
                f"classifier module with {argument}="
            )
        return linears[-1]
    try:
        module = model.get_submodule(path) if path not in ("", ".") else model
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:12]
        raise ValueError(f"{owner}({argument}={path!r}): no submodule {path!r}; candidates: {names}") from None
    if not isinstance(module, nn.Linear):
        raise ValueError(
            f"{owner}({argument}={path!r}): the classifier must be an nn.Linear, got {type(module).__name__}"
        )
    return path, module


class _Inputs:
    """Forward pre-hook storing the first input of a module (the penultimate feature of a classifier)."""

    def __init__(self) -> None:
        self.value: Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.value = args[0]


@register("plugin", "distillation", paper=_PAPER)
class KD3Module(LitmixModule):
    """KD³: distil a frozen teacher into a student on web-collected, shifted, unlabeled data.

    Paper: "Distribution Shift Matters for Knowledge Distillation with Webly Collected Images" (KD³), Tang, Chen,
    Niu, Sugiyama and Gong, ICCV 2023 (https://arxiv.org/abs/2307.11469). The maths is in
    :mod:`litmix.functional.kd3` (no reference code was found: the paper's description, see there). The loss of
    a training step on a web batch ``x`` (labels, if any, are ignored)::

        mask, c = select(x)                       combined confidence w·p_T + (1 - w)·p_S >= threshold
        total   = kd_weight         · KD_T(student(x), teacher(x)) over the selected rows
                + feature_weight    · Σ_i c_i·mask_i · ‖P(f_S(x_i)) - f_T(x_i)‖² / Σ_i c_i·mask_i
                + classifier_weight · ‖W_S - W_T·A‖² + ‖b_S - (W_T·c + b_T)‖²          (P = A·f + c)
                + mix_weight        · InfoNCE(f_S(x), f_S(MixDistribution(x)))

    ``w`` (the teacher's vote) goes linearly from ``teacher_weight_start`` to ``teacher_weight_end`` over the
    fit (``trainer.estimated_stepping_batches``). ``f`` is the input of each model's linear classifier (the
    penultimate feature, captured by a forward pre-hook): ``student_classifier`` / ``teacher_classifier`` name it
    (default: the model's last ``nn.Linear``); the projector ``P`` (a
    :class:`~litmix.distill.FeatureProjector`, optimised with the student) maps the student's width to the
    teacher's. MixDistribution (:func:`~litmix.functional.kd3.mix_distribution`) mixes per-sample means and
    standard deviations of the input (``mix_at="."``) or of a student submodule's output (a module path) with
    another sample's, with ``λ ~ Beta(mix_alpha, mix_alpha)``; the permutation and ``λ`` depend only on the
    global step (resumed runs match). ``mix_weight=0`` skips the second student forward.

    The teacher is frozen, in eval mode and under ``no_grad``; it is not a submodule (not in the ``state_dict``,
    the checkpoint, the optimizer or DDP) and follows the module's device. Logs (epoch means, synced over DDP
    ranks): ``kd3/kd``, ``kd3/feature``, ``kd3/classifier``, ``kd3/contrast``, ``kd3/total``, ``kd3/selected``
    (share of selected samples) and ``kd3/teacher_weight``; with validation data ``val/acc`` and ``val/loss``.

    Args:
        student: the model to train; its output is ``[B, C]`` logits from a linear classifier.
        teacher: the frozen teacher (``nn.Module`` or a path for :func:`litmix.models.load_model`), same classes.
        student_classifier: module path of the student's ``nn.Linear`` classifier (``None``: the last one).
        teacher_classifier: module path of the teacher's ``nn.Linear`` classifier (``None``: the last one).
        temperature: KD temperature, > 0.
        threshold: confidence threshold of the selection, in [0, 1] (0 keeps every sample).
        teacher_weight_start: teacher's vote in the combined prediction at the start, in [0, 1].
        teacher_weight_end: teacher's vote at the end, in [0, 1].
        min_keep: keep at least this share of each batch (the most confident samples), in [0, 1].
        kd_weight: weight of the selected KD term, >= 0.
        feature_weight: weight of the confidence-weighted feature alignment, >= 0.
        classifier_weight: weight of the classifier alignment, >= 0.
        mix_weight: weight of the MixDistribution contrastive term, >= 0 (0: no second forward).
        mix_alpha: ``Beta(α, α)`` of the mixing weights, > 0.
        mix_at: ``"."`` (the input) or a student module path whose output is perturbed.
        contrast_temperature: InfoNCE temperature, > 0.
        lr: learning rate, > 0.
        weight_decay: weight decay, >= 0.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (momentum 0.9).
        seed: seed of the MixDistribution draws, >= 0.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value outside its range, a classifier path that does not exist or is not an
            ``nn.Linear``, a model without ``nn.Linear``, student and teacher classifiers with different numbers
            of classes (before any compute), a ``mix_at`` path that does not exist, all weights 0; at the first
            step, logits of different shapes.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, _ = KD3Module.example()
        >>> trainer = fit_tiny(module=module, datamodule=datamodule, max_steps=2)
        >>> sorted(k for k in trainer.callback_metrics if k.startswith("kd3/"))[:4]
        ['kd3/classifier', 'kd3/contrast', 'kd3/feature', 'kd3/kd']
        >>> sorted(module.state_dict())[:2], any(k.startswith("teacher") for k in module.state_dict())
        (['projector.bias', 'projector.weight'], False)
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | str,
        student_classifier: str | None = None,
        teacher_classifier: str | None = None,
        temperature: float = 4.0,
        threshold: float = 0.4,
        teacher_weight_start: float = 1.0,
        teacher_weight_end: float = 0.5,
        min_keep: float = 0.0,
        kd_weight: float = 1.0,
        feature_weight: float = 0.1,
        classifier_weight: float = 0.1,
        mix_weight: float = 0.02,
        mix_alpha: float = 0.1,
        mix_at: str | None = ".",
        contrast_temperature: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Literal["adam", "adamw", "sgd"] = "adam",
        seed: int = 0,
    ) -> None:
        owner = type(self).__name__
        check_type(owner, "student", student, nn.Module)
        check_type(owner, "teacher", teacher, (nn.Module, str, os.PathLike))
        check_str(owner, "student_classifier", student_classifier, allow_none=True)
        check_str(owner, "teacher_classifier", teacher_classifier, allow_none=True)
        self.temperature = check_float(owner, "temperature", temperature, low=0.0, low_open=True)
        self.threshold = check_float(owner, "threshold", threshold, low=0.0, high=1.0)
        self.teacher_weight_start = check_float(owner, "teacher_weight_start", teacher_weight_start, low=0.0, high=1.0)
        self.teacher_weight_end = check_float(owner, "teacher_weight_end", teacher_weight_end, low=0.0, high=1.0)
        self.min_keep = check_float(owner, "min_keep", min_keep, low=0.0, high=1.0)
        self.kd_weight = check_float(owner, "kd_weight", kd_weight, low=0.0)
        self.feature_weight = check_float(owner, "feature_weight", feature_weight, low=0.0)
        self.classifier_weight = check_float(owner, "classifier_weight", classifier_weight, low=0.0)
        self.mix_weight = check_float(owner, "mix_weight", mix_weight, low=0.0)
        self.mix_alpha = check_float(owner, "mix_alpha", mix_alpha, low=0.0, low_open=True)
        check_str(owner, "mix_at", mix_at, allow_none=True, allow_empty=False)
        self.contrast_temperature = check_float(
            owner, "contrast_temperature", contrast_temperature, low=0.0, low_open=True
        )
        self.lr = check_float(owner, "lr", lr, low=0.0, low_open=True)
        self.weight_decay = check_float(owner, "weight_decay", weight_decay, low=0.0)
        self.optimizer_name = check_choice(owner, "optimizer", optimizer, OPTIMIZERS)
        self.seed = check_int(owner, "seed", seed, low=0, high=2**62)
        if self.kd_weight + self.feature_weight + self.classifier_weight + self.mix_weight == 0:
            raise ValueError(
                f"{owner}(kd_weight=0, feature_weight=0, classifier_weight=0, mix_weight=0): nothing to train"
            )
        loaded = load_model(teacher, owner=owner, argument="teacher")
        s_path, s_cls = _classifier(student, student_classifier, owner, "student_classifier")
        t_path, t_cls = _classifier(loaded, teacher_classifier, owner, "teacher_classifier")
        if s_cls.out_features != t_cls.out_features:
            raise ValueError(
                f"{owner}(student_classifier={s_path!r}, teacher_classifier={t_path!r}): the student predicts "
                f"{s_cls.out_features} classes, the teacher {t_cls.out_features}; their logits cannot be matched"
            )
        self.mix_at = mix_at.strip() if mix_at is not None else None
        if self.mix_at not in (None, ".", ""):
            try:
                student.get_submodule(self.mix_at)  # type: ignore[arg-type]
            except AttributeError:
                names = [n for n, _ in student.named_modules() if n][:12]
                raise ValueError(
                    f"{owner}(mix_at={mix_at!r}): the student has no submodule {mix_at!r}; {names}"
                ) from None
        super().__init__()
        self.save_hyperparameters(ignore=["student", "teacher"])
        self.student = student
        loaded.requires_grad_(False).eval()
        self._teacher: list[nn.Module] = [loaded]  # a plain list: no state_dict, checkpoint, optimizer or DDP
        self.student_classifier, self.teacher_classifier = s_path, t_path
        self._linears = (s_cls, t_cls)  # a tuple: not registered again (the teacher's must stay out of the state)
        self.projector: FeatureProjector | None = None
        if self.feature_weight > 0 or self.classifier_weight > 0:
            self.projector = FeatureProjector(s_cls.in_features, t_cls.in_features)
        self._sums: Tensor | None = None
        self._count = 0

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher (not a submodule: never in the checkpoint)."""
        return self._teacher[0]

    def _apply(self, fn: Any, recurse: bool = True) -> KD3Module:
        """Move (and convert) the teacher with the module."""
        super()._apply(fn, recurse)
        self._teacher[0]._apply(fn, recurse)
        return self

    @classmethod
    def example(cls) -> Example:
        """An 8-8-4 student distilled from a seeded 8-32-4 teacher on Gaussian blobs (every term on)."""
        from litmix.testing import TinyDataModule

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            teacher = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
            student = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
            module = cls(student, teacher, threshold=0.3, lr=0.01)
        return Example(module, TinyDataModule(), [])

    def forward(self, x: Tensor) -> Tensor:
        """The student's logits."""
        return self.student(x)

    # ------------------------------------------------------------------------------------------------ steps

    def _progress(self) -> float:
        trainer = self._trainer
        if trainer is None:
            return 0.0
        total = trainer.estimated_stepping_batches
        if not total or total == float("inf"):
            return 0.0
        return min(1.0, trainer.global_step / float(total))

    def _student_forward(self, x: Tensor, hook: _Inputs) -> tuple[Tensor, Tensor]:
        handle = self._linears[0].register_forward_pre_hook(hook)
        try:
            logits = output_logits(self.student(x), owner=type(self).__name__, who="student")
        finally:
            handle.remove()
        if hook.value is None:
            raise RuntimeError(f"{type(self).__name__}: the student classifier {self.student_classifier!r} did not run")
        return logits, hook.value

    def _mixed_forward(self, x: Tensor, gen_seed: int) -> Tensor:
        n = x.shape[0]
        with torch.random.fork_rng(devices=[]):  # draws depend on the step only; the global RNG is untouched
            torch.manual_seed(gen_seed)
            perm = torch.randperm(n).to(x.device)
            alpha = torch.tensor(self.mix_alpha)
            lam = torch.distributions.Beta(alpha, alpha).sample((n,)).to(x.device)
        hook = _Inputs()
        if self.mix_at in (".", ""):
            return self._student_forward(mix_distribution(x, perm, lam), hook)[1]
        target = self.student.get_submodule(self.mix_at)  # type: ignore[arg-type]
        handle = target.register_forward_hook(lambda m, a, out: mix_distribution(out, perm, lam))
        try:
            return self._student_forward(x, hook)[1]
        finally:
            handle.remove()

    def _losses(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s_logits, s_feat = self._student_forward(x, _Inputs())
        teacher = self._teacher[0]
        teacher.eval()
        t_hook = _Inputs()
        handle = self._linears[1].register_forward_pre_hook(t_hook)
        try:
            with torch.no_grad():
                t_logits = output_logits(teacher(x), owner=type(self).__name__, who="teacher").float()
        finally:
            handle.remove()
        if t_logits.shape != s_logits.shape:
            raise ValueError(
                f"{type(self).__name__}: teacher logits {tuple(t_logits.shape)} and student logits "
                f"{tuple(s_logits.shape)} differ"
            )
        w = teacher_weight_at(self._progress(), self.teacher_weight_start, self.teacher_weight_end)
        mask, conf = select_instances(s_logits, t_logits, self.threshold, w, self.min_keep)
        zero = s_logits.new_zeros(())
        kd = selected_kd_loss(s_logits, t_logits, mask, self.temperature) if self.kd_weight > 0 else zero
        feat = cls_loss = contrast = zero
        if self.projector is not None and self.feature_weight > 0 and t_hook.value is not None:
            feat = weighted_feature_loss(self.projector(s_feat), t_hook.value.float(), conf * mask)
        if self.projector is not None and self.classifier_weight > 0:
            cls_loss = classifier_alignment_loss(
                self._linears[0].weight,
                self._linears[0].bias,
                self._linears[1].weight,
                self._linears[1].bias,
                self.projector.weight,
                self.projector.bias,
            )
        if self.mix_weight > 0 and self.mix_at is not None:
            step = self._trainer.global_step if self._trainer is not None else 0
            mixed = self._mixed_forward(x, (self.seed * 1_000_003 + step) % 2**62)
            contrast = info_nce_loss(s_feat, mixed, self.contrast_temperature)
        total = (
            self.kd_weight * kd
            + self.feature_weight * feat
            + self.classifier_weight * cls_loss
            + self.mix_weight * contrast
        )
        logged = (
            torch.stack(
                [kd, feat, cls_loss, contrast, total, mask.float().mean(), zero + w]  # type: ignore[list-item]
            )
            .detach()
            .float()
        )
        return total, logged

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Selection, KD on the selected samples, feature/classifier alignment and the MixDistribution term."""
        x, _, _ = split_batch(batch)
        total, logged = self._losses(x)
        self._sums = logged if self._sums is None else self._sums + logged
        self._count += 1
        return total

    def on_train_epoch_start(self) -> None:
        """Start the epoch's sums."""
        self._sums, self._count = None, 0

    def on_train_epoch_end(self) -> None:
        """Log each term's epoch mean (``kd3/<term>``), synced over DDP ranks."""
        if self._sums is None or not self._count:
            return
        if not bool(torch.isfinite(self._sums).all()):
            bad = TERMS[int((~torch.isfinite(self._sums)).nonzero()[0, 0])]
            raise FloatingPointError(f"{type(self).__name__}: the term kd3/{bad} became non-finite in this epoch")
        means = self._sums / self._count
        sync = self.trainer.world_size > 1
        for name, value in zip(TERMS, means, strict=True):
            self.log(f"kd3/{name}", value, on_step=False, on_epoch=True, batch_size=1, sync_dist=sync)
        self._sums, self._count = None, 0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """The student's accuracy and cross-entropy on labelled validation batches."""
        x, y, _ = split_batch(batch)
        if y is None:
            return
        logits = self.student(x).float()
        keep = y != -100
        if not bool(keep.any()):
            return
        size = int(keep.sum())
        loss = torch.nn.functional.cross_entropy(logits[keep], y[keep])
        self.log("val/loss", loss, batch_size=size, sync_dist=True)
        self.log("val/acc", (logits[keep].argmax(-1) == y[keep]).float().mean(), batch_size=size, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One optimizer over the student and the projector."""
        params = [p for p in self.parameters() if p.requires_grad]
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        cls = torch.optim.AdamW if self.optimizer_name == "adamw" else torch.optim.Adam
        return cls(params, lr=self.lr, weight_decay=self.weight_decay)
