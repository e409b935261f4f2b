"""Grokking Tickets (https://arxiv.org/abs/2310.19470) on (a + b) mod 31 through
:class:`~litmix.callbacks.LotteryTicket` in Lightning fits: steps to 0.95 test accuracy of the ticket (global
magnitude mask of the grokked weights, keep 0.4 and 0.7, rewound to theta_0, retrained with weight decay 0 via
``retrain_weight_decay``) vs the dense net from theta_0 (weight decay 0) vs the callback's random mask, seeds 0 / 1 / 2.

Writes ``benchmarks/results/grokking_tickets.md`` (the earlier plain-loop sweep is kept there as a fixed section).
Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_grokking_tickets.py`` (about 4-5 min on a loaded 2-core machine).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _grokking_tickets import lightning_tickets

SEEDS = (0, 1, 2)
KEEPS = (0.4, 0.7)
BASE_STEPS = 1800
CAP = 1500

PLAIN_LOOP = """## Earlier measurement: the mask selector in a plain loop (commit 728e569)

Same data and net, base run with weight decay 1.0 until test accuracy >= 0.95, keep 0.4, ticket masks from
`magnitude_masks`, random = random masks of the ticket's per-layer densities. Steps to 0.95 (`-`: not within 2000
steps at retrain WD 0, 3000 at WD 1) and the best test accuracy over the retrain.

| retrain WD | seed | base steps (WD 1) | ticket | dense | random | best test acc ticket | dense | random | CPU s |
|---|---|---|---|---|---|---|---|---|---|
| 0 | 0 | 1725 | - | - | - | 0.007 | 0.000 | 0.000 | 11.2 |
| 0 | 1 | 1275 | - | - | - | 0.003 | 0.000 | 0.000 | 11.2 |
| 0 | 2 | 1750 | - | - | - | 0.007 | 0.000 | 0.000 | 12.0 |
| 1 | 0 | 1725 | - | 1725 | - | 0.042 | 0.951 | 0.000 | 12.3 |
| 1 | 1 | 1275 | - | 1275 | - | 0.035 | 0.951 | 0.000 | 12.2 |
| 1 | 2 | 1750 | - | 1750 | - | 0.021 | 0.951 | 0.000 | 11.2 |
"""


def _fmt(v: object) -> str:
    return "-" if v is None else str(v)


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for seed in SEEDS:
        start = time.process_time()
        r = lightning_tickets(seed=seed, keeps=KEEPS, base_steps=BASE_STEPS, max_steps=CAP)
        cpu = time.process_time() - start
        for keep in KEEPS:
            rows.append(
                f"| {keep:g} | {seed} | {_fmt(r[f'base@{keep}'])} ({r[f'base@{keep}_max_acc']:.3f}) | "
                f"{_fmt(r[f'ticket@{keep}'])} | {_fmt(r['dense'])} | "
                f"{_fmt(r[f'random@{keep}'])} | {r[f'ticket@{keep}_max_acc']:.3f} | {r['dense_max_acc']:.3f} | "
                f"{r[f'random@{keep}_max_acc']:.3f} | {r[f'ticket@{keep}_wd']} | {cpu:.1f} |"
            )
            print(rows[-1], flush=True)
    out = Path(__file__).resolve().parent / "results" / "grokking_tickets.md"
    out.write_text(
        "# Grokking Tickets on modular addition\n\n"
        f"`python benchmarks/bench_grokking_tickets.py`, torch {torch.__version__}, 1 thread (shared machine).\n"
        "(a + b) mod 31, train fraction 0.7 (`ModularArithmeticDataModule`, its full training batch), ReLU MLP "
        "62-128-31 on one-hot inputs, AdamW lr 1e-2, Lightning fits. Ticket / random: one fit each with "
        f"`LotteryTicket(sparsity=1 - keep, prune_every={BASE_STEPS}, unit='step', scoring='magnitude'|'random', "
        "retrain_weight_decay=0.0)` on the two weight matrices: weight decay 1.0 for the base run, then global "
        "magnitude (or the callback's uniform random) mask, rewind to theta_0, optimizer state cleared, weight decay "
        f"0 for up to {CAP} retrain steps. Dense: the unmasked net from theta_0 with weight decay 0. Steps to test "
        "accuracy >= 0.95 counted from the rewind (checked every 25 steps; `-`: not within the cap), base = the "
        "base run's first step >= 0.95 (its best test accuracy before the round), best test accuracy over the "
        "retrain, the retrain's weight decay as seen by "
        "the optimizer, CPU s for the seed's 5 fits.\n\n"
        "| keep | seed | base steps (WD 1) | ticket | dense | random | best test acc ticket | dense | random "
        "| retrain WD | CPU s (seed) |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\n"
        + PLAIN_LOOP
    )


if __name__ == "__main__":
    main()
