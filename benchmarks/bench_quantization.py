"""QuantizationAwareTraining: train-step time vs fp32, where the time goes, export size, transient forward memory.

Usage: ``python benchmarks/bench_quantization.py [--steps 200] [--rounds 5] [--device cpu] [--out ...]``
and ``python benchmarks/bench_quantization.py --pareto`` for the digits Pareto sweep (widths {16, 32, 64} x bits
{2, 4, 8, 32}, 3 seeds, 15 epochs; writes ``results/quantization_pareto.md`` and ``results/quantization_pareto.png``).

Models: the MNIST MLP of ``bench_pruning.py`` (784-300-100-10, ReLU) and a small MNIST CNN (conv 1->16 3x3, conv
16->32 3x3 stride 2, conv 32->32 3x3 stride 2, linear 32*7*7->10), batch 128, Adam 1e-3, inputs of MNIST's shape
(random values: the step time does not depend on them). The QAT step is exactly what the callback adds to a
Lightning step: its hooks on every Linear/Conv (4-bit weights and inputs, first/last 8-bit) and its per-step bound
update (``_update_bounds``); logging is left out. fp32 and QAT steps are timed in alternating rounds in one process
(median per-step time of each round; the reported ratio is the median over rounds).

"Where the time goes" times the pieces of one QAT forward of the MLP in isolation (per step): the per-channel weight
fake-quantization, the activation observation (``aminmax``), the activation fake-quantization and the hook/bound
bookkeeping, each as a share of the fp32 step.

Transient memory: a ``TorchDispatchMode`` records every new storage allocated during one QAT forward pre-hook of a
layer; the table gives the number of weight-sized (>= numel of the weight) allocations per layer (the target is at
most one) and their bytes.

Export: ``save_export`` file size vs ``torch.save(model.state_dict())`` (fp32) for inner 4-bit / first-last 8-bit
and for every layer 4-bit.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _machine import cpu_model
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from litmix.callbacks.quantization_aware_training import QuantizationAwareTraining
from litmix.functional.quantization import activation_bound, bound_scale, fake_quantize, fake_quantize_per_channel

REPO = Path(__file__).resolve().parents[1]


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(32, 32, 3, stride=2, padding=1)
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x.view(-1, 1, 28, 28)))
        h = torch.relu(self.c2(h))
        h = torch.relu(self.c3(h))
        return self.fc(h.flatten(1))  # type: ignore[no-any-return]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_times(make, device, steps: int, rounds: int, batch: int = 128) -> tuple[list[float], list[float]]:
    """Per-round median step time (s) of fp32 and QAT training, alternating rounds."""
    torch.manual_seed(0)
    x = torch.randn(batch, 784, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    fp_model, q_model = make().to(device), make().to(device)
    q_model.load_state_dict(fp_model.state_dict())
    qat = QuantizationAwareTraining(bits_w=4, bits_a=4, first_last_bits=8, calibration_steps=1)
    qat.attach(q_model)
    layers = [lay for lay in qat._layers.values() if lay.bits_a is not None]
    opts = {id(m): torch.optim.Adam(m.parameters(), lr=1e-3) for m in (fp_model, q_model)}

    def run(model: nn.Module, quantized: bool) -> float:
        opt = opts[id(model)]
        times = []
        for _ in range(steps):
            _sync(device)
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if quantized:
                qat._update_bounds(None, layers)
            _sync(device)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    run(fp_model, False), run(q_model, True)  # warm-up (and calibration)
    fp, q = [], []
    for _ in range(rounds):
        fp.append(run(fp_model, False))
        q.append(run(q_model, True))
    qat.detach()
    return fp, q


def breakdown(device: torch.device, steps: int, batch: int = 128) -> dict[str, float]:
    """Median per-step time (s) of the MLP's fp32 and QAT forward / forward+backward, the bound update, and each
    fake-quant piece in isolation."""
    torch.manual_seed(0)
    fp, model = mlp().to(device), mlp().to(device)
    model.load_state_dict(fp.state_dict())
    qat = QuantizationAwareTraining(bits_w=4, bits_a=4, first_last_bits=8)
    qat.attach(model)
    layers = list(qat._layers.values())
    x = torch.randn(batch, 784, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    model(x)
    qat._update_bounds(None, layers)  # calibrated: activations quantized from now on
    weights = [m.weight for m in fp if isinstance(m, nn.Linear)]
    inputs = [x, torch.relu(torch.randn(batch, 300, device=device)), torch.relu(torch.randn(batch, 100, device=device))]
    bits = [8, 4, 8]
    bounds = [activation_bound(i) for i in inputs]

    def timed(fn) -> float:
        for _ in range(5):
            fn()
        times = []
        for _ in range(steps):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    def weights_fq() -> None:
        for w, b in zip(weights, bits, strict=True):
            fake_quantize_per_channel(w, b)

    def observe() -> None:
        for i in inputs:
            activation_bound(i)

    def act_fq() -> None:
        for i, b, bd in zip(inputs, bits, bounds, strict=True):
            fake_quantize(i, bound_scale(bd, b, False), b, False)

    def fwd_bwd(m: nn.Module) -> None:
        m.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(m(x), y).backward()

    def update() -> None:
        for lay in layers:  # what one training forward leaves behind
            lay.batch_bound = lay.bound.clone()
        qat._update_bounds(None, layers)

    out = {
        "fp32 forward": timed(lambda: fp(x)),
        "QAT forward (hooks: weight + activation fake-quant, observation)": timed(lambda: model(x)),
        "fp32 forward+backward (reference)": timed(lambda: fwd_bwd(fp)),
        "QAT forward+backward": timed(lambda: fwd_bwd(model)),
        "QAT per-step bound update (_update_bounds)": timed(update),
        "isolated: weight fake-quant, 3 layers": timed(weights_fq),
        "isolated: activation observation, 3 layers": timed(observe),
        "isolated: activation fake-quant forward, 3 layers": timed(act_fq),
    }
    qat.detach()
    return out


class AllocationRecorder(TorchDispatchMode):
    """Records the numel of every new storage an op returns."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self.seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        ins = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                ptr = t.untyped_storage().data_ptr()
                if ptr not in ins and ptr not in self.seen:
                    self.seen.add(ptr)
                    self.sizes.append(t.numel())
        return out


