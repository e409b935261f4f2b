"""Flag Aggregator (Almasi et al., ICLR 2024) as a DDP communication hook: Byzantine-robust gradient aggregation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example, LitmixCallback
from litmix.functional.flag_aggregator import _flag_aggregate
from litmix.registry import register
from litmix.validation import check_float, check_int

_PAPER = (
    "Flag Aggregator: Scalable Distributed Training under Failures and Augmented Losses using Convex Optimization "
    "(https://arxiv.org/abs/2302.05865)"
)


# all_gather_single (newer torch) replaces the deprecated all_gather_into_tensor; flat (p * n,) output either way
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass
class _FlagHookState:
    """Options of :func:`_flag_aggregation_hook` and what it measured on the last bucket of the last step."""

    subspace_dim: int = 1
    iterations: int = 4
    lam: float = 0.0
    eps: float = 1e-8
    process_group: Any = None
    min_explained: float = 1.0  # smallest ||Y.T x_i||^2 over workers: an outlier's direction leaves the subspace
    calls: int = 0
    _scratch: dict[str, Any] = field(default_factory=dict, repr=False)


def _zero_non_finite_rows(gathered: torch.Tensor) -> torch.Tensor:
    """A worker that sends NaN or inf is treated as sending zeros (no direction, norm 0) instead of poisoning all."""
    finite = torch.isfinite(gathered).all(dim=1, keepdim=True)
    return gathered if bool(finite.all()) else torch.where(finite, gathered, torch.zeros_like(gathered))


def _flag_aggregation_hook(state: _FlagHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: all-gather the bucket from every rank and return its flag aggregate.

    Every rank aggregates the same gathered ``(world_size, n)`` matrix with the same code, so every rank
    gets the same gradient and the replicas stay identical.
    """
    buffer = bucket.buffer()
    group = state.process_group
    world = dist.get_world_size(group)
    flat = torch.empty(world * buffer.numel(), dtype=buffer.dtype, device=buffer.device)
    _ALL_GATHER(flat, buffer.reshape(-1).contiguous(), group=group)
    gathered = _zero_non_finite_rows(flat.view(world, buffer.numel()))
    aggregated, explained = _flag_aggregate(
        gathered, state.subspace_dim, state.iterations, state.lam, state.eps, rescale=True
    )
    state.min_explained = (
        float(explained.min()) if bucket.index() == 0 else min(state.min_explained, float(explained.min()))
    )
    state.calls += 1
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    future.set_result(aggregated.view_as(buffer))
    return future


# DDP checks the hook's annotations as objects; ``from __future__ import annotations`` made them strings
_flag_aggregation_hook.__annotations__ = {
    "state": _FlagHookState,
    "bucket": dist.GradBucket,
    "return": torch.futures.Future[torch.Tensor],
}


