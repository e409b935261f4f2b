"""Step-time overhead of :class:`litmix.callbacks.knowledge_distillation.KnowledgeDistillation`.

Primary measurement, **paired**: in one fit KD is switched off on every other step (the module's own
``training_step`` runs, the student hook is disarmed), so KD steps and their baseline alternate under the same
machine load:

* cached teacher outputs (``cache_teacher_outputs=True``, after the first epoch has filled the cache) against
  the student alone;
* a live teacher against the **floor** ``teacher forward + student step``: on the off steps the teacher's
  forward (``torch.no_grad()``, eval mode, on the step's batch) runs just before the student's step, timed
  separately and added.

Context, from separate fits interleaved in the same process: the student alone, the student plus one per-step
``self.log(..., on_step=True, on_epoch=True)`` (what the loss-term core used to do every step), the teacher
forward, KD live and KD cached (a setting's time is the minimum over repeats of the fit's median step).

MNIST-sized MLPs (student 784-128-10, teacher 784-1024-1024-10), synthetic MNIST-shaped data, one CPU thread,
CPU time of the training thread. Prints a markdown table and writes ``benchmarks/results/kd.md``.

Run: ``python benchmarks/bench_kd.py`` (about five minutes).
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
    """One ``self.log(..., on_step=True, on_epoch=True)`` per step: what the loss-term core used to do."""

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        """One ``self.log`` call with ``on_step=True, on_epoch=True``."""
        pl_module.log("bench/extra", outputs["loss"], on_step=True, on_epoch=True)


class TeacherForward(Callback):
    """Times the teacher's forward on each training batch (before the step timer starts)."""

    def __init__(self, teacher: nn.Module, skip_epochs: int) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.skip_epochs = skip_epochs
        self.times: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """Run and time the teacher's forward."""
        start = (time.thread_time(), time.perf_counter())
        with torch.no_grad():
            self.teacher(batch[0])
        if trainer.current_epoch >= self.skip_epochs:
            self.times.append((time.thread_time() - start[0], time.perf_counter() - start[1]))


class Alternate(Callback):
    """From epoch ``skip_epochs`` on, switches KD off on every other step of the same fit (a paired comparison).

    An off step runs the module's own ``training_step`` (the loss wrapper is taken away for that step and the
    student hook disarmed), after a timed teacher forward when ``teacher`` is given: the floor of live KD. On and
    off steps alternate in one fit, so both see the same load from other processes. Put it after the KD callback
    and before the :class:`StepTimer`.
    """

    def __init__(self, kd: KnowledgeDistillation, teacher: nn.Module | None, skip_epochs: int) -> None:
        self.kd, self.teacher, self.skip_epochs = kd, teacher, skip_epochs
        self.flags: list[bool] = []  # per timed step: was KD off?
        self.teacher_times: list[tuple[float, float]] = []  # per off step
        self._saved: Any = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """Decide on or off; for an off step remove the wrapper, disarm the hook and run the teacher."""
        if self._saved is not None:  # restore the loss wrapper taken away for the previous step
            pl_module.__dict__["training_step"] = self._saved
            self._saved = None
        if trainer.current_epoch < self.skip_epochs:
            return
        off = idx % 2 == 1
        self.flags.append(off)
        if not off:
            return
        self._saved = pl_module.__dict__.pop("training_step")
        self.kd._armed = False
        if self.teacher is not None:
            start = (time.thread_time(), time.perf_counter())
            with torch.no_grad():
                self.teacher(batch[0])
            self.teacher_times.append((time.thread_time() - start[0], time.perf_counter() - start[1]))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Put the wrapper back before the callback's teardown removes it."""
        if self._saved is not None:
            pl_module.__dict__["training_step"] = self._saved
            self._saved = None


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


