"""Grokking Tickets (https://arxiv.org/abs/2310.19470) on (a + b) mod 31: steps to 0.95 test accuracy of the
ticket (global magnitude mask of the grokked weights, keep 0.4, rewound to theta_0) vs the dense net from theta_0
vs a random mask of the same per-layer density, retrained with weight decay 0 (the paper) and 1 (the base run's).

Writes ``benchmarks/results/grokking_tickets.md``.
Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_grokking_tickets.py``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _grokking_tickets import grokking_tickets

SEEDS = (0, 1, 2)
CAPS = {0.0: 2000, 1.0: 3000}


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for wd, cap in CAPS.items():
        for seed in SEEDS:
            start = time.process_time()
            r = grokking_tickets(p=31, train_fraction=0.7, seed=seed, keep=0.4, max_steps=cap, retrain_weight_decay=wd)
            fmt = {k: ("-" if r[k] is None else str(r[k])) for k in ("base", "ticket", "dense", "random")}
            best = " | ".join(f"{r[f'{k}_max_acc']:.3f}" for k in ("ticket", "dense", "random"))
            rows.append(
                f"| {wd:g} | {seed} | {fmt['base']} | {fmt['ticket']} | {fmt['dense']} | {fmt['random']} | {best} | "
                f"{time.process_time() - start:.1f} |"
            )
            print(rows[-1], flush=True)
    out = Path(__file__).resolve().parent / "results" / "grokking_tickets.md"
    out.write_text(
        "# Grokking Tickets on modular addition\n\n"
        f"`python benchmarks/bench_grokking_tickets.py`, torch {torch.__version__}, 1 thread (shared machine).\n"
        "(a + b) mod 31, train fraction 0.7, ReLU MLP 62-128-31 on one-hot inputs, full-batch AdamW lr 1e-2; base run "
        "with weight decay 1.0 until test accuracy >= 0.95; ticket = global magnitude mask of the two weight "
        "matrices at the grokked weights (keep 0.4), rewound to theta_0; random = random masks of the ticket's "
        "per-layer densities; dense = the unmasked net from theta_0. Steps to test accuracy >= 0.95 (checked "
        "every 25 steps; `-`: not within the cap: 2000 steps at retrain WD 0, 3000 at WD 1) and the best test "
        "accuracy over the retrain.\n\n"
        "| retrain WD | seed | base steps (WD 1) | ticket | dense | random | best test acc ticket | dense | random "
        "| CPU s |\n|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


if __name__ == "__main__":
    main()
