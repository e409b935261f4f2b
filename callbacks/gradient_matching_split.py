"""GM-NAS: split a training NB201 supernet into sub-supernets by gradient matching and keep training them."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example, LitmixCallback
from litmix.data import split_batch
from litmix.nas.ddp import broadcast_buffers
from litmix.nas.gm_split import GM_NAS_PAPER, GradientMatchingSplitter
from litmix.nas.nb201 import EDGES
from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_int, check_type

__all__ = ["GradientMatchingSplit"]


def _clone_state(state: dict[str, Any]) -> dict[str, Any]:
    """Detached CPU-independent copies of every tensor in a (nested) state."""
    return {k: (v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v)) for k, v in state.items()}


@register("callback", "nas", paper=GM_NAS_PAPER)
class GradientMatchingSplit(LitmixCallback):
    """Few-shot NAS by gradient matching: split the supernet at scheduled epochs and train the sub-supernets.

    Hu et al., "Generalizing Few-Shot NAS with Gradient Matching", https://arxiv.org/abs/2203.15207. At the end
    of every epoch in ``split_epochs`` (0-based) each current sub-supernet (at first, the whole supernet of a
    :class:`litmix.plugins.NB201SupernetModule`) is split: :class:`~litmix.nas.gm_split.GradientMatchingSplitter`
    activates each allowed operation of an edge in turn (the other edges follow random paths), averages the
    gradients of the shared weights over ``repeat`` training batches, and partitions the edge's operations into
    ``num_groups`` groups by exhaustive min-cut on ``1 - cos`` (or MSE) distances; the split edge is ``edge`` or,
    when None, the edge with the lowest cut score (GM-NAS). Each child inherits the parent's weights, BatchNorm
    statistics and optimizer state and may only sample its group of operations on that edge (the module's
    ``allowed_mask``). Training then continues with the sub-supernets in turn: step ``t`` trains sub-supernet
    ``t mod K`` (their states are swapped in place into the module and its optimizer, so DDP keeps its parameter
    tensors), i.e. each gets ``1/K`` of the remaining steps (the reference instead trains each sub-supernet for
    extra epochs). A swap copies the module and optimizer state: on the C=8 digits supernet a step costs 1.34x the
    CPU time of a plain step, and one split 1.15 s (``benchmarks/bench_nas_supernets.py``). Splits are cumulative
    (a second split epoch splits every sub-supernet again).

    The split is computed on global rank 0 with its first ``repeat`` batches of a fresh pass over
    ``trainer.train_dataloader`` (the module's weights and buffers are restored afterwards) and broadcast; the
    path of each step is drawn by the module from ``(seed, global_step)`` within the active sub-supernet's
    allowed ops, so every rank trains the same path. Rank 0's BatchNorm buffers are broadcast before a
    sub-supernet is stored. The inactive sub-supernets (module state + optimizer state), their allowed ops and
    the split history are this callback's checkpoint state, so a resumed run continues exactly.
    :meth:`subnet_accuracy` evaluates each cell with the sub-supernet that owns it (:meth:`owner_of`).
    With ``path_sampling="pada"`` the PA&DA statistics travel with each sub-supernet, but a sub-supernet's
    path probabilities are only recomputed at the epoch ends where it is the active one; GM-NAS uses uniform
    sampling. Sharded strategies (FSDP, DeepSpeed) are refused in ``setup``: the stored sub-supernets are whole
    copies of the parameters.

    Args:
        split_epochs: epochs (0-based) after which to split, each >= 0.
        num_groups: operation groups per split (2 or 3 in GM-NAS), >= 2.
        repeat: training batches averaged per operation, >= 1 (GM-NAS averages many; 4-8 suffice on digits).
        distance: ``"cos"`` (GM-NAS) or ``"mse"``.
        edge: the edge (index into :data:`~litmix.nas.nb201.EDGES`) to split, or None for the lowest-cut edge.
        balanced: only near-equal group sizes (GM-NAS).
        seed: seed of the random paths on the other edges while matching gradients (>= 0).
        name: prefix of the logged keys and of the checkpoint key (default ``"gmnas"``).

    Logs ``<prefix>/num_subsupernets`` (every epoch end), ``<prefix>/split_edge`` and ``<prefix>/cut`` (mean over
    the sub-supernets split at that epoch).

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for a negative split epoch, ``num_groups < 2``, ``repeat < 1``, an edge outside ``[0, 6)``
            or an unknown distance.
        MisconfigurationException: in ``setup`` for a module without an NB201 supernet (``net`` with
            ``set_active``/``edge_parameters`` and an ``allowed_mask`` buffer), or a sharded strategy.

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> from litmix.testing import make_trainer
        >>> module, dm, callbacks = GradientMatchingSplit.example()
        >>> make_trainer(max_epochs=2, callbacks=callbacks).fit(module, datamodule=dm)
        >>> split = callbacks[0]
        >>> len(split.sub_allowed), sorted(op for sub in split.sub_allowed for op in sub[split.history[0]["edge"]])
        (2, [0, 1, 2, 3, 4])
        >>> split.owner_of((2, 2, 2, 2, 2, 2)) in (0, 1)
        True
    """

    default_log_prefix = "gmnas"
    state_version = 1

    def __init__(
        self,
        split_epochs: list[int] | None = None,
        num_groups: int = 2,
        repeat: int = 4,
        distance: Literal["cos", "mse"] = "cos",
        edge: int | None = None,
        balanced: bool = True,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        cls = type(self).__name__
        check_type(cls, "split_epochs", split_epochs, (list, tuple), allow_none=True)
        epochs = list(split_epochs) if split_epochs is not None else [0]
        for e in epochs:
            check_int(cls, "split_epochs", e, low=0)
        check_int(cls, "num_groups", num_groups, low=2)
        check_int(cls, "repeat", repeat, low=1)
        check_choice(cls, "distance", distance, ("cos", "mse"))
        check_int(cls, "edge", edge, low=0, high=len(EDGES) - 1, allow_none=True)
        check_bool(cls, "balanced", balanced)
        check_int(cls, "seed", seed, low=0)
        super().__init__(name=name)
        self.split_epochs = sorted({int(e) for e in epochs})
        self.num_groups, self.repeat, self.distance = num_groups, repeat, distance
        self.edge, self.balanced, self.seed = edge, balanced, seed
        self.sub_allowed: list[list[list[int]]] = []  # per sub-supernet: allowed op indices per edge ([] = unsplit)
        self.slots: list[dict[str, Any] | None] = []  # stored states of the inactive sub-supernets
        self.active = 0
        self.history: list[dict[str, Any]] = []  # one entry per split: epoch, parent, edge, groups, cut

    @classmethod
    def example(cls) -> Example:
        """A split after epoch 0 of a tiny NB201 supernet on 48 digits (3 steps per epoch).

        The module is imported lazily: callbacks import only the core at module level.
        """
        from litmix.datamodules.digits import DigitsDataModule
        from litmix.plugins.nb201_supernet import NB201SupernetModule

        module = NB201SupernetModule(C=4, N=1, in_channels=1, reduction="light", lr=0.05)
        return Example(module, DigitsDataModule(batch_size=16, flatten=False, train_size=48), [cls(repeat=1)])

    def _state_key_fields(self) -> dict[str, Any]:
        """Two unnamed instances differ by their schedule and split rule."""
        return {"split_epochs": self.split_epochs, "num_groups": self.num_groups, "edge": self.edge}

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Sub-supernets' allowed ops, the inactive ones' module and optimizer states, the active index, history."""
        return {
            **super().state_dict(),
            "sub_allowed": copy.deepcopy(self.sub_allowed),
            "slots": copy.deepcopy(self.slots),
            "active": self.active,
            "history": copy.deepcopy(self.history),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the split state (the active sub-supernet's weights come with the module's checkpoint)."""
        super().load_state_dict(state_dict)
        self.sub_allowed = copy.deepcopy(state_dict.get("sub_allowed", []))
        self.slots = copy.deepcopy(state_dict.get("slots", []))
        self.active = int(state_dict.get("active", 0))
        self.history = copy.deepcopy(state_dict.get("history", []))

    # ------------------------------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the module is an NB201 supernet module; refuse sharded strategies."""
        super().setup(trainer, pl_module, stage)
        net = getattr(pl_module, "net", None)
        if not (
            callable(getattr(net, "set_active", None))
            and callable(getattr(net, "edge_parameters", None))
            and isinstance(getattr(pl_module, "allowed_mask", None), Tensor)
        ):
            raise MisconfigurationException(
                f"{type(self).__name__} needs a module with an NB201 supernet `net` (set_active, edge_parameters) "
                f"and an `allowed_mask` buffer (litmix.plugins.NB201SupernetModule); got {type(pl_module).__name__}"
            )
        refuse_sharded_strategy(
            type(self).__name__,
            trainer.strategy,
            "the inactive sub-supernets are stored as whole copies of the parameters and optimizer state",
            "DDPStrategy(find_unused_parameters=True)",
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Swap in sub-supernet ``global_step mod K`` (round robin over the sub-supernets)."""
        if len(self.sub_allowed) > 1:
            self._activate(trainer, pl_module, trainer.global_step % len(self.sub_allowed))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At a split epoch: split every sub-supernet (decided on rank 0, broadcast)."""
        if trainer.current_epoch in self.split_epochs and not any(
            h["epoch"] == trainer.current_epoch for h in self.history
        ):
            self._split_all(trainer, pl_module)
        pl_module.log(f"{self.log_prefix}/num_subsupernets", float(max(len(self.sub_allowed), 1)))

    # ------------------------------------------------------------------------------------------ swapping
    @staticmethod
    def _optimizer_state(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for i, opt in enumerate(trainer.optimizers):
            for name, p in pl_module.named_parameters():
                if p in opt.state:
                    out[f"{i}:{name}"] = _clone_state(opt.state[p])
        return out

    @staticmethod
    def _load_optimizer_state(trainer: pl.Trainer, pl_module: pl.LightningModule, state: dict[str, Any]) -> None:
        for i, opt in enumerate(trainer.optimizers):
            for name, p in pl_module.named_parameters():
                saved = state.get(f"{i}:{name}")
                if saved is None:
                    opt.state.pop(p, None)
                    continue
                current = opt.state.get(p)
                fresh = {k: (v.to(p.device) if isinstance(v, Tensor) and v.dim() > 0 else v) for k, v in saved.items()}
                if current is None:
                    opt.state[p] = _clone_state(fresh)
                    continue
                for k, v in fresh.items():
                    if isinstance(v, Tensor) and isinstance(current.get(k), Tensor) and current[k].shape == v.shape:
                        current[k].copy_(v)
                    else:
                        current[k] = v.clone() if isinstance(v, Tensor) else copy.deepcopy(v)

    def _capture(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        broadcast_buffers(pl_module)  # BatchNorm statistics: rank 0's, so every rank stores the same sub-supernet
        module = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        return {"module": module, "optimizer": self._optimizer_state(trainer, pl_module)}

    @staticmethod
    def _load_module(pl_module: pl.LightningModule, module_state: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for k, v in pl_module.state_dict().items():  # in place: DDP keeps its parameter tensors
                v.copy_(module_state[k])

    def _activate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, k: int) -> None:
        if k == self.active:
            return
        self.slots[self.active] = self._capture(trainer, pl_module)
        slot = self.slots[k]
        assert slot is not None, f"{type(self).__name__}: sub-supernet {k} has no stored state"
        self._load_module(pl_module, slot["module"])
        self._load_optimizer_state(trainer, pl_module, slot["optimizer"])
        self.slots[k] = None
        self.active = k

    # ------------------------------------------------------------------------------------------ splitting
    def _batches(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[tuple[Tensor, Tensor]]:
        loader: Iterable[Any] = trainer.train_dataloader  # type: ignore[assignment]
        out: list[tuple[Tensor, Tensor]] = []
        for batch in loader:
            x, y, _ = split_batch(batch)
            if y is None:
                raise MisconfigurationException(f"{type(self).__name__} needs (x, y) training batches")
            out.append((x.to(pl_module.device), y.to(pl_module.device)))
            if len(out) >= self.repeat:
                break
        return out

    def _decide(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        parents: Sequence[Sequence[Sequence[int]]],
        states: Sequence[dict[str, Any]],
    ) -> list[dict[str, Any] | None]:
        """On rank 0 (no collectives): the split of every parent (``None`` when no edge has enough ops left)."""
        splitter = GradientMatchingSplitter(self.num_groups, self.repeat, self.distance, self.balanced, self.seed)
        batches = self._batches(trainer, pl_module)
        net: Any = getattr(pl_module, "net")  # noqa: B009
        decisions: list[dict[str, Any] | None] = []
        for allowed, state in zip(parents, states, strict=True):
            self._load_module(pl_module, state["module"])  # the parent's weights; reloaded after the split
            if self.edge is not None:
                if len(allowed[self.edge]) < self.num_groups:
                    decisions.append(None)
                    continue
                split = splitter.edge_split(net, batches, self.edge, allowed)
            else:
                try:
                    split = splitter.best_split(net, batches, allowed)
                except ValueError:  # no edge has num_groups ops left
                    decisions.append(None)
                    continue
            decisions.append({"edge": split.edge, "groups": split.groups, "cut": split.cut})
        return decisions

    def _split_all(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        num_ops = int(getattr(pl_module, "net").num_ops)  # noqa: B009
        if not self.sub_allowed:
            mask: Any = getattr(pl_module, "allowed_mask")  # noqa: B009
            self.sub_allowed = [[[o for o in range(num_ops) if bool(mask[e, o])] for e in range(len(EDGES))]]
            self.slots, self.active = [None], 0
        self.slots[self.active] = self._capture(trainer, pl_module)  # every rank (broadcasts BN buffers)
        parents = copy.deepcopy(self.sub_allowed)
        states = list(self.slots)
        assert all(s is not None for s in states)
        decisions = (
            self._decide(trainer, pl_module, parents, states)  # type: ignore[arg-type]
            if trainer.is_global_zero
            else None
        )
        decisions = trainer.strategy.broadcast(decisions, src=0)
        assert decisions is not None
        new_allowed: list[list[list[int]]] = []
        new_slots: list[dict[str, Any] | None] = []
        edges, cuts = [], []
        for i, (allowed, decision, state) in enumerate(zip(parents, decisions, states, strict=True)):
            assert state is not None
            if decision is None:
                new_allowed.append(allowed)
                new_slots.append(state)
                continue
            edges.append(decision["edge"])
            cuts.append(decision["cut"])
            self.history.append(
                {
                    "epoch": trainer.current_epoch,
                    "parent": i,
                    "edge": decision["edge"],
                    "groups": decision["groups"],
                    "cut": decision["cut"],
                }
            )
            for group in decision["groups"]:
                child = [list(row) for row in allowed]
                child[decision["edge"]] = list(group)
                child_state = {"module": _clone_state(state["module"]), "optimizer": copy.deepcopy(state["optimizer"])}
                mask = torch.zeros_like(child_state["module"]["allowed_mask"])
                for e, row in enumerate(child):
                    mask[e, row] = True
                child_state["module"]["allowed_mask"] = mask
                probs = child_state["module"]["path_probs"] * mask
                child_state["module"]["path_probs"] = probs / probs.sum(-1, keepdim=True)
                new_allowed.append(child)
                new_slots.append(child_state)
        self.sub_allowed, self.slots = new_allowed, new_slots
        keep = 0 if edges else self.active
        slot = self.slots[keep]
        assert slot is not None
        self._load_module(pl_module, slot["module"])
        self._load_optimizer_state(trainer, pl_module, slot["optimizer"])
        self.slots[keep], self.active = None, keep
        if edges:
            pl_module.log(f"{self.log_prefix}/split_edge", float(edges[0]))
            pl_module.log(f"{self.log_prefix}/cut", sum(cuts) / len(cuts))

    # ------------------------------------------------------------------------------------------ evaluation
    def owner_of(self, code: Sequence[int]) -> int:
        """Index of the sub-supernet whose allowed ops contain ``code`` (0 before any split).

        Raises:
            ValueError: when no sub-supernet owns ``code``.
        """
        if not self.sub_allowed:
            return 0
        for i, allowed in enumerate(self.sub_allowed):
            if all(int(c) in row for c, row in zip(code, allowed, strict=True)):
                return i
        raise ValueError(f"{type(self).__name__}.owner_of: no sub-supernet allows code {tuple(code)}")

    def subnet_accuracy(
        self,
        pl_module: pl.LightningModule,
        codes: Iterable[Sequence[int]],
        dataloader: Iterable[Any],
        batch_stats: bool = True,
    ) -> list[float]:
        """Inherited-weight accuracy of each code, evaluated with the sub-supernet that owns it.

        Loads each owning sub-supernet's weights into ``pl_module`` (an NB201 supernet module trained with this
        callback), calls its ``subnet_accuracy``, and leaves the active sub-supernet's weights in place afterwards.
        """
        codes = [tuple(int(c) for c in code) for code in codes]
        batches = list(dataloader)
        active = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        out = [0.0] * len(codes)
        try:
            for i in range(max(len(self.sub_allowed), 1)):
                mine = [j for j, code in enumerate(codes) if self.owner_of(code) == i]
                if not mine:
                    continue
                slot = self.slots[i] if i < len(self.slots) and i != self.active else None
                self._load_module(pl_module, slot["module"] if slot is not None else active)
                accs = pl_module.subnet_accuracy([codes[j] for j in mine], batches, batch_stats)  # type: ignore[operator]
                for j, acc in zip(mine, accs, strict=True):
                    out[j] = acc
        finally:
            self._load_module(pl_module, active)
        return out
