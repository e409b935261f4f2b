"""Hinton knowledge distillation as a callback for any LightningModule."""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from litmix.data import split_batch
from litmix.functional.distillation import kd_loss, top1_agreement
from litmix.loss_terms import LossTermCallback
from litmix.registry import register

_Captured = tuple[tuple[Any, ...], dict[str, Any], Any]


def _logits(output: Any, who: str) -> Tensor:
    """The logits in a model output: a tensor, an object with ``.logits`` (Hugging Face) or a dict."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(
        f"KnowledgeDistillation: the {who} output must be a logits tensor or have a `.logits` tensor, got "
        f"{type(output).__name__}. Point `student_path` at the submodule that returns the logits."
    )


def _load_teacher(path: str, teacher_class: str) -> nn.Module:
    """Load a teacher saved with ``torch.save(module)`` or a Lightning checkpoint of ``teacher_class``."""
    if teacher_class:
        module_name, _, class_name = teacher_class.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        if not hasattr(cls, "load_from_checkpoint"):
            raise TypeError(
                f"KnowledgeDistillation(teacher_class={teacher_class!r}): the class must be a LightningModule "
                "with `load_from_checkpoint`"
            )
        return cls.load_from_checkpoint(path, map_location="cpu")
    if path.endswith(".ckpt"):
        raise ValueError(
            f"KnowledgeDistillation(teacher={path!r}): a Lightning checkpoint needs "
            "`teacher_class='package.module:ClassName'`"
        )
    # A whole pickled module: only load files you trust (pickle can run code).
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(obj, nn.Module):
        raise TypeError(
            f"KnowledgeDistillation(teacher={path!r}): the file must hold an nn.Module saved with "
            f"torch.save(module), got {type(obj).__name__}"
        )
    return obj


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
    the teacher is then run on the same inputs, so no batch-to-input function is needed. Hugging Face
    style outputs with ``.logits`` work; for ``[B, L, V]`` logits the KD loss is averaged over tokens (those
    with ``attention_mask == 1`` when the student was called with an ``attention_mask`` keyword).

    The teacher is held by the callback: it is frozen (``requires_grad_(False)``), put in eval mode at every
    step, run under ``torch.no_grad()``, moved to the training device in ``setup`` and **never** part of the
    student's checkpoint (this callback's ``state_dict`` holds no teacher weights). Being outside the
    LightningModule it is also outside DDP: every rank runs its own copy on its own shard.

    With ``cache_teacher_outputs=True`` the teacher logits are stored by sample index (the third batch element
    or ``batch["index"]``, see :func:`litmix.data.split_batch`; wrap a dataset in
    :class:`litmix.data.IndexedDataset` to get it): the first visit of a sample runs the teacher, later epochs
    reuse the stored logits. This is **invalid with random data augmentation** (the stored logits belong to
    the first augmented view) and stores ``N x C`` floats on the training device. The cache is not
    checkpointed; after a resume it fills again.

    Logs ``<name>/loss`` (the unweighted KD term, per step and epoch; logged by the loss-term core) and
    ``<name>/agreement`` (teacher-student top-1 agreement over the epoch's samples of all ranks, counted on the
    device and logged in ``on_train_epoch_end``: a per-step ``self.log`` call would cost more than a cached KD
    step itself), ``<name>`` being ``name`` or ``"kd"``.

    Limits: automatic optimization, or a module with ``collects_loss_terms = True``; the student module must
    run exactly once per training step (a second call overwrites the first and warns once). With ``*-true``
    precision the teacher is converted like the module.

    Args:
        teacher: the teacher ``nn.Module``, or a path: a file written with ``torch.save(module)`` (unpickled
            with ``weights_only=False``: only load files you trust), or a Lightning ``.ckpt`` together with
            ``teacher_class``.
        temperature: softmax temperature ``T > 0``; the KD term is multiplied by ``T²``.
        weight: weight of the KD term in [0, 1]; the task loss gets ``1 - weight``.
        student_path: dotted path (``pl_module.get_submodule``) of the submodule whose forward output are
            the student logits; ``""`` means the LightningModule itself.
        cache_teacher_outputs: compute teacher logits once per sample index and reuse them.
        teacher_class: ``"package.module:ClassName"`` of a LightningModule whose ``load_from_checkpoint``
            loads ``teacher`` when it is a ``.ckpt`` path.
        name: instance name: the logging prefix and checkpoint key (default ``"kd"``).

    Raises:
        TypeError: if ``teacher`` is neither an ``nn.Module`` nor a str, or a loaded file is no module; if a
            student or teacher output holds no logits tensor.
        ValueError: for ``temperature <= 0``, ``weight`` outside [0, 1], a malformed ``teacher_class``, a
            ``.ckpt`` without ``teacher_class``, or teacher and student logits of different shapes (at the
            first batch, naming both shapes).
        MisconfigurationException: if ``student_path`` names no submodule, if the hooked module did not run
            during a training step (set ``student_path``), or if ``cache_teacher_outputs=True`` and the batch
            has no sample indices.

    Example:
        >>> import torch
        >>> from litmix.testing import fit_tiny
        >>> teacher = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        >>> kd = KnowledgeDistillation(teacher, temperature=4.0, weight=0.9)
        >>> kd.task_loss_scale, kd.loss_term_weight
        (0.09999999999999998, 0.9)
        >>> trainer = fit_tiny([kd], max_steps=2)
        >>> sorted(k for k in trainer.callback_metrics if k.startswith("kd/"))
        ['kd/agreement', 'kd/loss', 'kd/loss_epoch', 'kd/loss_step']
        >>> kd.teacher.training, any(p.requires_grad for p in kd.teacher.parameters())
        (False, False)
    """

    family: ClassVar[str] = "distillation"
    requires_teacher: ClassVar[bool] = True

    def __init__(
        self,
        teacher: nn.Module | str,
        temperature: float = 4.0,
        weight: float = 0.9,
        student_path: str = "",
        cache_teacher_outputs: bool = False,
        teacher_class: str = "",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        cls_name = type(self).__name__
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise TypeError(f"{cls_name}(temperature={temperature!r}): temperature must be a float > 0")
        if not temperature > 0:
            raise ValueError(f"{cls_name}(temperature={temperature}): temperature must be > 0, got {temperature}")
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise TypeError(f"{cls_name}(weight={weight!r}): weight must be a float in [0, 1]")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"{cls_name}(weight={weight}): weight must be in [0, 1], got {weight}")
        if not isinstance(student_path, str):
            raise TypeError(f"{cls_name}(student_path={student_path!r}): student_path must be a str")
        if teacher_class and (":" not in teacher_class or not all(teacher_class.partition(":")[::2])):
            raise ValueError(
                f"{cls_name}(teacher_class={teacher_class!r}): teacher_class must look like 'package.module:ClassName'"
            )
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.student_path = student_path
        self.cache_teacher_outputs = bool(cache_teacher_outputs)
        self.teacher_class = teacher_class
        self.loss_term_name = name or "kd"
        self.loss_term_weight = self.weight
        self.task_loss_scale = 1.0 - self.weight
        if isinstance(teacher, nn.Module):
            if teacher_class:
                raise ValueError(
                    f"{cls_name}(teacher_class={teacher_class!r}): teacher_class only applies to a checkpoint "
                    "path, but teacher is already an nn.Module"
                )
            self.teacher_source = type(teacher).__name__
            self._teacher = teacher
        elif isinstance(teacher, str):
            self.teacher_source = teacher
            self._teacher = _load_teacher(teacher, teacher_class)
        else:
            raise TypeError(
                f"{cls_name}(teacher={type(teacher).__name__}): teacher must be an nn.Module or a str path to "
                "a torch.save(module) file or a Lightning .ckpt"
            )
        self._freeze()
        self._handle: RemovableHandle | None = None
        self._armed = False
        self._captured: _Captured | None = None
        self._warned_rerun = False
        self._cache: Tensor | None = None
        self._filled: Tensor | None = None
        self._agree: Tensor | None = None  # [matching rows, rows] of the current epoch

    @classmethod
    def from_torchdistill(
        cls, teacher: nn.Module | str, alpha: float = 0.9, temperature: float = 4.0, **kwargs: Any
    ) -> KnowledgeDistillation:
        """Build from torchdistill's convention, where ``alpha`` weights the **cross-entropy** term.

        torchdistill ``KDLoss``: ``alpha · CE + (1 - alpha) · T² · KL``; here ``weight = 1 - alpha``.
        (torchdistill drops the T² factor when ``alpha`` is 0; this class always applies it.)

        Example:
            >>> KnowledgeDistillation.from_torchdistill(torch.nn.Linear(8, 4), alpha=0.25).weight
            0.75
        """
        return cls(teacher, temperature=temperature, weight=1.0 - alpha, **kwargs)

    @classmethod
    def example(cls) -> KnowledgeDistillation:
        """A tiny instance: a seeded 8-16-4 MLP teacher matching :class:`litmix.testing.TinyClassifier`."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        return cls(teacher, temperature=2.0, weight=0.5)

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher module (held by the callback, not by the LightningModule)."""
        return self._teacher

    def _freeze(self) -> None:
        self._teacher.eval()
        self._teacher.requires_grad_(False)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Install the loss wrapper and the student hook; freeze and move the teacher."""
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        try:
            student = pl_module.get_submodule(self.student_path) if self.student_path else pl_module
        except AttributeError as err:
            raise MisconfigurationException(
                f"{type(self).__name__}(student_path={self.student_path!r}): {type(pl_module).__name__} has no such "
                f"submodule ({err})"
            ) from None
        module_params = {id(p) for p in pl_module.parameters()}
        if any(id(p) in module_params for p in self._teacher.parameters()):
            rank_zero_warn(
                f"{type(self).__name__}: the teacher's parameters are part of {type(pl_module).__name__}; they "
                "will be saved in its checkpoints. Keep the teacher only in the callback."
            )
        if self._handle is not None:
            self._handle.remove()
        self._handle = student.register_forward_hook(self._capture, with_kwargs=True)
        self._teacher = trainer.strategy.precision_plugin.convert_module(self._teacher)
        self._teacher.to(trainer.strategy.root_device)
        self._freeze()
        self._armed, self._captured, self._warned_rerun = False, None, False
        self._cache, self._filled, self._agree = None, None, None

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
        self._cache, self._filled, self._agree = None, None, None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the epoch's teacher-student top-1 agreement (exact over all ranks: the counts are summed)."""
        if self._agree is None:
            return
        counts = trainer.strategy.reduce(self._agree, reduce_op="sum")
        self._agree = None
        if float(counts[1]) > 0:
            pl_module.log(f"{self.loss_term_name}/agreement", counts[0] / counts[1], on_step=False, on_epoch=True)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Start capturing the student's forward calls."""
        self._armed, self._captured = True, None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Stop capturing (validation forwards are ignored)."""
        self._armed, self._captured = False, None

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
        self._teacher.eval()  # re-asserted every step: a user's .train() must never reach the teacher
        with torch.no_grad():
            return _logits(self._teacher(*args, **kwargs), "teacher").detach().float()

    def _cached_teacher(self, batch: Any, args: tuple[Any, ...], kwargs: dict[str, Any], student: Tensor) -> Tensor:
        _, _, index = split_batch(batch)
        if not isinstance(index, Tensor):
            raise MisconfigurationException(
                f"{type(self).__name__}(cache_teacher_outputs=True) needs sample indices in every batch (a third "
                "element or batch['index']); wrap the dataset in litmix.data.IndexedDataset"
            )
        index = index.reshape(-1).to(device=student.device, dtype=torch.long)
        if index.numel() != student.shape[0]:
            raise ValueError(
                f"{type(self).__name__}: {index.numel()} sample indices for student logits of shape "
                f"{tuple(student.shape)}; caching needs one index per row of the logits"
            )
        cache, filled = self._cache, self._filled
        if cache is not None and filled is not None and int(index.max()) < len(filled) and bool(filled[index].all()):
            return cache[index]
        logits = self._run_teacher(args, kwargs)
        self._check_shapes(student, logits)
        needed = int(index.max()) + 1
        if self._cache is None or self._filled is None:
            self._cache = logits.new_zeros((needed, *logits.shape[1:]))
            self._filled = torch.zeros(needed, dtype=torch.bool, device=logits.device)
        elif needed > len(self._filled):
            size = max(needed, 2 * len(self._filled))
            cache = logits.new_zeros((size, *self._cache.shape[1:]))
            cache[: len(self._cache)] = self._cache
            filled = torch.zeros(size, dtype=torch.bool, device=logits.device)
            filled[: len(self._filled)] = self._filled
            self._cache, self._filled = cache, filled
        self._cache[index] = logits
        self._filled[index] = True
        return logits

    def _check_shapes(self, student: Tensor, teacher: Tensor) -> None:
        if teacher.shape != student.shape:
            raise ValueError(
                f"{type(self).__name__}: teacher logits of shape {tuple(teacher.shape)} do not match student logits "
                f"of shape {tuple(student.shape)}"
            )

    def loss_term(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, outputs: Any
    ) -> Tensor:
        """The unweighted KD term of this step (also logs the top-1 agreement)."""
        if self._captured is None:
            where = f"submodule {self.student_path!r}" if self.student_path else type(pl_module).__name__
            raise MisconfigurationException(
                f"{type(self).__name__}: the student hook on {where} did not fire during training_step, so no "
                "student logits were captured. Set `student_path` to the submodule whose forward returns the "
                "logits (e.g. student_path='model' when training_step calls self.model(x))."
            )
        args, kwargs, output = self._captured
        self._captured = None
        student = _logits(output, "student")
        if self.cache_teacher_outputs:
            teacher = self._cached_teacher(batch, args, kwargs, student)
        else:
            teacher = self._run_teacher(args, kwargs)
        self._check_shapes(student, teacher)
        mask = kwargs.get("attention_mask")
        if not (isinstance(mask, Tensor) and student.dim() > 2 and mask.shape == student.shape[:-1]):
            mask = None
        loss = kd_loss(student, teacher, temperature=self.temperature, mask=mask)
        n = mask.sum() if mask is not None else student.numel() // student.shape[-1]
        rows = torch.as_tensor(n, dtype=torch.float32, device=student.device)  # no host sync
        counts = torch.stack([top1_agreement(student, teacher, mask=mask) * rows, rows])
        self._agree = counts if self._agree is None else self._agree + counts
        return loss

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(teacher={self.teacher_source!r}, temperature={self.temperature}, "
            f"weight={self.weight}, student_path={self.student_path!r}, "
            f"cache_teacher_outputs={self.cache_teacher_outputs}, name={self.name!r})"
        )
