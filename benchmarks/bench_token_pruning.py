"""TokenPruning (Zero-TPrune) on a small MNIST ViT: accuracy and forward-time ratio vs keep rate, seeds 0/1/2.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/bench_token_pruning.py [--seeds 0 1 2]``; writes
``benchmarks/results/token_pruning.md``. The ViT (Hugging Face ``ViTForImageClassification``, 28x28, patch 7 ->
16 tokens + CLS, width 64, 4 layers) is trained for 2 epochs on 6000 images; accuracy on 2000 test images.
Time ratios: pruned / dense forward over the 2000 images, interleaved in one process, median of 5 rounds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from _token_pruning import accuracy, median, time_ratios, trained_vit  # noqa: E402

from litmix.callbacks import TokenPruning  # noqa: E402

CONFIGS = [([1], 0.5), ([0], 0.5), ([1, 2], 0.7)]
METHODS = [("zero_tprune", False), ("zero_tprune", True), ("cls_attn", False), ("random", False)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "mnist"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        model, xt, yt = trained_vit(args.data, seed)
        dense = accuracy(model, xt, yt)
        fns = {"dense": lambda m=model, x=xt, y=yt: accuracy(m, x, y)}
        accs = {}
        for layers, rate in CONFIGS:
            for method, merge in METHODS:
                cb = TokenPruning(method=method, keep_rate=rate, layers=layers, merge=merge)
                torch.manual_seed(0)
                cb.apply(model)
                accs[(tuple(layers), rate, method, merge)] = (accuracy(model, xt, yt), cb.token_fraction())
                cb.restore()
            timed = TokenPruning(keep_rate=rate, layers=layers)

            def run(
                cb: TokenPruning = timed, m: torch.nn.Module = model, x: torch.Tensor = xt, y: torch.Tensor = yt
            ) -> None:
                cb.apply(m)
                accuracy(m, x, y)
                cb.restore()

            fns[str(layers)] = run
        times = time_ratios(fns, rounds=5)
        for (layers, rate, method, merge), (acc, frac) in accs.items():
            per_round = [p / d for p, d in zip(times[str(list(layers))], times["dense"], strict=True)]
            rows.append((seed, list(layers), rate, method, merge, dense, acc, frac, per_round))
            print(rows[-1], flush=True)
    out = REPO / "benchmarks" / "results" / "token_pruning.md"
    lines = [
        "# TokenPruning (Zero-TPrune) on a small MNIST ViT",
        "",
        "HF ViT 28x28, patch 7 (16 tokens + CLS), width 64, 4 layers, 4 heads, 2 epochs on 6000 images (undertrained:",
        "dense accuracy about 0.55); accuracy on 2000 test images; `keep` = kept fraction of non-CLS tokens at each",
        "listed layer; `tokens` = tokens per block relative to dense; time = pruned/dense forward (zero_tprune,",
        "no merge), median of 5 interleaved rounds in one process (CPU, 1 thread, loaded machine), and its range.",
        "",
        "| seed | layers | keep | method | merge | dense acc | pruned acc | tokens | time ratio (median) | min..max |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for seed, layers, rate, method, merge, dense, acc, frac, per_round in rows:
        lines.append(
            f"| {seed} | {layers} | {rate} | {method} | {merge} | {dense:.4f} | {acc:.4f} | {frac:.3f} | "
            f"{median(per_round):.3f} | {min(per_round):.3f}..{max(per_round):.3f} |"
        )
    out.write_text("\n".join(lines) + "\n")
    print(out)


if __name__ == "__main__":
    main()
