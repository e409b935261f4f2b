"""Time each zero-cost proxy on one NAS-Bench-201 network, one by one and all 13 at once (shared passes).

Network: C=16, N=5, 32x32 inputs, 1 thread. Data-dependent proxies use a batch of 64; synflow uses its own ones
input of batch 1. Each repeat times every proxy alone (``zero_cost_proxies(names=[name])``, incl. its deep copy)
and then all 13 in one call (``zero_cost_proxies(names=all)``, which shares passes: one forward/backward for
snip, grad_norm, plain, fisher, grasp, naswot and the input Jacobian for jacob_cov and epe_nas), side by side
in one process, and checks that both give the same numbers. Prints a markdown table (medians over
``--repeats``; the ratio is the median of the per-repeat ratios) and writes ``benchmarks/results/proxies.md``.

    python benchmarks/bench_proxies.py [--repeats 3] [--batch 64]
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from pathlib import Path

import torch
from _machine import cpu_model

from litmix.functional.proxies import list_proxies, zero_cost_proxies
from litmix.nas.nb201 import build_nb201_network

ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_1x1~1|+|avg_pool_3x3~0|skip_connect~1|skip_connect~2|"


def _rel(a: float, b: float) -> float:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    return abs(a - b) / max(abs(a), 1e-300)


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
    names = list_proxies()
    zero_cost_proxies(net, x, y, names=["snip"])  # warm-up
    times: dict[str, list[float]] = {n: [] for n in names}
    sums, shared, ratios, cpu_ratios, max_rel = [], [], [], [], 0.0
    for r in range(args.repeats):
        one: dict[str, float] = {}
        cpu_one = 0.0
        for name in names:
            start, cpu = time.perf_counter(), time.process_time()
            one[name] = zero_cost_proxies(net, x, y, names=[name], seed=r)[name]
            times[name].append(time.perf_counter() - start)
            cpu_one += time.process_time() - cpu
        total_one = sum(times[n][-1] for n in names)
        start, cpu = time.perf_counter(), time.process_time()
        both = zero_cost_proxies(net, x, y, names=names, seed=r)
        total_shared, cpu_shared = time.perf_counter() - start, time.process_time() - cpu
        sums.append(total_one)
        shared.append(total_shared)
        ratios.append(total_shared / total_one)
        cpu_ratios.append(cpu_shared / cpu_one)
        max_rel = max([max_rel, *(_rel(one[n], both[n]) for n in names)])
        print(
            f"repeat {r}: one by one {total_one:.3f} s, shared {total_shared:.3f} s, ratio {ratios[-1]:.3f} "
            f"(CPU time ratio {cpu_ratios[-1]:.3f})",
            flush=True,
        )
    med = {n: statistics.median(t) for n, t in times.items()}
    ref = med["synflow"]
    lines = [
        "# Zero-cost proxy timings",
        "",
        f"Machine: {cpu_model()}, torch.set_num_threads(1), torch {torch.__version__}, "
        f"Python {platform.python_version()}. {args.note}".rstrip(),
        f"Network: NB201 cell `{ARCH}`, C=16, N=5, 32x32 inputs, batch {args.batch} (synflow: ones, batch 1); "
        f"median of {args.repeats} runs, each incl. the deep copy; one by one and shared side by side in one "
        "process.",
        "",
        "| proxy | seconds (alone) | ratio to synflow |",
        "|---|---|---|",
        *[f"| {n} | {t:.3f} | {t / ref:.1f} |" for n, t in sorted(med.items(), key=lambda kv: kv[1])],
        "",
        "| all 13 proxies | seconds |",
        "|---|---|",
        f"| sum of the 13 one by one | {statistics.median(sums):.3f} |",
        f"| one call, shared passes | {statistics.median(shared):.3f} |",
        f"| ratio shared / one by one (median of per-repeat ratios: "
        f"{', '.join(f'{q:.3f}' for q in ratios)}) | {statistics.median(ratios):.3f} |",
        f"| same ratio in process CPU time ({', '.join(f'{q:.3f}' for q in cpu_ratios)}) | "
        f"{statistics.median(cpu_ratios):.3f} |",
        "",
        f"Same numbers: largest relative difference shared vs one by one over all proxies and repeats: {max_rel:.1e}.",
        "",
    ]
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
