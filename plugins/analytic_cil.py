"""G-ACIL (Zhuang et al. 2024): exemplar-free class-incremental learning with a closed-form head, no optimizer."""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from litmix.base import Example, LitmixModule
from litmix.data import split_batch
from litmix.functional.analytic_cil import (
    DTYPES,
    expand_features,
    random_expansion,
    ridge_solve,
    ridge_statistics,
)
from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int, check_type

_PAPER = (
    "G-ACIL: Analytic Learning for Exemplar-Free Generalized Class Incremental Learning "
    "(https://arxiv.org/abs/2403.15706)"
)


@register("plugin", "distillation", paper=_PAPER)
class AnalyticCILModule(LitmixModule):
    """Class-incremental learning without gradients: G-ACIL's analytic head on a frozen backbone.

    Zhuang et al., "G-ACIL: Analytic Learning for Exemplar-Free Generalized Class Incremental Learning",
    https://arxiv.org/abs/2403.15706. The ``backbone`` (trained beforehand, e.g. on the first phase) is frozen and
    kept in eval mode; its features go through an optional frozen random expansion ``ReLU(x W_b)``
    (``buffer_size``) into a linear head solved in closed form. Each ``trainer.fit`` call is one phase: every
    training batch adds its ``X^T X`` and ``X^T Y`` (one-hot labels, float64 by default) to running statistics, and
    at the end of each training epoch the statistics are summed across DDP ranks (one all-reduce) and the head is
    solved, ``W = (X^T X + gamma I)^-1 X^T Y`` (:func:`~litmix.functional.analytic_cil.ridge_solve`). So after any
    number of phases the head is the joint ridge solution over the multiset of samples seen, whatever the phase
    split and the number of ranks: nothing is forgotten, and no exemplar is stored. Classes are masked out of the
    logits until a sample of theirs is seen (classes unknown so far do not exist for the head).

    Notes: the statistics count every sample each time it is seen, so run one epoch per phase to reproduce the
    paper (a second epoch acts as duplicated samples, i.e. ``gamma / 2``). Under DDP, ``DistributedSampler``'s
    padding repeats up to ``world_size - 1`` samples per epoch; use a data size divisible by the world size (or
    ``drop_last``) for a result identical to one process. A checkpoint written in the middle of an epoch
    carries the statistics not yet solved (rank 0's only under DDP, with a warning), but a resumed run may re-read
    or skip batches of that epoch (a plain ``DataLoader`` holds no position): checkpoint at phase (epoch) ends.
    ``training_step`` calls the (mock) optimizer's ``step`` so that ``global_step`` counts batches; the head's
    ``weight`` is a ``Parameter`` only so that DDP can wrap the module, and is never touched by gradients.

    Logs ``acil/samples`` (samples absorbed so far) and ``acil/train_acc`` (head accuracy on the batch before it is
    absorbed); ``val/acc`` and ``test/acc`` in validation and test.

    Args:
        backbone: the frozen feature extractor (``nn.Module``); its output is flattened to ``(batch, in_features)``.
        in_features: size of the backbone's features, >= 1 (checked on the first batch, before any statistics).
        num_classes: total number of classes over all phases, >= 2 (fixes the checkpoint's shapes).
        buffer_size: width of the random expansion, >= 0 (0: the head reads the features; paper: 8192 on
            CIFAR-100). Memory: two ``d x d`` matrices in ``dtype``, ``d = buffer_size or in_features``.
        gamma: ridge regularisation, > 0 (paper: 0.1).
        seed: seed of the random expansion, >= 0.
        dtype: ``"float64"`` (default, exact) or ``"float32"``.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value out of range (``gamma <= 0``, ``num_classes < 2`` ...), naming it; in training,
            backbone features whose size is not ``in_features`` or labels outside ``[0, num_classes)``, before any
            statistics are touched.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, _ = AnalyticCILModule.example()
        >>> trainer = fit_tiny(module=module, datamodule=datamodule, max_epochs=1, max_steps=-1)
        >>> int(trainer.callback_metrics["acil/samples"]), trainer.global_step
        (64, 4)
    """

    xtx: Tensor
    xty: Tensor
    seen: Tensor
    samples: Tensor

    def __init__(
        self,
        backbone: nn.Module,
        in_features: int,
        num_classes: int,
        buffer_size: int = 0,
        gamma: float = 0.1,
        seed: int = 0,
        dtype: str = "float64",
    ) -> None:
        owner = type(self).__name__
        check_type(owner, "backbone", backbone, nn.Module)
        in_features = check_int(owner, "in_features", in_features, low=1)
        num_classes = check_int(owner, "num_classes", num_classes, low=2)
        buffer_size = check_int(owner, "buffer_size", buffer_size, low=0)
        gamma = check_float(owner, "gamma", gamma, low=0.0, low_open=True)
        seed = check_int(owner, "seed", seed, low=0)
        check_choice(owner, "dtype", dtype, tuple(DTYPES))
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.automatic_optimization = False
        self.backbone = backbone.requires_grad_(False).eval()
        self.in_features, self.num_classes, self.buffer_size = in_features, num_classes, buffer_size
        self.gamma, self.seed, self.dtype_name = gamma, seed, dtype
        dt = DTYPES[dtype]
        d = buffer_size or in_features
        self.expansion: Tensor | None
        if buffer_size:
            self.register_buffer("expansion", random_expansion(in_features, buffer_size, seed, dt))
        else:
            self.expansion = None
        self.register_buffer("xtx", torch.zeros(d, d, dtype=dt))
        self.register_buffer("xty", torch.zeros(d, num_classes, dtype=dt))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("samples", torch.zeros((), dtype=torch.long))
        self.weight = nn.Parameter(torch.zeros(d, num_classes, dtype=dt))
        # rank-local statistics since the last reduction: plain tensors, not buffers (DDP broadcasts buffers)
        self._pending: dict[str, Tensor] = {}

    @classmethod
    def example(cls) -> Example:
        """A frozen random 8-16 ReLU backbone, expansion to 32, on :class:`litmix.testing.TinyDataModule`."""
        from litmix.testing import TinyDataModule

        torch.manual_seed(0)
        backbone = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        return Example(cls(backbone, in_features=16, num_classes=4, buffer_size=32), TinyDataModule(), [])

    def train(self, mode: bool = True) -> AnalyticCILModule:
        """Switch modes; the frozen backbone always stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self

    def features(self, x: Tensor) -> Tensor:
        """Backbone features (flattened, size checked) through the random expansion, in the head's dtype."""
        with torch.no_grad():
            f = self.backbone(x).flatten(1)
        if f.shape[1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}(in_features={self.in_features}): the backbone gives features of size "
                f"{f.shape[1]} (shape {tuple(f.shape)})"
            )
        return expand_features(f.to(self.xtx.dtype), self.expansion)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(batch, num_classes)``; classes not seen yet get ``-inf``."""
        logits = self.features(x) @ self.weight.detach()
        logits = logits.masked_fill(~self.seen, float("-inf"))
        return logits.float() if x.is_floating_point() and x.dtype != logits.dtype else logits

    @torch.no_grad()
    def training_step(self, batch: Any, batch_idx: int) -> None:
        """Add the batch's ``X^T X`` and ``X^T Y`` to the rank-local statistics (no gradient, no solve)."""
        x, y, _ = split_batch(batch)
        assert y is not None, "AnalyticCILModule learns a classifier: batches need targets"
        f = self.features(x)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(
                f"{type(self).__name__}(num_classes={self.num_classes}): labels must be in [0, {self.num_classes}), "
                f"got [{int(y.min())}, {int(y.max())}]"
            )
        if bool(self.seen.any()):
            acc = (self(x).argmax(-1) == y).float().mean()
            self.log("acil/train_acc", acc, batch_size=len(y))
        xtx, xty = ridge_statistics(f, y, self.num_classes)
        if not self._pending:
            self._pending = {
                "xtx": torch.zeros_like(self.xtx),
                "xty": torch.zeros_like(self.xty),
                "seen": torch.zeros_like(self.seen),
                "samples": torch.zeros_like(self.samples),
            }
        p = self._pending
        p["xtx"] = p["xtx"].to(f.device) + xtx
        p["xty"] = p["xty"].to(f.device) + xty
        p["seen"] = p["seen"].to(f.device) | torch.bincount(y.long(), minlength=self.num_classes).bool()
        p["samples"] = p["samples"].to(f.device) + y.numel()
        self.optimizers().step()  # type: ignore[union-attr,operator]  # the mock optimizer: advances global_step only

    def solve(self) -> None:
        """Sum the pending statistics across ranks, add them and solve the head (all ranks must call it)."""
        if self._pending:
            p, self._pending = self._pending, {}
            strategy = self.trainer.strategy if self._trainer is not None else None
            if strategy is not None and self.trainer.world_size > 1:
                p = {
                    k: strategy.reduce(v.to(self.xtx.device) if k != "seen" else v.long(), reduce_op="sum")
                    for k, v in p.items()
                }
            self.xtx += p["xtx"].to(self.xtx)
            self.xty += p["xty"].to(self.xty)
            self.seen |= p["seen"].to(self.seen.device).bool()
            self.samples += p["samples"].to(self.samples)
        with torch.no_grad():
            self.weight.copy_(ridge_solve(self.xtx, self.xty, self.gamma))

    def on_train_epoch_end(self) -> None:
        """Reduce the epoch's statistics and solve the head (before checkpoint callbacks save it)."""
        self.solve()
        self.log("acil/samples", self.samples.float(), sync_dist=True, reduce_fx="max")  # equal on every rank

    def on_train_end(self) -> None:
        """Absorb statistics left by a run stopped in the middle of an epoch."""
        if self._pending:
            self.solve()

    def _evaluate(self, batch: Any, prefix: str) -> None:
        x, y, _ = split_batch(batch)
        assert y is not None, "AnalyticCILModule evaluates a classifier: batches need targets"
        self.log(f"{prefix}/acc", (self(x).argmax(-1) == y).float().mean(), sync_dist=True, batch_size=len(y))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Accuracy over all classes seen so far."""
        self._evaluate(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Accuracy over all classes seen so far."""
        self._evaluate(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Logits."""
        x, _, _ = split_batch(batch)
        return self(x)

    def configure_optimizers(self) -> None:
        """No optimizer: the head is solved in closed form."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the not-yet-reduced statistics (empty at epoch ends)."""
        super().on_save_checkpoint(checkpoint)
        if self._pending and self._trainer is not None and self.trainer.world_size > 1:
            rank_zero_warn(
                f"{type(self).__name__}: checkpoint in the middle of an epoch under DDP keeps only this rank's "
                "statistics since the epoch began; checkpoint at epoch ends"
            )
        checkpoint["litmix"]["pending"] = {k: v.cpu().clone() for k, v in self._pending.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the not-yet-reduced statistics."""
        super().on_load_checkpoint(checkpoint)
        self._pending = dict(checkpoint.get("litmix", {}).get("pending", {}))
