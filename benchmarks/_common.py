"""Models and timers shared by the benchmark scripts (optimizer step timing, pruning step timing)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from litmix.data import split_batch
from litmix.optim import memory_report

VOCAB, CONTEXT, EMB = 65, 16, 64


class CharMLP(nn.Module):
    """A char-level MLP language model: the previous ``CONTEXT`` characters predict the next one."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, EMB)
        self.mlp = nn.Sequential(
            nn.Linear(CONTEXT * EMB, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, VOCAB)
        )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits of the next character."""
        return self.mlp(self.emb(idx).flatten(1))


def bench_optimizer_steps(
    models: Mapping[str, Callable[[], nn.Module]],
    optimizers: Mapping[str, Callable[[Any], torch.optim.Optimizer]],
    repeats: int,
    steps: int,
    warmup: int = 3,
) -> list[dict[str, Any]]:
    """Median ``optimizer.step()`` time per setting and model on fixed gradients (minimum over round-robin repeats).

    CPU time of the thread (``time.thread_time``). Rows: model, params, tensors, optimizer, ms, bytes_per_param and
    state_bytes (:func:`litmix.optim.memory_report`).
    """
    clock = time.thread_time
    rows = []
    for model_name, make in models.items():
        setups = {}
        for opt_name, make_opt in optimizers.items():
            torch.manual_seed(0)
            model = make()
            for p in model.parameters():
                p.grad = torch.randn_like(p) * 1e-2
            opt = make_opt(model.parameters())
            for _ in range(warmup):  # create the state
                opt.step()
            setups[opt_name] = (model, opt)
        times: dict[str, list[float]] = {k: [] for k in setups}
        for _ in range(repeats):
            for opt_name, (_, opt) in setups.items():
                per_step = []
                for _ in range(steps):
                    t0 = clock()
                    opt.step()
                    per_step.append(clock() - t0)
                times[opt_name].append(statistics.median(per_step))
        for opt_name, (model, opt) in setups.items():
            report = memory_report(opt)
            rows.append(
                {
                    "model": model_name,
                    "params": sum(p.numel() for p in model.parameters()),
                    "tensors": len(list(model.parameters())),
                    "optimizer": opt_name,
                    "ms": min(times[opt_name]) * 1e3,
                    "bytes_per_param": report["bytes_per_param"],
                    "state_bytes": report["state_bytes"],
                }
            )
        del setups
    return rows


class MnistMLP(pl.LightningModule):
    """784-300-100-10 ReLU MLP, Adam 1e-3 (the pruning benchmarks' MNIST model)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = split_batch(batch)
        assert y is not None
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def mnist_test_accuracy(model: nn.Module, dm: Any) -> float:
    """Accuracy on the full MNIST test set of an ``MNISTDataModule``."""
    x, y = dm.test_dataset.dataset.tensors
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


class StepTimer(Callback):
    """Wall, process CPU and thread CPU time between consecutive batch starts (a whole step with every hook).

    ``times`` holds ``(epoch, global_step, wall, process, thread)`` per step after the first of each epoch.
    """

    def __init__(self) -> None:
        self.times: list[tuple[int, int, float, float, float]] = []
        self._last: tuple[int, float, float, float] | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        now = (time.perf_counter(), time.process_time(), time.thread_time())
        if self._last is not None and idx > 0:
            step, w, p, t = self._last
            self.times.append((trainer.current_epoch, step, now[0] - w, now[1] - p, now[2] - t))
        self._last = (trainer.global_step, *now)

    @property
    def wall(self) -> list[float]:
        return [t[2] for t in self.times]

    @property
    def cpu(self) -> list[float]:
        return [t[3] for t in self.times]
