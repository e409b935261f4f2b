"""Inference time of a GLNN student MLP vs its GCN teacher (:class:`~litmix.plugins.GraphToMLPDistillModule`).

Side by side in one process, one CPU thread, eval mode under ``torch.inference_mode()``, full-graph inference
(every node's prediction):

* **Cora** (real, ``../shared/data/planetoid/Cora`` copied to a temporary folder): 2,708 nodes, 10,556
  directed edges, 1,433 features, 7 classes;
* **generated**: ``--nodes`` nodes (default 100,000) and ``--edges`` random directed edges (default
  1,000,000), 128 Gaussian features, 10 classes.

Models (random weights: the timings do not depend on accuracy): GCN = 2 ``GCNConv`` layers (hidden
``--hidden``), run as deployed on a graph it has not seen (``cached=False``: the symmetric normalisation is
part of inference) and with the normalisation precomputed (``cached=True``, after one warm-up call); MLP =
``Linear(F, hidden) -> ReLU -> Linear(hidden, C)`` (the student: the same widths, no graph). Each model runs
``--repeats`` rounds interleaved with the others; the table reports the median seconds per full-graph forward
and the ratio to the MLP. A second table measures the latency of ONE node's prediction as the GLNN paper
does: the GCN gathers the node's 2-hop neighbourhood (``k_hop_subgraph``) and runs on it, the MLP reads one
feature row (median over ``--per-node`` random nodes). Writes ``benchmarks/results/graph_to_mlp.md``.

Run: ``python benchmarks/bench_graph_to_mlp.py [--nodes 100000 --edges 1000000 --hidden 128 --repeats 7]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _machine import cpu_model
from torch import Tensor, nn
from torch_geometric.nn import GCNConv

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LITMIX_DATA", REPO.parent / "shared" / "data"))
OUT = REPO / "benchmarks" / "results" / "graph_to_mlp.md"


class GCN(nn.Module):
    """Two GCNConv layers."""

    def __init__(self, features: int, hidden: int, classes: int, cached: bool) -> None:
        super().__init__()
        self.c1 = GCNConv(features, hidden, cached=cached)
        self.c2 = GCNConv(hidden, classes, cached=cached)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Logits."""
        return self.c2(F.relu(self.c1(x, edge_index)), edge_index)  # type: ignore[no-any-return]


def cora() -> tuple[Tensor, Tensor, int]:
    """Cora's features, edges and number of classes (offline)."""
    from litmix.datamodules import GraphDataModule

    tmp = Path(tempfile.mkdtemp())
    shutil.copytree(SHARED / "planetoid" / "Cora", tmp / "Cora")
    dm = GraphDataModule(tmp, name="Cora")
    dm.prepare_data()
    dm.setup("fit")
    return dm.inputs["x"], dm.inputs["edge_index"], dm.num_classes


def generated(nodes: int, edges: int, features: int = 128, classes: int = 10) -> tuple[Tensor, Tensor, int]:
    """Random features and random directed edges (seeded)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(nodes, features, generator=g), torch.randint(0, nodes, (2, edges), generator=g), classes


def timed(fn: Callable[[], Tensor]) -> float:
    """Seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(x: Tensor, edge_index: Tensor, classes: int, hidden: int, repeats: int) -> dict[str, float]:
    """Median seconds per full-graph forward of each model, interleaved."""
    torch.manual_seed(0)
    features = int(x.shape[1])
    gcn = GCN(features, hidden, classes, cached=False).eval()
    gcn_cached = GCN(features, hidden, classes, cached=True).eval()
    mlp = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes)).eval()
    runs: dict[str, Callable[[], Tensor]] = {
        "GCN (normalisation at inference)": lambda: gcn(x, edge_index),
        "GCN (normalisation cached)": lambda: gcn_cached(x, edge_index),
        "MLP student (no graph)": lambda: mlp(x),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up (and fills the cached normalisation)
            fn()
        for _ in range(repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def per_node(x: Tensor, edge_index: Tensor, classes: int, hidden: int, nodes: int) -> dict[str, float]:
    """Median seconds to predict ONE node, as GLNN measures latency: the GCN must gather the node's 2-hop
    neighbourhood (``k_hop_subgraph``) and run on it; the MLP reads the node's feature row only."""
    from torch_geometric.utils import k_hop_subgraph

    torch.manual_seed(0)
    features = int(x.shape[1])
    gcn = GCN(features, hidden, classes, cached=False).eval()
    mlp = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes)).eval()
    ids = torch.randint(0, int(x.shape[0]), (nodes,), generator=torch.Generator().manual_seed(1)).tolist()

    def gcn_one(i: int) -> Tensor:
        subset, sub_edges, mapping, _ = k_hop_subgraph(i, 2, edge_index, relabel_nodes=True, num_nodes=x.shape[0])
        return gcn(x[subset], sub_edges)[mapping]

    times: dict[str, list[float]] = {"GCN (2-hop fetch + forward)": [], "MLP student (no graph)": []}
    with torch.inference_mode():
        gcn_one(ids[0]), mlp(x[ids[0] : ids[0] + 1])
        for i in ids:
            times["GCN (2-hop fetch + forward)"].append(timed(lambda i=i: gcn_one(i)))
            times["MLP student (no graph)"].append(timed(lambda i=i: mlp(x[i : i + 1])))
    return {k: statistics.median(v) for k, v in times.items()}


def table_rows(
    graphs: dict[str, tuple[Any, ...]], time_models: Callable[..., dict[str, float]], seconds: str, ratio: str
) -> list[str]:
    """``| graph | model | seconds | x MLP time |`` rows of ``time_models(x, edge_index, classes)`` per graph
    (each printed as it comes); ``seconds`` and ``ratio`` are the format specs of the two numbers."""
    rows = []
    for graph_name, graph in graphs.items():
        result = time_models(*graph)
        base = result["MLP student (no graph)"]
        for model, sec in result.items():
            rows.append(f"| {graph_name} | {model} | {sec:{seconds}} | {sec / base:{ratio}} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    """Measure and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--edges", type=int, default=1_000_000)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--per-node", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    graphs = {
        "Cora (2,708 nodes, 10,556 edges, 1,433 features)": cora(),
        f"generated ({args.nodes:,} nodes, {args.edges:,} edges, 128 features)": generated(args.nodes, args.edges),
    }
    lines = [
        "# GNN -> MLP (GLNN): inference time of the student MLP vs the GCN teacher",
        "",
        f"CPU: {cpu_model()}, 1 thread, torch {torch.__version__}; full-graph forward in eval mode under "
        f"inference_mode, median of {args.repeats} interleaved rounds; hidden {args.hidden}, 2 layers each. "
        "Produced by `benchmarks/bench_graph_to_mlp.py`; the machine was shared, so only the ratios within a row "
        "group are meaningful.",
        "",
        "| graph | model | seconds / forward | × MLP time |",
        "|---|---|---:|---:|",
    ]
    lines += table_rows(
        graphs, lambda x, ei, c: measure(x, ei, c, args.hidden, args.repeats), seconds=".5f", ratio=".1f"
    )
    lines += [
        "",
        "Latency of one node's prediction (GLNN's setting: a GNN must fetch the node's neighbourhood first), "
        f"median over {args.per_node} random nodes:",
        "",
        "| graph | model | seconds / node | × MLP time |",
        "|---|---|---:|---:|",
    ]
    lines += table_rows(
        graphs, lambda x, ei, c: per_node(x, ei, c, args.hidden, args.per_node), seconds=".6f", ratio=".0f"
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
