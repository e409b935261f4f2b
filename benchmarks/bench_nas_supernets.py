"""Step costs of the GM-NAS split callback and of the convolutional Once-for-All supernet.

1. **GradientMatchingSplit overhead**: NB201SupernetModule (C=8, N=1, light reductions, digits 1x8x8, batch 64)
   trained 3 epochs with the split after epoch 0 (2 sub-supernets, so every later step swaps the module and
   optimizer state), paired with the same run without the callback. Per fit the median CPU time of the steps of
   epochs 1-2 (``time.thread_time`` from ``on_train_batch_start`` to ``on_train_batch_end``, so the swap in the
   callback's ``on_train_batch_start`` is inside), ratio split / plain per repeat, the median over repeats; and the
   one-time cost of the split itself (gradient matching on 6 edges x 5 ops x 4 batches).
2. **OFAConvSupernetModule per phase**: the effect-test configuration (stem 8, stages [8, 16], depths {1, 2},
   kernels {3, 5, 7}, expand {2, 3, 4}, 2 subnets per step) for 8 epochs on digits; median CPU time of a step in
   each progressive-shrinking phase, and the FLOPs (multiply-accumulates) of the largest and smallest subnets.

CPU time of the training thread, robust to other processes sharing the cores. Prints markdown and writes
``benchmarks/results/nas_supernets.md`` (``--out`` to write elsewhere).

Run: ``python benchmarks/bench_nas_supernets.py`` (about 1 min of CPU).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from _machine import cpu_model
from lightning.pytorch.callbacks import Callback

from litmix.callbacks import GradientMatchingSplit
from litmix.datamodules.digits import DigitsDataModule
from litmix.plugins import NB201SupernetModule, OFAConvSupernetModule
from litmix.testing import make_trainer

RESULTS = Path(__file__).resolve().parent / "results" / "nas_supernets.md"


class StepTimer(Callback):
    """CPU time of every training step (batch start to batch end), with the epoch and the module's phase."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, float]] = []
        self.split_s = 0.0
        self._t = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._t = time.thread_time()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        phase = str(getattr(pl_module, "phase", ""))
        self.rows.append((trainer.current_epoch, phase, time.thread_time() - self._t))


class SplitTimer(Callback):
    """CPU time of the split callback's epoch-end hook (placed around it in the callback list)."""

    def __init__(self, start: bool, shared: dict[str, float]) -> None:
        self.start, self.shared = start, shared

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.start:
            self.shared["t"] = time.thread_time()
        elif trainer.current_epoch == 0:
            self.shared["split"] = time.thread_time() - self.shared["t"]


def gm_overhead(repeats: int) -> tuple[float, float, float, float]:
    ratios, plain_ms, split_ms, split_s = [], [], [], []
    for r in range(repeats):
        medians = {}
        for with_split in (False, True):
            pl.seed_everything(r, verbose=False)
            module = NB201SupernetModule(C=8, N=1, in_channels=1, reduction="light", lr=0.1, seed=r)
            timer, shared = StepTimer(), {}
            callbacks: list[Callback] = [timer]
            if with_split:
                callbacks = [  # the timer first: the swap in the split's on_train_batch_start is timed
                    timer,
                    SplitTimer(True, shared),
                    GradientMatchingSplit(split_epochs=[0]),
                    SplitTimer(False, shared),
                ]
            make_trainer(max_epochs=3, callbacks=callbacks).fit(
                module, datamodule=DigitsDataModule(batch_size=64, flatten=False, seed=0)
            )
            medians[with_split] = statistics.median(t for epoch, _, t in timer.rows if epoch >= 1)
            if with_split:
                split_s.append(shared["split"])
        ratios.append(medians[True] / medians[False])
        plain_ms.append(1e3 * medians[False])
        split_ms.append(1e3 * medians[True])
    return (
        statistics.median(plain_ms),
        statistics.median(split_ms),
        statistics.median(ratios),
        statistics.median(split_s),
    )


def ofa_phases() -> tuple[dict[str, float], int, int]:
    pl.seed_everything(0, verbose=False)
    module = OFAConvSupernetModule(stem_channels=8, stage_channels=[8, 16], depth_choices=[1, 2], lr=1e-2)
    timer = StepTimer()
    make_trainer(max_epochs=8, callbacks=[timer]).fit(module, datamodule=DigitsDataModule(batch_size=64, flatten=False))
    phases: dict[str, list[float]] = {}
    for _, phase, t in timer.rows:
        phases.setdefault(phase, []).append(t)
    return (
        {p: 1e3 * statistics.median(ts) for p, ts in phases.items()},
        module.flops(module.largest_arch()),
        module.flops(module.smallest_arch()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    plain, split, ratio, split_s = gm_overhead(args.repeats)
    phases, fmax, fmin = ofa_phases()
    lines = [
        "# NAS supernets: GM-NAS split overhead and Once-for-All (conv) step cost",
        "",
        f"CPU: {cpu_model()}, 1 thread, torch {torch.__version__}; CPU time of the training thread.",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| NB201 supernet step, plain (median over {args.repeats} fits) | {plain:.1f} ms |",
        f"| same with GradientMatchingSplit after the split (2 sub-supernets, swap every step) | {split:.1f} ms |",
        f"| ratio split / plain (paired per fit, median) | {ratio:.3f}x |",
        f"| one split (6 edges x 5 ops x 4 batches of 64) | {split_s:.2f} s |",
    ]
    lines += [f"| OFAConvSupernetModule step, {p} phase | {ms:.1f} ms |" for p, ms in phases.items()]
    lines += [f"| OFAConvSupernetModule FLOPs (MACs, 1x8x8), largest / smallest | {fmax:,} / {fmin:,} |"]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