def transient_memory() -> list[tuple[str, int, int, int]]:
    """Per layer of the MLP and CNN: (name, weight numel, weight-sized allocations in the hook, their bytes)."""
    rows = []
    for label, model, x in (("MLP", mlp(), torch.randn(128, 784)), ("CNN", CNN(), torch.randn(128, 784))):
        qat = QuantizationAwareTraining(bits_w=4, bits_a=None, first_last_bits=8)
        qat.attach(model)
        for name, lay in qat._layers.items():
            recorder = AllocationRecorder()
            hook = lay.module._forward_pre_hooks
            pre = next(iter(hook.values()))
            w = lay.module.weight
            with recorder:
                pre(lay.module, (x,))
            lay.module.__dict__.pop("weight", None)
            big = [s for s in recorder.sizes if s >= w.numel()]
            rows.append((f"{label} {name}", w.numel(), len(big), 4 * sum(big)))
        qat.detach()
    return rows


def export_sizes() -> list[tuple[str, int, int]]:
    rows = []
    torch.manual_seed(0)
    for label, make in (("MLP", mlp), ("CNN", CNN)):
        for fl in (8, None):
            model = make()
            qat = QuantizationAwareTraining(bits_w=4, bits_a=4, first_last_bits=fl)
            qat.calibrate(model, [torch.rand(32, 784)])
            with tempfile.TemporaryDirectory() as tmp:
                size = qat.save_export(model, os.path.join(tmp, "q.pt"))
                torch.save(model.state_dict(), os.path.join(tmp, "fp32.pt"))
                fp = os.path.getsize(os.path.join(tmp, "fp32.pt"))
            qat.detach()
            rows.append((f"{label}, {'first/last 8-bit, inner 4-bit' if fl else 'all 4-bit'}", size, fp))
    return rows


