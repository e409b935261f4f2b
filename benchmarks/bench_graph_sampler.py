"""TorchNeighborSampler throughput and per-batch memory; FastRP vs DeepWalk (time and Cora linear probe).

One process, one CPU thread, side by side:

1. Sampled subgraphs per second of :class:`litmix.graph.TorchNeighborSampler` (fan-outs ``[10, 10]``, 128 seed
   nodes per batch, seeds drawn at random) on Cora and on a generated graph of 100,000 nodes and 1,000,000
   directed edges; PyG's own ``NeighborLoader`` is tried on the same graph and reported as unavailable when
   ``pyg-lib`` / ``torch-sparse`` are missing (this environment).
2. Bytes allocated per batch (sum of the CPU allocations ``torch.profiler`` records during one ``sample`` call),
   at two graph sizes with the same mean degree: 100k nodes / 1M edges and 1M nodes / 10M edges. The sampler
   never allocates per-graph maps, so the figure follows the sampled subgraph, not the graph.
3. FastRP (:func:`litmix.functional.fastrp.fastrp`, defaults) vs DeepWalk (:class:`DeepWalkModule` in a
   ``Trainer``: 1 epoch, 2 walks x 20 steps per node, window 5, 128-d, 1 negative, Adam 0.025, 256 start nodes
   per batch, as in ``tests/test_random_walks.py``) on Cora: wall time and linear-probe accuracy
   (:func:`litmix.graph.linear_probe`, random 50/50 split) for seeds 0, 1, 2, raw features alongside. This
   DeepWalk is a cheap setting that already beats the raw features (the catalogue's 10 walks x 20 steps, 128-d,
   5 negatives took 31 s per epoch); FastRP's time is the median of 5 calls.

Writes ``benchmarks/results/graph_sampler.md``. Run: ``python benchmarks/bench_graph_sampler.py`` (a few minutes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from _machine import cpu_model
from lightning.pytorch.callbacks import Callback
from torch_geometric.data import Data

from litmix.functional.fastrp import fastrp
from litmix.graph import TorchNeighborSampler, linear_probe

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "graph_sampler.md"


def random_graph(n: int, directed_edges: int, seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (directed_edges // 2,), generator=g)
    dst = torch.randint(0, n, (directed_edges // 2,), generator=g)
    ei = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], 1)
    return Data(edge_index=ei, num_nodes=n)


def load_cora(data: Path) -> Data | None:
    if not (data / "planetoid" / "Cora" / "raw").is_dir():
        return None
    from torch_geometric.datasets import Planetoid

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(data / "planetoid" / "Cora", Path(tmp) / "Cora")
        return Planetoid(tmp, "Cora")[0]


def throughput(data: Data, batches: int, batch_size: int = 128) -> tuple[float, float, float]:
    """Subgraphs per second, mean sampled nodes and edges per batch."""
    sampler = TorchNeighborSampler(data, [10, 10], seed=0)
    g = torch.Generator().manual_seed(1)
    seeds = [torch.randperm(int(data.num_nodes), generator=g)[:batch_size] for _ in range(batches)]
    sampler.sample(seeds[0])  # warm-up
    nodes = edges = 0
    start = time.perf_counter()
    for s in seeds:
        out = sampler.sample(s)
        nodes += out.node.numel()
        edges += out.edge.numel()
    elapsed = time.perf_counter() - start
    return batches / elapsed, nodes / batches, edges / batches


def pyg_neighbor_loader(data: Data) -> str:
    from torch_geometric.loader import NeighborLoader

    try:
        loader = NeighborLoader(data, num_neighbors=[10, 10], batch_size=128)
        next(iter(loader))
    except Exception as err:
        return f"unavailable: {type(err).__name__}: {str(err).splitlines()[0][:90]}"
    return "ran (not timed here)"


def allocated_bytes(sampler: TorchNeighborSampler, seeds: torch.Tensor) -> tuple[int, int]:
    """(bytes allocated during one sample call, bytes of the returned subgraph tensors)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = sampler.sample(seeds)
    total = sum(max(int(e.self_cpu_memory_usage), 0) for e in prof.events())
    kept = sum(t.numel() * t.element_size() for t in (out.node, out.row, out.col, out.edge))
    return total, kept


def deepwalk(cora: Data, seed: int) -> tuple[torch.Tensor, float]:
    from litmix.datamodules.graph import GraphDataModule
    from litmix.plugins.deepwalk_module import DeepWalkModule
    from litmix.testing import make_trainer

    everyone = torch.ones(cora.num_nodes, dtype=torch.bool)
    graph = Data(x=cora.x[:, :1], y=cora.y, edge_index=cora.edge_index, train_mask=everyone,
                 val_mask=cora.val_mask, test_mask=cora.test_mask)  # fmt: skip
    torch.manual_seed(seed)
    start = time.perf_counter()
    module = DeepWalkModule(cora.num_nodes, 128, walk_length=20, walks_per_node=2, window=5, num_negatives=1,
                            lr=0.025, seed=seed)  # fmt: skip
    make_trainer(max_epochs=1).fit(module, datamodule=GraphDataModule(None, data=graph, batch_size=256, seed=seed))
    return module.embedding.weight.detach(), time.perf_counter() - start


