"""DeepZero: forward passes per step, peak transient memory and step time against backprop.

A script, not a test. For one training step of an MLP classifier (batch 256) it measures:

* forwards per step: ``d_active + 1`` for CGE at a coordinate density, ``q + 1`` for RGE;
* peak transient memory: the largest total size of the tensors the step allocates that are alive at the same time
  (every storage created inside the step is tracked from creation until it is freed, with a
  ``TorchDispatchMode``; the parameters and the batch exist before and are not counted) — backprop keeps the
  activations for the backward pass, the zeroth-order step keeps ``chunk`` perturbed copies of the parameters and
  the activations of ``chunk`` forwards, never a graph;
* CPU time per step (median of 3).

Writes ``benchmarks/results/zeroth_order.md``. Run: ``python benchmarks/bench_zeroth_order.py``.
"""

from __future__ import annotations

import itertools
import statistics
import time
import weakref
from pathlib import Path
from typing import Any

import torch
from _machine import cpu_model
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from litmix.functional.zeroth_order import cge_gradient, rge_gradient, sample_coordinates

OUT = Path(__file__).resolve().parent / "results" / "zeroth_order.md"


class PeakMemory(TorchDispatchMode):
    """Peak bytes of storages created under the mode and alive at the same time."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(key)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._seen:
                    self._seen.add(key)
                    nbytes = storage.nbytes()
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, nbytes)
        return out


def mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def run(widths: list[int], batch: int = 256) -> list[tuple[str, int, int, float]]:
    torch.manual_seed(0)
    model = mlp(widths)
    x, y = torch.randn(batch, widths[0]), torch.randint(0, widths[-1], (batch,))
    params = {n: p.detach() for n, p in model.named_parameters()}
    n_params = sum(p.numel() for p in params.values())

    def loss_fn(p: Any) -> torch.Tensor:
        return nn.functional.cross_entropy(torch.func.functional_call(model, dict(p), (x,)), y)

    def backprop() -> int:
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        return 1

    def cge(density: float, chunk: int) -> Any:
        def step() -> int:
            gen = torch.Generator().manual_seed(0)
            coords = sample_coordinates({n: p.shape for n, p in params.items()}, dict.fromkeys(params, density), gen)
            _, _, forwards = cge_gradient(loss_fn, params, coords, mu=1e-3, chunk=chunk)
            return forwards

        return step

    def rge(q: int) -> Any:
        def step() -> int:
            _, _, forwards = rge_gradient(loss_fn, params, q=q, generator=torch.Generator().manual_seed(0))
            return forwards

        return step

    settings = {"backprop (forward + backward)": backprop, "RGE q = 20": rge(20)}
    if n_params <= 10_000:  # CGE needs one forward per coordinate: only the small model
        settings["CGE 10 % of coordinates, chunk 64"] = cge(0.1, 64)
        settings["CGE 50 % of coordinates, chunk 256"] = cge(0.5, 256)
    rows = []
    for name, step in settings.items():
        step()  # warm up
        with PeakMemory() as mem:
            forwards = step()
        times = []
        for _ in range(3):
            t0 = time.thread_time()
            step()
            times.append(time.thread_time() - t0)
        rows.append((name, forwards, mem.peak, statistics.median(times) * 1e3))
    return rows


def main() -> None:
    torch.set_num_threads(1)
    lines = ["# DeepZero: forwards, peak transient memory and time per step vs backprop", ""]
    for widths in ([64, 16, 10], [784, 256, 256, 10]):
        n = sum(p.numel() for p in mlp(widths).parameters())
        lines += [
            f"## MLP {'-'.join(map(str, widths))} ({n:,} parameters, {n * 4:,} bytes), batch 256",
            "",
            "| step | forwards | peak transient memory (bytes) | vs backprop | CPU time (ms) | vs backprop |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        rows = run(widths)
        base_mem, base_t = rows[0][2], rows[0][3]
        lines += [
            f"| {name} | {fw:,} | {mem:,} | {mem / base_mem:.2f}x | {t:.2f} | {t / base_t:.1f}x |"
            for name, fw, mem, t in rows
        ]
        lines.append("")
    lines += [
        "Peak transient memory: storages created during the step and alive at the same time (a `TorchDispatchMode` "
        "tracks each from creation until it is freed; parameters and the batch are not counted). The zeroth-order "
        "step keeps no graph: its peak is `chunk` perturbed parameter copies and `chunk` forwards' activations, "
        "so it grows with `chunk`, not with depth x batch as backprop's saved activations do.",
        "",
        f"CPU time of the thread, 1 thread, median of 3 steps; {cpu_model()}, torch {torch.__version__}. "
        "Generated by `benchmarks/bench_zeroth_order.py`.",
        "",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
