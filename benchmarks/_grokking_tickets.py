"""Grokking Tickets runs on modular addition, shared by ``benchmarks/bench_grokking_tickets.py`` (the seed sweep)
and ``tests/test_grokking_tickets.py`` (the effect test, which imports this file by path).

Grokking Tickets (Minegishi et al., "Grokking Tickets: Lottery Tickets Accelerate Grokking",
https://arxiv.org/abs/2310.19470): train a dense net until it groks (weight decay on), take the global
magnitude mask of the grokked weights (the selector :class:`~litmix.callbacks.LotteryTicket` uses,
:func:`litmix.functional.sparsity.magnitude_masks`), rewind the survivors to the initialization ``theta_0`` and
retrain **without** weight decay; compared with the dense net from ``theta_0`` without weight decay and with a
random mask of the same per-layer density (:func:`litmix.functional.sparsity.random_masks`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from litmix.datamodules import ModularArithmeticDataModule
from litmix.functional.sparsity import magnitude_masks, random_masks

LR = 1e-2


def modular_data(p: int, train_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One-hot ``(a, b)`` inputs and ``(a + b) mod p`` labels, split by the DataModule's seeded split."""
    dm = ModularArithmeticDataModule(p=p, train_fraction=train_fraction, batch_size=None, seed=seed)
    dm.setup()
    x = nn.functional.one_hot(dm.tokens, p).flatten(1).float()
    return x[dm.train_indices], dm.labels[dm.train_indices], x[dm.val_indices], dm.labels[dm.val_indices]


def make_net(p: int, seed: int, hidden: int = 128) -> nn.Sequential:
    """ReLU MLP ``2p - hidden - p`` seeded by ``seed`` (its initialization is ``theta_0``)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2 * p, hidden), nn.ReLU(), nn.Linear(hidden, p))


def train(
    net: nn.Module,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    weight_decay: float,
    max_steps: int,
    masks: dict[str, Tensor] | None = None,
    every: int = 25,
    bar: float = 0.95,
    accuracy: list[float] | None = None,
) -> int | None:
    """Full-batch AdamW (lr 1e-2); masked weights stay 0 (gradients and weights masked at every step).

    Returns the first step (checked every ``every``) with test accuracy >= ``bar``, ``None`` if not reached; the
    test accuracy of every check is appended to ``accuracy`` when given.
    """
    xtr, ytr, xte, yte = data
    params = dict(net.named_parameters())
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=weight_decay)
    with torch.no_grad():
        for n, m in (masks or {}).items():
            params[n].mul_(m)
    for step in range(1, max_steps + 1):
        loss = nn.functional.cross_entropy(net(xtr), ytr)
        opt.zero_grad()
        loss.backward()
        for n, m in (masks or {}).items():
            params[n].grad.mul_(m)
        opt.step()
        with torch.no_grad():
            for n, m in (masks or {}).items():
                params[n].mul_(m)
        if step % every == 0:
            with torch.no_grad():
                acc = float((net(xte).argmax(1) == yte).float().mean())
            if accuracy is not None:
                accuracy.append(acc)
            if acc >= bar:
                return step
    return None


def grokking_tickets(
    p: int = 31,
    train_fraction: float = 0.7,
    seed: int = 0,
    keep: float = 0.4,
    base_weight_decay: float = 1.0,
    max_base_steps: int = 4000,
    max_steps: int = 3000,
    every: int = 25,
    retrain_weight_decay: float = 0.0,
    variants: tuple[str, ...] = ("ticket", "dense", "random"),
) -> dict[str, Any]:
    """Base run to grokking, then ticket / dense / random retrains from ``theta_0`` (weight decay
    ``retrain_weight_decay``, 0 in the paper).

    Returns the steps to test accuracy >= 0.95 (``base``, ``ticket``, ``dense``, ``random``; ``None`` = not
    within the budget) and each retrain's last and best test accuracy (``<name>_final_acc``, ``<name>_max_acc``).
    The mask covers the two weight matrices (biases dense), global magnitude, ``keep`` kept.
    """
    data = modular_data(p, train_fraction, seed)
    net = make_net(p, seed)
    theta0 = {k: v.detach().clone() for k, v in net.state_dict().items()}
    base = train(net, data, base_weight_decay, max_base_steps, every=every)
    weights = {n: prm.detach() for n, prm in net.named_parameters() if n.endswith("weight")}
    ticket_masks = magnitude_masks(weights, 1.0 - keep, "global")
    dens = {n: float(m.float().mean()) for n, m in ticket_masks.items()}
    rand_masks = random_masks(
        {n: tuple(w.shape) for n, w in weights.items()}, dens, torch.Generator().manual_seed(seed)
    )
    out: dict[str, Any] = {"base": base, "density": dens}
    for name, masks in (("ticket", ticket_masks), ("dense", None), ("random", rand_masks)):
        if name not in variants:
            continue
        fresh = make_net(p, seed)
        fresh.load_state_dict(theta0)
        curve: list[float] = []
        out[name] = train(fresh, data, retrain_weight_decay, max_steps, masks=masks, every=every, accuracy=curve)
        out[f"{name}_final_acc"] = curve[-1]
        out[f"{name}_max_acc"] = max(curve)
    return out
