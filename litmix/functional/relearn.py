"""Relearn time: how many fine-tuning steps on the forget set bring a model back to the original model's level.

An unlearned model that still carries the forget set's information relearns it in a few steps; one that never saw
it (retraining) needs about as many as learning it afresh. Relearn time is the verification metric of Eternal
Sunshine of the Spotless Net (Golatkar et al., https://arxiv.org/abs/1911.04933); the Anamnesis Index of Zero-Shot
Machine Unlearning (Chundawat et al., https://arxiv.org/abs/2201.05629) divides it by the retrained model's.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int

__all__ = ["anamnesis_index", "forget_level", "relearn_time"]

_PAPER = (
    "Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep Networks (https://arxiv.org/abs/1911.04933)"
)


@torch.no_grad()
def forget_level(model: nn.Module, inputs: Tensor, targets: Tensor, metric: Literal["accuracy", "loss"]) -> float:
    """Accuracy (classifiers) or mean loss (cross-entropy for integer targets, L1 for float targets) on the items.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.eye(2)), model.bias.zero_()
        >>> forget_level(model, torch.eye(2), torch.tensor([0, 0]), "accuracy")
        0.5
    """
    was_training = model.training
    model.eval()
    out = model(inputs)
    model.train(was_training)
    if metric == "accuracy":
        if targets.is_floating_point():
            raise ValueError("forget_level(metric='accuracy'): accuracy needs integer class targets; use metric='loss'")
        return float((out.argmax(-1) == targets).double().mean())
    return _loss(out, targets).item()


def _loss(out: Tensor, targets: Tensor) -> Tensor:
    if targets.is_floating_point():
        return F.l1_loss(out.reshape(-1).float(), targets.reshape(-1).float())
    return F.cross_entropy(out.float(), targets)


@register("function", "unlearning", paper=_PAPER)
def relearn_time(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    level: float,
    metric: Literal["accuracy", "loss"] = "accuracy",
    lr: float = 1e-3,
    optimizer: Literal["adam", "sgd"] = "adam",
    batch_size: int = 32,
    max_steps: int = 100,
    seed: int = 0,
) -> int:
    """Fine-tuning steps on the forget items until the forget accuracy (or loss) is back at ``level``.

    A deep copy of ``model`` is fine-tuned (``model`` itself is untouched) with minibatches of ``batch_size``
    forget items (seeded shuffles, epoch after epoch) and ``optimizer`` at ``lr``; after every step the metric
    is measured on all the items (eval mode). Returns 0 when the model is already at ``level``
    (accuracy ``>= level``, loss ``<= level``), ``max_steps + 1`` when it is not back within ``max_steps``
    (a censored value). ``level`` is usually the original model's value (:func:`forget_level`), so the original
    model's relearn time is 0. The caller's random state is left unchanged.

    Args:
        model: the (unlearned) model; classifier logits ``[B, C]`` or regression outputs ``[B]`` / ``[B, 1]``.
        inputs: the forget inputs ``[N, ...]``.
        targets: their class labels (``metric="accuracy"`` or ``"loss"``: cross-entropy) or float targets
            (``"loss"``: L1).
        level: the accuracy (or loss) to get back to (finite).
        metric: ``"accuracy"`` or ``"loss"``.
        lr: learning rate (finite, > 0).
        optimizer: ``"adam"`` or ``"sgd"``.
        batch_size: forget items per step (>= 1).
        max_steps: most steps tried (>= 1).
        seed: seed of the shuffles (>= 0).

    Raises:
        TypeError: arguments of the wrong type.
        ValueError: an unknown ``metric`` or ``optimizer``, ``lr <= 0``, a non-finite ``level``, ``batch_size`` or
            ``max_steps`` < 1, no items, inputs and targets of different lengths, or accuracy on float targets.

    Example:
        >>> _ = torch.manual_seed(0); x = torch.randn(64, 4); y = (x[:, 0] > 0).long()
        >>> model = nn.Linear(4, 2)
        >>> relearn_time(model, x, y, level=0.0)                  # already at the level
        0
        >>> steps = relearn_time(model, x, y, level=0.95, lr=0.1)
        >>> 0 < steps <= 100, relearn_time(model, x, y, level=1.01, max_steps=3)
        (True, 4)
    """
    name = "relearn_time"
    check_choice(name, "metric", metric, ("accuracy", "loss"))
    check_float(name, "level", level)
    check_float(name, "lr", lr, low=0.0, low_open=True)
    check_choice(name, "optimizer", optimizer, ("adam", "sgd"))
    check_int(name, "batch_size", batch_size, low=1)
    check_int(name, "max_steps", max_steps, low=1)
    check_int(name, "seed", seed, low=0)
    n = inputs.shape[0]
    if n == 0 or targets.shape[0] != n:
        raise ValueError(f"relearn_time: {n} inputs and {targets.shape[0]} targets; give the same non-zero number")

    def reached(value: float) -> bool:
        return value >= level - 1e-12 if metric == "accuracy" else value <= level + 1e-12

    if reached(forget_level(model, inputs, targets, metric)):
        return 0
    copy_ = copy.deepcopy(model).train()
    copy_.requires_grad_(True)
    params = list(copy_.parameters())
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    pos = 0
    with torch.enable_grad():
        for step in range(1, max_steps + 1):
            if pos >= n:
                order, pos = torch.randperm(n, generator=gen), 0
            batch = order[pos : pos + batch_size]
            pos += batch_size
            loss = _loss(copy_(inputs[batch]), targets[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if reached(forget_level(copy_, inputs, targets, metric)):
                return step
    return max_steps + 1


@register("function", "unlearning", paper="Zero-Shot Machine Unlearning (https://arxiv.org/abs/2201.05629)")
def anamnesis_index(relearn_unlearned: float, relearn_retrained: float) -> float:
    """Anamnesis Index: relearn time of the unlearned model over the retrained model's (1 = like retraining).

    Values well below 1 say the unlearned model still carries the forget set (it relearns it fast).

    Raises:
        ValueError: a negative or non-finite time, or a retrained time of 0.

    Example:
        >>> anamnesis_index(12, 48)
        0.25
    """
    for arg, value in (("relearn_unlearned", relearn_unlearned), ("relearn_retrained", relearn_retrained)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"anamnesis_index({arg}={value}): relearn times must be finite and >= 0")
    if relearn_retrained == 0:
        raise ValueError("anamnesis_index(relearn_retrained=0): the retrained model's relearn time must be > 0")
    return float(relearn_unlearned) / float(relearn_retrained)