def pareto(out_dir: Path, epochs: int = 15) -> None:
    """The digits Pareto sweep of the effect test, over 3 seeds and more widths/bits, as a table and a plot."""
    import lightning.pytorch as pl

    from litmix.data import split_batch
    from litmix.datamodules import DigitsDataModule
    from litmix.quantization_pareto import ParetoSweep

    class DigitsMLP(pl.LightningModule):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)  # type: ignore[no-any-return]

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y, _ = split_batch(batch)
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=3e-3)

    start = time.perf_counter()
    sweep = ParetoSweep(
        DigitsMLP,
        lambda seed: DigitsDataModule(seed=seed),
        widths=[16, 32, 64],
        bits=[2, 4, 8, 32],
        seeds=[0, 1, 2],
        max_epochs=epochs,
    )
    sweep.run()
    text = "\n".join(
        [
            "# Pareto sweep: bit-operations vs accuracy on digits (catalogue S15)",
            "",
            f"`python benchmarks/bench_quantization.py --pareto`: 64-width-width-10 ReLU MLP, Adam 3e-3, batch 64, "
            f"{epochs} epochs, stratified 70/30 digits split per seed; bits = weight and input bits of the inner layer "
            "(first and last layers 8-bit; 32 = plain fp32 training). Cost: bit-operations per sample, "
            "sum of MACs x b_w x b_a. Accuracy: validation top-1 with the quantized forward, mean of seeds 0, 1, 2. "
            f"Sweep time {time.perf_counter() - start:.0f} s.",
            "",
            sweep.to_markdown(),
            "",
            "Scatter plot (written when matplotlib is installed): `benchmarks/results/quantization_pareto.png`.",
            "",
        ]
    )
    (out_dir / "quantization_pareto.md").write_text(text)
    fig = sweep.figure()
    if fig is not None:
        fig.savefig(out_dir / "quantization_pareto.png", dpi=120)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "quantization.md"))
    parser.add_argument("--pareto", action="store_true", help="run the digits Pareto sweep instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.pareto:
        pareto(Path(args.out).parent)
        return
    device = torch.device(args.device)
    lines = [
        "# QuantizationAwareTraining benchmark",
        "",
        f"`python benchmarks/bench_quantization.py --steps {args.steps} --rounds {args.rounds} --device {args.device}`"
        f" on {cpu_model() if device.type == 'cpu' else torch.cuda.get_device_name(device)}, "
        f"{args.threads} thread(s), torch {torch.__version__}, Python {platform.python_version()}. "
        "Ratios come from alternating rounds in one process; absolute times depend on the (shared) machine.",
        "",
        "## Train step: QAT (4-bit inner, 8-bit first/last weights and inputs) vs fp32",
        "",
        "| model | fp32 step (ms, median of rounds) | QAT step (ms) | ratio per round | median ratio |",
        "|---|---|---|---|---|",
    ]
    for label, make in (("MNIST MLP 784-300-100-10", mlp), ("MNIST CNN (3 conv + linear)", CNN)):
        fp, q = step_times(make, device, args.steps, args.rounds)
        ratios = [b / a for a, b in zip(fp, q, strict=True)]
        lines.append(
            f"| {label} | {1e3 * statistics.median(fp):.3f} | {1e3 * statistics.median(q):.3f} | "
            f"{', '.join(f'{r:.2f}' for r in ratios)} | **{statistics.median(ratios):.2f}x** |"
        )
        print(lines[-1], flush=True)
    parts = breakdown(device, args.steps)
    ref = parts["fp32 forward+backward (reference)"]
    lines += [
        "",
        "## Where the time goes (MLP, batch 128)",
        "",
        "| piece | ms per step | share of the fp32 forward+backward |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {1e3 * v:.3f} | {v / ref:.2f} |" for k, v in parts.items()]
    lines += [
        "",
        "## Transient memory of the weight fake-quant (one forward pre-hook per layer)",
        "",
        "| layer | weight elements | weight-sized allocations | bytes |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {k} | {c} | {b} |" for n, k, c, b in transient_memory()]
    lines += [
        "",
        "## Export size (`save_export`, packed 4-bit codes + fp32 per-channel scales) vs `torch.save(state_dict)`",
        "",
        "| model | export bytes | fp32 bytes | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {s} | {f} | {s / f:.3f} |" for n, s, f in export_sizes()]
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
