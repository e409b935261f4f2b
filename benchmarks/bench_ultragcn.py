"""UltraGCN vs LightGCN on ML-100K u1: time per training epoch (side by side, one process) and Recall@20 / NDCG@20.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ultragcn.py [--epochs 3] [--seeds 0 1 2]``; writes
``benchmarks/results/ultragcn.md``. Needs ``LITMIX_DATA`` or ``../shared/data`` (ML-100K is never copied here).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import torch

from litmix.datamodules import InteractionDataModule
from litmix.plugins import LightGCNModule, UltraGCNModule
from litmix.testing import make_trainer

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LITMIX_DATA", ROOT.parent / "shared" / "data")) / "movielens100k" / "raw"


def _models(seed: int) -> dict[str, tuple[torch.nn.Module, int]]:
    torch.manual_seed(seed)
    ultra = UltraGCNModule(lr=1e-2, negative_weight=1.0, negative_num=20, init_std=0.1, seed=seed)
    torch.manual_seed(seed)
    ultra_big = UltraGCNModule(lr=3e-2, negative_weight=1.0, negative_num=20, init_std=0.1, seed=seed)
    torch.manual_seed(seed)
    light = LightGCNModule(lr=2e-2)
    return {
        "UltraGCN (20 neg, batch 1024, Adam 1e-2)": (ultra, 1024),
        "UltraGCN (20 neg, batch 4096, Adam 3e-2)": (ultra_big, 4096),
        "LightGCN (3 layers, batch 4096, Adam 2e-2)": (light, 4096),
    }


def _fit(module: torch.nn.Module, batch: int, seed: int, epochs: int, validate: bool) -> tuple[float, dict]:
    dm = InteractionDataModule(root=DATA, batch_size=batch, seed=seed)
    trainer = make_trainer(
        max_epochs=epochs,
        limit_val_batches=None if validate else 0,
        check_val_every_n_epoch=epochs,
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return time.perf_counter() - start, {k: float(v) for k, v in trainer.callback_metrics.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [
        "# UltraGCN vs LightGCN on ML-100K u1",
        "",
        f"Per-epoch time: 1 training epoch each, alternated twice in one process (torch threads 1); quality after "
        f"{args.epochs} epochs, full ranking over items, users with test items (catalogue graphs.md §0.5).",
        "",
        "| model | seed | s / epoch | ratio to LightGCN | Recall@20 | NDCG@20 |",
        "|---|---|---|---|---|---|",
    ]
    for seed in args.seeds:
        times: dict[str, list[float]] = {}
        for _ in range(2):
            for name, (module, batch) in _models(seed).items():
                times.setdefault(name, []).append(_fit(module, batch, seed, 1, False)[0])
        best = {n: min(t) for n, t in times.items()}
        light = best["LightGCN (3 layers, batch 4096, Adam 2e-2)"]
        for name, (module, batch) in _models(seed).items():
            _, metrics = _fit(module, batch, seed, args.epochs, True)
            prefix = "ultragcn" if isinstance(module, UltraGCNModule) else "lightgcn"
            lines.append(
                f"| {name} | {seed} | {best[name]:.2f} | {best[name] / light:.2f} | "
                f"{metrics[f'{prefix}/val_recall@20']:.4f} | {metrics[f'{prefix}/val_ndcg@20']:.4f} |"
            )
            print(lines[-1], flush=True)
    out = ROOT / "benchmarks" / "results" / "ultragcn.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(out)


if __name__ == "__main__":
    main()
