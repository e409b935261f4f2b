"""Cost of PHATGOOSE routing vs a single LoRA adapter and the plain frozen linear layer (CPU, forward only).

One ``PHATGOOSELinear`` (``d -> d``, rank 8) is timed in each mode on the same input, modes interleaved round by
round so every mode sees the same machine load: ``base`` (the frozen ``nn.Linear``), ``expert`` (one LoRA adapter),
``route`` (scores against the E gate vectors, top-k, and the two-matmul bank mixture of
:func:`litmix.functional.phatgoose.lora_mixture`) and ``uniform`` (the bank with equal weights, no router).
Writes ``benchmarks/results/phatgoose.md``.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_phatgoose.py``
"""

import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model

from litmix.layers import PHATGOOSELinear

ROUNDS = 30
WARMUP = 3
TOKENS = 2048
CASES = [(256, 4, 2), (256, 16, 2), (768, 4, 2), (768, 16, 2), (768, 64, 2)]  # (d, experts, top_k)
MODES = ("base", "expert", "route", "uniform")
OUT = Path(__file__).resolve().parent / "results" / "phatgoose.md"


def _time(layer: PHATGOOSELinear, x: torch.Tensor) -> dict[str, float]:
    times: dict[str, list[float]] = {m: [] for m in MODES}
    with torch.no_grad():
        for step in range(WARMUP + ROUNDS):
            order = MODES if step % 2 else MODES[::-1]
            for mode in order:
                layer.set_mode(mode, 0 if mode == "expert" else None)  # type: ignore[arg-type]
                start = time.perf_counter()
                layer(x)
                elapsed = time.perf_counter() - start
                if step >= WARMUP:
                    times[mode].append(elapsed)
    return {m: 1e3 * statistics.median(v) for m, v in times.items()}


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for d, experts, top_k in CASES:
        layer = PHATGOOSELinear(d, d, num_experts=experts, rank=8, top_k=top_k)
        with torch.no_grad():
            for group in (layer.lora_b, layer.gates):
                for p in group:
                    p.normal_()
        ms = _time(layer, torch.randn(TOKENS, d))
        rows.append((d, experts, top_k, ms))
        print(d, experts, top_k, {k: round(v, 3) for k, v in ms.items()}, flush=True)
    load = os.getloadavg()[0]
    lines = [
        "# PHATGOOSE: routing overhead",
        "",
        f"CPU: {cpu_model()}, 1 thread (2 cores shared with other jobs; load average {load:.1f} at the end); "
        f"torch {torch.__version__}. Forward of one `PHATGOOSELinear` (d -> d, LoRA rank 8) on {TOKENS} tokens, "
        f"median of {ROUNDS} rounds, modes interleaved within each round. Ratios are against the single adapter "
        "(`expert` mode: frozen linear + one LoRA).",
        "",
        "| d | experts | top_k | base (ms) | one adapter (ms) | routed (ms) | uniform bank (ms) "
        "| routed / one adapter | routed / base |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d, experts, top_k, ms in rows:
        lines.append(
            f"| {d} | {experts} | {top_k} | {ms['base']:.3f} | {ms['expert']:.3f} | {ms['route']:.3f} | "
            f"{ms['uniform']:.3f} | {ms['route'] / ms['expert']:.2f}x | {ms['route'] / ms['base']:.2f}x |"
        )
    lines += [
        "",
        "The routed forward computes every expert's down-projection in one matmul (an `E * rank`-wide LoRA), masks "
        "the unselected experts with the routing weights and projects up in one matmul, so its cost grows with "
        "`E * rank` rather than with `top_k`; plus the router (standardize, `(tokens, d) x (d, E)` scores, top-k).",
    ]
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
