"""Annealed Gaussian gradient noise (Neelakantan et al. 2015), identical on every DDP rank."""

from __future__ import annotations

import math
import zlib
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example, LitmixCallback
from litmix.registry import register
from litmix.validation import check_float, check_int

_PAPER = "Adding Gradient Noise Improves Learning for Very Deep Networks (https://arxiv.org/abs/1511.06807)"
MAX_SEED = 2**32 - 1
_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant (golden ratio): spreads (seed, step, optimizer) over the seed space


@register("callback", "optimization", paper=_PAPER)
class GradientNoise(LitmixCallback):
    """Add annealed Gaussian noise to every gradient before the optimizer step.

    Neelakantan et al., "Adding Gradient Noise Improves Learning for Very Deep Networks", 2015
    (https://arxiv.org/abs/1511.06807): at step ``t`` (``trainer.global_step``, 0 at the first step) every
    gradient gets ``N(0, sigma_t^2)`` noise with ``sigma_t^2 = eta / (1 + t)^gamma``. The paper uses
    ``gamma = 0.55`` and ``eta`` in {0.01, 0.3, 1.0} (0.01 for most tasks, 1.0 for 20-layer networks).

    The noise is added to the gradients of the optimizer being stepped after the DDP all-reduce, AMP
    unscaling and gradient clipping, immediately before ``optimizer.step``: under automatic optimization
    Lightning clips (``Trainer(gradient_clip_val)``) after ``on_before_optimizer_step``, so the callback wraps
    the module's ``configure_gradient_clipping`` for the duration of the fit and adds the noise right after it
    (the clipped gradient plus unclipped noise, as in the paper, where clipping bounds the gradient and the
    noise is added to the result). Under manual optimization Lightning does not clip, and the noise is added in
    ``on_before_optimizer_step``. It is drawn from a generator seeded by
    ``(seed, global_step, optimizer index)`` only, so every DDP rank adds the same noise and the replicas stay
    identical (with per-rank noise they drift apart), and a resumed run adds the noise an uninterrupted run
    adds. With ``accumulate_grad_batches=k`` the noise is added once per optimizer step.

    ``sigma_t`` is logged as ``<name or "grad_noise">/sigma`` on the steps the loggers record
    (``Trainer(log_every_n_steps)``), so logging costs nothing on the other steps.

    Sharded strategies (FSDP, DeepSpeed) are refused in ``setup``: each rank holds different shards, so the
    shared generator would give every shard the same noise values.

    Args:
        eta: noise scale at ``t = 0``, a finite number > 0 (default 0.01).
        gamma: decay exponent, a finite number >= 0 (default 0.55; 0 keeps the noise constant).
        seed: seed of the noise, in [0, 2**32 - 1]; ``None`` derives it at ``setup`` from ``torch.initial_seed()``
            (set by ``seed_everything``) and this callback's state key, and broadcasts rank 0's value. The seed is
            checkpointed.
        name: optional instance name (checkpoint key and log prefix).

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for ``eta <= 0``, ``gamma < 0``, non-finite values or a seed outside [0, 2**32 - 1].
        MisconfigurationException: in ``setup`` under ``strategy="fsdp"`` or DeepSpeed.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, (noise,) = GradientNoise.example()
        >>> noise.sigma(0), round(noise.sigma(99), 5)  # sqrt(0.01), sqrt(0.01 / 100**0.55)
        (0.1, 0.02818)
        >>> trainer = fit_tiny([noise], module=module, datamodule=datamodule, max_steps=2)
        >>> isinstance(noise.seed, int)  # chosen at setup (None: from the run's seed) and checkpointed
        True
    """

    default_log_prefix: ClassVar[str] = "grad_noise"

    def __init__(
        self, eta: float = 0.01, gamma: float = 0.55, seed: int | None = None, name: str | None = None
    ) -> None:
        owner = type(self).__name__
        eta = check_float(owner, "eta", eta, low=0.0, low_open=True)
        gamma = check_float(owner, "gamma", gamma, low=0.0)
        seed = check_int(owner, "seed", seed, low=0, high=MAX_SEED, allow_none=True)
        super().__init__(name=name)
        self.eta, self.gamma = eta, gamma
        self.seed: int | None = seed
        self._generators: dict[torch.device, torch.Generator] = {}  # re-seeded every step; not state
        self._buffers: dict[tuple[torch.device, torch.dtype], Any] = {}  # CPU noise buffers (see _noise_views)
        self._pending: torch.optim.Optimizer | None = None  # optimizer whose noise waits for clipping
        self._wrapped: pl.LightningModule | None = None  # module whose configure_gradient_clipping is wrapped

    @classmethod
    def example(cls) -> Example:
        """The paper's default schedule on :class:`litmix.testing.TinyClassifier` and ``TinyDataModule``."""
        from litmix.testing import TinyClassifier, TinyDataModule

        return Example(TinyClassifier(), TinyDataModule(), [cls(eta=0.01, gamma=0.55)])

    def sigma(self, step: int) -> float:
        """Noise standard deviation at optimizer step ``step``: ``sqrt(eta / (1 + step)^gamma)``."""
        return math.sqrt(self.eta / (1.0 + step) ** self.gamma)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check state keys; refuse sharded strategies; choose the seed (rank 0's) unless given."""
        super().setup(trainer, pl_module, stage)
        refuse_sharded_strategy(
            type(self).__name__, trainer.strategy, "one step-seeded noise stream per rank would repeat across shards"
        )
        if self.seed is None:
            derived = (torch.initial_seed() + zlib.crc32(self.state_key.encode())) % (MAX_SEED + 1)
            self.seed = int(trainer.strategy.broadcast(derived, src=0))
        if stage == "fit" and pl_module.automatic_optimization and self._wrapped is None:
            self._wrap_clipping(trainer, pl_module)

    def _wrap_clipping(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Add the pending noise right after the module's ``configure_gradient_clipping`` (an instance attribute)."""
        clip = pl_module.configure_gradient_clipping  # the class's method, or another callback's wrapper

        def configure_gradient_clipping(optimizer: Any, *args: Any, **kwargs: Any) -> None:
            clip(optimizer, *args, **kwargs)
            pending = self._pending
            if pending is not None and pending is optimizer:
                self._pending = None
                self.add_noise(trainer, pending)

        pl_module.configure_gradient_clipping = configure_gradient_clipping  # type: ignore[method-assign]
        self._wrapped = pl_module

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Give the module its own ``configure_gradient_clipping`` back."""
        if self._wrapped is not None:
            self._wrapped.__dict__.pop("configure_gradient_clipping", None)
            self._wrapped, self._pending = None, None

    def _generator(self, trainer: pl.Trainer, device: torch.device, opt_idx: int) -> torch.Generator:
        """The generator of this step: a function of ``(seed, global_step, optimizer index)`` only."""
        assert self.seed is not None, "GradientNoise.setup() chooses the seed"
        key = (self.seed * _MIX + trainer.global_step * 0x100000001B3 + opt_idx) % 2**63
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        return generator.manual_seed(key)

    def __getstate__(self) -> dict[str, Any]:
        """Generators do not pickle and buffers are scratch space: both are re-created."""
        return {**self.__dict__, "_generators": {}, "_buffers": {}, "_pending": None, "_wrapped": None}

    def _noise_views(
        self, device: torch.device, dtype: torch.dtype, tensors: list[torch.Tensor], generator: torch.Generator
    ) -> list[torch.Tensor]:
        """Standard normal noise shaped like ``tensors``: one ``normal_`` into one buffer, returned as views.

        On CPU the buffer and its views are kept for the next step while the gradients' shapes stay the same
        (a fresh buffer costs page faults and the views cost Python time on every step); on other devices the
        buffer is allocated per step so that it does not hold memory through forward and backward.
        """
        shapes = tuple(g.shape for g in tensors)
        cached = self._buffers.get((device, dtype))
        if cached is not None and cached[0] == shapes:
            buffer, views = cached[1], cached[2]
        else:
            sizes = [g.numel() for g in tensors]
            buffer = torch.empty(sum(sizes), device=device, dtype=dtype)
            views = [c.view(shape) for c, shape in zip(buffer.split(sizes), shapes, strict=True)]
            if device.type == "cpu":
                self._buffers[(device, dtype)] = (shapes, buffer, views)
        buffer.normal_(generator=generator)
        return views

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Add the noise now (manual optimization), or after Lightning's gradient clipping (automatic)."""
        if pl_module is not None and pl_module is self._wrapped and pl_module.automatic_optimization:
            self._pending = optimizer
        else:
            self.add_noise(trainer, optimizer)
        every = int(getattr(trainer, "log_every_n_steps", 50) or 0)
        if pl_module is not None and every > 0 and trainer.global_step % every == 0:
            pl_module.log(
                f"{self.log_prefix}/sigma", self.sigma(trainer.global_step), on_step=True, on_epoch=False, batch_size=1
            )

    @torch.no_grad()
    def add_noise(self, trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> None:
        """Add ``N(0, sigma_t^2)`` to every gradient of ``optimizer``, ``t = trainer.global_step``."""
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        step = trainer.global_step
        sigma = self.sigma(step)
        optimizers = trainer.optimizers
        opt_idx = 0 if len(optimizers) < 2 else next((i for i, o in enumerate(optimizers) if o is optimizer), 0)
        first = grads[0]
        if all(g.device == first.device and g.dtype == first.dtype for g in grads):
            groups = {(first.device, first.dtype): grads}
        else:
            groups = {}
            for g in grads:
                groups.setdefault((g.device, g.dtype), []).append(g)
        for (device, dtype), tensors in groups.items():
            # one draw per (device, dtype) in the gradients' dtype, added through views of the gradients' shapes
            generator = self._generator(trainer, device, opt_idx)
            torch._foreach_add_(tensors, self._noise_views(device, dtype, tensors, generator), alpha=sigma)

    def state_dict(self) -> dict[str, Any]:
        """The seed (the noise of step ``t`` is a function of the seed and ``t``)."""
        return {**super().state_dict(), "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the seed."""
        super().load_state_dict(state_dict)
        self.seed = state_dict.get("seed", self.seed)
