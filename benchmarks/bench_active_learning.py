"""Learning to actively learn (arXiv 2010.15382): learned acquisition vs random and uncertainty sampling.

A. Simulated episodes (the effect test's protocol, at two budgets): an ``ActiveLearningPolicy`` is trained with
   REINFORCE on the 10 digit pairs of classes 0-4 and applied, frozen, to the 10 pairs of classes 5-9; the
   learner is kernel ridge regression; curve area = mean test accuracy over the queries; 16 episodes per target
   pair from common random initial sets (2 labels).
B. The DataModule in a Lightning loop: ``ActiveLearningDataModule`` on target pairs with a ``TinyClassifier``
   retrained from scratch each round (the learned policy was trained on kernel-ridge episodes only).
C. Cost of one acquisition round of ``ActiveLearningDataModule.acquire`` on the full digits pool (1,258
   samples, 10 classes, 10 picks), strategies interleaved, median of repeats.

Writes ``benchmarks/results/active_learning.md``. Run:
``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_active_learning.py``
"""

import itertools
import statistics
import sys
import time
from pathlib import Path

import torch
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model

from litmix.active_learning_policy import ActiveLearningPolicy
from litmix.datamodules import ActiveLearningDataModule
from litmix.functional.active_learning import binary_pool_tasks, simulate_episodes
from litmix.testing import TinyClassifier, make_trainer

OUT = Path(__file__).resolve().parent / "results" / "active_learning.md"
SEEDS = (0, 1, 2)
STRATEGIES = ("random", "uncertainty", "learned")
SOURCE = list(itertools.combinations(range(5), 2))
TARGET = list(itertools.combinations(range(5, 10), 2))
CONFIGS = {  # budget: (pool size, fit kwargs)
    10: (100, {"iterations": 40, "episodes": 8, "tasks_per_iteration": 3, "lr": 0.08}),
    20: (120, {"iterations": 80, "episodes": 12, "tasks_per_iteration": 3, "lr": 0.05}),
}


def part_a(x: torch.Tensor, y: torch.Tensor, policies: dict) -> list[str]:
    rows = []
    for budget, (pool, kwargs) in CONFIGS.items():
        for seed in SEEDS:
            source = binary_pool_tasks(x, y, SOURCE, pool_size=pool, seed=seed)
            target = binary_pool_tasks(x, y, TARGET, pool_size=pool, seed=seed + 100)
            start = time.perf_counter()
            policy = ActiveLearningPolicy(seed=seed).fit(source, budget=budget, initial_size=2, seed=seed, **kwargs)
            train_s = time.perf_counter() - start
            policies[(budget, seed)] = policy
            gen = torch.Generator().manual_seed(seed + 1000)
            area = {s: [] for s in STRATEGIES}
            final = {s: [] for s in STRATEGIES}
            for task in target:
                init = torch.stack([torch.randperm(len(task.y_pool), generator=gen)[:2] for _ in range(16)])
                for s in STRATEGIES:
                    with torch.no_grad():
                        res = simulate_episodes(
                            task.k_pool, task.k_test, task.y_pool, task.y_test, init, budget, s,
                            policy if s == "learned" else None, generator=gen,
                        )  # fmt: skip
                    area[s].append(float(res.curve.mean()))
                    final[s].append(float(res.curve[:, -1].mean()))
            m = {s: statistics.mean(v) for s, v in area.items()}
            f = {s: statistics.mean(v) for s, v in final.items()}
            wins = sum(a > b for a, b in zip(area["learned"], area["uncertainty"], strict=True))
            rows.append(
                f"| {budget} | {seed} | {m['random']:.4f} | {m['uncertainty']:.4f} | {m['learned']:.4f} | "
                f"{m['learned'] - m['uncertainty']:+.4f} | {f['random']:.3f} / {f['uncertainty']:.3f} / "
                f"{f['learned']:.3f} | {wins}/10 | {train_s:.1f} |"
            )
            print(rows[-1], flush=True)
    return rows


