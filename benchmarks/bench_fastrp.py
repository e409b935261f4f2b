"""Wall time of :func:`litmix.functional.fastrp.fastrp` on Cora and on a generated 1M-edge graph.

Side by side in one process, one CPU thread, interleaved repeats (median and minimum over ``--repeats``):

* ``fastrp`` (torch.sparse COO transition matrix, dense projection, default settings: ``dim=128``,
  ``weights=(0, 0, 1, 1)``, ``s=3``);
* the same computation written the way the reference (GTmac/FastRP ``fastrp_projection``) does it, with SciPy
  CSR matrices and NumPy: the baseline a user would otherwise write. Both produce the same embedding (checked).

Graphs: Cora (2,708 nodes, 10,556 directed edges; from ``--data``, default ``../shared/data``, skipped when
absent) and an Erdos-Renyi-style random graph with 100,000 nodes and 500,000 undirected edges (1,000,000
directed edges). Prints a markdown table and writes ``benchmarks/results/fastrp.md``.

Run: ``python benchmarks/bench_fastrp.py`` (about a minute).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _machine import cpu_model

from litmix.functional.fastrp import fastrp, sparse_random_projection

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "fastrp.md"


def scipy_fastrp(edge_index: torch.Tensor, n: int, dim: int, weights: tuple[float, ...], seed: int) -> np.ndarray:
    """The reference's recipe in SciPy/NumPy (transition matrix, sparse projection, powers, scale)."""
    import scipy.sparse as sp

    ei = edge_index.numpy()
    a = sp.csr_matrix((np.ones(ei.shape[1], dtype=np.float32), (ei[0], ei[1])), shape=(n, n))
    a.data[:] = 1.0  # duplicates once
    deg = np.asarray(a.sum(1)).ravel()
    m = sp.diags(1.0 / np.where(deg > 0, deg, 1.0)).astype(np.float32) @ a
    r = sparse_random_projection(n, dim, 3.0, torch.Generator().manual_seed(seed)).numpy()
    out = np.zeros((n, dim), dtype=np.float32)
    u = r
    for w in weights:
        u = m @ u
        if w:
            out += w * u
    std = out.std(0)
    return (out - out.mean(0)) / np.where(std > 0, std, 1.0)


def random_graph(n: int, undirected_edges: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (undirected_edges,), generator=g)
    dst = torch.randint(0, n, (undirected_edges,), generator=g)
    return torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)


def cora(data: Path) -> tuple[torch.Tensor, int] | None:
    if not (data / "planetoid" / "Cora" / "raw").is_dir():
        return None
    from torch_geometric.datasets import Planetoid

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(data / "planetoid" / "Cora", Path(tmp) / "Cora")
        graph = Planetoid(tmp, "Cora")[0]
    return graph.edge_index, int(graph.num_nodes)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("LITMIX_DATA", REPO.parent / "shared/data")))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    weights = (0.0, 0.0, 1.0, 1.0)
    graphs: list[tuple[str, torch.Tensor, int]] = []
    loaded = cora(args.data)
    if loaded is not None:
        graphs.append(("Cora", *loaded))
    graphs.append(("random, 100k nodes, 1M directed edges", random_graph(100_000, 500_000), 100_000))
    rows = []
    for name, ei, n in graphs:
        ours = fastrp(ei, n)
        ref = scipy_fastrp(ei, n, 128, weights, 0)
        agree = float(np.abs(ours.numpy() - ref).max())
        t_ours, t_ref = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            t_ours.append(timed(lambda ei=ei, n=n: fastrp(ei, n)))
            t_ref.append(timed(lambda ei=ei, n=n: scipy_fastrp(ei, n, 128, weights, 0)))
        med_o, med_r = statistics.median(t_ours), statistics.median(t_ref)
        rows.append(
            f"| {name} | {n:,} | {ei.shape[1]:,} | {med_o:.3f} (min {min(t_ours):.3f}) | "
            f"{med_r:.3f} (min {min(t_ref):.3f}) | {med_r / med_o:.2f}x | {agree:.1e} |"
        )
        print(rows[-1], flush=True)
    table = "\n".join(
        [
            "| graph | nodes | directed edges | litmix `fastrp` s (median) | SciPy reference recipe s (median) | "
            "SciPy time / litmix time | max abs diff |",
            "|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    text = (
        "# FastRP wall time\n\n"
        f"`python benchmarks/bench_fastrp.py` on {cpu_model()}, one thread, torch {torch.__version__}, "
        f"{args.repeats} interleaved repeats; dim 128, weights (0, 0, 1, 1), s = 3, whole embedding "
        "including building the transition matrix and the projection.\n\n" + table + "\n"
    )
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