def run(mode: str, n: int, batch_size: int, epochs: int) -> dict[str, list[tuple[float, float]]]:
    """Step times of one fit (first epoch skipped): ``{"step": [(cpu, wall), ...]}``.

    ``mode``: ``student``, ``student_log``, ``teacher``, ``live`` or ``cached``. In ``teacher`` mode the student
    fit also runs the teacher's forward before each step, and ``"teacher"`` and ``"floor"`` (teacher forward +
    student step, per step) are returned too.
    """
    pl.seed_everything(0, verbose=False)
    student = TinyClassifier(in_features=784, hidden=128, num_classes=10, lr=1e-3)
    timer = StepTimer(skip_epochs=1)
    callbacks: list[Callback] = [timer]
    teacher_forward = None
    if mode.startswith("paired_"):
        cached = mode == "paired_cached"
        teacher = make_teacher()
        kd = KnowledgeDistillation(teacher, cache_teacher_outputs=cached)
        alternate = Alternate(kd, None if cached else teacher, skip_epochs=1)
        make_trainer(max_epochs=epochs + 1, callbacks=[kd, alternate, timer]).fit(
            student, datamodule=SyntheticMNIST(n, batch_size)
        )
        on = [t for t, off in zip(timer.times, alternate.flags, strict=True) if not off]
        off_steps = [t for t, off in zip(timer.times, alternate.flags, strict=True) if off]
        if not cached:  # the floor: teacher forward + the student step right after it
            off_steps = [(t[0] + s[0], t[1] + s[1]) for t, s in zip(alternate.teacher_times, off_steps, strict=True)]
        return {"on": on, "off": off_steps}
    if mode == "student_log":
        callbacks.insert(0, ExtraLog())
    elif mode == "teacher":
        teacher_forward = TeacherForward(make_teacher(), skip_epochs=1)
        callbacks.insert(0, teacher_forward)
    elif mode != "student":
        callbacks.insert(0, KnowledgeDistillation(make_teacher(), cache_teacher_outputs=mode == "cached"))
    make_trainer(max_epochs=epochs, callbacks=callbacks).fit(student, datamodule=SyntheticMNIST(n, batch_size))
    if teacher_forward is None:
        return {"step": timer.times}
    # the same steps: teacher forward (before the timer starts) and the student step right after it
    floor = [(t[0] + s[0], t[1] + s[1]) for t, s in zip(teacher_forward.times, timer.times, strict=True)]
    return {"step": timer.times, "teacher": teacher_forward.times, "floor": floor}


