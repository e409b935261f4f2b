"""Epoch time of training from :class:`~litmix.datamodules.TeacherCacheDataModule` and the cache's bytes per sample.

Side by side in one process, on real MNIST (``../shared/data/mnist``, copied to a temporary folder; 28x28, a
stratified training subset), student 784-128-10 MLP, teacher 784-1024-1024-10 MLP (random weights: the
timings do not depend on its accuracy), one CPU thread, batch 256, :class:`~litmix.plugins.DistillationModule`
in every setting (so the module's own overhead cancels):

* **student alone**: ``terms=[]`` (task cross-entropy only; no teacher runs) on the wrapped MNIST datamodule;
* **cached teacher**: ``terms=[kd]`` reading :meth:`as_teacher` of an index-mode cache (k=5), plus the task
  loss: target <= 1.06x the student alone;
* **student + augmentation**: ``terms=[]`` with random-resized crops drawn per batch and replayed with
  :func:`litmix.functional.fkd.replay_crops` (the same crop code, fresh boxes);
* **FKD**: ``terms=[kd]`` on an FKD cache (8 stored crops per image, k=5): target <= 1.15x the student with
  augmentation;
* **live teacher** (context): ``terms=[kd]`` with the real teacher on un-augmented batches.

An epoch's time is the wall time between ``on_train_epoch_start`` and ``on_train_epoch_end``; each setting
runs ``--epochs`` epochs (the first dropped) in ``--repeats`` rounds interleaved with the other settings, and
the table reports the median over all kept epochs. Writes ``benchmarks/results/teacher_cache.md``.

Run: ``python benchmarks/bench_teacher_cache.py [--train-size 20000 --epochs 3 --repeats 2]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from _machine import cpu_model
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader

from litmix.datamodules.mnist import MNISTDataModule
from litmix.datamodules.teacher_cache import TeacherCacheDataModule
from litmix.functional.fkd import replay_crops, sample_crop_boxes
from litmix.plugins import DistillationModule
from litmix.testing import make_trainer

RESULTS = Path(__file__).resolve().parent / "results" / "teacher_cache.md"
DATA = Path(os.environ.get("LITMIX_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


class EpochTimer(Callback):
    """Wall time of every training epoch."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start the clock."""
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Stop the clock."""
        self.times.append(time.perf_counter() - self._start)


class _AugmentCollate:
    """Default collate, then fresh random-resized crops (the student-with-augmentation baseline)."""

    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, items: list[Any]) -> Any:
        x, y, index = torch.utils.data.default_collate(items)
        boxes, flips = sample_crop_boxes(len(x), 1, x.shape[-2], x.shape[-1], generator=self.gen)
        return replay_crops(x, boxes[:, 0].long(), flips[:, 0]), y, index


class _AugmentedMNIST(MNISTDataModule):
    def train_dataloader(self) -> DataLoader:
        loader = super().train_dataloader()
        return DataLoader(
            loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler, collate_fn=_AugmentCollate(0)
        )


def _student() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def _teacher() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
    )


def _fit(module: pl.LightningModule, dm: pl.LightningDataModule, epochs: int) -> list[float]:
    timer = EpochTimer()
    make_trainer(max_epochs=epochs, callbacks=[timer]).fit(module, datamodule=dm)
    return timer.times[1:]


def main() -> None:
    """Run the settings and write the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    tmp = Path(tempfile.mkdtemp(prefix="bench-teacher-cache-"))
    shutil.copytree(DATA / "mnist", tmp / "mnist")
    root = str(tmp / "mnist")

    def base(cls: type = MNISTDataModule) -> MNISTDataModule:
        return cls(root, batch_size=256, train_size=args.train_size, flatten=False)

    teacher = _teacher()
    fill = {}
    t0 = time.perf_counter()
    index_dm = TeacherCacheDataModule(base(), teacher, str(tmp / "index"), k=5)
    index_dm.setup("fit")
    fill["index"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fkd_dm = TeacherCacheDataModule(base(), teacher, str(tmp / "fkd"), k=5, mode="fkd", crops=8)
    fkd_dm.setup("fit")
    fill["fkd"] = time.perf_counter() - t0
    kd = [{"kind": "kd", "temperature": 1.0}]
    settings = {
        "student alone": lambda: (DistillationModule(_student(), teacher, terms=[]), base()),
        "cached teacher (index, k=5)": lambda: (
            DistillationModule(_student(), index_dm.as_teacher(), terms=kd),
            TeacherCacheDataModule(base(), teacher, str(tmp / "index"), k=5),
        ),
        "student + random-resized-crop augmentation": lambda: (
            DistillationModule(_student(), teacher, terms=[]),
            base(_AugmentedMNIST),
        ),
        "FKD (8 stored crops, k=5)": lambda: (
            DistillationModule(_student(), fkd_dm.as_teacher(), terms=kd),
            TeacherCacheDataModule(base(), teacher, str(tmp / "fkd"), k=5, mode="fkd", crops=8),
        ),
        "live teacher (context)": lambda: (DistillationModule(_student(), _teacher(), terms=kd), base()),
    }
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, make in settings.items():
            module, dm = make()
            if isinstance(dm, TeacherCacheDataModule):  # the cache dm's adapter must be the module's teacher
                module = DistillationModule(_student(), dm.as_teacher(), terms=kd)
            times[name] += _fit(module, dm, args.epochs)
    # The data side alone: a full pass over each training loader (no model), interleaved.
    loaders = {
        "loader only: wrapped MNIST": base,
        "loader only: index cache": lambda: TeacherCacheDataModule(base(), teacher, str(tmp / "index"), k=5),
        "loader only: MNIST + augmentation": lambda: base(_AugmentedMNIST),
        "loader only: FKD cache": lambda: TeacherCacheDataModule(
            base(), teacher, str(tmp / "fkd"), k=5, mode="fkd", crops=8
        ),
    }
    loader_times: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(3 * args.repeats):
        for name, make_dm in loaders.items():
            dm = make_dm()
            dm.setup("fit")
            t0 = time.perf_counter()
            for _batch in dm.train_dataloader():
                pass
            loader_times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(v) for name, v in times.items()}
    ratios = {
        "student alone": median["student alone"] / median["student alone"],
        "cached teacher (index, k=5)": median["cached teacher (index, k=5)"] / median["student alone"],
        "student + random-resized-crop augmentation": 1.0,
        "FKD (8 stored crops, k=5)": median["FKD (8 stored crops, k=5)"]
        / median["student + random-resized-crop augmentation"],
        "live teacher (context)": median["live teacher (context)"] / median["student alone"],
    }
    against = {
        "student alone": "-",
        "cached teacher (index, k=5)": "student alone (target <= 1.06)",
        "student + random-resized-crop augmentation": "-",
        "FKD (8 stored crops, k=5)": "student + augmentation (target <= 1.15)",
        "live teacher (context)": "student alone",
    }
    size = {
        "cached teacher (index, k=5)": f"{index_dm.bytes_per_sample} B/sample, {index_dm.cache_bytes / 2**20:.2f} MiB",
        "FKD (8 stored crops, k=5)": f"{fkd_dm.bytes_per_sample} B/sample, {fkd_dm.cache_bytes / 2**20:.2f} MiB",
    }
    lines = [
        "# TeacherCacheDataModule: epoch time and cache size",
        "",
        f"MNIST {args.train_size} training images (28x28), batch 256, student 784-128-10, teacher 784-1024-1024-10,"
        f" one thread, {args.epochs - 1} timed epochs x {args.repeats} interleaved rounds, median epoch wall time."
        f" Machine: {cpu_model()} (shared, loaded: ratios only). One-off fill: index {fill['index']:.1f} s,"
        f" FKD (8 crops) {fill['fkd']:.1f} s.",
        "",
        "| setting | epoch (s) | ratio | against | cache on disk |",
        "|---|---|---|---|---|",
    ]
    for name in settings:
        lines.append(f"| {name} | {median[name]:.3f} | {ratios[name]:.3f} | {against[name]} | {size.get(name, '-')} |")
    lm = {name: statistics.median(v) for name, v in loader_times.items()}
    lines += [
        "",
        "The data side alone (a full pass over the training loader, no model; median of "
        f"{3 * args.repeats} interleaved passes):",
        "",
        "| loader | pass (s) | ratio |",
        "|---|---|---|",
        f"| wrapped MNIST | {lm['loader only: wrapped MNIST']:.3f} | 1.000 |",
        f"| index cache (k=5) | {lm['loader only: index cache']:.3f} | "
        f"{lm['loader only: index cache'] / lm['loader only: wrapped MNIST']:.3f} |",
        f"| MNIST + random-resized-crop augmentation | {lm['loader only: MNIST + augmentation']:.3f} | 1.000 |",
        f"| FKD cache (8 crops, k=5) | {lm['loader only: FKD cache']:.3f} | "
        f"{lm['loader only: FKD cache'] / lm['loader only: MNIST + augmentation']:.3f} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
