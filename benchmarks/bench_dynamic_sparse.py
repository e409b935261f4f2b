"""DynamicSparseTraining (RigL / SET) on the MNIST MLP: step-time ratios, accuracy per seed, memory and export sizes.

Usage: ``python benchmarks/bench_dynamic_sparse.py [--root ../shared/data/mnist] [--epochs 3] [--repeats 3]
[--acc-epochs 5] [--seeds 0 1 2] [--out benchmarks/results/dynamic_sparse.md]``

Every run trains the same 784-300-100-10 MLP (Adam 1e-3, batch 128, 20k MNIST training images) at 90 % sparsity
(uniform layer densities). Step time: wall and CPU time between consecutive ``on_train_batch_start`` calls
(forward, backward, optimizer step, every hook); runs interleaved (dense, static mask, RigL every 100 steps)
``--repeats`` times in one process; each ratio is the median over repeats of the run's median (between updates) or
mean (amortised) step time over the dense run's of the same repeat. "static" is DynamicSparseTraining with no
update (the cost between mask updates); "RigL" updates every 100 steps until 75 % of the run (the amortised cost
of the grow step). Accuracy: test accuracy (10k MNIST test images) of dense, static random mask, RigL and SET,
same seed (same initial weights and initial mask), 5 epochs, updates every 50 steps. Memory: bytes per masked
weight held by the module and by the checkpointed state; export: sizes of the dense and the compact sparse state
dicts.
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import lightning.pytorch as pl
import torch
from _common import MnistMLP, StepTimer, mnist_test_accuracy
from _machine import cpu_model
from lightning.pytorch.callbacks import Callback

from litmix.callbacks.dynamic_sparse_training import DynamicSparseTraining
from litmix.datamodules.mnist import MNISTDataModule
from litmix.sparsity import MaskEngine
from litmix.testing import make_trainer

REPO = Path(__file__).resolve().parents[1]
SPARSITY = 0.9


def make_cb(kind: str, seed: int, every: int) -> list[Callback]:
    if kind == "dense":
        return []
    if kind == "static":
        return [DynamicSparseTraining(SPARSITY, end_step=1, distribution="uniform", seed=seed)]
    return [DynamicSparseTraining(SPARSITY, kind, update_every=every, distribution="uniform", seed=seed)]


def fit(
    kind: str, dm: MNISTDataModule, epochs: int, seed: int, every: int
) -> tuple[MnistMLP, StepTimer, list[Callback]]:
    pl.seed_everything(seed, verbose=False)
    model, timer = MnistMLP(), StepTimer()
    cbs = make_cb(kind, seed, every)
    make_trainer(callbacks=[*cbs, timer], max_epochs=epochs).fit(model, datamodule=dm)
    return model, timer, cbs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--acc-epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "dynamic_sparse.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    dm = MNISTDataModule(args.root, batch_size=128, val_size=0, train_size=20000, flatten=True, seed=0)
    dm.setup()

    # 1. step time, interleaved: median step (between updates) and mean step (amortised), wall and CPU time
    kinds = ("dense", "static", "rigl")
    stats: dict[str, dict[str, list[float]]] = {
        k: {"wall_med": [], "cpu_med": [], "wall_mean": [], "cpu_mean": []} for k in kinds
    }
    for _ in range(args.repeats):
        for kind in kinds:
            _, timer, _ = fit(kind, dm, args.epochs, 0, 100)
            stats[kind]["wall_med"].append(statistics.median(timer.wall))
            stats[kind]["cpu_med"].append(statistics.median(timer.cpu))
            stats[kind]["wall_mean"].append(statistics.fmean(timer.wall))
            stats[kind]["cpu_mean"].append(statistics.fmean(timer.cpu))

    def ratio(kind: str, key: str) -> float:
        return statistics.median(m / d for m, d in zip(stats[kind][key], stats["dense"][key], strict=True))

    # 2. accuracy per seed
    acc: dict[int, dict[str, float]] = {}
    for seed in args.seeds:
        acc[seed] = {
            k: mnist_test_accuracy(fit(k, dm, args.acc_epochs, seed, 50)[0], dm)
            for k in ("dense", "static", "rigl", "set")
        }

    # 3. memory and export of one RigL run
    model, _, cbs = fit("rigl", dm, 1, 0, 50)
    cb = cbs[0]
    assert isinstance(cb, DynamicSparseTraining)
    masked = sum(m.numel() for m in cb.engine.masks.values())
    buffer_bytes = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n.endswith("_mask"))
    state_bytes = sum(len(v["bits"]) for v in cb.state_dict()["masks"].values())
    dense_bytes = MaskEngine.nbytes(cb.engine.dense_state_dict(model))
    bitmask_bytes = MaskEngine.nbytes(cb.engine.to_sparse_state_dict(model))
    csr_bytes = MaskEngine.nbytes(cb.engine.to_sparse_state_dict(model, layout="csr"))

    lines = [
        "# DynamicSparseTraining: step time, accuracy, memory (MNIST MLP 784-300-100-10, 90 % sparsity)",
        "",
        f"Machine: {cpu_model()}, {platform.python_version()}, torch {torch.__version__}, 1 thread "
        f"(shared, loaded 2-core machine: only ratios from the same process mean anything). Generated by "
        "`benchmarks/bench_dynamic_sparse.py`.",
        "",
        f"## Step time ({args.epochs} epochs of 20k images per run, {args.repeats} interleaved repeats; ratio = median "
        "over repeats)",
        "",
        "| run | median step / dense (wall) | median step / dense (CPU) | mean step / dense (wall) | "
        "mean step / dense (CPU) | dense mean step (wall, ms, per repeat) |",
        "|---|---|---|---|---|---|",
        f"| static mask (cost between updates) | {ratio('static', 'wall_med'):.3f} | {ratio('static', 'cpu_med'):.3f} "
        f"| {ratio('static', 'wall_mean'):.3f} | {ratio('static', 'cpu_mean'):.3f} | "
        f"{', '.join(f'{1e3 * v:.2f}' for v in stats['dense']['wall_mean'])} |",
        f"| RigL, update every 100 steps (amortised: mean columns) | {ratio('rigl', 'wall_med'):.3f} | "
        f"{ratio('rigl', 'cpu_med'):.3f} | {ratio('rigl', 'wall_mean'):.3f} | {ratio('rigl', 'cpu_mean'):.3f} | |",
        "",
        f"## Test accuracy ({args.acc_epochs} epochs, updates every 50 steps to 75 %, zeta 0.3, uniform densities)",
        "",
        "| seed | dense | static random 90 % | RigL 90 % | SET 90 % | RigL - static |",
        "|---|---|---|---|---|---|",
    ]
    for seed, a in acc.items():
        lines.append(
            f"| {seed} | {a['dense']:.4f} | {a['static']:.4f} | {a['rigl']:.4f} | {a['set']:.4f} | "
            f"{a['rigl'] - a['static']:+.4f} |"
        )
    mean = {k: statistics.fmean(a[k] for a in acc.values()) for k in ("dense", "static", "rigl", "set")}
    lines += [
        f"| mean | {mean['dense']:.4f} | {mean['static']:.4f} | {mean['rigl']:.4f} | {mean['set']:.4f} | "
        f"{mean['rigl'] - mean['static']:+.4f} |",
        "",
        "## Memory and export (one RigL run)",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| masked weights | {masked} |",
        f"| mask buffers on the module, bytes per masked weight | {buffer_bytes / masked:.3f} |",
        f"| masks in the checkpointed state, bytes per masked weight | {state_bytes / masked:.3f} |",
        f"| dense state dict (with zeros) | {dense_bytes} B |",
        f"| compact sparse state dict, bitmask + values | {bitmask_bytes} B ({bitmask_bytes / dense_bytes:.3f}x) |",
        f"| sparse state dict, CSR (int64 indices) | {csr_bytes} B ({csr_bytes / dense_bytes:.3f}x) |",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
