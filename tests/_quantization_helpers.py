"""Shared fixtures of the quantization tests: a digits MLP and a training/evaluation helper."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from litmix.data import split_batch
from litmix.testing import make_trainer


class DigitsMLP(pl.LightningModule):
    """``64 -> width -> width -> 10`` ReLU MLP (three quantizable layers: first, one inner, last)."""

    def __init__(self, width: int = 64, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
        )
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = split_batch(batch)
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def digits_tensors(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and validation tensors of the stratified 70/30 digits split."""
    from litmix.datamodules import DigitsDataModule

    dm = DigitsDataModule(seed=seed)
    dm.setup("fit")
    full = dm.full_dataset.dataset.tensors  # type: ignore[attr-defined]
    tr, va = dm.train_dataset.indices, dm.val_dataset.indices  # type: ignore[attr-defined]
    return full[0][tr], full[1][tr], full[0][va], full[1][va]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def fit_digits(width: int, seed: int, epochs: int, callbacks: list | None = None) -> DigitsMLP:
    from litmix.datamodules import DigitsDataModule

    pl.seed_everything(seed, verbose=False)
    model = DigitsMLP(width)
    make_trainer(max_epochs=epochs, callbacks=callbacks or []).fit(model, datamodule=DigitsDataModule(seed=seed))
    return model
