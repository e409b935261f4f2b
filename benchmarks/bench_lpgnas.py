"""Step time of the LPGNAS search (:class:`litmix.plugins.MixedPrecisionGNN`) against float32 GCN training on Cora.

Side by side in one process, round robin over the settings in every repeat, CPU time of the thread
(``time.thread_time``, robust to other processes sharing the cores), one thread:

* ``fp32 GCN``: a derived 2-layer GCN, width 64, float32 (the effect test's baseline): one weight step;
* ``search``: the default search space (gcn/sage/gat/linear x widths 16/32/64 x weight and activation bits
  2/4/8/32 per layer): one forward pass of the relaxed network, the architecture gradient on the validation
  nodes, the weight step and the architecture step;
* ``derived W4`` / ``derived W2``: retraining a derived 2-layer GCN (width 64) with 4-bit (2-bit) weights and 8-bit
  activations: one weight step (fake quantization adds elementwise work, no speed-up on a CPU).

Each step is timed without Lightning (the same tensors the module's ``training_step`` computes). A setting's time
is the minimum over repeats of the median step in that repeat. Prints markdown and writes
``benchmarks/results/lpgnas.md`` (``--out`` to write elsewhere). Needs ``../shared/data/planetoid/Cora`` (or
``$LITMIX_DATA``).

Run: ``python benchmarks/bench_lpgnas.py`` (about a minute).
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

import torch
from _machine import cpu_model
from torch import nn

from litmix.datamodules.graph import GraphDataModule
from litmix.nas.sampling import make_generator
from litmix.plugins.mixed_precision_gnn import MixedPrecisionGNN

RESULTS = Path(__file__).resolve().parent / "results" / "lpgnas.md"
DATA = Path(os.environ.get("LITMIX_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _step_fn(module: MixedPrecisionGNN, dm: GraphDataModule, search: bool) -> Callable[[int], None]:
    graph = {"x": dm.graph.x, "edge_index": dm.graph.edge_index}  # type: ignore[union-attr]
    y = dm.targets
    weights = [p for n, p in module.named_parameters() if not n.startswith("alpha_")]
    alphas = [a for a in module._alphas() if a.numel()]
    w_opt = torch.optim.Adam(weights, lr=module.lr, weight_decay=module.weight_decay)
    a_opt = torch.optim.Adam(alphas, lr=module.arch_lr, betas=(0.5, 0.999))

    def step(i: int) -> None:
        logits = module._logits(graph, make_generator(0, i))
        loss = nn.functional.cross_entropy(logits[dm.train_index], y[dm.train_index])
        if search:
            val = nn.functional.cross_entropy(logits[dm.val_index], y[dm.val_index])
            grads = torch.autograd.grad(val, alphas, retain_graph=True, allow_unused=True)
        w_opt.zero_grad()
        loss.backward()
        w_opt.step()
        if search:
            size = module.expected_bits() / module.reference_bits()
            pen = torch.autograd.grad(module.size_weight * size, alphas, allow_unused=True)
            for a, g, p in zip(alphas, grads, pen, strict=True):
                a.grad = (g if g is not None else 0.0) + (p if p is not None else 0.0)
            a_opt.step()

    return step


def _derived(wbits: int, abits: int) -> MixedPrecisionGNN:
    module = MixedPrecisionGNN(ops=["gcn"], widths=[64], weight_bits=[wbits], act_bits=[abits], search_epochs=0)
    module.derive()
    return module


def main() -> None:
    """Time the settings and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    root = Path(tempfile.mkdtemp())
    shutil.copytree(DATA / "planetoid" / "Cora", root / "Cora")
    dm = GraphDataModule(root, "Cora")
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(0)
    settings = {
        "fp32 GCN (width 64)": _step_fn(_derived(32, 32), dm, search=False),
        "search (default space)": _step_fn(MixedPrecisionGNN(), dm, search=True),
        "derived GCN W4A8": _step_fn(_derived(4, 8), dm, search=False),
        "derived GCN W2A8": _step_fn(_derived(2, 8), dm, search=False),
    }
    for fn in settings.values():  # warm-up (builds the cached sparse operators)
        fn(0)
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, fn in settings.items():
            times = []
            for i in range(args.steps):
                t = time.thread_time()
                fn(i + 1)
                times.append(time.thread_time() - t)
            best[name] = min(best.get(name, float("inf")), statistics.median(times))
    base = best["fp32 GCN (width 64)"]
    lines = [
        "# LPGNAS step time on Cora",
        "",
        f"`python benchmarks/bench_lpgnas.py` on {cpu_model()}, one thread, torch {torch.__version__}, "
        f"{args.repeats} interleaved repeats of {args.steps} steps; thread CPU time, full-batch Cora "
        "(2,708 nodes, sparse 1,433-d features).",
        "",
        "| setting | ms per step (min of medians) | / fp32 GCN step |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {1000 * t:.1f} | {t / base:.2f}x |" for name, t in best.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
