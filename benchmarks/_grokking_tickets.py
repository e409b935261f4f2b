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

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader

from litmix.callbacks import LotteryTicket
from litmix.datamodules import ModularArithmeticDataModule
from litmix.functional.sparsity import magnitude_masks, random_masks
from litmix.testing import make_trainer

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
            grad = params[n].grad
            assert grad is not None
            grad.mul_(m)
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


# ----------------------------------------------------------------------------- through the Lightning callback


class OneHotMLP(pl.LightningModule):
    """:func:`make_net` as a LightningModule over ``(a, b)`` tokens (one-hot inside), full-batch AdamW lr 1e-2."""

    def __init__(self, p: int, seed: int, weight_decay: float, hidden: int = 128) -> None:
        super().__init__()
        self.p, self.weight_decay = p, weight_decay
        self.net = make_net(p, seed, hidden)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.net(nn.functional.one_hot(tokens, self.p).flatten(1).float())

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        tokens, labels, _ = batch
        return nn.functional.cross_entropy(self(tokens), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=self.weight_decay)


class StepsToBar(Callback):
    """Every ``every`` steps: test accuracy; records the first step >= ``bar`` before and after ``ticket``'s round
    (counted from the round) and stops the fit once the retrain reaches it."""

    def __init__(self, dm: ModularArithmeticDataModule, ticket: LotteryTicket | None, every: int, bar: float) -> None:
        self.x, self.y = dm.tokens[dm.val_indices], dm.labels[dm.val_indices]
        self.ticket, self.every, self.bar = ticket, every, bar
        self.base: int | None = None
        self.base_max_acc = 0.0
        self.retrain: int | None = None
        self.curve: list[float] = []
        self.weight_decay: list[float] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        start = self.ticket.round_steps[0] if self.ticket is not None and self.ticket.round_steps else None
        retraining = self.ticket is None or start is not None
        since = step - (start or 0)
        if since % self.every:
            return
        with torch.no_grad():
            acc = float((pl_module(self.x).argmax(1) == self.y).float().mean())
        if not retraining:
            self.base_max_acc = max(self.base_max_acc, acc)
            if self.base is None and acc >= self.bar:
                self.base = step
            return
        self.curve.append(acc)
        self.weight_decay.append(trainer.optimizers[0].param_groups[0]["weight_decay"])
        if acc >= self.bar and self.retrain is None:
            self.retrain = since
            trainer.should_stop = True


def lightning_tickets(
    p: int = 31,
    train_fraction: float = 0.7,
    seed: int = 0,
    keeps: tuple[float, ...] = (0.4, 0.7),
    base_weight_decay: float = 1.0,
    base_steps: int = 2000,
    max_steps: int = 2000,
    every: int = 25,
    retrain_weight_decay: float = 0.0,
    bar: float = 0.95,
) -> dict[str, Any]:
    """The ticket recipe through :class:`~litmix.callbacks.LotteryTicket` in Lightning fits (full batch).

    Ticket / random: one fit each, AdamW with ``base_weight_decay`` for ``base_steps`` steps, then the callback's
    round (global magnitude or random mask of the two weight matrices at ``1 - keep``, rewind to ``theta_0``,
    optimizer state cleared, weight decay set to ``retrain_weight_decay``) and up to ``max_steps`` retrain steps.
    Dense: a fit from ``theta_0`` with ``retrain_weight_decay``. Returns steps to test accuracy >= ``bar`` (from
    the rewind; ``None``: not within ``max_steps``), the base run's grokking step and each run's best accuracy
    (``base@<keep>_max_acc``: the base run's, before the round).
    """
    out: dict[str, Any] = {}

    def fit(weight_decay: float, cb: LotteryTicket | None, steps: int) -> StepsToBar:
        dm = ModularArithmeticDataModule(p=p, train_fraction=train_fraction, batch_size=None, seed=seed)
        dm.setup()
        rec = StepsToBar(dm, cb, every, bar)
        trainer = make_trainer(callbacks=[c for c in (cb, rec) if c is not None], max_steps=steps, max_epochs=-1)
        # the DataModule's full batch, collated once (re-collating 673 items per step dominated the run time)
        full_batch: list[Any] = [next(iter(dm.train_dataloader()))]
        trainer.fit(
            OneHotMLP(p, seed, weight_decay),
            train_dataloaders=DataLoader(full_batch, batch_size=None),  # type: ignore[arg-type]
        )
        return rec

    names = ["net.0.weight", "net.2.weight"]
    for keep in keeps:
        for scoring, label in (("magnitude", "ticket"), ("random", "random")):
            cb = LotteryTicket(
                sparsity=1.0 - keep,
                prune_every=base_steps,
                unit="step",
                scoring=scoring,  # type: ignore[arg-type]
                parameter_names=names,
                retrain_weight_decay=retrain_weight_decay,
                seed=seed,
            )
            rec = fit(base_weight_decay, cb, base_steps + max_steps)
            out[f"base@{keep}"], out[f"base@{keep}_max_acc"] = rec.base, rec.base_max_acc
            out[f"{label}@{keep}"] = rec.retrain
            out[f"{label}@{keep}_max_acc"] = max(rec.curve)
            out[f"{label}@{keep}_wd"] = sorted(set(rec.weight_decay))
    rec = fit(retrain_weight_decay, None, max_steps)
    out["dense"], out["dense_max_acc"] = rec.retrain, max(rec.curve)
    return out
