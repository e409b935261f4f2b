"""Step time of :class:`litmix.plugins.DistillationModule` against the student alone and the floor.

Settings, each a separate fit, interleaved in one process (every repeat fits every setting once in turn):

* **student alone**: a plain LightningModule, cross-entropy, no logging;
* **floor**: the same plain module that also runs the teacher's forward (``torch.no_grad()``, eval) on the batch
  inside its step: what any live-teacher distillation must at least cost;
* ``DistillationModule`` with the logits KD term (live teacher), and with KD + a FitNets term (hooked hidden
  layers, 128 -> 1024 projector).

MNIST-sized MLPs (student 784-128-10, teacher 784-1024-1024-10), synthetic data, batch 128, Adam, one CPU
thread; step = ``on_train_batch_start`` to ``on_train_batch_end``, CPU time of the training thread; per setting
the minimum over repeats of the fit's median step. Writes ``benchmarks/results/distillation_module.md``.

Run: ``python benchmarks/bench_distillation_module.py`` (about two minutes on an idle machine).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from _machine import cpu_model
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litmix.plugins import DistillationModule
from litmix.testing import make_trainer

RESULTS = Path(__file__).resolve().parent / "results" / "distillation_module.md"


class StepTimer(Callback):
    """CPU time of the training thread per step, from the second epoch on."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """Start the clock."""
        self._start = time.thread_time()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        """Record the step."""
        if trainer.current_epoch >= 1:
            self.times.append(time.thread_time() - self._start)


class Plain(pl.LightningModule):
    """The student trained with cross-entropy; with ``teacher`` it also runs the teacher's forward per step."""

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.student = student
        self._teacher = [teacher] if teacher is not None else []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Teacher forward (floor only), then the student's cross-entropy."""
        x, y = batch[0], batch[1]
        for t in self._teacher:
            with torch.no_grad():
                t.eval()
                t(x)
        return F.cross_entropy(self.student(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam."""
        return torch.optim.Adam(self.student.parameters(), lr=1e-3)


def _student() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def _teacher() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


def setup(argv: list[str] | None) -> tuple[argparse.Namespace, TensorDataset, nn.Module]:
    """Parse ``--repeats`` / ``--steps``, quiet Lightning, one thread; return the arguments, the synthetic
    MNIST-shaped data (``128 * steps`` samples) and the teacher (eval)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=32, help="timed steps per fit (one epoch)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    gen = torch.Generator().manual_seed(0)
    n = 128 * args.steps
    data = TensorDataset(torch.randn(n, 784, generator=gen), torch.randint(0, 10, (n,), generator=gen))
    torch.manual_seed(0)
    return args, data, _teacher().eval()


def time_settings(
    settings: Mapping[str, Callable[[], pl.LightningModule]], data: TensorDataset, repeats: int
) -> dict[str, float]:
    """Per setting (in ``settings``' order) the minimum over ``repeats`` of the fit's median step in ms (CPU time
    of the training thread, second epoch); every repeat fits every setting once in turn, batch 128."""
    best: dict[str, float] = {}
    for _ in range(repeats):
        for name, make in settings.items():
            timer = StepTimer()
            trainer = make_trainer(max_epochs=2, callbacks=[timer])
            trainer.fit(make(), train_dataloaders=DataLoader(data, batch_size=128))
            median = statistics.median(timer.times) * 1e3
            best[name] = min(best.get(name, float("inf")), median)
    return best


def write_report(
    path: Path,
    script: str,
    title: str,
    best: dict[str, float],
    references: dict[str, str],
    note: str,
    repeats: int,
    steps: int,
) -> str:
    """Write (and print, and return) the markdown report: a row per setting with its ratio to each reference
    (column label -> setting name), the measurement note and the machine."""
    refs = {label: best[name] for label, name in references.items()}
    rows = [
        "| setting | median step, CPU time (ms) | " + " | ".join(f"ratio to {label}" for label in refs) + " |",
        "|---|---:|" + "---:|" * len(refs),
    ]
    for name, ms in best.items():
        rows.append(f"| {name} | {ms:.2f} | " + " | ".join(f"{ms / ref:.3f}x" for ref in refs.values()) + " |")
    load = os.getloadavg()[0]
    text = "\n".join(
        [
            f"# {title}",
            "",
            *rows,
            "",
            "Separate fits interleaved in one process; per setting the minimum over "
            f"{repeats} repeats of the fit's median step ({steps} timed steps, second epoch). CPU time of "
            "the training thread (`time.thread_time()`). Student MLP 784-128-10, teacher 784-1024-1024-10, batch 128, "
            f"Adam, synthetic MNIST-shaped data. {note}",
            "",
            f"Machine: {cpu_model()}, 1 thread, torch {torch.__version__}, lightning {pl.__version__}; load average at "
            f"the end {load:.1f} on {os.cpu_count()} cores.",
            "",
            f"Run: `python benchmarks/{script}`",
            "",
        ]
    )
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    print(text)
    return text


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; return (and write) the markdown table."""
    args, data, teacher = setup(argv)
    kd = [{"kind": "kd", "temperature": 4.0, "weight": 0.9}]
    settings = {
        "student alone (CE, plain module)": lambda: Plain(_student()),
        "floor: student step + teacher forward (plain module)": lambda: Plain(_student(), teacher),
        "DistillationModule, KD (live teacher)": lambda: DistillationModule(_student(), teacher, kd, task_weight=0.1),
        "DistillationModule, KD + FitNets (128 -> 1024 projector)": lambda: DistillationModule(
            _student(), teacher, [*kd, {"kind": "fitnet", "student": "1", "teacher": "3"}], task_weight=0.1
        ),
    }
    best = time_settings(settings, data, args.repeats)
    references = {
        "student alone": "student alone (CE, plain module)",
        "floor": "floor: student step + teacher forward (plain module)",
    }
    note = (
        "The DistillationModule rows include its logging (detached values kept "
        "per step, logged at logging steps and as epoch means) and the per-step teacher-student agreement count."
    )
    return write_report(
        RESULTS,
        "bench_distillation_module.py",
        "DistillationModule step time",
        best,
        references,
        note,
        args.repeats,
        args.steps,
    )


if __name__ == "__main__":
    main()
