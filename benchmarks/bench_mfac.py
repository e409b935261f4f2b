"""M-FAC: optimizer step time and state bytes against AdamW and Lion, and one-shot OBS pruning of the digits MLP.

1. **Optimizer step alone** (``optimizer.step()`` on fixed gradients, no forward/backward), side by side in one
   process, round robin over the settings in every repeat: :class:`litmix.optim.MFAC` with windows of m = 32 and
   128 gradients (and m = 32 with momentum) against AdamW (foreach, fused), Lion and FRUGAL (block, density 0.25),
   on the digits MLP 64-256-10 of the effect tests (19,210 parameters) and a char-LM MLP (embedding 65x64,
   context 16, 1024-512-512-65; 824,961 parameters). A setting's time is the minimum over repeats of the median
   step in that repeat (CPU time of the thread, ``time.thread_time``). State bytes from
   :func:`litmix.optim.memory_report`.
2. **One-shot pruning without fine-tuning** of the digits MLP (Adam, 10 epochs, seeds 0-2, stratified 70/30 split
   of scikit-learn's digits): validation accuracy after global magnitude pruning and after
   :func:`litmix.functional.mfac.mfac_obs_masks` (m = 64 gradients of batch 32, blocks of 128, damp 1e-5,
   16 recomputations: the paper's settings) at several sparsities, and the wall time of each pruning call.

Prints markdown and writes ``benchmarks/results/mfac.md`` (``--out`` to write elsewhere).

Run: ``python benchmarks/bench_mfac.py`` (about 2 minutes on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import CharMLP, bench_optimizer_steps
from _machine import cpu_model
from torch import nn

from litmix.functional.mfac import mfac_obs_masks
from litmix.functional.sparsity import magnitude_masks
from litmix.optim import FRUGAL, MFAC, Lion

RESULTS = Path(__file__).resolve().parent / "results" / "mfac.md"


def digits_mlp() -> nn.Module:
    """The digits MLP of the M-FAC effect tests (64-256-10, 19,210 parameters)."""
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "digits MLP 64-256-10": digits_mlp,
    "char-LM MLP (65x64 emb, 16 ctx, 1024-512-512-65)": CharMLP,
}

OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "AdamW foreach": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
    "AdamW fused": lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True),
    "Lion foreach": lambda p: Lion(p, lr=3e-4),
    "FRUGAL block 0.25": lambda p: FRUGAL(p, lr=1e-3, density=0.25, projection="block"),
    "MFAC m=32": lambda p: MFAC(p, lr=1e-2, num_grads=32, damp=1e-2),
    "MFAC m=32 momentum 0.9": lambda p: MFAC(p, lr=1e-2, num_grads=32, damp=1e-2, momentum=0.9),
    "MFAC m=128": lambda p: MFAC(p, lr=1e-2, num_grads=128, damp=1e-2),
}


def bench_steps(repeats: int, steps: int) -> list[dict[str, Any]]:
    """Median ``optimizer.step()`` time per setting and model (minimum over round-robin repeats)."""
    return bench_optimizer_steps(MODELS, OPTIMIZERS, repeats, steps, warmup=3)


def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xt, xv, yt, yv = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    return (
        torch.tensor(xt, dtype=torch.float32) / 16.0,
        torch.tensor(yt),
        torch.tensor(xv, dtype=torch.float32) / 16.0,
        torch.tensor(yv),
    )


def _accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def bench_pruning(seeds: list[int], sparsities: list[float]) -> list[dict[str, Any]]:
    """Validation accuracy and wall time of magnitude and M-FAC OBS one-shot pruning (no fine-tuning)."""
    xt, yt, xv, yv = _digits()
    rows = []
    for seed in seeds:
        torch.manual_seed(seed)
        net = digits_mlp()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(10):
            for idx in torch.randperm(len(yt), generator=gen).split(32):
                opt.zero_grad()
                nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
                opt.step()
        dense = _accuracy(net, xv, yv)
        gen = torch.Generator().manual_seed(100 + seed)
        loader = [(xt[i], yt[i]) for i in torch.randperm(len(yt), generator=gen).split(32)]
        for sparsity in [*sparsities, "2:4"]:
            mag = copy.deepcopy(net)
            weights = {n: p for n, p in mag.named_parameters() if n.endswith("weight")}
            t0 = time.perf_counter()
            with torch.no_grad():
                if sparsity == "2:4":  # the 2 largest |w| of every 4 consecutive inputs
                    for p in weights.values():
                        groups = p.view(-1, 4)
                        groups.scatter_(1, groups.abs().argsort(1)[:, :2], 0.0)
                else:
                    masks = magnitude_masks(weights, float(sparsity), "global")
                    for n, p in weights.items():
                        p.mul_(masks[n])
            t_mag = time.perf_counter() - t0
            obs = copy.deepcopy(net)
            t0 = time.perf_counter()
            if sparsity == "2:4":
                mfac_obs_masks(obs, None, loader, 0.5, structure="2:4")
            else:
                mfac_obs_masks(obs, None, loader, float(sparsity))
            t_obs = time.perf_counter() - t0
            rows.append(
                {
                    "seed": seed,
                    "sparsity": sparsity,
                    "dense": dense,
                    "magnitude": _accuracy(mag, xv, yv),
                    "mfac_obs": _accuracy(obs, xv, yv),
                    "t_mag": t_mag,
                    "t_obs": t_obs,
                }
            )
    return rows


def _label(sparsity: float | str) -> str:
    return sparsity if isinstance(sparsity, str) else f"{sparsity:.0%}"


def render(steps: list[dict[str, Any]], prune: list[dict[str, Any]], repeats: int, n_steps: int, load: float) -> str:
    """The markdown report."""
    out = [
        "# M-FAC: optimizer step and state against AdamW, Lion and FRUGAL; one-shot OBS pruning of the digits MLP",
        "",
    ]
    out += [
        "| model | optimizer | step (ms) | vs AdamW foreach | vs AdamW fused | state bytes/param | state bytes |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in steps:
        base = {r["optimizer"]: r["ms"] for r in steps if r["model"] == row["model"]}
        out.append(
            f"| {row['model']} ({row['params']:,} params) | {row['optimizer']} | {row['ms']:.4f} | "
            f"{row['ms'] / base['AdamW foreach']:.3f}x | {row['ms'] / base['AdamW fused']:.3f}x | "
            f"{row['bytes_per_param']:.2f} | {row['state_bytes']:,} |"
        )
    out += [
        "",
        "`optimizer.step()` alone on fixed gradients; a setting's time is the minimum over repeats of its median "
        "step, the settings measured round robin in one process. MFAC's state is its window of m gradients (4 m bytes "
        "per float32 parameter element), an m x m Gram matrix per parameter group (the fraction 4 m^2 / params in the "
        "bytes/param column) and, with momentum, one buffer (4 more bytes); AdamW's is 8 bytes per element plus a "
        "4-byte step per tensor; Lion's 4; FRUGAL (block, density 0.25) keeps AdamW moments for a random quarter of "
        "the matrices. A step makes two passes over the window and an m x m float64 solve.",
        "",
        "## One-shot pruning of the digits MLP without fine-tuning (validation accuracy)",
        "",
        "| sparsity | seed | dense | magnitude (global) | M-FAC OBS (global) | OBS - magnitude | magnitude (s) | "
        "M-FAC OBS (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in prune:
        out.append(
            f"| {_label(row['sparsity'])} | {row['seed']} | {row['dense']:.4f} | {row['magnitude']:.4f} | "
            f"{row['mfac_obs']:.4f} | {row['mfac_obs'] - row['magnitude']:+.4f} | {row['t_mag']:.3f} | "
            f"{row['t_obs']:.2f} |"
        )
    for sparsity in dict.fromkeys(r["sparsity"] for r in prune):
        sel = [r for r in prune if r["sparsity"] == sparsity]
        mean = {k: sum(r[k] for r in sel) / len(sel) for k in ("dense", "magnitude", "mfac_obs", "t_obs")}
        out.append(
            f"| **{_label(sparsity)}** | mean | {mean['dense']:.4f} | {mean['magnitude']:.4f} | "
            f"{mean['mfac_obs']:.4f} | "
            f"**{mean['mfac_obs'] - mean['magnitude']:+.4f}** | | {mean['t_obs']:.2f} |"
        )
    out += [
        "",
        "Both weight matrices pruned together (biases kept); 2:4 keeps 2 of every 4 consecutive inputs of each row "
        "(magnitude: the 2 largest |w|; M-FAC: OBS saliencies; of its 16 recomputations only those where the "
        "per-group count rises run: 2). "
        "M-FAC OBS: m = 64 gradients of batch 32 per "
        "recomputation, Fisher blocks of 128, damp 1e-5, 16 recomputations with geometrically falling density "
        "(1,024 forward/backward passes and 16 blocked recursions in all); magnitude needs no data.",
        "",
        f"Machine: {cpu_model()}, 1 thread; torch {torch.__version__}; load average at start {load:.1f}; "
        f"{repeats} repeats x {n_steps} optimizer steps; wall times of the pruning calls are elapsed time on this "
        "shared machine.",
        "",
        "Run: `python benchmarks/bench_mfac.py`",
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    """Run both benchmarks and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    steps = bench_steps(args.repeats, args.steps)
    prune = bench_pruning(args.seeds, args.sparsities)
    text = render(steps, prune, args.repeats, args.steps, load)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
