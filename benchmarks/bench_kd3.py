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

from pathlib import Path

from bench_distillation_module import Plain, _student, setup, time_settings, write_report

from litmix.plugins import DistillationModule, KD3Module

RESULTS = Path(__file__).resolve().parent / "results" / "kd3.md"
FLOOR, PLAIN = "floor: student step + teacher forward (plain module)", "plain KD (DistillationModule, KD term)"


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; return (and write) the markdown table."""
    args, data, teacher = setup(argv)
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
    best = time_settings(settings, data, args.repeats)
    note = (
        "MixDistribution costs a second student forward and backward (on the "
        "perturbed batch); the teacher runs once per step in every setting."
    )
    return write_report(
        RESULTS,
        "bench_kd3.py",
        "KD3Module step time",
        best,
        {"plain KD": PLAIN, "floor": FLOOR},
        note,
        args.repeats,
        args.steps,
    )


if __name__ == "__main__":
    main()
