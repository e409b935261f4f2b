"""Structured pruning that shrinks the model: accuracy, parameters and forward time before and after removal.

Usage: ``python benchmarks/bench_structured_pruning.py [--seeds 0 1 2] [--reps 31] [--out ...]``

Part 1 (MNIST MLPs 784-256-256-10 and 784-300-100-10, channels): dense 1 epoch on 10k MNIST images (Adam 1e-3,
batch 128), then 40 fine-tuning steps during which ``StructuredPruning`` ramps to 50 % of both hidden layers'
channels (steps 0..10, every 2) by L2 norm or at random and removes them at the end; full t10k accuracy, parameter
count, and forward time shrunk/dense (median of interleaved repetitions, one process, 1 thread) at batch 1024 and 1.

Part 2 (CNN, channels, no training): a 3-conv MNIST CNN (32-64-128 filters, BatchNorm) with 50 % of every conv's
filters removed by L2 norm: parameters and forward time at batch 256 and 1.

Part 3 (char-GPT-2, heads): a 2-block GPT-2 (4 heads, d=64) trained 300 steps on Tiny Shakespeare by
``benchmarks/train_char_gpt.py``; 2 of 4 heads per block removed one-shot by weight RMS or at random (5 draws);
validation loss (log perplexity on 64 windows of 64 characters), parameters and forward time (batch 16 x 64).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from _common import MnistMLP, mnist_test_accuracy
from _machine import cpu_model
from torch import nn

from litmix.callbacks import StructuredPruning
from litmix.datamodules.mnist import MNISTDataModule
from litmix.functional.head_importance import head_masks, head_parameter_masks, head_scores
from litmix.sparsity.removal import channel_groups, channel_parameter_masks, forward_time_ratio, shrink_model
from litmix.testing import make_trainer

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LITMIX_DATA", REPO.parent / "shared" / "data"))


class MLP(MnistMLP):
    """784-256-256-10 ReLU MLP (equal hidden widths), Adam 1e-3."""

    def __init__(self, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
        )


def nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def time_ratio(small: nn.Module, big: nn.Module, x: Any, reps: int) -> float:
    """Median forward time of ``small`` / ``big``, interleaved (one process, same inputs)."""
    return forward_time_ratio(small, big, x, reps=reps, warmup=3)


def part_mlp(seeds: list[int], reps: int, make: type[MnistMLP]) -> list[str]:
    folder = Path(tempfile.mkdtemp()) / "MNIST"
    shutil.copytree(DATA / "mnist" / "MNIST", folder)
    dm = MNISTDataModule(str(folder / "raw"), batch_size=128, val_size=0, train_size=10000, flatten=True, seed=0)
    dm.setup()
    x = dm.test_dataset.dataset.tensors[0]
    rows = []
    for seed in seeds:
        pl.seed_everything(seed, verbose=False)
        dense = make()
        make_trainer(max_epochs=1).fit(dense, datamodule=dm)
        acc_dense = mnist_test_accuracy(dense, dm)
        out: dict[str, Any] = {}
        for importance in ("l2", "random"):
            model = copy.deepcopy(dense).train()
            pl.seed_everything(seed, verbose=False)
            cb = StructuredPruning(
                channel_sparsity=0.5, importance=importance, start_step=0, end_step=10, every_n_steps=2, remove=True
            )
            make_trainer(max_steps=40, callbacks=[cb]).fit(model, datamodule=dm)
            out[importance] = (mnist_test_accuracy(model, dm), model)
        small = out["l2"][1]
        r1024 = time_ratio(small, dense, x[:1024], reps)
        r1 = time_ratio(small, dense, x[:1], reps * 10)
        rows.append(
            f"| {make.__name__} | {seed} | {acc_dense:.4f} | {out['l2'][0]:.4f} | {out['random'][0]:.4f} | "
            f"{out['l2'][0] - out['random'][0]:+.4f} | {nparams(small)} / {nparams(dense)} = "
            f"{nparams(small) / nparams(dense):.4f} | {r1024:.3f} | {r1:.3f} |"
        )
        print(rows[-1], flush=True)
    return rows


def part_cnn(reps: int) -> list[str]:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    c_in = 1
    for c in (32, 64, 128):
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c
    dense = nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 3 * 3, 10)).eval()
    small = copy.deepcopy(dense)
    x = torch.randn(256, 1, 28, 28)
    groups, _ = channel_groups(small, x[:2])
    keep = {}
    for g in groups:
        w = small.get_submodule(g.root).weight.detach()
        order = w.flatten(1).norm(dim=1).argsort(descending=True)
        k = torch.zeros(g.size, dtype=torch.bool)
        k[order[: g.size // 2]] = True
        keep[g.root] = k
    shrink_model(small, channel_parameter_masks(small, groups, keep), x[:2])
    r256 = time_ratio(small, dense, x, reps)
    r1 = time_ratio(small, dense, x[:1], reps * 10)
    return [
        f"| CNN 32-64-128 + BN, 50 % filters | {nparams(small)} / {nparams(dense)} = "
        f"{nparams(small) / nparams(dense):.4f} | {r256:.3f} (batch 256) | {r1:.3f} (batch 1) |"
    ]


def part_gpt(seeds: list[int], reps: int) -> list[str]:
    spec = importlib.util.spec_from_file_location("train_char_gpt", REPO / "benchmarks" / "train_char_gpt.py")
    assert spec is not None
    assert spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_char_gpt", script)
    spec.loader.exec_module(script)
    text = DATA / "tinyshakespeare" / "input.txt"
    _, _, val = script.load_splits(text)
    rows = []
    for seed in seeds:
        model, _ = script.train_char_gpt(
            None, n_layer=2, n_head=4, n_embd=64, block=64, steps=300, batch=16, lr=6e-3, seed=seed, text=text
        )

        def loss(m: nn.Module) -> float:
            return math.log(script.perplexity(m, val, 64, max_windows=64))

        def without(keep: dict[str, torch.Tensor], model: nn.Module = model) -> nn.Module:
            m = copy.deepcopy(model)
            shrink_model(m, head_parameter_masks(m, keep))
            return m

        scores = head_scores(model)
        small = without(head_masks(scores, 0.5))
        gen = torch.Generator().manual_seed(seed)
        rnd = [loss(without(head_masks({k: torch.rand(4, generator=gen) for k in scores}, 0.5))) for _ in range(5)]
        ids = val[: 16 * 64].view(16, 64)
        ratio = time_ratio(small, model, ids, reps)
        rows.append(
            f"| {seed} | {loss(model):.4f} | {loss(small):.4f} | {statistics.mean(rnd):.4f} "
            f"({min(rnd):.4f}..{max(rnd):.4f}) | {nparams(small) / nparams(model):.3f} | {ratio:.3f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reps", type=int, default=31)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "structured_pruning.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    mlp = part_mlp(args.seeds, args.reps, MLP) + part_mlp(args.seeds, args.reps, MnistMLP)
    cnn = part_cnn(args.reps)
    gpt = part_gpt(args.seeds, args.reps)
    lines = [
        "# Structured pruning: channels and heads removed (StructuredPruning, shrink_model)",
        "",
        f"Machine: {cpu_model()}, torch {torch.__version__}, 1 thread; timings are medians of interleaved repetitions "
        f"in one process ({args.reps} at large batch, {args.reps * 10} at batch 1), shared loaded machine: ratios "
        "only.",
        "",
        "## MNIST MLPs: 50 % of the hidden channels removed after a 40-step fine-tune",
        "",
        "`MLP` = 784-256-256-10 (the effect test's), `MnistMLP` = 784-300-100-10 (`benchmarks/_common.py`).",
        "",
        "| model | seed | dense acc | L2 removed | random removed | L2 - random | parameters | fwd time batch 1024 "
        "(shrunk / dense) | fwd time batch 1 |",
        "|---|---|---|---|---|---|---|---|---|",
        *mlp,
        "",
        "## CNN, 50 % of every conv's filters removed (no training; speed and size only)",
        "",
        "| model | parameters | fwd time (shrunk / dense) | fwd time |",
        "|---|---|---|---|",
        *cnn,
        "",
        "## char-GPT-2 (2 blocks, 4 heads, d=64, Tiny Shakespeare): 2 of 4 heads per block removed, no fine-tune",
        "",
        "| seed | dense val loss | lowest-RMS heads removed | random heads removed, mean of 5 (min..max) | "
        "parameters | fwd time batch 16x64 (shrunk / dense) |",
        "|---|---|---|---|---|---|",
        *gpt,
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
