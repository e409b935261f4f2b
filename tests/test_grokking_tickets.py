"""Grokking Tickets (https://arxiv.org/abs/2310.19470) on (a + b) mod 31: what reproduces and what does not.

The sweep is ``benchmarks/bench_grokking_tickets.py`` -> ``benchmarks/results/grokking_tickets.md`` (runs shared
with this test through ``benchmarks/_grokking_tickets.py``): ReLU MLP 62-128-31 on one-hot inputs, train fraction
0.7, full-batch AdamW lr 1e-2; base run with weight decay 1 until test accuracy >= 0.95; ticket = global magnitude
mask of the grokked weight matrices (keep 0.4; :func:`litmix.functional.sparsity.magnitude_masks`, the selector of
:class:`~litmix.callbacks.LotteryTicket`) rewound to theta_0; random = random masks of the same per-layer densities.

Measured on seeds 0 / 1 / 2 (steps to test accuracy >= 0.95): base 1725 / 1275 / 1750. Retrained with WD 0 (the
paper's setting, cap 2000 steps): ticket, dense and random never reach 0.95 (best test accuracy ticket 0.007 /
0.003 / 0.007, dense 0.0 / 0.0 / 0.0, random 0.0 / 0.0 / 0.0 within 1500 steps). Retrained with WD 1 (cap 3000):
dense from theta_0 reaches it at the base's step (1725 / 1275 / 1750; same run), ticket and random never (best
within 1500 steps: ticket 0.021 / 0.024 / 0.010, random 0.0 / 0.0 / 0.0). **The paper's effect (the ticket groks
earlier than the dense net) did not reproduce in this setting.** Asserted (seed 0, 500 retrain steps at WD 0 to fit the
time budget): the base run groks within 2000 steps, and the ticket's best test accuracy is at least the random
mask's (held on every seed and both WDs; a weak check: the random mask stays at 0).

Through the real callback (``lightning_tickets``: Lightning fits, ``LotteryTicket(prune_every=1800, unit="step",
retrain_weight_decay=0.0)``, base WD 1 for 1800 steps, retrain cap 1500 steps) at keep 0.4 and 0.7, seeds 0 / 1 / 2:
base best test accuracy before the round 0.944 / 0.962 / 0.962 (>= 0.95 at step - / 1475 / 1650); no ticket, dense or
random retrain reaches 0.95 (best test accuracy: ticket keep 0.4 0.007 / 0.003 / 0.000, keep 0.7 0.000 / 0.000 /
0.003; dense 0.000 on every seed; random 0.000 everywhere). The milder keep 0.7 does not reproduce "the ticket groks
earlier than the dense net" either, so no stronger claim is asserted.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _runs():
    spec = importlib.util.spec_from_file_location("_grokking_tickets", REPO / "benchmarks" / "_grokking_tickets.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ticket_vs_dense_and_random_on_modular_addition():
    run = _runs().grokking_tickets
    r = run(
        p=31, train_fraction=0.7, seed=0, keep=0.4, max_base_steps=2000, max_steps=500, variants=("ticket", "random")
    )
    assert r["base"] is not None  # grokked (measured 1725 steps)
    assert 0.3 < r["density"]["0.weight"] < 0.5  # global magnitude: ~0.4 kept overall
    assert r["ticket_max_acc"] >= r["random_max_acc"], r
