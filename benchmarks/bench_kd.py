"""Step-time overhead of :class:`litmix.callbacks.knowledge_distillation.KnowledgeDistillation`.

Compares the median training-step time (``on_train_batch_start`` to ``on_train_batch_end``: forward, loss,
backward, optimizer step) of

* the student alone (cross-entropy),
* the student with KD from a live teacher,
* the student with KD from cached teacher outputs (``cache_teacher_outputs=True``, measured after the first
  epoch has filled the cache),

on MNIST-sized MLPs (student 784-128-10, teacher 784-1024-1024-10) with synthetic MNIST-shaped data, one CPU
thread. Prints a markdown table and writes it to ``benchmarks/results/kd.md``.

Run: ``python benchmarks/bench_kd.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from _machine import cpu_model
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litmix.callbacks.knowledge_distillation import KnowledgeDistillation
from litmix.data import IndexedDataset
from litmix.testing import TinyClassifier, make_trainer

RESULTS = Path(__file__).resolve().parent / "results" / "kd.md"


class StepTimer(Callback):
    """Records the CPU time of the training thread and the wall time of each step from ``skip_epochs`` on."""

    def __init__(self, skip_epochs: int) -> None:
        self.skip_epochs = skip_epochs
        self.times: list[tuple[float, float]] = []
        self._start = (0.0, 0.0)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """Start the clock."""
        self._start = (time.thread_time(), time.perf_counter())

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        """Stop the clock."""
        if trainer.current_epoch >= self.skip_epochs:
            self.times.append((time.thread_time() - self._start[0], time.perf_counter() - self._start[1]))


class ExtraLog(Callback):
    """Logs one scalar per step like the loss-term core logs ``kd/loss``: isolates Lightning's logging cost."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        """One ``self.log`` call with ``on_step=True, on_epoch=True``."""
        pl_module.log("bench/extra", outputs["loss"], on_step=True, on_epoch=True)


class SyntheticMNIST(pl.LightningDataModule):
    """MNIST-shaped random data: ``n`` samples of 784 features, 10 classes, items ``(x, y, index)``."""

    def __init__(self, n: int, batch_size: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, 784, generator=gen)
        y = torch.randint(0, 10, (n,), generator=gen)
        self.dataset = IndexedDataset(TensorDataset(x, y))
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches."""
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True)


def make_teacher() -> nn.Module:
    """The 784-1024-1024-10 teacher (random weights: only its cost matters here)."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )  # fmt: skip


def run(mode: str, n: int, batch_size: int, epochs: int) -> list[tuple[float, float]]:
    """Step times of one fit (first epoch skipped); ``mode``: ``student``, ``student_log``, ``live``, ``cached``."""
    pl.seed_everything(0, verbose=False)
    student = TinyClassifier(in_features=784, hidden=128, num_classes=10, lr=1e-3)
    timer = StepTimer(skip_epochs=1)
    callbacks: list[Callback] = [timer]
    if mode == "student_log":
        callbacks.insert(0, ExtraLog())
    elif mode != "student":
        callbacks.insert(0, KnowledgeDistillation(make_teacher(), cache_teacher_outputs=mode == "cached"))
    make_trainer(max_epochs=epochs, callbacks=callbacks).fit(student, datamodule=SyntheticMNIST(n, batch_size))
    return timer.times


def main() -> None:
    """Run the benchmark, print the table and write ``benchmarks/results/kd.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="the first epoch is warm-up (and fills the cache)")
    parser.add_argument("--repeats", type=int, default=3, help="fits per mode, interleaved")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    modes = {
        "student": "student alone (CE)",
        "student_log": "student alone + one extra `self.log` per step (reference)",
        "live": "KD, live teacher",
        "cached": "KD, cached teacher outputs",
    }
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for mode in modes:
            times[mode] += run(mode, args.samples, args.batch_size, args.epochs)
    cpu = {m: statistics.median(t[0] for t in v) for m, v in times.items()}
    wall = {m: statistics.median(t[1] for t in v) for m, v in times.items()}
    rows = [
        "| setting | median step, CPU time (ms) | vs student alone | median step, wall (ms) | vs student alone |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, label in modes.items():
        rows.append(
            f"| {label} | {1000 * cpu[mode]:.2f} | {cpu[mode] / cpu['student']:.2f}x | {1000 * wall[mode]:.2f} | "
            f"{wall[mode] / wall['student']:.2f}x |"
        )
    machine = (
        f"Machine: {cpu_model()}, 1 thread (torch.set_num_threads(1)), torch {torch.__version__}, "
        f"lightning {pl.__version__}; load average at start {load:.1f} on {os.cpu_count()} cores (timings on a busy "
        "machine are noisy: compare ratios from one run)."
    )
    setup = (
        f"Student MLP 784-128-10, teacher MLP 784-1024-1024-10, synthetic MNIST-shaped data ({args.samples} samples), "
        f"batch {args.batch_size}, Adam; step = on_train_batch_start to on_train_batch_end (forward, loss, backward, "
        f"optimizer step); first epoch of each fit not timed (it fills the cache); {args.repeats} interleaved fits "
        f"per setting, {args.epochs - 1} timed epochs each ({len(times['student'])} steps per setting)."
    )
    note = (
        "The KD rows include the loss-term core's per-step `self.log` of `kd/loss`; the reference row shows what one "
        "such call costs by itself. CPU time = `time.thread_time()` of the (single) training thread: robust to "
        "other processes competing for the cores, unlike wall time."
    )
    text = "\n".join(
        [
            "# KnowledgeDistillation step time",
            "",
            *rows,
            "",
            note,
            "",
            machine,
            "",
            setup,
            "",
            "Run: `python benchmarks/bench_kd.py`",
        ]
    )
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
