"""NPO+RT vs gradient ascent over the unlearning trajectory on the synthetic TOFU-shaped task (catalogue U1 (b)).

The original (trained on ``full``) and the retrain oracle (trained on ``retain90``) come from
:func:`litmix.unlearning_testbed.synthetic_tofu_models` (100 entities, forget10 = 10 entities, a 1-layer d-32
causal transformer, cached per session). ``UnlearningModule`` unlearns for 300 steps (AdamW 3e-4, 5 forget +
5 retain items per step); every 25 steps :func:`~litmix.unlearning_testbed.evaluate_lm` records forget quality
(exact KS p-value of the forget truth ratios against the oracle's; n = m = 10, so it lives on the lattice
1.1e-5, 2.2e-4, 2.1e-3, 1.2e-2, 5.2e-2, 0.17, 0.42, 0.79, 0.99, 1) and model utility (harmonic mean of retain
answer probability and retain truth-ratio score).

"At equal utility loss": the best forget quality among checkpoints whose utility is within ``TOLERANCE`` of the
original's. Run ``python tests/test_unlearning_trajectory.py`` to print every seed's trajectories.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from litmix.unlearning_testbed import best_at_utility, evaluate_lm, synthetic_tofu_models, unlearning_trajectory

STEPS, EVERY, TOLERANCE = 300, 25, 0.15
RECIPES: dict[str, dict[str, Any]] = {
    "ga": {"forget_loss": "grad_ascent"},
    "npo_rt": {"forget_loss": "npo", "retain_loss": "nll"},
    "ga_rt": {"forget_loss": "grad_diff", "retain_loss": "nll"},
    "npo": {"forget_loss": "npo"},
}


def trajectory(seed: int, recipe: str) -> tuple[dict[str, float], tuple[tuple[int, dict[str, float]], ...]]:
    """(original's metrics, ((step, metrics), ...)) of one unlearning run (cached per session)."""
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    rows = unlearning_trajectory(seed, lr=3e-4, steps=STEPS, every=EVERY, **RECIPES[recipe])
    task = synthetic_tofu_models(seed=seed, n_entities=100, steps=300, lr=1e-2)
    return evaluate_lm(task.original, task), rows


def best_fq_at_utility(original: dict[str, float], rows: Sequence[tuple[int, dict[str, float]]]) -> float:
    """Highest forget quality among checkpoints whose utility lost at most ``TOLERANCE`` (0 when none)."""
    best = best_at_utility(rows, original["model_utility"] - TOLERANCE)
    return 0.0 if best != best else best


@pytest.mark.slow
def test_npo_rt_reaches_higher_forget_quality_than_ga_at_equal_utility_loss() -> None:
    """Measured (seeds 0 / 1 / 2): best FQ with utility loss <= 0.15: NPO+RT 0.79 / 0.99 / 0.17, GA 1.1e-5 on
    every seed (GA loses its utility before its forget quality rises; its best FQ over the run, 0.79 / 0.99 /
    0.99, comes with utility <= 0.02). At step 300: utility NPO+RT 0.958 / 0.933 / 0.959, GA 0.000 (all);
    forget NLL NPO+RT 35.8 / 37.6 / 35.0, GA 103.8 / 118.5 / 80.5. Asserted on seed 0, with margins that held
    on all three seeds (FQ >= 0.1 and >= 1000x GA's at equal utility loss)."""
    original, npo_rt = trajectory(0, "npo_rt")
    _, ga = trajectory(0, "ga")
    assert original["forget_acc"] == 1.0
    assert original["retain_acc"] == 1.0
    assert original["forget_quality"] < 1e-4  # the original is far from the oracle
    fq_npo, fq_ga = best_fq_at_utility(original, npo_rt), best_fq_at_utility(original, ga)
    assert fq_npo >= 0.1, fq_npo
    assert fq_npo >= 1000 * fq_ga, (fq_npo, fq_ga)
    # gradient ascent collapses utility, NPO+RT keeps it
    assert ga[-1][1]["model_utility"] < 0.05
    assert npo_rt[-1][1]["model_utility"] >= original["model_utility"] - TOLERANCE
    assert ga[-1][1]["forget_nll"] > 1.5 * npo_rt[-1][1]["forget_nll"]  # GA's forget NLL keeps growing


def report(seeds: list[int]) -> None:
    for seed in seeds:
        for name in RECIPES:
            original, rows = trajectory(seed, name)
            print(
                f"seed {seed} {name}: best FQ at utility loss <= {TOLERANCE}: {best_fq_at_utility(original, rows):.3g}"
            )
            for step, m in rows:
                print(
                    f"  {step:4d} forget acc {m['forget_acc']:.2f} retain acc {m['retain_acc']:.2f} "
                    f"FQ {m['forget_quality']:.2e} MU {m['model_utility']:.3f} forget NLL {m['forget_nll']:.1f}"
                )


if __name__ == "__main__":
    report([int(s) for s in sys.argv[1:]] or [0, 1, 2])
