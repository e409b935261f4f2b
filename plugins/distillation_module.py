"""Distil any model into any model: a LightningModule with frozen teachers and loss terms on hooked features."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from litmix._loss_terms import _logs_this_step
from litmix.base import Example, LitmixModule
from litmix.data import split_batch
from litmix.distill.base import (
    DistillTerm,
    capture_outputs,
    cast_floating,
    check_teachers,
    feature_tensor,
    infer_width,
    resolve_module,
)
from litmix.distill.logits_kd import AGGREGATES, LogitsKDTerm
from litmix.distill.terms import build_term
from litmix.models import load_model, output_logits
from litmix.registry import register
from litmix.validation import check_choice, check_float, check_str, check_type

TEACHER_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
OPTIMIZERS = ("adam", "adamw", "sgd")
#: Prefixes of the module's state: the student's weights and the terms' learned parts (projectors).
STUDENT_PREFIX, TERMS_PREFIX = "student.", "distill_terms."
_PAPER = "Distilling the Knowledge in a Neural Network (https://arxiv.org/abs/1503.02531)"


def _task_cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy over the rows whose target is not ``-100`` (0 when every target is ``-100``)."""
    flat, target = logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)
    kept = (target != -100).sum().clamp(min=1)
    return F.cross_entropy(flat, target, ignore_index=-100, reduction="sum") / kept


_WARNED: dict[str, bool] = {}


def _warn_rerun(path: str) -> None:
    if not _WARNED.get(path):
        _WARNED[path] = True
        rank_zero_warn(
            f"DistillationModule: module {path!r} ran more than once in one forward (shared or re-run, e.g. "
            "activation checkpointing); its terms use the last output"
        )


