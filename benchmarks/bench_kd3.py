"""Step time of :class:`litmix.plugins.KD3Module` against plain KD and the floor (student step + teacher forward).

KD³ ("Distribution Shift Matters for Knowledge Distillation with Webly Collected Images",
https://arxiv.org/abs/2307.11469) adds to plain KD: the selection (a softmax of both outputs), the confidence-
weighted feature alignment through a projector, the classifier alignment and MixDistribution (a second student
forward and backward on the perturbed batch, plus an InfoNCE). Settings, each a separate fit, interleaved in one
process (every repeat fits every setting once in turn):

* **floor**: a plain module running the teacher's forward (``no_grad``, eval) and the student's cross-entropy step;
* **plain KD**: :class:`~litmix.plugins.DistillationModule` with the logits KD term only (``task_loss=None``);
* ``KD3Module`` with its defaults (selection + feature + classifier alignment + MixDistribution), without
  MixDistribution, and with the selection only.

The models and timer are those of ``bench_distillation_module.py`` (student 784-128-10, teacher
784-1024-1024-10), synthetic MNIST-shaped data, batch 128, Adam, one CPU thread; per setting the minimum over
repeats of the fit's median step (CPU time of the training thread, second epoch). Writes
``benchmarks/results/kd3.md``.

Run: ``python benchmarks/bench_kd3.py`` (about a minute on an idle machine).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from _machine import cpu_model
from bench_distillation_module import Plain, StepTimer, _student, _teacher
from torch.utils.data import DataLoader, TensorDataset

from litmix.plugins import DistillationModule, KD3Module
from litmix.testing import make_trainer

RESULTS = Path(__file__).resolve().parent / "results" / "kd3.md"
FLOOR, PLAIN = "floor: student step + teacher forward (plain module)", "plain KD (DistillationModule, KD term)"


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; return (and write) the markdown table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=32, help="timed steps per fit (one epoch)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    gen = torch.Generator().manual_seed(0)
    n = 128 * args.steps
    data = TensorDataset(torch.randn(n, 784, generator=gen), torch.randint(0, 10, (n,), generator=gen))
    torch.manual_seed(0)
    teacher = _teacher().eval()
    no_mix = {"mix_weight": 0.0}
    selection = {"feature_weight": 0.0, "classifier_weight": 0.0, "mix_weight": 0.0}
    settings = {
        FLOOR: lambda: Plain(_student(), teacher),
        PLAIN: lambda: DistillationModule(_student(), teacher, [{"kind": "kd", "temperature": 4.0}], task_loss=None),
        "KD3Module, defaults (selection + feature/classifier alignment + MixDistribution)": lambda: KD3Module(
            _student(), teacher
        ),
        "KD3Module, selection + feature/classifier alignment (mix_weight=0)": lambda: KD3Module(
            _student(), teacher, **no_mix
        ),
        "KD3Module, selection only": lambda: KD3Module(_student(), teacher, **selection),
    }
    best: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, make in settings.items():
            timer = StepTimer()
            trainer = make_trainer(max_epochs=2, callbacks=[timer])
            trainer.fit(make(), train_dataloaders=DataLoader(data, batch_size=128))
            median = statistics.median(timer.times) * 1e3
            best[name] = min(best.get(name, float("inf")), median)
    floor, plain = best[FLOOR], best[PLAIN]
    rows = [
        "| setting | median step, CPU time (ms) | ratio to plain KD | ratio to floor |",
        "|---|---:|---:|---:|",
    ]
    for name, ms in best.items():
        rows.append(f"| {name} | {ms:.2f} | {ms / plain:.3f}x | {ms / floor:.3f}x |")
    load = os.getloadavg()[0]
    text = "\n".join(
        [
            "# KD3Module step time",
            "",
            *rows,
            "",
            "Separate fits interleaved in one process; per setting the minimum over "
            f"{args.repeats} repeats of the fit's median step ({args.steps} timed steps, second epoch). CPU time of "
            "the training thread (`time.thread_time()`). Student MLP 784-128-10, teacher 784-1024-1024-10, batch 128, "
            "Adam, synthetic MNIST-shaped data. MixDistribution costs a second student forward and backward (on the "
            "perturbed batch); the teacher runs once per step in every setting.",
            "",
            f"Machine: {cpu_model()}, 1 thread, torch {torch.__version__}, lightning {pl.__version__}; load average at "
            f"the end {load:.1f} on {os.cpu_count()} cores.",
            "",
            "Run: `python benchmarks/bench_kd3.py`",
            "",
        ]
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
