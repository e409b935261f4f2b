"""AdaNPC (Zhang et al. 2023): test-time adaptation with a growing kNN memory of test features and pseudo-labels."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from litmix.base import Example, LitmixCallback
from litmix.data import split_batch
from litmix.layers.nonparametric_head import NonParametricHead
from litmix.registry import register
from litmix.validation import check_float, check_int, check_str

_PAPER = "AdaNPC: Exploring Non-Parametric Classifier for Test-Time Adaptation (https://arxiv.org/abs/2304.12566)"


@register("callback", "distillation", paper=_PAPER)
class AdaNPC(LitmixCallback):
    """Classify test samples by k nearest neighbours in a feature memory that grows with confident test samples.

    Zhang et al., "AdaNPC: Exploring Non-Parametric Classifier for Test-Time Adaptation", ICML 2023,
    https://arxiv.org/abs/2304.12566. Runs in ``trainer.test``: at ``on_test_start``, if the memory is empty, it is
    filled with the features and labels of the training data (``trainer.datamodule.train_dataloader()``, or
    :meth:`build_memory` called beforehand); the features are the output of ``pl_module.get_submodule(
    feature_module)`` (the whole module's output for ``""``), captured by a forward hook while the module's own
    ``test_step`` runs (the callback runs the module itself when the hook saw nothing). For every test batch the
    :class:`~litmix.layers.NonParametricHead` predicts from the current memory (top-``k`` cosine neighbours,
    ``softmax(sim / temperature)`` weights), then samples whose winning vote share is at least ``threshold`` join
    the memory with their pseudo-label, so the memory drifts with the test distribution. No gradient, no optimizer.
    The vote share is thresholded directly: the reference code's softmax over already-normalised scores accepts
    nearly every sample at its default ``beta = 0.1``.

    Under DDP every rank predicts its own batch, then the accepted entries of all ranks are gathered
    (``all_gather``, padded to equal size) and appended in rank order, so every rank holds the same memory. The
    memory (features and labels) is the callback's checkpoint state; it persists across ``trainer.test`` calls
    (continual adaptation). Logs ``adanpc/acc`` (when batches carry targets), ``adanpc/accepted`` (share of the
    batch added) and ``adanpc/memory`` (memory size at the end of the epoch).

    Args:
        num_classes: number of classes, >= 2.
        feature_module: dotted path of the submodule whose output is the feature (``""``: the module's output).
        k: neighbours per query, >= 1 (paper default 100; 10 on small data).
        temperature: neighbour-weight temperature, > 0 (paper: 0.1).
        threshold: smallest winning vote share for a test sample to join the memory, in [0, 1].
        max_memory: keep at most this many entries (oldest dropped first), or ``None``.
        name: optional instance name (checkpoint key and log prefix).

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value out of range (``k < 1``, ``temperature <= 0`` ...), naming it; at ``setup``, a
            ``feature_module`` that is not a submodule; at ``on_test_start``, an empty memory and no training data
            to fill it; on the first batch, features of another size than the memory's, before any prediction.

    Example:
        >>> module, datamodule, (cb,) = AdaNPC.example()
        >>> datamodule.setup("fit")
        >>> cb.build_memory(module, datamodule.train_dataloader())  # what on_test_start does with an empty memory
        64
        >>> x, y, _ = next(iter(datamodule.val_dataloader()))
        >>> tuple(cb.head(cb._features(module, x)).shape)  # vote shares over the 4 classes
        (16, 4)
    """

    default_log_prefix: ClassVar[str] = "adanpc"

    def __init__(
        self,
        num_classes: int,
        feature_module: str = "",
        k: int = 10,
        temperature: float = 0.1,
        threshold: float = 0.9,
        max_memory: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        owner = type(self).__name__
        self.num_classes = check_int(owner, "num_classes", num_classes, low=2)
        self.feature_module = check_str(owner, "feature_module", feature_module)
        self.k = check_int(owner, "k", k, low=1)
        self.temperature = check_float(owner, "temperature", temperature, low=0.0, low_open=True)
        self.threshold = check_float(owner, "threshold", threshold, low=0.0, high=1.0)
        self.max_memory = check_int(owner, "max_memory", max_memory, low=1, allow_none=True)
        self.head: NonParametricHead | None = None
        self._captured: Tensor | None = None
        self._hook: RemovableHandle | None = None
        self.last_predictions: Tensor | None = None

    def _state_key_fields(self) -> dict[str, Any]:
        return {"feature_module": self.feature_module} if self.feature_module else {}

    @classmethod
    def example(cls) -> Example:
        """The hidden ReLU features of :class:`litmix.testing.TinyClassifier` on ``TinyDataModule``."""
        from litmix.testing import TinyClassifier, TinyDataModule

        torch.manual_seed(0)
        return Example(TinyClassifier(), TinyDataModule(), [cls(num_classes=4, feature_module="net.1", k=5)])

    # ---------------------------------------------------------------------------------------------- features

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check state keys and that ``feature_module`` names a submodule."""
        super().setup(trainer, pl_module, stage)
        try:
            pl_module.get_submodule(self.feature_module)
        except AttributeError as err:
            raise ValueError(
                f"{type(self).__name__}(feature_module={self.feature_module!r}): no such submodule in "
                f"{type(pl_module).__name__} ({err})"
            ) from err

    def _store(self, module: nn.Module, args: Any, output: Any) -> None:
        out = output[0] if isinstance(output, tuple | list) else output
        self._captured = out.detach().flatten(1)

    def _features(self, pl_module: pl.LightningModule, x: Tensor) -> Tensor:
        """Features of ``x`` (runs the module under ``no_grad`` with the hook in place)."""
        self._captured = None
        handle = self._hook or pl_module.get_submodule(self.feature_module).register_forward_hook(self._store)
        try:
            with torch.no_grad():
                pl_module(x)
        finally:
            if handle is not self._hook:
                handle.remove()
        assert self._captured is not None
        feats, self._captured = self._captured, None
        return feats

    def build_memory(self, pl_module: pl.LightningModule, dataloader: Iterable[Any]) -> int:
        """Fill the memory with the features and labels of ``dataloader`` (labelled source data); returns its size."""
        was_training = pl_module.training
        pl_module.eval()
        try:
            for batch in dataloader:
                x, y, _ = split_batch(batch)
                if y is None:
                    raise ValueError(f"{type(self).__name__}.build_memory: the source batches need labels")
                x = x.to(pl_module.device)
                self._add(self._features(pl_module, x), y.to(pl_module.device))
        finally:
            pl_module.train(was_training)
        return len(self.head) if self.head is not None else 0

    def _add(self, feats: Tensor, labels: Tensor) -> None:
        if self.head is None:
            self.head = NonParametricHead(
                feats.shape[1], self.num_classes, k=self.k, temperature=self.temperature, max_memory=self.max_memory
            ).to(feats.device)
        self.head.add(feats, labels)

    # ------------------------------------------------------------------------------------------------- hooks

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fill an empty memory from the training data; hook the feature module."""
        if self.head is not None:
            self.head.to(pl_module.device)
        if self.head is None or len(self.head) == 0:
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "train_dataloader"):
                raise ValueError(
                    f"{type(self).__name__}: the memory is empty and the Trainer has no datamodule with a "
                    "train_dataloader; call build_memory(module, source_loader) before trainer.test"
                )
            datamodule.setup("fit")
            self.build_memory(pl_module, datamodule.train_dataloader())
        self._hook = pl_module.get_submodule(self.feature_module).register_forward_hook(self._store)

    def on_test_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Forget the previous batch's features."""
        self._captured = None

    def on_test_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Predict the batch from the memory, then add its confident samples (gathered over ranks)."""
        assert self.head is not None
        x, y, _ = split_batch(batch)
        feats = self._captured if self._captured is not None and len(self._captured) == len(x) else None
        if feats is None:
            feats = self._features(pl_module, x)
        self._captured = None
        scores = self.head(feats)
        share, pred = scores.max(dim=1)
        self.last_predictions = pred
        accept = share >= self.threshold
        new_feats, new_labels = self._gather(trainer, feats[accept], pred[accept])
        self.head.add(new_feats, new_labels)
        prefix = self.log_prefix
        if y is not None:
            pl_module.log(f"{prefix}/acc", (pred == y).float().mean(), sync_dist=True, batch_size=len(x))
        pl_module.log(f"{prefix}/accepted", accept.float().mean(), sync_dist=True, batch_size=len(x))
        pl_module.log(f"{prefix}/memory", float(len(self.head)), batch_size=len(x), reduce_fx="max")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remove the feature hook."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _gather(self, trainer: pl.Trainer, feats: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Every rank's accepted entries, in rank order (padded for ``all_gather``'s equal shapes)."""
        if trainer.world_size <= 1:
            return feats, labels
        strategy = trainer.strategy
        counts = strategy.all_gather(torch.tensor([len(labels)], device=feats.device)).flatten()
        most = int(counts.max())
        pad = most - len(labels)
        padded_f = nn.functional.pad(feats, (0, 0, 0, pad))
        padded_l = nn.functional.pad(labels, (0, pad))
        all_f = strategy.all_gather(padded_f).reshape(-1, most, feats.shape[1])
        all_l = strategy.all_gather(padded_l).reshape(-1, most)
        keep = [slice(0, int(c)) for c in counts]
        return (
            torch.cat([all_f[r, s] for r, s in enumerate(keep)]),
            torch.cat([all_l[r, s] for r, s in enumerate(keep)]),
        )

    # ------------------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """The memory (features and labels; ``None`` before the first test)."""
        state = super().state_dict()
        if self.head is None:
            state["memory"] = state["labels"] = None
        else:
            state["memory"], state["labels"] = self.head.memory.cpu().clone(), self.head.labels.cpu().clone()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the memory."""
        super().load_state_dict(state_dict)
        memory, labels = state_dict.get("memory"), state_dict.get("labels")
        self.head = None
        if memory is not None and labels is not None:
            self.head = NonParametricHead(
                memory.shape[1], self.num_classes, k=self.k, temperature=self.temperature, max_memory=self.max_memory
            )
            self.head.memory, self.head.labels = memory.clone(), labels.clone()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the live hook handle or captured features."""
        state = self.__dict__.copy()
        state["_hook"] = None
        state["_captured"] = None
        return state
