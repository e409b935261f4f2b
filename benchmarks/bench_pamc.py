"""Forward + backward time of the PamC loss vs the exact node-level InfoNCE it approximates.

Side by side in one process, one CPU thread: a random graph with ``N`` nodes of out-degree 5 (both directions
stored), 64-d Gaussian embeddings, 16 hard clusters; :func:`litmix.functional.pamc.pamc_loss` (linear in ``N``)
and :func:`litmix.functional.pamc.node_infonce_loss` (an ``(N, N)`` similarity matrix). The losses run
interleaved ``--repeats`` times; the table gives the median milliseconds and the InfoNCE / PamC ratio.
Writes ``benchmarks/results/pamc.md``.

Run: ``python benchmarks/bench_pamc.py [--sizes 1000 4000 8000 --repeats 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _machine import cpu_model

from litmix.functional.pamc import node_infonce_loss, pamc_loss


def _graph(n: int, degree: int = 5, dim: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    src = torch.arange(n).repeat_interleave(degree)
    dst = (src + torch.randint(1, n, (n * degree,), generator=g)) % n
    return torch.stack([torch.cat([src, dst]), torch.cat([dst, src])]), torch.randn(n, dim, generator=g)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 8000])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for n in args.sizes:
        edge_index, x = _graph(n)
        ids = torch.arange(n) % 16
        times: dict[str, list[float]] = {"pamc": [], "infonce": []}
        for _ in range(args.repeats + 1):  # the first round warms up
            for name in times:
                z = x.clone().requires_grad_(True)
                start = time.perf_counter()
                loss = pamc_loss(z, edge_index, ids) if name == "pamc" else node_infonce_loss(z, edge_index)
                loss.backward()
                times[name].append(time.perf_counter() - start)
        pamc, full = (statistics.median(times[k][1:]) * 1e3 for k in ("pamc", "infonce"))
        rows.append(f"| {n} | {pamc:.2f} | {full:.2f} | {full / pamc:.1f}x |")
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            "# PamC vs node-level InfoNCE: forward + backward time",
            "",
            f"CPU: {cpu_model()}, 1 thread; degree 5, 64-d embeddings, 16 clusters; median of {args.repeats} "
            "interleaved rounds. Run: `python benchmarks/bench_pamc.py`.",
            "",
            "| N | PamC ms | InfoNCE ms | InfoNCE / PamC |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )
    out = Path(__file__).resolve().parent / "results" / "pamc.md"
    out.write_text(table)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
