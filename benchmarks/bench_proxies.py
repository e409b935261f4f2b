"""Time each zero-cost proxy on one NAS-Bench-201 network (C=16, N=5, 32x32 inputs, 1 thread).

Data-dependent proxies use a batch of 64; synflow uses its own ones input of batch 1. Median of ``--repeats``
runs (each includes the deep copy of the network). Prints a markdown table and writes
``benchmarks/results/proxies.md``.

    python benchmarks/bench_proxies.py [--repeats 3] [--batch 64]
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import torch
from _machine import cpu_model

from litmix.functional.proxies import list_proxies, zero_cost_proxies
from litmix.nas.nb201 import build_nb201_network

ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|avg_pool_3x3~0|skip_connect~1|skip_connect~2|"


def main() -> str:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--note", default="", help="free text appended to the machine line (e.g. machine load)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "proxies.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = build_nb201_network(ARCH, C=16, N=5)
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 10, (args.batch,))
    zero_cost_proxies(net, x, y, names=["snip"])  # warm-up
    times: dict[str, float] = {}
    for name in list_proxies():
        runs = [
            zero_cost_proxies(net, x, y, names=[name], seed=r, return_timings=True)[f"{name}_seconds"]
            for r in range(args.repeats)
        ]
        times[name] = statistics.median(runs)
    ref = times["synflow"]
    lines = [
        "# Zero-cost proxy timings",
        "",
        f"Machine: {cpu_model()}, torch.set_num_threads(1), torch {torch.__version__}, "
        f"Python {platform.python_version()}. {args.note}".rstrip(),
        f"Network: NB201 cell `{ARCH}`, C=16, N=5, 32x32 inputs, batch {args.batch} (synflow: ones, batch 1); "
        f"median of {args.repeats} runs incl. the deep copy.",
        "",
        "| proxy | seconds | ratio to synflow |",
        "|---|---|---|",
        *[f"| {n} | {t:.3f} | {t / ref:.1f} |" for n, t in sorted(times.items(), key=lambda kv: kv[1])],
        "",
    ]
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
