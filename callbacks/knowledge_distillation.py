"""Hinton knowledge distillation as a callback for any LightningModule."""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from litmix.base import Example
from litmix.data import split_batch
from litmix.distill.augmentation import random_augmentation, row_checksums
from litmix.distill.base import cast_floating, floating_dtype, needs_cast
from litmix.functional.distill_losses import KDRowsFunction as _KDTerm
from litmix.functional.distillation import kd_loss
from litmix.loss_terms import LossTermCallback
from litmix.models import import_class, load_model, output_logits
from litmix.registry import register
from litmix.validation import check_bool, check_float, check_path, check_str, check_type

_Captured = tuple[tuple[Any, ...], dict[str, Any], Any]
_FOLD_EVERY = 64  # agreement counts are folded into one device tensor every this many steps
_SMALL_LOGITS = 1 << 15  # logits up to this many elements are kept (by reference) until the next fold


def _meta_tensor(module: nn.Module) -> str | None:
    """The name of a parameter or buffer of ``module`` on the meta device, if any."""
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        if tensor.is_meta:
            return name
    return None


def _grown(rows: Tensor, size: int) -> Tensor:
    """``rows`` padded with zeros to ``size`` rows."""
    grown = rows.new_zeros((size, *rows.shape[1:]))
    grown[: len(rows)] = rows
    return grown


