"""Grokking on modular addition and its delay with the initialisation scale (issue 12).

Power et al. 2022 (https://arxiv.org/abs/2201.02177) observed that a network trained on part of a modular
arithmetic table fits it early and generalises much later; Kumar et al., "Grokking as the transition from lazy
to rich training dynamics" (ICLR 2024, https://arxiv.org/abs/2310.06110), explain the delay as a lazy phase
(the network fits with its initial kernel) followed by feature learning, which a larger initialisation scale
(lazier training) postpones.

Setting: ``(a + b) mod p`` from :class:`litmix.datamodules.ModularArithmeticDataModule` (``p``, train fraction,
split seed = run seed), concatenated one-hot inputs, ReLU MLP ``2p -> 128 -> p`` whose PyTorch-default initial
weights (and biases) are multiplied by ``init_scale``, full-batch AdamW (lr 1e-2, weight decay 1.0),
cross-entropy. Every 25 steps: train and test accuracy, and the centred alignment between the hidden features'
Gram matrix and the label kernel on a fixed probe of (up to 256) training pairs
(:func:`litmix.functional.lazy_rich.kernel_alignment`, as :class:`litmix.callbacks.LazyRichMonitor` logs it).
``fit`` = first measured step with train accuracy >= 0.99, ``grok`` = first with test accuracy >= 0.9.

Prints markdown and writes ``benchmarks/results/grokking.md`` (``--out`` to write elsewhere).
Run: ``python benchmarks/grokking.py`` (about 45 CPU seconds with the defaults).
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

import torch
from _grokking import grokking_run
from _machine import cpu_model


def main() -> None:
    """Sweep scales x seeds and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p", type=int, default=31)
    parser.add_argument("--train-fraction", type=float, default=0.7)
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 8.0, 32.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=8000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "grokking.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, groks = [], {}
    for scale in args.scales:
        for seed in args.seeds:
            r = grokking_run(args.p, args.train_fraction, scale, seed, args.max_steps)
            groks.setdefault(scale, []).append(r["grok"])

            def fmt(v: Any, digits: int = 3) -> str:
                return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))

            ratio = "-" if r["fit"] is None or r["grok"] is None else f"{r['grok'] / r['fit']:.1f}"
            rows.append(
                f"| {scale:g} | {seed} | {fmt(r['fit'])} | {fmt(r['test_at_fit'])} | {fmt(r['grok'])} | {ratio} "
                f"| {fmt(r['align_at_fit'])} | {fmt(r['align_at_grok'])} | {fmt(r['move_at_fit'])} "
                f"| {r['cpu_s']:.1f} |"
            )
            print(rows[-1], flush=True)
    medians = [
        f"| {s:g} | {statistics.median([g if g is not None else float('inf') for g in v]):g} |"
        for s, v in groks.items()
    ]
    lines = [
        "# Grokking on modular addition vs initialisation scale",
        "",
        f"`python benchmarks/grokking.py` on {cpu_model()}, torch {torch.__version__}, 1 thread "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}).",
        f"(a + b) mod {args.p}, train fraction {args.train_fraction}, ReLU MLP 2p-128-p over one-hot inputs, "
        "full-batch AdamW lr 1e-2 wd 1.0, initial weights x scale. Measured every 25 steps; `fit` = first step "
        "with train acc >= 0.99, `grok` = first step with test acc >= 0.9 (`-`: not within "
        f"{args.max_steps} steps); alignment = centred kernel alignment of the hidden features' Gram matrix with "
        "the label kernel on a fixed training probe; ‖W − W0‖ / ‖W0‖ = relative weight movement from the "
        "initialisation when the training set is fitted (small = lazy; weight decay's shrinkage counts as "
        "movement). CPU seconds from `time.process_time` (the machine was shared).",
        "",
        "| init scale | seed | fit step | test acc at fit | grok step | grok / fit | alignment at fit "
        "| alignment at grok | ‖W − W0‖ / ‖W0‖ at fit | CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "| init scale | median grok step |",
        "|---|---|",
        *medians,
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