@register("plugin", "distillation", paper=_PAPER)
class DistillationModule(LitmixModule):
    """Distil one or more frozen teachers into any student, with loss terms on features captured by hooks.

    Papers: Hinton et al., "Distilling the Knowledge in a Neural Network" (https://arxiv.org/abs/1503.02531);
    the terms cite theirs (FitNets https://arxiv.org/abs/1412.6550, attention transfer
    https://arxiv.org/abs/1612.03928, RKD https://arxiv.org/abs/1904.05068, CRD https://arxiv.org/abs/1910.10699);
    ensembles with ``aggregate="mean_prob"`` and no labels as MEAL V2 (https://arxiv.org/abs/2009.08453).

    The loss of every training step is::

        total = task_weight · task_loss(student(x), y) + Σ_term term.weight · term(student feature, teacher feature)

    ``task_loss="cross_entropy"`` (over the last dimension; ``[B, L, V]`` language-model logits against
    ``[B, L]`` targets; targets ``-100`` are ignored, so a batch may mix labelled and unlabelled samples and a
    batch without labels contributes 0) or ``None`` (no hard labels: batches may hold inputs only). To reproduce
    :class:`~litmix.callbacks.KnowledgeDistillation`'s ``(1 - w) · task + w · kd`` set ``task_weight = 1 - w``
    and the kd term's ``weight = w``.

    **Terms** are JSON-friendly dicts (LightningCLI YAML works) or :class:`~litmix.distill.base.DistillTerm`
    objects; ``kind`` is ``"kd"`` (:class:`~litmix.distill.LogitsKDTerm`), ``"fitnet"``
    (:class:`~litmix.distill.FitNetTerm`, learned projector when widths differ), ``"at"``
    (:class:`~litmix.distill.AttentionTransferTerm`), ``"rkd"`` (:class:`~litmix.distill.RKDTerm`) or ``"crd"``
    (:class:`~litmix.distill.ContrastiveTerm`, InfoNCE with in-batch negatives). ``student`` and ``teacher`` are
    module paths (``model.get_submodule``; ``"."`` = the model's output) whose outputs are captured by forward
    hooks during the step (the first tensor of a tuple output, e.g. a GPT-2 block's hidden states). Default:
    ``[{"kind": "kd"}]``. Example: ``terms=[{"kind": "kd", "temperature": 4.0, "weight": 0.9},
    {"kind": "fitnet", "student": "layers.1", "teacher": "layers.3", "weight": 1.0}]``.

    **Teachers** are frozen (``requires_grad_(False)``), run under ``torch.no_grad()`` in eval mode (re-asserted
    every step), on the student's inputs (floating inputs cast to the teacher's dtype; ``teacher_dtype`` casts
    the teachers once, e.g. ``"bfloat16"`` halves their weights; features and logits are cast to float32 for
    the losses). They are **not** registered submodules: they are kept in a plain list, so they are in no
    ``state_dict``, no checkpoint, no optimizer and outside DDP (every rank runs its own copy); they follow the
    module's device (``.to`` / ``.cuda``; also a dtype change unless ``teacher_dtype`` is set).

    **Checkpoint layout.** The state is ``student.*`` (the student's own keys) plus ``distill_terms.*`` (the
    terms' projectors and embedding heads, optimised with the student in a second parameter group named
    ``"distill_terms"``). :meth:`student_state_dict` turns a checkpoint (or this module's ``state_dict``) into the
    bare student's keys, which load with ``strict=True`` into a fresh student of the same class; a fresh
    ``DistillationModule`` with the same terms loads the whole checkpoint strictly (resume).

    Logs, cheaply (no per-step ``self.log``: the detached values are kept and folded at logging steps):
    ``distill/<term name>`` (unweighted), ``distill/task`` and ``distill/total`` as exact epoch means (over the
    epoch's steps; under DDP averaged over ranks), the same with ``_step`` at Lightning's logging steps
    (``log_every_n_steps``), ``distill/agreement`` (student-teacher top-1 agreement of the first KD term on the
    output, epoch mean) and, with validation data, ``val/loss`` and ``val/acc`` of the student. A non-finite
    term stops the run (``FloatingPointError`` naming it) within ``log_every_n_steps`` steps.

    Args:
        student: the model to train (any ``nn.Module``).
        teachers: one teacher or a list of teachers (``nn.Module`` or a path loaded with
            :func:`litmix.models.load_model`).
        terms: the loss terms (dicts with ``kind`` or ``DistillTerm`` objects); ``None`` = ``[{"kind": "kd"}]``.
        task_loss: ``"cross_entropy"`` or ``None`` (no hard labels).
        task_weight: weight of the task loss, a finite number >= 0.
        aggregate: how several teachers' logits make one target: ``"mean_prob"`` (MEAL V2) or ``"mean_logit"``.
        teacher_dtype: ``None`` (keep) or ``"float32"``, ``"float64"``, ``"bfloat16"``, ``"float16"``.
        lr: learning rate, > 0.
        weight_decay: weight decay, >= 0.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (momentum 0.9).
        cache_key: a dict batch holding this key carries precomputed teacher logits (e.g. from a teacher-output
            cache DataModule): the KD terms on the teachers' aggregated output (``teacher="."``, no
            ``teacher_index``) use them and the teachers run only for the other terms (not at all if none).
            Logits or log-probabilities at ``T = 1`` (the same tempered softmax at every ``T``). ``None``: ignore.

    Raises:
        TypeError: for an argument of the wrong type (a teacher that is not a module or path, a term that is not
            a dict or term), naming it.
        ValueError: for a value outside its range, an unknown term kind (listing the kinds), a negative term
            weight, a module path that does not exist (naming candidates), a ``teacher_index`` beyond the
            teachers, a feature width that cannot be read (pass ``student_dim`` / ``teacher_dim``); at the first
            step, teacher and student logits of different shapes or features a term cannot compare, or a
            ``task_loss`` without targets in the batch.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, _ = DistillationModule.example()
        >>> trainer = fit_tiny(module=module, datamodule=datamodule, max_steps=2)
        >>> sorted(k for k in trainer.callback_metrics if k.startswith("distill/") and not k.endswith("_step"))
        ['distill/agreement', 'distill/fitnet', 'distill/kd', 'distill/task', 'distill/total']
        >>> any(k.startswith("teacher") for k in module.state_dict())
        False
    """

    def __init__(
        self,
        student: nn.Module,
        teachers: nn.Module | str | list[nn.Module | str],
        terms: list[dict[str, Any]] | None = None,
        task_loss: Literal["cross_entropy"] | None = "cross_entropy",
        task_weight: float = 1.0,
        aggregate: Literal["mean_prob", "mean_logit"] = "mean_prob",
        teacher_dtype: Literal["float32", "float64", "bfloat16", "float16"] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Literal["adam", "adamw", "sgd"] = "adam",
        cache_key: str | None = "teacher_logits",
    ) -> None:
        owner = type(self).__name__
        check_type(owner, "student", student, nn.Module)
        teacher_list = check_teachers(owner, "teachers", teachers)
        if terms is None:
            terms = [{"kind": "kd"}]
        check_type(owner, "terms", terms, (list, tuple))
        if task_loss is not None:
            check_choice(owner, "task_loss", task_loss, ("cross_entropy",))
        task_weight = check_float(owner, "task_weight", task_weight, low=0.0)
        check_choice(owner, "aggregate", aggregate, AGGREGATES)
        if teacher_dtype is not None:
            check_choice(owner, "teacher_dtype", teacher_dtype, tuple(TEACHER_DTYPES))
        lr = check_float(owner, "lr", lr, low=0.0, low_open=True)
        weight_decay = check_float(owner, "weight_decay", weight_decay, low=0.0)
        check_choice(owner, "optimizer", optimizer, OPTIMIZERS)
        cache_key = check_str(owner, "cache_key", cache_key, allow_none=True, allow_empty=False)
        built = [build_term(spec, owner=owner, where=f"terms[{i}]") for i, spec in enumerate(terms)]
        if not built and task_loss is None:
            raise ValueError(f"{owner}(terms=[], task_loss=None): nothing to train on; give a term or a task loss")
        loaded = [load_model(t, owner=owner, argument=f"teachers[{i}]") for i, t in enumerate(teacher_list)]
        super().__init__()
        self.save_hyperparameters(ignore=["student", "teachers"])
        self.student = student
        self.task_loss, self.task_weight, self.aggregate = task_loss, task_weight, aggregate
        self.teacher_dtype = teacher_dtype
        self.lr, self.weight_decay, self.optimizer_name = lr, weight_decay, optimizer
        self.cache_key = cache_key
        dtype = TEACHER_DTYPES[teacher_dtype] if teacher_dtype is not None else None
        for t in loaded:
            t.requires_grad_(False).eval()
            if dtype is not None:
                t.to(dtype)
        # A plain list: the teachers are no registered submodules (no state_dict, checkpoint, optimizer or DDP).
        self._teachers: list[nn.Module] = loaded
        names: dict[str, int] = {}
        for i, term in enumerate(built):
            where = f"terms[{i}]"
            for j in term.teachers_read(len(loaded)):
                if j >= len(loaded):
                    raise ValueError(
                        f"{owner}({where}={term.spec()!r}): teacher_index {j} but only {len(loaded)} teacher(s)"
                    )
            resolve_module(student, term.student_path, owner, f"{where}.student")
            t_index = term.teachers_read(len(loaded))[0]
            for j in term.teachers_read(len(loaded)):
                resolve_module(loaded[j], term.teacher_path, owner, f"{where}.teacher")
            if isinstance(term, LogitsKDTerm) and term.aggregate is None:
                term.aggregate = aggregate
            try:
                term.bind(infer_width(student, term.student_path), infer_width(loaded[t_index], term.teacher_path))
            except ValueError as err:
                raise ValueError(f"{owner}({where}={term.spec()!r}): {err}") from None
            base = term.term_name or term.kind
            names[base] = names.get(base, 0) + 1
            term.log_name = base if names[base] == 1 else f"{base}_{names[base] - 1}"
        self.distill_terms = nn.ModuleList(built)
        self._student_paths = sorted({t.student_path for t in built} - {".", ""})
        self._window: list[Tensor] = []
        self._sums: Tensor | None = None
        self._count = 0
        self._agree: list[Tensor] = []
        self._names: list[str] = []
        # teacher paths to capture; the second list skips the KD terms a batch's cached teacher logits serve
        self._teacher_paths: list[list[str]] = [[] for _ in loaded]
        self._teacher_paths_cached: list[list[str]] = [[] for _ in loaded]
        for term in built:
            for j in term.teachers_read(len(loaded)):
                if term.teacher_path not in self._teacher_paths[j]:
                    self._teacher_paths[j].append(term.teacher_path)
                if not self._served_by_cache(term) and term.teacher_path not in self._teacher_paths_cached[j]:
                    self._teacher_paths_cached[j].append(term.teacher_path)

    # ------------------------------------------------------------------------------------------------ teachers

    @staticmethod
    def _served_by_cache(term: DistillTerm) -> bool:
        """A KD term on the teachers' (aggregated) output: cached teacher logits in the batch replace them."""
        return isinstance(term, LogitsKDTerm) and term.teacher_path in (".", "") and term.teacher_index is None

    @property
    def teachers(self) -> list[nn.Module]:
        """The frozen teachers (a plain list: not submodules, never in the checkpoint)."""
        return self._teachers

    def _apply(self, fn: Any, recurse: bool = True) -> DistillationModule:
        """Move (and convert) the teachers with the module; ``teacher_dtype`` is kept."""
        super()._apply(fn, recurse)
        dtype = TEACHER_DTYPES[self.teacher_dtype] if self.teacher_dtype is not None else None
        for teacher in self._teachers:
            teacher._apply(fn, recurse)
            if dtype is not None:
                teacher.to(dtype)
        return self

    @classmethod
    def example(cls) -> Example:
        """An 8-8-4 student distilled from a seeded 8-32-4 teacher (KD + FitNets with an 8->32 projector)."""
        from litmix.testing import TinyDataModule

        torch.manual_seed(0)
        teacher = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
        student = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
        terms: list[dict[str, Any]] = [
            {"kind": "kd", "temperature": 2.0, "weight": 0.5},
            {"kind": "fitnet", "student": "1", "teacher": "1"},
        ]
        return Example(cls(student, teacher, terms, lr=0.01), TinyDataModule(), [])

    @staticmethod
    def student_state_dict(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
        """The bare student's ``state_dict`` from a checkpoint dict (or from this module's ``state_dict``).

        Keeps the ``student.`` keys without their prefix; drops the terms' ``distill_terms.`` keys. The result
        loads with ``strict=True`` into a fresh student.

        Example:
            >>> module = DistillationModule.example().module
            >>> bare = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
            >>> bare.load_state_dict(DistillationModule.student_state_dict(module.state_dict()), strict=True)
            <All keys matched successfully>
        """
        state = checkpoint.get("state_dict", checkpoint)
        return {k[len(STUDENT_PREFIX) :]: v for k, v in state.items() if k.startswith(STUDENT_PREFIX)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the layout; make sure no teacher weight is in the checkpoint."""
        super().on_save_checkpoint(checkpoint)
        state = checkpoint.get("state_dict", {})
        foreign = [k for k in state if not k.startswith((STUDENT_PREFIX, TERMS_PREFIX))]
        if foreign:  # nothing else is registered; keep checkpoints student-only even if a subclass adds modules
            raise RuntimeError(f"{type(self).__name__}: unexpected keys in the checkpoint: {foreign[:5]}")
        checkpoint["litmix"].update(
            student_prefix=STUDENT_PREFIX,
            terms_prefix=TERMS_PREFIX,
            terms=[t.spec() for t in self.distill_terms],  # type: ignore[operator]
        )

    # ------------------------------------------------------------------------------------------------ steps

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The student's output."""
        return self.student(*args, **kwargs)

    @staticmethod
    def _call_args(x: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if isinstance(x, dict):
            return (), dict(x)
        return (x,), {}

    def _inputs(self, batch: Any) -> tuple[tuple[Any, ...], dict[str, Any], Tensor | None]:
        if isinstance(batch, dict) and not any(k in batch for k in ("x", "input", "inputs", "input_ids")):
            raise ValueError(f"{type(self).__name__}: a dict batch needs an 'input_ids', 'x' or 'input' key")
        x, y, _ = split_batch(batch)
        if isinstance(batch, dict):
            skip = ("y", "target", "targets", "labels", "index", self.cache_key)
            inputs = {k: v for k, v in batch.items() if k not in skip}
            if "x" in inputs:
                return (inputs.pop("x"),), inputs, y
            if "input" in inputs:
                return (inputs.pop("input"),), inputs, y
            if "inputs" in inputs:
                return (inputs.pop("inputs"),), inputs, y
            return (), inputs, y
        args, kwargs = self._call_args(x)
        return args, kwargs, y

    def _run_teachers(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], paths_per_teacher: list[list[str]]
    ) -> list[dict[str, Any]]:
        outs = []
        for teacher, paths in zip(self._teachers, paths_per_teacher, strict=True):
            teacher.eval()  # re-asserted every step: a user's .train() must never reach the teacher
            dtype = next((p.dtype for p in teacher.parameters() if p.is_floating_point()), None)
            t_args, t_kwargs = (
                (args, kwargs) if dtype is None else (cast_floating(args, dtype), cast_floating(kwargs, dtype))
            )
            store: dict[str, Any] = {}
            if paths:
                with torch.no_grad(), capture_outputs(teacher, paths, store, _warn_rerun):
                    store["."] = teacher(*t_args, **t_kwargs)
            outs.append(store)
        return outs

    def _feature(self, store: dict[str, Any], path: str, who: str, term: DistillTerm, logits: bool) -> Tensor:
        key = "." if path in (".", "") else path
        if key not in store:
            raise RuntimeError(
                f"{type(self).__name__}: the {who} module {path!r} of term {term.log_name!r} did not run in the step"
            )
        out = store[key]
        feat = output_logits(out, owner=type(self).__name__, who=who) if logits else feature_tensor(out)
        if feat is None:
            raise TypeError(
                f"{type(self).__name__}: term {term.log_name!r}: the {who} module {path!r} returned "
                f"{type(out).__name__}, which holds no tensor"
            )
        return feat

    def _losses(self, batch: Any) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor | None]:
        args, kwargs, y = self._inputs(batch)
        store: dict[str, Any] = {}
        with capture_outputs(self.student, self._student_paths, store, _warn_rerun):
            store["."] = self.student(*args, **kwargs)
        logits = output_logits(store["."], owner=type(self).__name__, who="student")
        cached = batch.get(self.cache_key) if isinstance(batch, dict) and self.cache_key else None
        if cached is not None and not isinstance(cached, Tensor):
            raise TypeError(f"{type(self).__name__}: batch[{self.cache_key!r}] must be a tensor of teacher logits")
        paths = self._teacher_paths if cached is None else self._teacher_paths_cached
        teacher_outs = self._run_teachers(args, kwargs, paths)
        values: dict[str, Tensor] = {}
        total: Tensor | None = None
        if self.task_loss is not None:
            if y is None:
                raise ValueError(
                    f"{type(self).__name__}(task_loss={self.task_loss!r}): the batch holds no targets; pass "
                    "task_loss=None to distil without labels"
                )
            values["task"] = _task_cross_entropy(logits, y)
            total = self.task_weight * values["task"]
        mask = kwargs.get("attention_mask")
        mask = mask if isinstance(mask, Tensor) and logits.dim() > 2 and mask.shape == logits.shape[:-1] else None
        agree_target: Tensor | None = None
        for term in self.distill_terms:
            assert isinstance(term, DistillTerm)
            is_kd = isinstance(term, LogitsKDTerm)
            s = self._feature(store, term.student_path, "student", term, is_kd)
            if cached is not None and self._served_by_cache(term):
                ts = [cached.float()]
            else:
                ts = [
                    self._feature(teacher_outs[j], term.teacher_path, "teacher", term, is_kd).float()
                    for j in term.teachers_read(len(self._teachers))
                ]
            value = term(s, ts, mask=mask) if is_kd else term(s, ts)
            values[term.log_name] = value
            total = term.weight * value if total is None else total + term.weight * value
            if isinstance(term, LogitsKDTerm) and agree_target is None and term.student_path in (".", ""):
                agree_target = term.teacher_logprob(ts).detach()
        if total is None:  # no term and no task loss cannot happen (refused at construction)
            raise RuntimeError(f"{type(self).__name__}: nothing to train on")
        agreement = None
        if agree_target is not None and agree_target.shape == logits.shape:
            agreement = (logits.detach().argmax(-1) == agree_target.argmax(-1)).float().mean()
        return total, values, logits, agreement

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Student forward with hooks, teacher forwards without gradients, the weighted sum of the terms."""
        total, values, _, agreement = self._losses(batch)
        # Cheap logging: keep the detached values (one stack per step), log them at Lightning's logging steps
        # (`distill/<name>_step`) and their exact epoch means at epoch end (`distill/<name>`).
        names = [*values, "total"]
        stacked = torch.stack([*(v.detach().float().reshape(()) for v in values.values()), total.detach()])
        self._window.append(stacked)
        if agreement is not None:
            self._agree.append(agreement)
        if _logs_this_step(self.trainer):
            self._fold_window(names)
            for name, value in zip(names, stacked, strict=True):
                self.log(f"distill/{name}_step", value, on_step=True, on_epoch=False, batch_size=1)
        self._names = names
        return total

    def _fold_window(self, names: list[str]) -> None:
        if not self._window:
            return
        window = torch.stack(self._window)
        part = window.sum(0)
        if not bool(torch.isfinite(part).all()):
            bad = names[int((~torch.isfinite(part)).nonzero()[0, 0])]
            raise FloatingPointError(
                f"{type(self).__name__}: the loss term distill/{bad} became non-finite before global step "
                f"{self.trainer.global_step}; check the teachers, the terms' paths and weights"
            )
        self._sums = part if self._sums is None else self._sums + part
        self._count += window.shape[0]
        self._window = []

    def on_train_epoch_start(self) -> None:
        """Start the epoch's sums."""
        self._reset_logs()

    def _reset_logs(self) -> None:
        self._window = []
        self._sums = None
        self._count = 0
        self._agree = []
        self._names = []

    def on_train_epoch_end(self) -> None:
        """Log each term's epoch mean (``distill/<name>``) and the mean teacher-student top-1 agreement."""
        sync = self.trainer.world_size > 1
        self._fold_window(self._names)
        if self._sums is not None and self._count:
            means = self._sums / self._count
            for name, value in zip(self._names, means, strict=True):
                self.log(f"distill/{name}", value, on_step=False, on_epoch=True, batch_size=1, sync_dist=sync)
        if self._agree:
            agree = torch.stack(self._agree).mean()
            self.log("distill/agreement", agree, on_step=False, on_epoch=True, batch_size=1, sync_dist=sync)
        self._reset_logs()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """The student's task loss and accuracy (when the batch has targets)."""
        args, kwargs, y = self._inputs(batch)
        if y is None:
            return
        logits = output_logits(self.student(*args, **kwargs), owner=type(self).__name__, who="student").float()
        flat, target = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
        size = int(logits.shape[0])
        self.log("val/loss", F.cross_entropy(flat, target), batch_size=size, sync_dist=True)
        keep = target != -100
        acc = (flat.argmax(-1)[keep] == target[keep]).float().mean()
        self.log("val/acc", acc, batch_size=size, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One optimizer over the student (group ``"student"``) and the terms' projectors (``"distill_terms"``)."""
        groups = [{"params": [p for p in self.student.parameters() if p.requires_grad], "name": "student"}]
        extra = [p for p in self.distill_terms.parameters() if p.requires_grad]
        if extra:
            groups.append({"params": extra, "name": "distill_terms"})
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(groups, lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        cls = torch.optim.AdamW if self.optimizer_name == "adamw" else torch.optim.Adam
        return cls(groups, lr=self.lr, weight_decay=self.weight_decay)
