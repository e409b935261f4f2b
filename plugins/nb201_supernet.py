"""Single-path one-shot NAS-Bench-201 supernet with uniform or PA&DA path sampling."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example, LitmixModule
from litmix.data import split_batch
from litmix.nas.ddp import broadcast_buffers
from litmix.nas.evaluation import subnet_accuracy
from litmix.nas.nb201 import EDGES, OPS, REDUCTIONS
from litmix.nas.pada import pada_op_probs, pada_tau
from litmix.nas.sampling import make_generator, sample_path
from litmix.nas.schedules import cosine_lr_scheduler
from litmix.nas.supernet import NB201Supernet
from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_float, check_int, check_type

PATH_SAMPLING = ("uniform", "pada")


@register(
    "plugin",
    "nas",
    paper="Single Path One-Shot Neural Architecture Search with Uniform Sampling (https://arxiv.org/abs/1904.00420); "
    "PA&DA: Jointly Sampling PAth and DAta for Consistent NAS (https://arxiv.org/abs/2302.14772)",
)
class NB201SupernetModule(LitmixModule):
    """Train a weight-sharing NAS-Bench-201 supernet by sampling one cell per step (SPOS), optionally with PA&DA.

    Each training step activates one code (one op per edge, shared by all cells, see
    :class:`~litmix.nas.supernet.NB201Supernet`) and takes a cross-entropy step on the inherited weights.
    Codes are drawn from a generator seeded by ``(seed, global_step)`` (the Once-for-All trick), so every DDP
    rank trains the same path without communication and a resumed run continues the same code sequence.

    - ``path_sampling="uniform"``: each edge's op is uniform over its allowed ops (Guo et al.,
      https://arxiv.org/abs/1904.00420).
    - ``path_sampling="pada"``: PA&DA path importance (Lu et al., https://arxiv.org/abs/2302.14772). After each
      optimizer step the gradient norm of the sampled op's weights (summed over the cells) is accumulated per
      (edge, op); at each epoch end ``p_o = tau * m_o / sum(m) + (1 - tau) / O`` with ``m_o`` = mean norm per
      sample and ``tau`` = the fraction of training done (:func:`litmix.nas.pada.pada_tau`: ``(epoch + 1) /
      max_epochs`` in an epoch-limited run; the same function sets the data half's ``tau`` in
      :class:`litmix.callbacks.PADASampling`). Parameter-free ops get 0 importance, so their probability decays
      (the paper's behaviour). ``pada_per_edge=False`` pools the statistics per op type over edges (reference).
      Pair with :class:`litmix.callbacks.PADASampling` for the data half of PA&DA; ``training_step`` returns
      the logits for it.

    Optimiser: SGD (Nesterov) with a per-step cosine schedule over ``trainer.estimated_stepping_batches``
    (:func:`litmix.nas.schedules.cosine_lr_scheduler`), gradient-norm clipping at ``grad_clip``. Validation
    logs ``supernet/val_acc`` of code ``eval_code`` (or of a fixed random code per batch when None).
    :meth:`subnet_accuracy` ranks architectures by inherited weights. PA&DA statistics and probabilities are
    buffers, so they are checkpointed; they are computed from gradients that DDP has already averaged, so every
    rank holds the same values; BatchNorm statistics are broadcast from rank 0 at every epoch end
    (:func:`litmix.nas.ddp.broadcast_buffers`). Only the sampled path's weights get
    gradients, so DDP needs ``DDPStrategy(find_unused_parameters=True)``. Sharded strategies (FSDP, DeepSpeed)
    are refused in ``setup``: the per-op gradient norms need whole parameters.

    Args:
        C: channels of the first stage (> 0).
        N: cells per stage (> 0).
        num_classes: classes.
        in_channels: image channels.
        reduction: ``"resnet"`` (NB201) or ``"light"`` (cheap reductions for 8x8 digits).
        ops: candidate op names (default the 5 NB201 ops).
        allowed_ops: per edge, the op indices that may be sampled (sub-supernets of GM-NAS); None = all.
        path_sampling: ``"uniform"`` or ``"pada"``.
        pada_per_edge: PA&DA statistics per (edge, op) instead of per op type.
        lr: peak learning rate (> 0).
        momentum: SGD momentum in ``[0, 1)``.
        weight_decay: weight decay (>= 0).
        grad_clip: gradient-norm clip (0 = off).
        cosine: cosine-anneal the learning rate to 0 over the run.
        seed: base seed of the path sequence (>= 0).
        eval_code: code evaluated in validation, or None.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for an unknown ``path_sampling``/``reduction``/op, out-of-range numbers or a malformed
            ``allowed_ops``/``eval_code``.
        MisconfigurationException: in ``setup`` under a sharded strategy (FSDP, DeepSpeed).

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> from litmix.testing import make_trainer
        >>> module, dm, _ = NB201SupernetModule.example()
        >>> make_trainer(max_steps=3).fit(module, datamodule=dm)
        >>> len(module.sample_code(0)), module.sample_code(5) == module.sample_code(5)
        (6, True)
    """

    def __init__(
        self,
        C: int = 16,
        N: int = 5,
        num_classes: int = 10,
        in_channels: int = 3,
        reduction: Literal["resnet", "light"] = "resnet",
        ops: list[str] | None = None,
        allowed_ops: list[list[int]] | None = None,
        path_sampling: Literal["uniform", "pada"] = "uniform",
        pada_per_edge: bool = False,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        grad_clip: float = 5.0,
        cosine: bool = True,
        seed: int = 0,
        eval_code: list[int] | None = None,
    ) -> None:
        name = type(self).__name__
        for arg, value in (("C", C), ("N", N), ("num_classes", num_classes), ("in_channels", in_channels)):
            check_int(name, arg, value, low=1)
        check_choice(name, "reduction", reduction, REDUCTIONS)
        check_choice(name, "path_sampling", path_sampling, PATH_SAMPLING)
        check_bool(name, "pada_per_edge", pada_per_edge)
        check_float(name, "lr", lr, low=0.0, low_open=True)
        check_float(name, "momentum", momentum, low=0.0, high=1.0, high_open=True)
        check_float(name, "weight_decay", weight_decay, low=0.0)
        check_float(name, "grad_clip", grad_clip, low=0.0)
        check_bool(name, "cosine", cosine)
        check_int(name, "seed", seed, low=0)
        check_type(name, "ops", ops, (list, tuple), allow_none=True)
        check_type(name, "allowed_ops", allowed_ops, (list, tuple), allow_none=True)
        check_type(name, "eval_code", eval_code, (list, tuple), allow_none=True)
        op_names = list(ops) if ops is not None else list(OPS)
        if not op_names or any(not isinstance(o, str) or o not in OPS for o in op_names):
            raise ValueError(f"{name}(ops={ops!r}): ops must be a non-empty list of operation names from {OPS}")
        num_ops = len(op_names)
        if allowed_ops is not None and (
            len(allowed_ops) != len(EDGES)
            or any(
                not isinstance(row, list | tuple)
                or not row
                or any(isinstance(o, bool) or not isinstance(o, int) or not 0 <= o < num_ops for o in row)
                for row in allowed_ops
            )
        ):
            raise ValueError(
                f"{name}(allowed_ops={allowed_ops!r}): need {len(EDGES)} non-empty lists of op indices "
                f"in [0, {num_ops})"
            )
        if eval_code is not None and (
            len(eval_code) != len(EDGES)
            or any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(op_names) for c in eval_code)
        ):
            raise ValueError(f"{name}(eval_code={eval_code!r}): need {len(EDGES)} op indices in [0, {len(op_names)})")
        super().__init__()
        self.save_hyperparameters()
        self.net = NB201Supernet(C, N, num_classes, in_channels, reduction, op_names)
        mask = torch.ones(len(EDGES), num_ops, dtype=torch.bool)
        if allowed_ops is not None:
            mask.zero_()
            for e, row in enumerate(allowed_ops):
                mask[e, [int(o) for o in row]] = True
        self.path_sampling, self.pada_per_edge = path_sampling, pada_per_edge
        self.lr, self.momentum, self.weight_decay, self.grad_clip = lr, momentum, weight_decay, grad_clip
        self.cosine, self.seed = cosine, seed
        self.eval_code = tuple(eval_code) if eval_code is not None else None
        self.register_buffer("allowed_mask", mask)
        self.register_buffer("path_probs", mask.double() / mask.sum(-1, keepdim=True))
        self.register_buffer("pada_norm_sum", torch.zeros(len(EDGES), num_ops, dtype=torch.float64))
        self.register_buffer("pada_count", torch.zeros(len(EDGES), num_ops, dtype=torch.float64))
        self.allowed_mask: Tensor
        self.path_probs: Tensor
        self.pada_norm_sum: Tensor
        self.pada_count: Tensor

    # ------------------------------------------------------------------------------------------ examples
    @classmethod
    def example(cls) -> Example:
        """A 4-channel, 1-cell-per-stage supernet on 64 digits (1x8x8), PA&DA path sampling."""
        from litmix.datamodules.digits import DigitsDataModule

        module = cls(C=4, N=1, in_channels=1, reduction="light", path_sampling="pada", lr=0.05)
        return Example(module, DigitsDataModule(batch_size=16, flatten=False, train_size=64), [])

    def setup(self, stage: str) -> None:
        """Refuse sharded strategies: the PA&DA statistics and single-path updates need whole parameters."""
        refuse_sharded_strategy(
            type(self).__name__,
            self.trainer.strategy,
            "the per-op gradient norms of PA&DA and the single-path updates need whole parameters",
            "DDPStrategy(find_unused_parameters=True)",
        )

    # ------------------------------------------------------------------------------------------ sampling
    def sample_code(self, step: int, k: int = 0) -> tuple[int, ...]:
        """The code trained at ``step`` (deterministic in ``(seed, step, k)`` and the current path probabilities)."""
        return sample_path(self.path_probs * self.allowed_mask, make_generator(self.seed, step, k))

    def set_active(self, code: Sequence[int]) -> None:
        """Activate ``code`` in the supernet."""
        self.net.set_active(code)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the active subnet."""
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        """Sample a path from ``(seed, global_step)``, cross-entropy on it; returns loss and detached logits."""
        x, y, _ = split_batch(batch)
        assert y is not None, f"{type(self).__name__} needs (x, y) batches"
        self.net.set_active(self.sample_code(self.global_step))
        logits = self.net(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("supernet/loss", loss, prog_bar=True)
        return {"loss": loss, "logits": logits.detach()}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """PA&DA: accumulate the gradient norm of each sampled op (grads are already all-reduced under DDP)."""
        if self.path_sampling != "pada":
            return
        for e, op in enumerate(self.net.active_code):
            grads = [p.grad for p in self.net.edge_parameters(e, op) if p.grad is not None]
            norm = float(sum(g.detach().norm() for g in grads)) if grads else 0.0
            self.pada_norm_sum[e, op] += norm
            self.pada_count[e, op] += 1.0

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip to ``grad_clip`` (PA&DA / NB201 supernets use 5) unless the Trainer asks for its own clipping."""
        if gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        elif self.grad_clip > 0:
            self.clip_gradients(optimizer, self.grad_clip, "norm")

    def on_train_epoch_end(self) -> None:
        """Broadcast rank 0's buffers (BN statistics); PA&DA: recompute the path distribution.

        ``tau`` = :func:`litmix.nas.pada.pada_tau` (fraction of the run done).
        """
        broadcast_buffers(self)
        if self.path_sampling != "pada":
            return
        tau = pada_tau(self.trainer, owner=type(self).__name__)
        norm_sum, count = self.pada_norm_sum, self.pada_count
        if not self.pada_per_edge:
            norm_sum = norm_sum.sum(0, keepdim=True).expand_as(self.pada_norm_sum)
            count = count.sum(0, keepdim=True).expand_as(self.pada_count)
        probs = pada_op_probs(norm_sum, count, tau) * self.allowed_mask
        zero_rows = probs.sum(-1) <= 0
        probs[zero_rows] = self.allowed_mask[zero_rows].double()
        self.path_probs.copy_(probs / probs.sum(-1, keepdim=True))
        sync = self.trainer.world_size > 1  # identical on every rank already: no change, no "use sync_dist" warning
        self.log("pada/path_tau", tau, sync_dist=sync)
        self.log("pada/path_prob_max", self.path_probs.max(), sync_dist=sync)

    # ------------------------------------------------------------------------------------------ evaluation
    def _eval_code(self, batch_idx: int) -> tuple[int, ...]:
        if self.eval_code is not None:
            return self.eval_code
        return sample_path(self.allowed_mask.double(), make_generator(self.seed + 1, batch_idx))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Accuracy of ``eval_code`` (or a fixed random code per batch) with inherited weights."""
        x, y, _ = split_batch(batch)
        self.net.set_active(self._eval_code(batch_idx))
        self.log("supernet/val_acc", (self.net(x).argmax(-1) == y).float().mean())

    def subnet_accuracy(
        self, codes: Iterable[Sequence[int]], dataloader: Iterable[Any] | DataLoader, batch_stats: bool = True
    ) -> list[float]:
        """Inherited-weight accuracy of each code on ``dataloader`` (:func:`litmix.nas.evaluation.subnet_accuracy`).

        With ``batch_stats=True`` every BatchNorm normalises with the evaluation batch's statistics (running
        statistics are left untouched): the running statistics of a weight-sharing supernet mix all paths, so
        batch statistics (or a BN recalibration) are needed for a fair ranking. Use large evaluation batches.
        The batches are read once and reused for every code.
        """
        batches = list(dataloader)
        out = []
        for code in codes:
            self.net.set_active(code)
            out.append(subnet_accuracy(self, batches, forward=self.net, batch_stats=batch_stats))
        return out

    def configure_optimizers(self) -> Any:
        """SGD (Nesterov when momentum > 0) with an optional per-step cosine schedule."""
        opt = torch.optim.SGD(
            self.parameters(),
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.momentum > 0,
            weight_decay=self.weight_decay,
        )
        if not self.cosine:
            return opt
        return {"optimizer": opt, "lr_scheduler": cosine_lr_scheduler(opt, self.trainer, type(self).__name__)}
