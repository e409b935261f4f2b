"""DiffusionNAG generation speed: cells per second without and with predictor guidance (1 CPU thread).

Usage: ``python benchmarks/bench_diffusion_nag.py [--repeats 5] [--n 256] [--out benchmarks/results/diffusion_nag.md]``

A :class:`litmix.nas.DiffusionNAG` (hidden 64, 100 diffusion steps) is fitted on all 15,625 NB201 cells and its
predictor on 1,000 labelled cells (stored CIFAR-10 validation accuracies when ``../shared/data`` exists, else a
synthetic label). Then ``--n`` cells are sampled unguided (λ = 0) and guided (λ = 3), interleaved round robin over
``--repeats`` rounds; the table gives the median time, cells/s and the guidance overhead (guided / unguided time).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

import torch
from _machine import cpu_model

from litmix.nas import DiffusionNAG, all_codes, load_nb201

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LITMIX_DATA", REPO.parent / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "diffusion_nag.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train = random.Random(0).sample(all_codes(), 1000)
    zip_path = DATA / "nb201" / "nb201_zen.zip"
    if zip_path.is_file():
        acc = {r.code: r.val_accuracy for r in load_nb201(zip_path, "cifar10").values()}
        labels, source = [acc[c] for c in train], "stored NB201 CIFAR-10 validation accuracy"
    else:
        labels, source = [float(c.count(2)) for c in train], "synthetic label (#conv3x3; data not found)"
    t0 = time.perf_counter()
    nag = DiffusionNAG(hidden=64, steps=600, predictor_steps=500, seed=0).fit()
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    nag.fit_predictor(train, labels)
    t_pred = time.perf_counter() - t0
    times: dict[float, list[float]] = {0.0: [], 3.0: []}
    nag.sample(8, guidance_scale=3.0)  # warm-up
    for r in range(args.repeats):
        for lam in times:
            t0 = time.perf_counter()
            nag.sample(args.n, guidance_scale=lam, seed=r)
            times[lam].append(time.perf_counter() - t0)
    base = statistics.median(times[0.0])
    rows = [
        "| sampling | median time (s) | cells/s | time / unguided |",
        "|---|---|---|---|",
    ]
    for lam, ts in times.items():
        med = statistics.median(ts)
        name = "unguided (λ = 0)" if lam == 0 else f"predictor-guided (λ = {lam:g})"
        rows.append(f"| {name} | {med:.3f} | {args.n / med:.0f} | {med / base:.2f}x |")
    text = "\n".join(
        [
            "# DiffusionNAG generation speed",
            "",
            f"`python benchmarks/bench_diffusion_nag.py --repeats {args.repeats} --n {args.n}` on {cpu_model()}, "
            f"one thread, torch {torch.__version__}. {args.n} cells per call, {nag.timesteps} reverse steps, "
            f"denoiser/predictor MLP width {nag.hidden}; medians of {args.repeats} interleaved rounds. "
            f"Fit: denoiser {t_fit:.1f} s (600 steps), predictor {t_pred:.1f} s (500 steps, {source}).",
            "",
            *rows,
            "",
            "Guidance costs one predictor forward + backward per reverse step on top of the denoiser forward.",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
