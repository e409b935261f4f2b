"""A learned active-learning acquisition policy, trained with REINFORCE on source tasks (see the class)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from litmix.functional.active_learning import NUM_FEATURES, PAPER, BinaryPoolTask, simulate_episodes
from litmix.registry import register
from litmix.validation import check_float, check_int, check_path, check_type

__all__ = ["ActiveLearningPolicy"]

MAX_SEED = 2**32 - 1


@register("utility", "optimization", paper=PAPER)
class ActiveLearningPolicy(nn.Module):
    """Acquisition policy of "Learning to Actively Learn: A Robust Approach" (https://arxiv.org/abs/2010.15382).

    A small network scores every unlabelled candidate from the per-candidate state features of
    :func:`~litmix.functional.active_learning.candidate_features` (uncertainty and its rank, density, novelty,
    label balance, budget spent); the policy's distribution over the next query is the softmax of the scores,
    and at test time the best-scored candidate is queried. :meth:`fit` trains it with REINFORCE on many
    simulated episodes of *source* tasks (binary pools, :class:`~litmix.functional.active_learning.BinaryPoolTask`)
    to maximise the area under the learning curve (mean test accuracy over the ``budget`` queries); the trained
    policy is then frozen and applied to other (target) tasks, e.g. by
    :class:`~litmix.datamodules.ActiveLearningDataModule` with ``strategy="learned"``.

    Robust objective (the paper's minimax over problem classes, simplified): each iteration's tasks are
    weighted by ``softmax(gap / robust_temperature)``, where ``gap`` is how far the policy's mean curve area
    on the task is below the best fixed baseline (random or uncertainty sampling) on that task, so the update
    concentrates on the tasks where the policy is furthest from the best per-task algorithm.

    Simplifications with respect to the paper: the state is summarised by hand-made, scale-free
    per-candidate features instead of a recurrent network over the full query/answer history; the problem
    classes are source tasks (digit class pairs) rather than equivalence classes from an information-theoretic
    complexity measure; the per-class reference is the best *fixed* baseline, not a policy trained per class;
    the learner inside the episodes is kernel ridge regression.

    Args:
        hidden: width of the hidden layer (>= 1).
        seed: seed of the initial weights, in [0, 2**32 - 1].

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a width below 1 or a seed out of range (and in :meth:`fit`, bad training arguments).

    Example:
        >>> policy = ActiveLearningPolicy(hidden=8, seed=0)
        >>> policy(torch.rand(3, 5, 6)).shape
        torch.Size([3, 5])
    """

    def __init__(self, hidden: int = 16, seed: int = 0) -> None:
        name = type(self).__name__
        hidden = check_int(name, "hidden", hidden, low=1, high=4096)
        seed = check_int(name, "seed", seed, low=0, high=MAX_SEED)
        super().__init__()
        self.hidden, self.seed = hidden, seed
        gen = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(NUM_FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        with torch.no_grad():
            for p in self.net.parameters():
                bound = 1.0 / max(1, p.shape[-1]) ** 0.5
                p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
        #: ``{"iteration": [...], "mean_auc": [...], "gap": [...]}`` recorded by :meth:`fit`.
        self.history: dict[str, list[float]] = {"iteration": [], "mean_auc": [], "gap": []}

    def forward(self, features: Tensor) -> Tensor:
        """Scores ``(..., n)`` of candidates with features ``(..., n, NUM_FEATURES)``."""
        dtype = next(self.parameters()).dtype
        return self.net(features.to(dtype)).squeeze(-1).to(features.dtype)  # type: ignore[no-any-return]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the policy (its arguments and weights) to ``path`` for :meth:`load`; returns the path."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"hidden": self.hidden, "seed": self.seed, "weights": self.state_dict()}, target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ActiveLearningPolicy:
        """A policy written by :meth:`save`, in eval mode.

        Raises:
            ValueError: if ``path`` is missing or holds no saved policy.
        """
        source = check_path(cls.__name__, "path", path)
        assert source is not None
        try:
            saved = torch.load(source, map_location="cpu", weights_only=True)
            policy = cls(hidden=int(saved["hidden"]), seed=int(saved["seed"]))
            policy.load_state_dict(saved["weights"])
        except Exception as err:  # a file that is not a saved policy
            raise ValueError(
                f"{cls.__name__}.load(path={str(path)!r}): not a saved ActiveLearningPolicy ({err})"
            ) from err
        return policy.eval()

    def fit(
        self,
        tasks: Sequence[BinaryPoolTask],
        budget: int = 20,
        initial_size: int = 2,
        iterations: int = 60,
        episodes: int = 16,
        tasks_per_iteration: int = 4,
        lr: float = 0.02,
        robust_temperature: float = 0.02,
        seed: int = 0,
    ) -> ActiveLearningPolicy:
        """Train with REINFORCE on ``tasks`` (the robust objective above); returns ``self`` in eval mode.

        Each iteration draws ``tasks_per_iteration`` tasks; on each it runs ``episodes`` sampled episodes from
        random initial sets and credits every query with the accuracies after it (reward-to-go) minus their mean
        over the task's episodes (a per-step, per-task baseline), divided by the spread of the episodes' curve
        areas; the tasks are weighted adversarially.

        Raises:
            TypeError: for a wrong argument type.
            ValueError: for an empty task list or an argument out of range.
        """
        name = f"{type(self).__name__}.fit"
        check_type(name, "tasks", tasks, (list, tuple))
        if not tasks or not all(isinstance(t, BinaryPoolTask) for t in tasks):
            raise ValueError(f"{name}(tasks=...): need a non-empty list of BinaryPoolTask")
        budget = check_int(name, "budget", budget, low=1)
        initial_size = check_int(name, "initial_size", initial_size, low=1)
        iterations = check_int(name, "iterations", iterations, low=0)
        episodes = check_int(name, "episodes", episodes, low=2)
        tasks_per_iteration = check_int(name, "tasks_per_iteration", tasks_per_iteration, low=1, high=len(tasks))
        lr = check_float(name, "lr", lr, low=0.0, low_open=True)
        robust_temperature = check_float(name, "robust_temperature", robust_temperature, low=0.0, low_open=True)
        seed = check_int(name, "seed", seed, low=0, high=MAX_SEED)
        for t in tasks:
            if budget + initial_size > len(t.y_pool):
                raise ValueError(f"{name}(budget={budget}): budget + initial_size exceeds a pool of {len(t.y_pool)}")
        gen = torch.Generator().manual_seed(seed)
        reference = torch.tensor([self._baseline_auc(t, budget, initial_size, episodes, gen) for t in tasks])
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        self.train()
        for it in range(iterations):
            chosen = torch.randperm(len(tasks), generator=gen)[:tasks_per_iteration].tolist()
            losses, gaps = [], []
            for k in chosen:
                task = tasks[k]
                init = _initial_sets(len(task.y_pool), episodes, initial_size, gen)
                res = simulate_episodes(
                    task.k_pool, task.k_test, task.y_pool, task.y_test, init, budget, "learned", self, sample=True,
                    generator=gen,
                )  # fmt: skip
                reward = res.curve.mean(-1)
                # reward-to-go: query t is credited with the accuracies after it (mean over the budget)
                to_go = res.curve.flip(-1).cumsum(-1).flip(-1) / budget
                advantage = (to_go - to_go.mean(0)) / (reward.std() + 1e-3)
                losses.append(-(advantage.detach() * res.log_prob).sum(-1).mean())
                gaps.append(float(reference[k] - reward.mean()))
            weights = torch.softmax(torch.tensor(gaps) / robust_temperature, dim=0)
            loss = sum(w * term for w, term in zip(weights.tolist(), losses, strict=True))
            optimizer.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            optimizer.step()
            self.history["iteration"].append(float(it))
            self.history["gap"].append(max(gaps))
            self.history["mean_auc"].append(
                float(sum(reference[k] for k in chosen) / len(chosen)) - sum(gaps) / len(gaps)
            )
        return self.eval()

    @staticmethod
    def _baseline_auc(task: BinaryPoolTask, budget: int, initial_size: int, episodes: int, gen: Any) -> float:
        """Best mean curve area of the fixed baselines (random, uncertainty) on ``task``."""
        init = _initial_sets(len(task.y_pool), episodes, initial_size, gen)
        best = 0.0
        for strategy in ("random", "uncertainty"):
            res = simulate_episodes(
                task.k_pool, task.k_test, task.y_pool, task.y_test, init, budget, strategy, generator=gen
            )
            best = max(best, float(res.curve.mean()))
        return best


def _initial_sets(n: int, episodes: int, size: int, gen: torch.Generator) -> Tensor:
    """``(episodes, size)`` random distinct pool positions per episode."""
    return torch.stack([torch.randperm(n, generator=gen)[:size] for _ in range(episodes)])