def part_b(policies: dict) -> list[str]:
    rows = []
    pairs = [(5, 8), (7, 9), (3, 5)]  # (3, 5) mixes a source class with a target class
    for pair in pairs:
        for seed in SEEDS:
            area = {}
            for s in STRATEGIES:
                policy = policies[(10, seed)] if s == "learned" else None
                dm = ActiveLearningDataModule(
                    strategy=s, policy=policy, classes=list(pair), initial_size=2, acquire_size=2, max_labelled=12,
                    epochs_per_round=None, batch_size=16, seed=seed,
                )  # fmt: skip
                dm.setup("fit")
                accs = []
                for _ in range(5):
                    torch.manual_seed(seed)
                    model = TinyClassifier(in_features=64, hidden=32, num_classes=2, lr=0.05)
                    make_trainer(max_epochs=60).fit(model, datamodule=dm)
                    val = torch.tensor(list(dm.val_dataset.indices))
                    xv, yv = dm.x[val], dm.targets[val]
                    with torch.no_grad():
                        accs.append(float((model(xv).argmax(-1) == yv).float().mean()))
                    dm.acquire(model)
                area[s] = statistics.mean(accs)
            rows.append(
                f"| {pair} | {seed} | {area['random']:.4f} | {area['uncertainty']:.4f} | {area['learned']:.4f} |"
            )
            print(rows[-1], flush=True)
    return rows


def part_c() -> list[str]:
    model = TinyClassifier(in_features=64, num_classes=10)
    policy = ActiveLearningPolicy(seed=0)
    times: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    for _ in range(5):
        for s in STRATEGIES:
            dm = ActiveLearningDataModule(strategy=s, policy=policy if s == "learned" else None, initial_size=10)
            dm.setup("fit")
            if s == "learned":
                dm.acquire(model, n=1)  # builds the pool similarity once (cached for later rounds)
            start = time.perf_counter()
            dm.acquire(model, n=10)
            times[s].append(time.perf_counter() - start)
    med = {s: statistics.median(v) * 1e3 for s, v in times.items()}
    return [f"| {s} | {med[s]:.1f} | {med[s] / med['uncertainty']:.2f}x |" for s in STRATEGIES]


def main() -> None:
    torch.set_num_threads(1)
    data = load_digits()
    x, y = torch.tensor(data.data, dtype=torch.float32) / 16.0, torch.tensor(data.target)
    policies: dict = {}
    a = part_a(x, y, policies)
    b = part_b(policies)
    c = part_c()
    lines = [
        "# Learning to actively learn (arXiv 2010.15382): learned acquisition vs random / uncertainty",
        "",
        f"CPU: {cpu_model()}, 1 thread (machine shared with other jobs: times are indicative, ratios side by side).",
        "",
        "## A. Simulated episodes: policy trained on digit pairs of 0-4, applied frozen to the 10 pairs of 5-9",
        "",
        "Kernel ridge learner, 2 random initial labels, curve area = mean test accuracy over the queries, 16 episodes",
        "per target pair (common initial sets). `wins`: target pairs where learned > uncertainty.",
        "",
        "| budget | seed | random | uncertainty | learned | learned - uncertainty | final acc r / u / l | wins | "
        "policy training (s) |",
        "|---|---|---|---|---|---|---|---|---|",
        *a,
        "",
        "## B. ActiveLearningDataModule in a Lightning loop (TinyClassifier retrained each round)",
        "",
        "2 initial labels, 5 rounds of 2 (labelled 2..10 when measured), 60 epochs per round; value = mean validation",
        "accuracy over the 5 rounds. The policy is the budget-10 policy of part A (trained on kernel-ridge episodes).",
        "",
        "| classes | seed | random | uncertainty | learned |",
        "|---|---|---|---|---|",
        *b,
        "",
        "## C. Cost of one acquisition round (full digits pool, 1,258 samples, 10 picks), median of 5",
        "",
        "| strategy | ms per round | vs uncertainty |",
        "|---|---|---|",
        *c,
        "",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print(OUT.read_text())


if __name__ == "__main__":
    main()