class _EpochTimer(Callback):
    """Wall time of the last training epoch, written by rank 0 to ``path`` (ddp_fork runs ranks in children)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.global_rank == 0:
            Path(self.path).write_text(str(time.perf_counter() - self._start))


def epoch_time(cora: Data, devices: int) -> float:
    """Seconds of epoch 2 of GraphSAGE on SampledGraphDataModule (Cora, split 'full', batch 64)."""
    from litmix.datamodules.sampled_graph import SampledGraphDataModule, _TinySAGE
    from litmix.testing import make_trainer

    torch.manual_seed(0)
    module = _TinySAGE(cora.num_features, 64, 7, lr=0.01)
    dm = SampledGraphDataModule(None, data=cora, split="full", num_neighbors=[10, 10], batch_size=64)
    kwargs: dict[str, Any] = {"strategy": "ddp_fork", "devices": 2} if devices > 1 else {}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "seconds")
        make_trainer(max_epochs=2, callbacks=[_EpochTimer(path)], **kwargs).fit(module, datamodule=dm)
        return float(Path(path).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("LITMIX_DATA", REPO.parent / "shared" / "data"))
    )
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--ranks-only", action="store_true", help="only the 1 vs 2 rank epoch time")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    lines = []
    cora = load_cora(args.data)
    if cora is not None:
        one = epoch_time(cora, 1)
        two = epoch_time(cora, 2)
        lines += ["## Mini-batch epoch time, 1 vs 2 DDP ranks (SampledGraphDataModule, Cora split 'full', 1208 "
                  "training nodes, 64 seeds per batch and rank, [10, 10], 2-layer GraphSAGE 64 hidden; epoch 2)", "",
                  "| ranks | epoch seconds | speed-up |", "|---|---|---|",
                  f"| 1 | {one:.2f} | 1.00x |", f"| 2 | {two:.2f} | {one / two:.2f}x |", ""]  # fmt: skip
        print("\n".join(lines[-4:]), flush=True)
        if args.ranks_only:
            return
    big = random_graph(100_000, 1_000_000)

    lines += ["## Sampled subgraphs per second (fan-outs [10, 10], 128 seeds per batch)", "",
              "| graph | nodes | edges | subgraphs/s | nodes/batch | edges/batch | PyG NeighborLoader |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    graphs = ([("Cora", cora)] if cora is not None else []) + [("random 1M-edge", big)]
    for name, g in graphs:
        rate, n, e = throughput(g, args.batches)
        lines.append(f"| {name} | {g.num_nodes:,} | {g.edge_index.shape[1]:,} | {rate:.1f} | {n:.0f} | {e:.0f} | "
                     f"{pyg_neighbor_loader(g)} |")  # fmt: skip
        print(lines[-1], flush=True)

    lines += ["", "## Bytes allocated per batch (one `sample` call, 128 seeds, [10, 10]; mean degree 10)", "",
              "| graph | nodes | edges | graph CSR bytes | allocated per batch | returned subgraph bytes |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    huge = random_graph(1_000_000, 10_000_000, seed=1)
    for name, g in (("100k nodes", big), ("1M nodes", huge)):
        sampler = TorchNeighborSampler(g, [10, 10], seed=0)
        csr = sum(t.numel() * t.element_size() for t in (sampler.rowptr, sampler.col, sampler.perm))
        seeds = torch.randperm(int(g.num_nodes), generator=torch.Generator().manual_seed(2))[:128]
        sampler.sample(seeds)
        runs = [allocated_bytes(sampler, seeds) for _ in range(3)]
        total = sorted(r[0] for r in runs)[1]
        lines.append(f"| {name} | {g.num_nodes:,} | {g.edge_index.shape[1]:,} | {csr / 2**20:.1f} MiB | "
                     f"{total / 2**10:.0f} KiB | {runs[0][1] / 2**10:.0f} KiB |")  # fmt: skip
        print(lines[-1], flush=True)
    del huge

    if cora is not None:
        lines += ["", "## FastRP vs DeepWalk on Cora (linear probe, random 50/50 split)", "",
                  "| seed | raw acc | FastRP acc | FastRP time (s, median of 5) | DeepWalk acc | DeepWalk time (s) | "
                  "time ratio | accuracy ratio |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        fastrp(cora.edge_index, cora.num_nodes)  # warm-up
        for seed in (0, 1, 2):
            times = []
            for _ in range(5):  # median of 5: single runs of a 20 ms call swing 3x on a loaded machine
                start = time.perf_counter()
                emb_f = fastrp(cora.edge_index, cora.num_nodes, seed=seed)
                times.append(time.perf_counter() - start)
            t_f = sorted(times)[2]
            emb_d, t_d = deepwalk(cora, seed)
            raw = linear_probe(cora.x, cora.y, seed=seed)
            acc_f, acc_d = linear_probe(emb_f, cora.y, seed=seed), linear_probe(emb_d, cora.y, seed=seed)
            lines.append(f"| {seed} | {raw:.3f} | {acc_f:.3f} | {t_f:.4f} | {acc_d:.3f} | {t_d:.1f} | "
                         f"{t_d / t_f:.0f}x | {acc_f / acc_d:.3f} |")  # fmt: skip
            print(lines[-1], flush=True)

    load = os.getloadavg()[0]
    header = [
        "# TorchNeighborSampler and FastRP vs DeepWalk", "",
        f"`python benchmarks/bench_graph_sampler.py` on {cpu_model()}, one thread, torch {torch.__version__}, "
        f"load average {load:.1f} at the end (a shared machine: read the ratios, not the absolute times).", "",
    ]  # fmt: skip
    text = "\n".join(header + lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
