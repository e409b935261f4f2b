"""Step time of :class:`litmix.optim.Lion` and :class:`litmix.optim.FRUGAL` against AdamW, state bytes, and the
cost of GradientNoise.

1. **Optimizer step alone** (``optimizer.step()`` on fixed gradients, no forward/backward), side by side in one
   process, round robin over the settings in every repeat: Lion (foreach, loop) and FRUGAL (density 0.25; block,
   randk and svd projections, every matrix projectable, re-projection every 200 steps, so the median step
   excludes the re-projection) against AdamW (foreach, fused, loop), on two models: the digits MLP 64-64-10
   (4,810 parameters in 4 tensors: launch overhead dominates) and
   a char-LM MLP (Bengio-style: embedding 65x64, context 16, 1024-512-512-65; 824,961 parameters in 7 tensors:
   memory traffic dominates). A setting's time is the minimum over repeats of the median step in that repeat.
   State bytes per parameter from :func:`litmix.optim.memory_report`.
2. **GradientNoise overhead**, paired: in one Lightning fit the callback adds noise on odd steps only, so noisy
   steps and their baseline alternate under the same machine load; per fit the ratio of the medians (odd/even),
   then the median over fits. The floor is what the noise itself needs: one ``torch.randn`` of the parameter
   count with a generator, timed in the same fits after every baseline step (outside the step's time).
   Models: the digits MLP (batch 32, AdamW) and the char-LM MLP (batch 64, AdamW) on synthetic data of the
   right shapes.

CPU time of the training thread (``time.thread_time``), robust to other processes sharing the cores. CPU only
(no GPU was available when this was written). Prints markdown and writes ``benchmarks/results/optimizers.md``
(``--out`` to write elsewhere).

Run: ``python benchmarks/bench_optimizers.py`` (about 20 s).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from _common import CONTEXT, VOCAB, CharMLP, bench_optimizer_steps
from _machine import cpu_model
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litmix.callbacks import GradientNoise
from litmix.optim import FRUGAL, Lion
from litmix.testing import make_trainer

RESULTS = Path(__file__).resolve().parent / "results" / "optimizers.md"


def digits_mlp() -> nn.Module:
    """The digits MLP of the Lion effect test (64-64-10)."""
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


MODELS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "digits MLP 64-64-10": (digits_mlp, 32),
    "char-LM MLP (65x64 emb, 16 ctx, 1024-512-512-65)": (CharMLP, 64),
}

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "AdamW foreach": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2, foreach=True),
    "AdamW fused": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2, fused=True),
    "AdamW loop": lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=1e-2, foreach=False),
    "Lion foreach": lambda p: Lion(p, lr=3e-4, weight_decay=1e-2, foreach=True),
    "Lion loop": lambda p: Lion(p, lr=3e-4, weight_decay=1e-2, foreach=False),
    "FRUGAL block 0.25": lambda p: FRUGAL(p, lr=1e-3, weight_decay=1e-2, density=0.25, projection="block"),
    "FRUGAL randk 0.25": lambda p: FRUGAL(p, lr=1e-3, weight_decay=1e-2, density=0.25, projection="randk"),
    "FRUGAL svd 0.25": lambda p: FRUGAL(p, lr=1e-3, weight_decay=1e-2, density=0.25, projection="svd"),
}


def bench_steps(repeats: int, steps: int) -> list[dict[str, Any]]:
    """Median ``optimizer.step()`` time per setting and model (minimum over round-robin repeats)."""
    return bench_optimizer_steps({k: make for k, (make, _) in MODELS.items()}, OPTIMIZERS, repeats, steps, warmup=5)


class _Module(pl.LightningModule):
    def __init__(self, make: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.model = make()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class _OddSteps(GradientNoise):
    """GradientNoise on odd steps only: its cost and its baseline alternate within one fit."""

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if trainer.global_step % 2:
            super().on_before_optimizer_step(trainer, pl_module, optimizer)


class _StepTimer(pl.Callback):
    """Thread CPU time of every step after ``skip``, by parity; after each even (baseline) step, outside the
    step's time, also the time of one ``randn`` of the parameter count: the noise floor under the same load."""

    def __init__(self, skip: int, numel: int) -> None:
        self.skip, self.numel = skip, numel
        self.times: dict[int, list[float]] = {0: [], 1: []}
        self.floor: list[float] = []
        self.generator = torch.Generator().manual_seed(0)
        self._t0 = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, idx: int) -> None:
        self._t0 = time.thread_time()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        elapsed = time.thread_time() - self._t0
        step = trainer.global_step - 1  # the step that just ran
        if step >= self.skip:
            self.times[step % 2].append(elapsed)
            if step % 2 == 0:
                t0 = time.thread_time()
                torch.randn(self.numel, generator=self.generator)
                self.floor.append(time.thread_time() - t0)