@register("callback", "optimization", paper=_PAPER)
class FlagAggregation(LitmixCallback):
    """Replace DDP's gradient averaging by the Flag Aggregator, robust to workers sending corrupted gradients.

    Almasi et al., "Flag Aggregator: Scalable Distributed Training under Failures and Augmented Losses using
    Convex Optimization", ICLR 2024 (https://arxiv.org/abs/2302.05865). Under ``strategy="ddp"`` (any
    :class:`~lightning.pytorch.strategies.DDPStrategy`: ``ddp``, ``ddp_spawn``, ``ddp_fork``) the callback
    registers a communication hook on the DDP-wrapped model in ``on_fit_start`` (the model is wrapped after
    ``setup``; the strategy is checked in ``setup``): for every gradient bucket, each rank all-gathers the ``p``
    ranks' bucket (``p x n``, gloo or NCCL) and computes :func:`litmix.functional.flag_aggregator.flag_aggregate`:
    the unit gradients' flag median subspace, fitted by IRLS on the ``p x p`` Gram matrix, and the mean projection
    onto it, rescaled by the median gradient norm. A rank whose gradient direction is off the honest
    subspace (noise) contributes almost nothing, and a rank sending a scaled, negated gradient cannot reverse
    the step, where plain averaging follows it. A rank sending NaN or inf counts as sending zeros. Every rank
    computes the same aggregate, so replicas stay equal.

    The aggregation runs per DDP bucket (``Trainer(strategy=DDPStrategy(bucket_cap_mb=...))`` sets its size; the
    paper aggregates the whole gradient, which one bucket larger than the model reproduces). It costs an
    all-gather (``p`` times the all-reduce's receive volume) and ``O(p^2 n)`` flops per step; see
    ``benchmarks/results/flag_aggregator.md``. On a single device (one worker) there is nothing to aggregate
    and the callback does nothing. Logged (every ``log_every_n_steps``): ``flag/min_explained``, the smallest
    share ``||Y.T x_i||^2`` of a worker's unit gradient inside the subspace (near 0: a worker is off the others).

    Args:
        subspace_dim: dimension ``m`` of the flag subspace, >= 1 (the paper's default 1; clipped to the world size).
        iterations: IRLS iterations after the flag-mean start, >= 0.
        lam: weight of the paper's pairwise-difference term, a finite number >= 0 (0: plain flag median).
        eps: IRLS weight smoothing, a finite number > 0.
        name: optional instance name (checkpoint key and log prefix).

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for an argument out of range, naming it.
        MisconfigurationException: in ``setup`` for a strategy other than DDP or a single device (FSDP,
            DeepSpeed, ...), naming it; in ``on_fit_start`` when the DDP model already has a communication hook.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, (flag,) = FlagAggregation.example()
        >>> flag.subspace_dim, flag.iterations
        (1, 4)
        >>> trainer = fit_tiny([flag], module=module, datamodule=datamodule, max_steps=2)  # 1 device: no-op
        >>> trainer.global_step
        2
    """

    default_log_prefix: ClassVar[str] = "flag"

    def __init__(
        self, subspace_dim: int = 1, iterations: int = 4, lam: float = 0.0, eps: float = 1e-8, name: str | None = None
    ) -> None:
        owner = type(self).__name__
        subspace_dim = check_int(owner, "subspace_dim", subspace_dim, low=1)
        iterations = check_int(owner, "iterations", iterations, low=0)
        lam = check_float(owner, "lam", lam, low=0.0)
        eps = check_float(owner, "eps", eps, low=0.0, low_open=True)
        super().__init__(name=name)
        self.subspace_dim, self.iterations, self.lam, self.eps = subspace_dim, iterations, lam, eps
        self.hook_state: _FlagHookState | None = None  # created when the hook is registered

    @classmethod
    def example(cls) -> Example:
        """The paper's defaults (m = 1) on :class:`litmix.testing.TinyClassifier` and ``TinyDataModule``."""
        from litmix.testing import TinyClassifier, TinyDataModule

        return Example(TinyClassifier(), TinyDataModule(), [cls()])

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check state keys and the strategy: DDP (hooked in ``on_fit_start``) or a single device (no-op)."""
        super().setup(trainer, pl_module, stage)
        owner = type(self).__name__
        strategy = trainer.strategy
        refuse_sharded_strategy(owner, strategy, "the hook aggregates whole gradient buckets of a DDP model")
        if not isinstance(strategy, DDPStrategy | SingleDeviceStrategy):
            raise MisconfigurationException(
                f"{owner} does not support Trainer(strategy={type(strategy).__name__}): it registers a DDP "
                "communication hook; use strategy='ddp' (or 'ddp_spawn' / 'ddp_fork'), or a single device"
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Register the hook on the DDP-wrapped model (every rank), before the first backward."""
        strategy = trainer.strategy
        if not isinstance(strategy, DDPStrategy):
            rank_zero_info(f"{type(self).__name__}: one process, nothing to aggregate; the callback does nothing")
            return
        model = strategy.model
        if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
            raise MisconfigurationException(
                f"{type(self).__name__}: expected the DDP-wrapped model at on_fit_start, got {type(model).__name__}"
            )
        state = _FlagHookState(self.subspace_dim, self.iterations, self.lam, self.eps, process_group=None)
        try:
            model.register_comm_hook(state, _flag_aggregation_hook)  # type: ignore[arg-type]
        except RuntimeError as err:
            raise MisconfigurationException(
                f"{type(self).__name__}: could not register the communication hook ({err}); remove "
                "DDPStrategy(ddp_comm_hook=...) or other callbacks registering one"
            ) from err
        self.hook_state = state

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Log the smallest explained share of the last step (identical on every rank)."""
        state = self.hook_state
        every = int(getattr(trainer, "log_every_n_steps", 50) or 0)
        if state is None or state.calls == 0 or every <= 0 or (trainer.global_step - 1) % every != 0:
            return
        pl_module.log(
            f"{self.log_prefix}/min_explained", state.min_explained, on_step=True, on_epoch=False, batch_size=1
        )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Drop the hook state (the DDP wrapper that holds the hook is discarded with the fit)."""
        self.hook_state = None

    def __getstate__(self) -> dict[str, Any]:
        """The hook state belongs to one fit."""
        return {**self.__dict__, "hook_state": None}
