"""Test helpers shared by the pruners' tests (GradualPruning, DynamicSparseTraining, LotteryTicket, Polarization).

Bad-argument cases every pruner refuses the same way, the setup errors of the shared selection, resume checks of
the masks, the 2-rank DDP probes (perturb rank 1's weights; all-gather a checksum of the masks) and the MLPs and
data of the effect tests.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from litmix.data import split_batch
from litmix.testing import TinyClassifier, TinyDataModule, assert_resume_matches, fit_tiny, run_ddp

#: ``(kwargs, exception, match)`` cases of a ``sparsity`` argument in [0, 1)
SPARSITY_CASES = [
    ({"sparsity": 1.0}, ValueError, "sparsity"),
    ({"sparsity": -0.1}, ValueError, "sparsity"),
    ({"sparsity": float("nan")}, ValueError, "sparsity"),
    ({"sparsity": "0.9"}, TypeError, "sparsity"),
]
#: ``parameter_names``: a non-empty list of names or None
PARAMETER_NAMES_CASES = [
    ({"parameter_names": []}, ValueError, "parameter_names"),
    ({"parameter_names": "net.0.weight"}, TypeError, "parameter_names"),
]
SEED_CASES = [({"seed": -1}, ValueError, "seed")]
#: all three, for the pruners with a ``sparsity``, ``parameter_names`` and ``seed``
SEEDED_PRUNER_CASES = [*SPARSITY_CASES, *PARAMETER_NAMES_CASES, *SEED_CASES]


class NoLinear(TinyClassifier):
    """``TinyClassifier`` without a prunable layer (only a LayerNorm)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LayerNorm(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, :4]


def assert_selection_errors_at_setup(cls: type) -> None:
    """Unknown parameter names and a module with nothing prunable fail when fit starts, naming the problem."""
    with pytest.raises(ValueError, match=r"unknown parameters \['net.9.weight'\]"):
        fit_tiny([cls(0.5, parameter_names=["net.9.weight"])])
    with pytest.raises(ValueError, match="found no prunable layer"):
        fit_tiny([cls(0.5)], module=NoLinear())


def assert_resumed_masks_match(make: Callable[[], list[Callback]], module_cls: type, path: Any, **kwargs: Any) -> tuple:
    """``assert_resume_matches`` plus: the pruner's masks equal, and the checkpoint loads strictly into the class.

    Returns:
        The pruner of the uninterrupted and of the resumed run.
    """
    full, resumed = assert_resume_matches(make, module_cls, TinyDataModule, path, **kwargs)
    cls = type(make()[0])
    a = next(c for c in full.callbacks if isinstance(c, cls))
    b = next(c for c in resumed.callbacks if isinstance(c, cls))
    assert a.engine.masks.keys() == b.engine.masks.keys()
    for n, m in a.engine.masks.items():
        assert torch.equal(m, b.engine.masks[n])
    ckpt = torch.load(next((path / "ckpt").glob("epoch=0-*.ckpt")), weights_only=False)
    assert not any(k.endswith("_mask") for k in ckpt["state_dict"])  # strict loading into the user's class
    module_cls().load_state_dict(ckpt["state_dict"])
    return a, b


# ----------------------------------------------------------------------------- DDP probes


def _params(pl_module: pl.LightningModule, names: Sequence[str]) -> list[torch.Tensor]:
    return [pl_module.get_parameter(n) if "." in n else getattr(pl_module, n) for n in names]


def _buffers(pl_module: pl.LightningModule, names: Sequence[str]) -> list[torch.Tensor]:
    return [pl_module.get_buffer(n) for n in names]


class PerturbRank1(Callback):
    """Before every step (or only step ``at``), rank 1's weights change, so locally decided masks would differ.

    ``kept_only``: perturb only non-zero weights (pruned ones stay 0); ``value``: overwrite with ``torch.rand``.
    """

    def __init__(
        self,
        names: Sequence[str] = ("net.0.weight", "net.2.weight"),
        at: int | None = None,
        kept_only: bool = True,
        overwrite: bool = False,
    ) -> None:
        self.names, self.at, self.kept_only, self.overwrite = list(names), at, kept_only, overwrite

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_rank != 1 or (self.at is not None and trainer.global_step != self.at):
            return
        with torch.no_grad():
            for p in _params(pl_module, self.names):
                if self.overwrite:
                    p.copy_(torch.rand_like(p))
                else:
                    p.add_(torch.randn_like(p) * ((p != 0) if self.kept_only else 1))


class MaskChecksum(Callback):
    """All-gather a checksum of the masks at every batch start and end; logs the largest difference so far.

    Both: DDP broadcasts module buffers (the masks) from rank 0 before every forward, so masks decided in
    ``on_train_batch_start`` differ only until the forward, those decided after it until the next one.
    """

    def __init__(self, masks: Sequence[str] = ("net.0.weight_mask", "net.2.weight_mask")) -> None:
        self.masks = list(masks)
        self.max_diff = 0.0

    def _check(self, pl_module: Any) -> None:
        flat = torch.cat([m.flatten() for m in _buffers(pl_module, self.masks)]).double()
        checksum = torch.stack([flat.sum(), (flat * torch.arange(1, flat.numel() + 1).double()).sum()])
        gathered = pl_module.all_gather(checksum)
        self.max_diff = max(self.max_diff, float((gathered - gathered[0]).abs().max()))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._check(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        self._check(pl_module)
        pl_module.log("test/mask_diff", self.max_diff, reduce_fx="max", sync_dist=True)


def assert_ddp_masks_agree(cb: Callback, sparsity: float, identical: bool = True, max_steps: int = 8) -> None:
    """2 ranks, rank 1's kept weights perturbed every step: the masks agree (``identical``) or, for a negative
    control that decides locally, differ (the check can fail)."""
    trainer = run_ddp([PerturbRank1(), cb, MaskChecksum()], TinyClassifier(), TinyDataModule(), max_steps=max_steps)
    diff = float(trainer.callback_metrics["test/mask_diff"])
    if identical:
        assert diff == 0.0
        assert float(trainer.callback_metrics[f"{cb.log_prefix}/sparsity"]) == pytest.approx(sparsity, abs=0.01)
    else:
        assert diff > 0  # without the broadcast the perturbed rank disagrees


# ----------------------------------------------------------------------------- effect tests


class MLP(pl.LightningModule):
    """ReLU MLP over ``sizes`` (optionally with ``BatchNorm1d`` after the first layer), Adam at ``lr``."""

    def __init__(self, *sizes: int, lr: float = 1e-3, batchnorm: bool = False) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers.append(torch.nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers += [torch.nn.BatchNorm1d(b)] if batchnorm and i == 0 else []
                layers.append(torch.nn.ReLU())
        self.net = torch.nn.Sequential(*layers)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = split_batch(batch)
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


@functools.cache
def mnist(root: str, train_size: int) -> Any:
    """The flattened MNIST DataModule with ``train_size`` training images (set up; cached per process)."""
    from litmix.datamodules.mnist import MNISTDataModule

    dm = MNISTDataModule(root, batch_size=128, val_size=0, train_size=train_size, flatten=True, seed=0)
    dm.setup()
    return dm


def mnist_test_accuracy(model: torch.nn.Module, dm: Any) -> float:
    """Accuracy on the full MNIST test set."""
    x, y = dm.test_dataset.dataset.tensors
    return accuracy(model, x, y)


def val_accuracy(model: torch.nn.Module, dm: Any) -> float:
    """Accuracy over a DataModule's validation batches."""
    batches = [split_batch(b) for b in dm.val_dataloader()]
    return accuracy(model, torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())
