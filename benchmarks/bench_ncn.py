"""NCN / NCNC training step time vs the GCN + dot-product baseline on Cora (side by side, one process).

``python benchmarks/bench_ncn.py [--root /tmp/planetoid] [--steps 20] [--repeats 3] [--quality-epochs 10]
[--out benchmarks/results/ncn.md]``

``--root`` must hold ``Cora/raw`` and ``CiteSeer/raw`` (a writable copy of ``../shared/data/planetoid``). Speed:
every predictor trains the same one-layer GCN encoder (hidden 64) on the same batches of 1024 positives + 1024
negatives with target-link removal; the table gives the median time per optimizer step and its ratio to
GCN + dot. Quality (``--quality-epochs`` > 0): each predictor trained on Cora and CiteSeer (features reduced to
128 by PyG's ``SVDFeatureReduction``, hidden 32, Adam 0.02, seeds 0/1/2; the setting of the tests), test
Hits@20 / Hits@50 / Hits@100 / MRR against the split's fixed negatives (one per positive).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from _machine import cpu_model

from litmix.datamodules.link import LinkDataModule
from litmix.plugins.ncn_module import NCNModule

REPO = Path(__file__).resolve().parents[1]
PREDICTORS = ("dot", "hadamard", "ncn", "ncnc")


def step_times(dm: LinkDataModule, predictor: str, steps: int) -> list[float]:
    torch.manual_seed(0)
    module = NCNModule(in_channels=dm.num_features, hidden_channels=64, predictor=predictor, dropout=0.0)
    opt = module.configure_optimizers()
    batches = list(dm.train_dataloader())
    times = []
    for i in range(steps):
        batch = batches[i % len(batches)]
        start = time.perf_counter()
        loss = module.training_step(batch, i)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return times


def quality(root: str, name: str, predictor: str, seed: int, epochs: int) -> list[float]:
    import logging

    import lightning.pytorch as pl
    from torch_geometric.data import Data
    from torch_geometric.datasets import Planetoid
    from torch_geometric.transforms import SVDFeatureReduction

    from litmix.functional.link_prediction import hits_at_k, link_mrr
    from litmix.testing import make_trainer

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    graph = Planetoid(root, name)[0]
    data = SVDFeatureReduction(128)(Data(x=graph.x, edge_index=graph.edge_index))
    pl.seed_everything(seed, verbose=False)
    dm = LinkDataModule(None, data=data, seed=seed, batch_size=1024)
    module = NCNModule(in_channels=128, hidden_channels=32, predictor=predictor, dropout=0.3, lr=0.02)
    make_trainer(max_epochs=epochs).fit(module, datamodule=dm)
    module.eval()
    with torch.no_grad():
        scores = module(dm.test_graph["x"], dm.test_graph["edge_index"], dm.test_candidates)
    pos, neg = scores[dm.test_labels > 0.5], scores[dm.test_labels < 0.5]
    return [float(hits_at_k(pos, neg, k)) for k in (20, 50, 100)] + [float(link_mrr(pos, neg))]


def quality_lines(root: str, epochs: int) -> list[str]:
    lines = [
        "",
        f"## Test quality ({epochs} epochs, SVD-128 features, hidden 32, Adam 0.02; seeds 0 / 1 / 2)",
        "",
        "| data | predictor | Hits@20 | Hits@50 | Hits@100 | MRR |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("Cora", "CiteSeer"):
        for predictor in PREDICTORS:
            runs = [quality(root, name, predictor, seed, epochs) for seed in (0, 1, 2)]
            cells = [" / ".join(f"{run[i]:.3f}" for run in runs) for i in range(4)]
            lines.append(f"| {name} | {predictor} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="/tmp/planetoid")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quality-epochs", type=int, default=10)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ncn.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    dm = LinkDataModule(args.root, name="Cora", batch_size=1024)
    dm.prepare_data()
    dm.setup("fit")
    medians: dict[str, list[float]] = {p: [] for p in PREDICTORS}
    for _ in range(args.repeats):  # interleaved, so that machine load hits every predictor alike
        for predictor in PREDICTORS:
            medians[predictor].append(statistics.median(step_times(dm, predictor, args.steps)))
    base = statistics.median(medians["dot"])
    lines = [
        "# NCN / NCNC step time vs GCN + dot product (Cora)",
        "",
        f"CPU: {cpu_model()}, 1 thread; {args.steps} steps x {args.repeats} interleaved repeats; batch 1024 positives"
        " + 1024 negatives, hidden 64, one GCNConv layer, target-link removal. Median ms per optimizer step.",
        "",
        "| predictor | ms / step | ratio to GCN + dot |",
        "|---|---|---|",
    ]
    for predictor in PREDICTORS:
        value = statistics.median(medians[predictor])
        lines.append(f"| {predictor} | {1000 * value:.1f} | {value / base:.2f} |")
    if args.quality_epochs > 0:
        lines += quality_lines(args.root, args.quality_epochs)
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