def _data(model_name: str, batch: int, n_batches: int) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    n = batch * n_batches
    if model_name.startswith("digits"):
        x = torch.rand(n, 64, generator=gen)
        y = torch.randint(0, 10, (n,), generator=gen)
    else:
        x = torch.randint(0, VOCAB, (n, CONTEXT), generator=gen)
        y = torch.randint(0, VOCAB, (n,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)


def bench_noise(fits: int, steps: int) -> list[dict[str, Any]]:
    """Paired GradientNoise overhead per model, with the randn floor measured in the same fits."""
    rows = []
    for model_name, (make, batch) in MODELS.items():
        n = sum(p.numel() for p in make().parameters())
        ratios, on, off, floor = [], [], [], []
        for _ in range(fits):
            timer = _StepTimer(skip=10, numel=n)
            trainer = make_trainer(callbacks=[_OddSteps(eta=0.01, seed=0), timer], max_steps=steps + 10)
            trainer.fit(_Module(make), train_dataloaders=_data(model_name, batch, steps + 10))
            odd, even = statistics.median(timer.times[1]), statistics.median(timer.times[0])
            ratios.append(odd / even)
            on.append(odd)
            off.append(even)
            floor.append(statistics.median(timer.floor))
        rows.append(
            {
                "model": model_name,
                "batch": batch,
                "params": n,
                "off_ms": statistics.median(off) * 1e3,
                "on_ms": statistics.median(on) * 1e3,
                "ratio": statistics.median(ratios),
                "worst": max(ratios),
                "floor_ms": statistics.median(floor) * 1e3,
            }
        )
    return rows


def render(steps: list[dict[str, Any]], noise: list[dict[str, Any]], meta: str) -> str:
    """Markdown report."""
    out = ["# Optimizers: Lion and FRUGAL vs AdamW step time and state bytes; GradientNoise overhead", ""]
    out += [
        "| model | optimizer | step (ms) | vs AdamW foreach | vs AdamW fused | state bytes/param | state bytes |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for model in MODELS:
        rows = {r["optimizer"]: r for r in steps if r["model"] == model}
        base_f, base_u = rows["AdamW foreach"]["ms"], rows["AdamW fused"]["ms"]
        for name, r in rows.items():
            label = f"{model} ({r['params']:,} params, {r['tensors']} tensors)"
            out.append(
                f"| {label} | {name} | {r['ms']:.4f} | {r['ms'] / base_f:.3f}x | {r['ms'] / base_u:.3f}x | "
                f"{r['bytes_per_param']:.1f} | {r['state_bytes']:,} |"
            )
    out += [
        "",
        "`optimizer.step()` alone on fixed gradients; a setting's time is the minimum over repeats of its median "
        "step, the settings measured round robin in one process. State bytes per parameter exclude the 0-dim "
        "per-tensor step counters (AdamW: 4 bytes per tensor), which `state bytes` includes "
        "(`litmix.optim.memory_report`). Lion's per-element state is exactly half of AdamW's."
        " FRUGAL's block projection keeps AdamW moments for a quarter of the matrices (which quarter is random, so"
        " the bytes depend on their sizes) and none for the rest; randk stores the moments and the int64 index of a"
        " quarter of each matrix's coordinates (16 bytes per active coordinate); svd stores the projector and"
        " rank-r moments.",
        "",
        "## GradientNoise overhead (paired, one fit: noise on odd steps only)",
        "",
        "| model | batch | params | step without (ms) | step with (ms) | ratio, median over fits | worst fit | "
        "noise floor: one `randn(params)` (ms) | floor / step without |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in noise:
        out.append(
            f"| {r['model']} | {r['batch']} | {r['params']:,} | {r['off_ms']:.3f} | {r['on_ms']:.3f} | "
            f"**{r['ratio']:.3f}x** | {r['worst']:.3f}x | {r['floor_ms']:.3f} | {r['floor_ms'] / r['off_ms']:.3f} |"
        )
    out += [
        "",
        "Full Lightning training step (forward, loss, backward, AdamW step), `on_train_batch_start` to "
        "`on_train_batch_end`; the first 10 steps of each fit not timed. The noise needs one Gaussian draw per "
        "parameter element per step: its cost grows with the parameter count, the step's with parameters x batch, "
        "so the ratio shrinks with the batch size; the floor column is the draw alone.",
        "",
        "Target <= 1.02x: "
        + ("met" if all(r["ratio"] <= 1.02 for r in noise) else "**not met** on this CPU")
        + ". torch's CPU generator (mt19937, serial) needs "
        + ", ".join(f"{r['floor_ms'] * 1e6 / r['params']:.1f} ns" for r in noise)
        + " per parameter element for the draw alone, i.e. "
        + ", ".join(f"{100 * r['floor_ms'] / r['off_ms']:.1f} %" for r in noise)
        + " of the step without noise (one figure per model, in table order): the floor column bounds what an "
        "implementation drawing with torch's generator can reach here; the rest is the add into the gradients "
        "and the hook's Python.",
        "",
        meta,
        "",
        "Run: `python benchmarks/bench_optimizers.py`",
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    """Run both benchmarks and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps per setting and repeat")
    parser.add_argument("--fits", type=int, default=5, help="paired GradientNoise fits per model")
    parser.add_argument("--fit-steps", type=int, default=100, help="timed steps per GradientNoise fit")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    load = os.getloadavg()[0]
    step_rows = bench_steps(args.repeats, args.steps)
    noise_rows = bench_noise(args.fits, args.fit_steps)
    meta = (
        f"Machine: {cpu_model()}, 1 thread; torch {torch.__version__}, lightning {pl.__version__}; "
        f"load average at start {load:.1f}; {args.repeats} repeats x {args.steps} optimizer steps; "
        f"{args.fits} fits x {args.fit_steps} timed steps; CPU time of the training thread."
    )
    text = render(step_rows, noise_rows, meta)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