def main() -> None:
    """Run the benchmark, print the table and write ``benchmarks/results/kd.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="the first epoch is warm-up (and fills the cache)")
    parser.add_argument("--repeats", type=int, default=10, help="fits per setting, interleaved")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    modes = ["student", "student_log", "teacher", "live", "cached", "paired_cached", "paired_live"]
    # per repeat and mode: (median CPU time, median wall time) of the timed steps
    medians: list[dict[str, tuple[float, float]]] = []
    steps = 0
    for _ in range(args.repeats):
        rep = {}
        for mode in modes:
            for key, times in run(mode, args.samples, args.batch_size, args.epochs).items():
                name = mode if key == "step" else key
                name = f"{mode}_{key}" if mode.startswith("paired_") else name
                name = "teacher_step" if (mode, key) == ("teacher", "step") else name
                rep[name] = (statistics.median(t[0] for t in times), statistics.median(t[1] for t in times))
                steps = len(times)
        medians.append(rep)

    # Each fit's median step, then the minimum over repeats: contention from other processes only adds time,
    # so the least-disturbed repeat is the best estimate of each setting (as timeit's "min of repeats").
    best = {m: tuple(min(rep[m][k] for rep in medians) for k in (0, 1)) for m in medians[0]}

    def per_repeat(fn: Any) -> tuple[float, float]:
        """``fn(best, k)`` for CPU (k=0) and wall (k=1) time."""
        return (fn(best, 0), fn(best, 1))

    def ms(mode: str) -> tuple[float, float]:
        return per_repeat(lambda rep, k: 1000 * rep[mode][k])

    def floor(rep: dict[str, tuple[float, float]], k: int) -> float:
        return rep["floor"][k]

    def separate_floor(rep: dict[str, tuple[float, float]], k: int) -> float:
        return rep["student"][k] + rep["teacher"][k]

    rows_spec = [
        ("student alone (CE)", ms("student"), per_repeat(lambda r, k: 1.0), "student"),
        (
            "student + one `self.log(on_step, on_epoch)` per step (reference: the old per-step term logging)",
            ms("student_log"),
            per_repeat(lambda r, k: r["student_log"][k] / r["student"][k]),
            "student",
        ),
        ("teacher forward alone (no_grad, eval; in the floor fit, before each step)", ms("teacher"), None, ""),
        ("student step in the floor fit (right after the teacher forward)", ms("teacher_step"), None, ""),
        (
            "**floor** = student step + teacher forward (same fit, per step, no KD)",
            per_repeat(lambda r, k: 1000 * floor(r, k)),
            None,
            "",
        ),
        ("KD, live teacher", ms("live"), per_repeat(lambda r, k: r["live"][k] / floor(r, k)), "floor"),
        (
            "KD, live teacher (vs student alone + teacher forward, from separate fits)",
            ms("live"),
            per_repeat(lambda r, k: r["live"][k] / separate_floor(r, k)),
            "student alone + teacher forward",
        ),
        (
            "KD, live teacher (vs student alone)",
            ms("live"),
            per_repeat(lambda r, k: r["live"][k] / r["student"][k]),
            "student",
        ),
        (
            "KD, cached teacher outputs",
            ms("cached"),
            per_repeat(lambda r, k: r["cached"][k] / r["student"][k]),
            "student",
        ),
    ]

    def paired(mode: str, k: int) -> tuple[float, float, float, float]:
        """Median over repeats of: on-step ms, off-step ms, on/off ratio (within each fit), and the min ratio."""
        on = [rep[f"{mode}_on"][k] for rep in medians]
        off = [rep[f"{mode}_off"][k] for rep in medians]
        ratios = [a / b for a, b in zip(on, off, strict=True)]
        return 1000 * statistics.median(on), 1000 * statistics.median(off), statistics.median(ratios), max(ratios)

    paired_rows = [
        "| KD mode | KD step (ms) | compared with | its step (ms) | ratio, median over fits | worst fit |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for mode, label, base in (
        ("paired_cached", "cached teacher outputs", "student alone (KD off)"),
        ("paired_live", "live teacher", "floor: teacher forward + student step (KD off)"),
    ):
        on_ms, off_ms, ratio, worst = paired(mode, 0)
        paired_rows.append(f"| {label} | {on_ms:.2f} | {base} | {off_ms:.2f} | **{ratio:.3f}x** | {worst:.3f}x |")
    paired_note = (
        "Paired measurement (primary): in one fit, KD is switched off on every other step (the module's own "
        "`training_step`, hook disarmed; for the live row the teacher's forward runs before the off step, timed "
        "separately and added), so KD and its baseline alternate step by step under the same machine load. CPU "
        f"time of the training thread; per fit the ratio of the medians, then the median (and the worst) over the "
        f"{args.repeats} fits."
    )
    rows = [
        "| setting | median step, CPU time (ms) | ratio (CPU) | median step, wall (ms) | ratio (wall) | ratio to |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for label, (cpu_ms, wall_ms), ratios, to in rows_spec:
        r_cpu, r_wall = (f"{ratios[0]:.3f}x", f"{ratios[1]:.3f}x") if ratios else ("", "")
        rows.append(f"| {label} | {cpu_ms:.2f} | {r_cpu} | {wall_ms:.2f} | {r_wall} | {to} |")
    machine = (
        f"Machine: {cpu_model()}, 1 thread (torch.set_num_threads(1)), torch {torch.__version__}, "
        f"lightning {pl.__version__}; load average at start {load:.1f} on {os.cpu_count()} cores (timings on a busy "
        "machine are noisy: compare ratios from one run)."
    )
    setup = (
        f"Student MLP 784-128-10, teacher MLP 784-1024-1024-10, synthetic MNIST-shaped data ({args.samples} samples), "
        f"batch {args.batch_size}, Adam; step = on_train_batch_start to on_train_batch_end (forward, loss, backward, "
        f"optimizer step); first epoch of each fit not timed (it fills the cache); {args.repeats} repeats, each "
        f"fitting every setting once in turn, {args.epochs - 1} timed epoch(s) of {steps} steps per fit. Times are "
        "the minimum over repeats of each fit's median step (other processes only add time); ratios are between "
        "those times."
    )
    note = (
        "The loss-term core logs the KD term (`kd/loss_step`) only at `log_every_n_steps` and its exact epoch mean "
        "(`kd/loss_epoch`) at epoch end, so the KD rows pay no per-step `self.log`; the reference row shows what such "
        "a call costs. CPU time = `time.thread_time()` of the (single) training thread: robust to other processes "
        "competing for the cores, unlike wall time."
    )
    text = "\n".join(
        [
            "# KnowledgeDistillation step time",
            "",
            *paired_rows,
            "",
            paired_note,
            "",
            "Separate fits (context: absolute times and the logging reference):",
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
