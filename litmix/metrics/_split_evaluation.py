"""Per-split accuracy / mean-NLL bookkeeping shared by the unlearning LightningModules."""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from litmix.functional.unlearning import classifier_nll, sequence_correct, sequence_nll
from litmix.metrics.indexed_mean import IndexedMean


class SplitEvaluation:
    """Accuracy and mean NLL of every named evaluation loader, kept by item index (DDP de-duplicated).

    Shared by the unlearning LightningModules: ``self.accuracy`` / ``self.mean_nll`` are ``nn.ModuleDict`` of
    :class:`~litmix.metrics.IndexedMean` per split (loaders beyond :attr:`default_splits` get theirs on first use);
    split names come from the datamodule's ``val_loader_names``.
    """

    #: Split names used when the datamodule has no ``val_loader_names``.
    default_splits: tuple[str, ...] = ("forget", "retain", "test", "holdout")
    accuracy: nn.ModuleDict
    mean_nll: nn.ModuleDict
    _trainer: Any
    device: torch.device

    def _init_split_metrics(self, splits: tuple[str, ...]) -> None:
        """Create the per-split states (call in ``__init__`` after ``super().__init__()``)."""
        self.accuracy = nn.ModuleDict({s: IndexedMean() for s in splits})
        self.mean_nll = nn.ModuleDict({s: IndexedMean() for s in splits})

    def _split_names(self) -> list[str]:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(dm, "val_loader_names", None)
        return list(names) if names else list(self.default_splits)

    def _update_split(self, split: str, logits: Tensor, targets: Tensor, index: Tensor) -> Tensor:
        """Add a batch's accuracy and per-item mean NLL to ``split``; returns the per-item NLL."""
        if split not in self.accuracy:  # a named loader beyond the four standard ones (e.g. TOFU's real_authors)
            self.accuracy[split] = IndexedMean().to(self.device)
            self.mean_nll[split] = IndexedMean().to(self.device)
        if logits.dim() == 3:
            correct, count = sequence_correct(logits, targets)
            score = sequence_nll(logits, targets, reduction="mean")
        else:
            correct, count = (logits.argmax(-1) == targets).long(), torch.ones_like(targets)
            score = classifier_nll(logits, targets)
        cast(IndexedMean, self.accuracy[split]).update(correct, index, weight=count)
        cast(IndexedMean, self.mean_nll[split]).update(score, index)
        return score

    def _log_splits(self, stage: str) -> None:
        """Log ``<stage>/<split>_acc`` and ``<stage>/<split>_nll`` (synced) and reset the states."""
        for split in list(self.accuracy.keys()):
            acc, nll = cast(IndexedMean, self.accuracy[split]), cast(IndexedMean, self.mean_nll[split])
            if acc.update_count > 0:
                self.log(f"{stage}/{split}_acc", acc.compute(), sync_dist=True, add_dataloader_idx=False)  # type: ignore[attr-defined]
                self.log(f"{stage}/{split}_nll", nll.compute(), sync_dist=True, add_dataloader_idx=False)  # type: ignore[attr-defined]
            acc.reset()
            nll.reset()