@register(
    "callback",
    "distillation",
    paper="Distilling the Knowledge in a Neural Network (https://arxiv.org/abs/1503.02531)",
)
class KnowledgeDistillation(LossTermCallback):
    """Hinton knowledge distillation: add ``T² · KL(teacher ‖ student)`` to any LightningModule's loss.

    Paper: "Distilling the Knowledge in a Neural Network", Hinton, Vinyals and Dean
    (https://arxiv.org/abs/1503.02531).

    The loss of every training step becomes::

        total = (1 - weight) * task_loss + weight * kd
        kd    = T² · KL(softmax(teacher / T) ‖ softmax(student / T))     (batchmean, float32)

    ``weight`` is the weight of the **KD term** (torchdistill's ``alpha`` weights the cross-entropy instead:
    ``weight = 1 - alpha``, see :meth:`from_torchdistill`). Implemented as ``task_loss_scale = 1 - weight`` and
    ``loss_term_weight = weight`` of :class:`~litmix.loss_terms.LossTermCallback`, so the term composes with
    other litmix loss terms (each counted once).

    How it works: in ``setup`` a forward hook is put on the student module (``student_path``, default the
    LightningModule itself). During ``training_step`` the hook stores the student's output **and its inputs**;
    the teacher is then run on the same inputs, so no batch-to-input function is needed. Outputs are read with
    :func:`litmix.models.output_logits` (a tensor, ``.logits`` as in Hugging Face, a dict with ``"logits"`` or a
    tuple whose first element is the logits); for ``[B, L, V]`` logits the KD loss is averaged over tokens (those
    with ``attention_mask == 1`` when the student was called with an ``attention_mask`` keyword).

    The teacher is held by the callback: it is frozen (``requires_grad_(False)``), put in eval mode at every
    step, run under ``torch.no_grad()``, moved to the training device in ``setup`` and **never** part of the
    student's checkpoint (this callback's ``state_dict`` holds no teacher weights). Being outside the
    LightningModule it is also outside DDP: every rank runs its own copy on its own shard.

    **Precision.** A teacher may be kept in another floating dtype than the student (e.g. a bf16 teacher for a
    float32 student, or float64): floating-point inputs are cast to the teacher's dtype before its forward and
    its logits to float32 for the loss. With ``*-true`` precision the teacher is converted like the module.

    **FSDP and DeepSpeed** are allowed: the teacher is an independent module kept whole (not sharded) on every
    device, outside the strategy's wrapped module, so it needs a full copy's memory per device; only the
    student is sharded. (A teacher too large for one device needs a sharded teacher inside the module.)

    With ``cache_teacher_outputs=True`` the teacher's log-probabilities at temperature ``T`` are stored by sample
    index (the third batch element or ``batch["index"]``, see :func:`litmix.data.split_batch`; wrap a dataset in
    :class:`litmix.data.IndexedDataset` to get it): the first visit of a sample runs the teacher, later epochs
    reuse the stored values (changing ``temperature`` clears the cache). It stores ``N x C`` floats on the
    training device and is not checkpointed; after a resume it fills again. It is keyed by sample index only, so
    it is **refused with random data augmentation** (the stored output would belong to another view): in
    ``setup`` when the DataModule says so (:func:`litmix.distill.augmentation.random_augmentation`: an
    ``augmentation`` / ``random_augmentation`` / ``augmented`` flag, a random torchvision-style transform, a
    training dataset that returns two different inputs for one sample, a
    :class:`~litmix.datamodules.TeacherCacheDataModule` in FKD mode), and at run time when a cached index comes
    back with other inputs (an exact checksum of each sample's input row is stored with its output). For
    augmented data use :class:`~litmix.datamodules.TeacherCacheDataModule` with ``mode="fkd"`` and pass its
    :meth:`~litmix.datamodules.TeacherCacheDataModule.as_teacher` as ``teacher`` (each stored crop is replayed
    with its own soft label), or keep the cache off.

    Logs, under ``log_prefix`` (``name`` or ``"kd"``): ``kd/loss_step``, ``kd/loss_epoch`` and ``kd/loss`` (the
    unweighted KD term, logged by the loss-term core at ``log_every_n_steps`` and as exact epoch means, see
    :mod:`litmix.loss_terms`; a non-finite term stops the run) and ``kd/agreement`` (teacher-student top-1
    agreement over the epoch's samples of all ranks, counted on the device and logged at epoch end).

    Limits: automatic optimization, or a module with ``collects_loss_terms = True``; the student module must
    run exactly once per training step (a second call overwrites the first and warns once).

    Args:
        teacher: the teacher ``nn.Module``, or a path (``str`` or ``os.PathLike``) loaded with
            :func:`litmix.models.load_model`: a file written with ``torch.save(module)`` (unpickled with
            ``weights_only=False``: only load files you trust), a Lightning ``.ckpt`` together with
            ``teacher_class``, or a Hugging Face ``save_pretrained`` folder.
        temperature: softmax temperature, a finite number ``T > 0``; the KD term is multiplied by ``T²``.
        weight: weight of the KD term in [0, 1]; the task loss gets ``1 - weight``.
        student_path: dotted path (``pl_module.get_submodule``) of the submodule whose forward output are
            the student logits; ``""`` means the LightningModule itself.
        cache_teacher_outputs: compute the teacher's outputs once per sample index and reuse them.
        teacher_class: ``"package.module.ClassName"`` of the class that loads ``teacher`` when it is a ``.ckpt``
            path (a LightningModule's ``load_from_checkpoint``) or a Hugging Face folder (``from_pretrained``).
        name: instance name: the logging prefix and checkpoint key (default prefix ``"kd"``).

    Raises:
        TypeError: for an argument of the wrong type (``teacher`` neither an ``nn.Module`` nor a path, a
            non-number ``temperature``/``weight``, ...), a loaded file that holds no module, or a student or
            teacher output that holds no logits tensor.
        ValueError: for a ``temperature`` that is not a finite number > 0, a ``weight`` outside [0, 1], a
            ``teacher_class`` not of the form ``"package.module.ClassName"`` or not importable, a
            ``teacher_class`` with an ``nn.Module`` teacher, a ``.ckpt`` without ``teacher_class``, a teacher
            path that does not exist (a :class:`litmix.validation.MissingPathError`, also a
            ``FileNotFoundError``) or is empty, a teacher folder without ``config.json``, a teacher with tensors
            on the meta device (at ``setup``), or teacher and student logits of different shapes (at the first
            batch, naming both shapes).
            With ``cache_teacher_outputs=True``, randomly augmented training data (in ``setup``, or when a cached
            sample index comes back with other inputs).
        MisconfigurationException: if ``student_path`` names no submodule, if the hooked module did not run
            during a training step (set ``student_path``), or if ``cache_teacher_outputs=True`` and the batch
            has no sample indices.
        FloatingPointError: when the KD term becomes NaN or infinite (naming the step).

    Example:
        >>> import torch
        >>> from litmix.testing import fit_tiny
        >>> teacher = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        >>> kd = KnowledgeDistillation(teacher, temperature=4.0, weight=0.9)
        >>> kd.task_loss_scale, kd.loss_term_weight
        (0.09999999999999998, 0.9)
        >>> trainer = fit_tiny([kd], max_steps=2)
        >>> sorted(k for k in trainer.callback_metrics if k.startswith("kd/"))
        ['kd/agreement', 'kd/loss', 'kd/loss_epoch']
        >>> kd.teacher.training, any(p.requires_grad for p in kd.teacher.parameters())
        (False, False)
    """

    default_log_prefix = "kd"

    def __init__(
        self,
        teacher: nn.Module | str | os.PathLike[str],
        temperature: float = 4.0,
        weight: float = 0.9,
        student_path: str = "",
        cache_teacher_outputs: bool = False,
        teacher_class: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        owner = type(self).__name__
        check_type(owner, "teacher", teacher, (nn.Module, str, os.PathLike))
        self.temperature = check_float(owner, "temperature", temperature, low=0.0, low_open=True)
        self.weight = check_float(owner, "weight", weight, low=0.0, high=1.0)
        self.student_path = check_str(owner, "student_path", student_path)
        self.cache_teacher_outputs = check_bool(owner, "cache_teacher_outputs", cache_teacher_outputs)
        check_str(owner, "teacher_class", teacher_class, allow_none=True)
        self.teacher_class = teacher_class or None
        if self.teacher_class is not None:
            if ":" in self.teacher_class:
                raise ValueError(
                    f"{owner}(teacher_class={teacher_class!r}): use 'package.module.ClassName' (a '.' before the "
                    "class name, not ':')"
                )
            module_name, _, class_name = self.teacher_class.rpartition(".")
            if not module_name or not class_name:
                raise ValueError(f"{owner}(teacher_class={teacher_class!r}): expected 'package.module.ClassName'")
            if isinstance(teacher, nn.Module):  # refused before importing anything
                raise ValueError(
                    f"{owner}(teacher_class={teacher_class!r}): teacher_class only applies to a checkpoint or "
                    "folder path, but teacher is already an nn.Module"
                )
            import_class(self.teacher_class, owner=owner, argument="teacher_class")
        elif not isinstance(teacher, nn.Module) and os.fspath(teacher).endswith(".ckpt"):
            raise ValueError(
                f"{owner}(teacher={os.fspath(teacher)!r}): a Lightning checkpoint needs "
                "teacher_class='package.module.ClassName'"
            )
        self.loss_term_weight = self.weight
        self.task_loss_scale = 1.0 - self.weight
        if isinstance(teacher, nn.Module):
            self.teacher_source = type(teacher).__name__
        else:
            self.teacher_source = os.fspath(teacher)
            try:
                path = check_path(owner, "teacher", teacher)
            except RuntimeError as err:  # Path.expanduser of '~user' for an unknown user
                raise ValueError(f"{owner}(teacher={self.teacher_source!r}): teacher: {err}") from err
            if path is not None and path.is_dir() and not (path / "config.json").is_file():
                raise ValueError(
                    f"{owner}(teacher={self.teacher_source!r}): teacher is a folder without config.json, not a "
                    "Hugging Face save_pretrained folder; pass a torch.save(module) file, a .ckpt or such a folder"
                )
        self._teacher = load_model(
            teacher, class_path=self.teacher_class, owner=owner, argument="teacher", class_argument="teacher_class"
        )
        self._freeze()
        self._handle: RemovableHandle | None = None
        self._armed = False
        self._captured: _Captured | None = None
        self._warned_rerun = False
        self._teacher_dtype: torch.dtype | None = None
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._cache: Tensor | None = None  # teacher log-probabilities at self._cache_temperature, by sample index
        self._filled: Tensor | None = None
        self._checksums: Tensor | None = None  # int64 checksum of each cached sample's input row
        self._cache_temperature = self.temperature
        self._complete = False  # every row of the cache is filled (checked once per epoch)
        self._reset_agreement()

    def _reset_agreement(self) -> None:
        self._pairs: list[tuple[Tensor, Tensor]] = []  # small (student, teacher) outputs, argmax at the fold
        self._hits: list[Tensor] = []  # per step: number of rows where the top-1 classes agree
        self._rows: list[Tensor | int] = []  # per step: number of rows
        self._agree: Tensor | None = None  # folded [hits, rows] of the current epoch

    @classmethod
    def from_torchdistill(
        cls, teacher: nn.Module | str, alpha: float = 0.9, temperature: float = 4.0, **kwargs: Any
    ) -> KnowledgeDistillation:
        """Build from torchdistill's convention, where ``alpha`` weights the **cross-entropy** term.

        torchdistill ``KDLoss``: ``alpha · CE + (1 - alpha) · T² · KL``; here ``weight = 1 - alpha``.
        (torchdistill drops the T² factor when ``alpha`` is 0; this class always applies it.)

        Raises:
            TypeError, ValueError: for an ``alpha`` that is not a number in [0, 1] (and as the constructor).

        Example:
            >>> KnowledgeDistillation.from_torchdistill(torch.nn.Linear(8, 4), alpha=0.25).weight
            0.75
        """
        alpha = check_float(cls.__name__, "alpha", alpha, low=0.0, high=1.0)
        return cls(teacher, temperature=temperature, weight=1.0 - alpha, **kwargs)

    @classmethod
    def example(cls) -> Example:
        """A :class:`litmix.testing.TinyClassifier` distilled from a seeded 8-16-4 MLP teacher."""
        from litmix.testing import TinyClassifier, TinyDataModule

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        return Example(TinyClassifier(), TinyDataModule(), [cls(teacher, temperature=2.0, weight=0.5)])

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher module (held by the callback, not by the LightningModule)."""
        return self._teacher

    def _freeze(self) -> None:
        self._teacher.eval()
        self._teacher.requires_grad_(False)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Install the loss wrapper and the student hook; check, freeze and move the teacher.

        Raises:
            ValueError: with ``cache_teacher_outputs=True``, a DataModule whose training data is randomly
                augmented (before anything is installed).
        """
        if stage == "fit" and self.cache_teacher_outputs:
            why = random_augmentation(getattr(trainer, "datamodule", None))
            if why is not None:
                raise ValueError(self._augmented_error(why))
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        owner = type(self).__name__
        meta = _meta_tensor(self._teacher)
        if meta is not None:
            raise ValueError(
                f"{owner}(teacher={self.teacher_source!r}): the teacher's {meta!r} is on the meta device (no data); "
                "materialize it and load its weights before fitting (e.g. load_state_dict(..., assign=True) or "
                "to_empty() + load_state_dict)"
            )
        try:
            student = pl_module.get_submodule(self.student_path) if self.student_path else pl_module
        except AttributeError as err:
            raise MisconfigurationException(
                f"{owner}(student_path={self.student_path!r}): {type(pl_module).__name__} has no such submodule ({err})"
            ) from None
        module_params = {id(p) for p in pl_module.parameters()}
        if any(id(p) in module_params for p in self._teacher.parameters()):
            rank_zero_warn(
                f"{owner}: the teacher's parameters are part of {type(pl_module).__name__}; they "
                "will be saved in its checkpoints. Keep the teacher only in the callback."
            )
        if self._handle is not None:
            self._handle.remove()
        self._handle = student.register_forward_hook(self._capture, with_kwargs=True)
        self._teacher = trainer.strategy.precision_plugin.convert_module(self._teacher)
        self._teacher.to(trainer.strategy.root_device)
        self._freeze()
        self._teacher_dtype = floating_dtype(self._teacher)
        self._armed, self._captured, self._warned_rerun = False, None, False
        self._reset_caches()

    def _augmented_error(self, why: str) -> str:
        return (
            f"{type(self).__name__}(cache_teacher_outputs=True): {why}. The teacher cache is keyed by sample index "
            "only and would serve every augmented view the teacher's output for another view. For augmented data "
            "use TeacherCacheDataModule(base, teacher, cache_dir, mode='fkd') and pass its as_teacher() as the "
            "teacher (each stored crop is replayed with its own soft label), or set cache_teacher_outputs=False"
        )

    def _check_inputs(self, index: Tensor, sums: Tensor | None) -> None:
        """Refuse a cached sample index whose input row differs from the one its teacher output was stored for."""
        stored = self._checksums
        if sums is None or stored is None:
            return
        if stored.device.type == "cpu" and index.device.type == "cpu" and sums.device.type == "cpu":
            differs = np.flatnonzero(stored.numpy()[index.numpy()] != sums.numpy())  # numpy: no kernel launches
        else:
            seen = stored.index_select(0, index.to(stored.device).long())
            differs = (seen != sums.to(stored.device)).nonzero().reshape(-1).cpu().numpy()
        if len(differs):
            bad = int(index.reshape(-1)[int(differs[0])])
            raise ValueError(
                self._augmented_error(
                    f"sample index {bad} came back with other inputs than those its teacher output was cached for "
                    "(random augmentation?)"
                )
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Follow the module to its final device."""
        self._teacher.to(pl_module.device)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the hook and the loss wrapper; drop captured tensors and the cache."""
        super().teardown(trainer, pl_module, stage)
        if stage != "fit":
            return
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._armed, self._captured = False, None
        self._reset_caches()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the epoch's agreement count."""
        super().on_train_epoch_start(trainer, pl_module)
        self._reset_agreement()

    def _fold_agreement(self) -> None:
        if self._pairs:  # one argmax over the stacked rows instead of kernels every step
            student = torch.cat([s.reshape(-1, s.shape[-1]) for s, _ in self._pairs])
            teacher = torch.cat([t.reshape(-1, t.shape[-1]) for _, t in self._pairs])
            self._hits.append((student.argmax(-1) == teacher.argmax(-1)).sum())
            self._rows.append(student.shape[0])
            self._pairs = []
        if not self._hits:
            return
        hits = torch.stack(self._hits).sum().to(torch.float64)
        counted = [r for r in self._rows if isinstance(r, Tensor)]
        rows = hits.new_tensor(float(sum(r for r in self._rows if isinstance(r, int))))
        if counted:
            rows = rows + torch.stack(counted).sum().to(torch.float64)
        counts = torch.stack([hits, rows])
        self._agree = counts if self._agree is None else self._agree + counts
        self._hits, self._rows = [], []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the term's epoch mean and the epoch's teacher-student top-1 agreement (exact over all ranks)."""
        super().on_train_epoch_end(trainer, pl_module)
        self._trim_cache()
        self._fold_agreement()
        local = self._agree if self._agree is not None else torch.zeros(2, dtype=torch.float64, device=pl_module.device)
        self._reset_agreement()
        counts = trainer.strategy.reduce(local, reduce_op="sum") if trainer.world_size > 1 else local
        if float(counts[1]) > 0:
            pl_module.log(
                f"{self.log_prefix}/agreement",
                (counts[0] / counts[1]).float(),
                on_step=False,
                on_epoch=True,
                batch_size=1,
                sync_dist=trainer.world_size > 1,  # identical on every rank already: no change, no warning
            )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Start capturing the student's forward calls."""
        self._armed, self._captured = True, None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Stop capturing (validation forwards are ignored); log the term at logging steps."""
        self._armed, self._captured = False, None
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _capture(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        if not self._armed:
            return
        if self._captured is not None and not self._warned_rerun:
            rank_zero_warn(
                f"{type(self).__name__}: the student module ran more than once in one training step; the KD term "
                "uses its last output. Point `student_path` at a module that runs once per step."
            )
            self._warned_rerun = True
        self._captured = (args, kwargs, output)

    def _run_teacher(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        """Teacher logits (float32, no graph) on the student's inputs, cast to the teacher's dtype if needed."""
        teacher = self._teacher
        teacher.eval()  # re-asserted every step: a user's .train() must never reach the teacher
        dtype = self._teacher_dtype
        if dtype is not None and needs_cast((args, kwargs), dtype):
            args, kwargs = cast_floating(args, dtype), cast_floating(kwargs, dtype)
        with torch.no_grad():
            output = teacher(*args, **kwargs)
        return output_logits(output, owner=type(self).__name__, who="teacher").float()

    def _cached_teacher(self, batch: Any, args: tuple[Any, ...], kwargs: dict[str, Any], student: Tensor) -> Tensor:
        """Teacher log-probabilities at the current temperature for the batch's samples, from the cache."""
        _, _, index = split_batch(batch)
        if not isinstance(index, Tensor):
            raise MisconfigurationException(
                f"{type(self).__name__}(cache_teacher_outputs=True) needs sample indices in every batch (a third "
                "element or batch['index']); wrap the dataset in litmix.data.IndexedDataset"
            )
        if self._cache_temperature != self.temperature:  # the stored log-probabilities belong to another T
            self._cache, self._filled, self._checksums = None, None, None
            self._cache_temperature = self.temperature
            self._complete = False
        if index.dim() != 1:
            index = index.reshape(-1)
        if index.numel() != student.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: {index.numel()} sample indices for student logits of shape "
                f"{tuple(student.shape)}; caching needs one index per row of the logits"
            )
        sums = row_checksums((args, kwargs), index.numel())
        cache, filled = self._cache, self._filled
        if self._complete and cache is not None and cache.device.type == "cpu" and index.device.type == "cpu":
            # every stored row is filled: one gather, and an index beyond the cache (a new sample) raises
            try:
                served = cache.index_select(0, index.long())
            except IndexError:
                pass
            else:
                self._check_inputs(index, sums)
                return served
        if cache is not None and filled is not None:
            if index.device.type == "cpu" and filled.device.type == "cpu":  # numpy: no kernel launches
                idx, done = index.numpy(), filled.numpy()
                hit = bool(idx.max() < len(done) and done[idx].all())
            else:
                hit = bool(int(index.max()) < len(filled) and bool(filled[index.to(filled.device)].all()))
            if hit:
                self._check_inputs(index, sums)
                return cache[index.to(cache.device)]
        logits = self._run_teacher(args, kwargs)
        self._check_shapes(student, logits)
        log_p = F.log_softmax(logits / self.temperature, dim=-1)
        index = index.to(device=log_p.device, dtype=torch.long)
        needed = int(index.max()) + 1
        if self._cache is None or self._filled is None:
            self._cache = log_p.new_zeros((needed, *log_p.shape[1:]))
            self._filled = torch.zeros(needed, dtype=torch.bool, device=log_p.device)
            self._checksums = None if sums is None else torch.zeros(needed, dtype=torch.long, device=log_p.device)
        elif needed > len(self._filled):
            size = max(needed, 2 * len(self._filled))
            self._cache = _grown(self._cache, size)
            self._filled = _grown(self._filled, size)
            self._checksums = None if self._checksums is None else _grown(self._checksums, size)
        seen = self._filled[index]
        if sums is not None and bool(seen.any()):  # a batch mixing new and cached samples
            self._check_inputs(index[seen], sums[seen.to(sums.device)])
        self._cache[index] = log_p
        self._filled[index] = True
        if self._checksums is not None:
            if sums is None:  # inputs without a tensor of one row per sample: no guard from here on
                self._checksums = None
            else:
                self._checksums[index] = sums.to(self._checksums.device)
        self._complete = False
        return log_p

    def _trim_cache(self) -> None:
        """Drop never-filled rows past the largest stored index; mark the cache complete if no gap is left."""
        filled = self._filled
        if self._cache is None or filled is None or not bool(filled.any()):
            return
        last = int(filled.nonzero().max()) + 1
        self._cache, self._filled = self._cache[:last], filled[:last]
        if self._checksums is not None:
            self._checksums = self._checksums[:last]
        self._complete = bool(self._filled.all())

    def _check_shapes(self, student: Tensor, teacher: Tensor) -> None:
        if teacher.shape != student.shape:
            raise ValueError(
                f"{type(self).__name__}: teacher logits of shape {tuple(teacher.shape)} do not match student logits "
                f"of shape {tuple(student.shape)}"
            )

    def loss_term(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, outputs: Any
    ) -> Tensor:
        """The unweighted KD term of this step (also counts the top-1 agreement)."""
        captured = self._captured
        if captured is None:
            where = f"submodule {self.student_path!r}" if self.student_path else type(pl_module).__name__
            raise MisconfigurationException(
                f"{type(self).__name__}: the student hook on {where} did not fire during training_step, so no "
                "student logits were captured. Set `student_path` to the submodule whose forward returns the "
                "logits (e.g. student_path='model' when training_step calls self.model(x))."
            )
        args, kwargs, output = captured
        self._captured = None
        student = output_logits(output, owner=type(self).__name__, who="student")
        if self.cache_teacher_outputs:
            teacher = self._cached_teacher(batch, args, kwargs, student)
            is_logprob = True
        else:
            teacher = self._run_teacher(args, kwargs)
            is_logprob = False
        self._check_shapes(student, teacher)
        mask = kwargs.get("attention_mask") if kwargs else None
        if not (isinstance(mask, Tensor) and student.dim() > 2 and mask.shape == student.shape[:-1]):
            mask = None
        if mask is None and student.dim() == 2:
            teacher_logp = teacher if is_logprob else F.log_softmax(teacher / self.temperature, dim=-1)
            if torch.is_autocast_enabled(student.device.type):
                with torch.autocast(student.device.type, enabled=False):
                    loss = _KDTerm.apply(student, teacher_logp, self.temperature)
            else:
                loss = _KDTerm.apply(student, teacher_logp, self.temperature)
        else:
            loss = kd_loss(student, teacher, temperature=self.temperature, mask=mask, teacher_is_logprob=is_logprob)
        # Top-1 agreement, counted on the device and read once per epoch.
        if mask is None and student.numel() <= _SMALL_LOGITS:
            self._pairs.append((student.detach(), teacher))
        else:
            agree = student.detach().argmax(-1) == teacher.argmax(-1)
            if mask is None:
                self._hits.append(agree.sum())
                self._rows.append(agree.numel())
            else:
                mask = mask.bool()
                self._hits.append((agree & mask).sum())
                self._rows.append(mask.sum())
        if len(self._pairs) + len(self._hits) >= _FOLD_EVERY:
            self._fold_agreement()
        return loss

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(teacher={self.teacher_source!r}, temperature={self.temperature}, "
            f"weight={self.weight}, student_path={self.student_path!r}, "
            f"cache_teacher_outputs={self.cache_teacher_outputs}, teacher_class={self.teacher_class!r}, "
            f"name={self.name!r})"
        )
