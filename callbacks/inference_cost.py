"""Idealised inference runtime of an autoregressive model, fitted from a profiled (prompt, output) grid."""

from __future__ import annotations

import numbers
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example, LitmixCallback
from litmix.data import split_batch
from litmix.functional.inference_cost import CostModel, fit_cost_model, profile_grid
from litmix.registry import register
from litmix.validation import check_int, check_type

_PAPER = (
    "Cheaply Evaluating Inference Efficiency Metrics for Autoregressive Transformer APIs "
    "(https://arxiv.org/abs/2305.02440)"
)


def _int_list(owner: str, name: str, value: Any, low: int = 1, empty: bool = False) -> list[int]:
    """A list (or tuple) of ints >= ``low``; ``TypeError``/``ValueError`` naming the argument and the list."""
    check_type(owner, name, value, (list, tuple))
    want = f"{name} must be a {'' if empty else 'non-empty '}list of ints >= {low}"
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
    if bad:
        raise TypeError(f"{owner}({name}={value!r}): {want}, got {type(bad[0]).__name__} {bad[0]!r}")
    if (not value and not empty) or any(v < low for v in value):
        raise ValueError(f"{owner}({name}={value!r}): {want}")
    return [int(v) for v in value]


@register("callback", "proxy", paper=_PAPER)
class InferenceCost(LitmixCallback):
    """Profile generation over a (prompt length, output length) grid and fit the idealised runtime.

    Implements the cost model of Narayanan et al., "Cheaply Evaluating Inference Efficiency Metrics for
    Autoregressive Transformer APIs" (NeurIPS 2023, https://arxiv.org/abs/2305.02440):
    ``runtime(p, o) = f(p) + g * (o - 1)`` with ``f`` piecewise linear in the prompt length (knots
    ``prompt_knots``) and ``g`` the per-output-token time. Each grid point is timed ``repeats`` times and the
    minimum (lower envelope) is fitted by least squares (:func:`litmix.functional.inference_cost.fit_cost_model`).

    At ``on_train_end`` (and whenever :meth:`profile` is called) the module generates greedily in eval mode
    under ``torch.no_grad``: with ``pl_module.generate(idx, max_new_tokens)`` when the module has one
    (nanoGPT convention), else by repeated ``pl_module(idx)`` calls taking the argmax of the last position
    (``context_limit`` crops the context as nanoGPT does). Prompts are cut from the first training batch
    when its inputs are token ids (rank 0's first batch, broadcast, so every rank holds the same pool), else
    drawn uniformly from ``range(vocab_size)``. Rank 0 profiles and broadcasts the fit. Logged with
    ``log_metrics`` to every logger in ``trainer.loggers`` (``self.log`` is refused in ``on_train_end``), under
    :attr:`log_prefix` (``name``, default ``inference_cost``): ``<prefix>/per_token_s`` (``g``),
    ``<prefix>/prompt_intercept_s``, ``<prefix>/prompt_slope_s`` (seconds per prompt token), ``<prefix>/r2``
    and ``<prefix>/reference_runtime_s`` (idealised runtime of ``reference_query``). The fit is kept in
    :attr:`cost_model` and in the checkpoint, with the prompt pool (a resumed run profiles with the prompts of
    the original first batch).

    Sharded strategies are refused in ``setup``: rank 0 profiles the model alone, which needs whole (not
    FSDP/DeepSpeed-sharded) parameters; use DDP.

    Args:
        prompt_lengths: prompt lengths ``p`` to profile (each >= 1).
        output_lengths: output lengths ``o`` to profile (each >= 1).
        repeats: timings per grid point (>= 1).
        prompt_knots: prompt lengths where ``f`` may change slope.
        vocab_size: token range for random prompts (>= 1).
        context_limit: crop the context to its last ``context_limit`` tokens (0: no crop).
        reference_query: ``[p, o]`` whose idealised runtime is logged.
        name: optional instance name (unique checkpoint key).

    Raises:
        TypeError: for arguments of the wrong type (lists of ints, ints, ``name`` a str).
        ValueError: for empty grids, lengths below 1, fewer than 2 distinct prompt or output lengths, more knots
            than the grid can fit, ``repeats < 1``,
            ``vocab_size < 1``, a negative ``context_limit`` or a ``reference_query`` that is not two
            integers >= 1.
        MisconfigurationException: in ``setup`` under ``strategy="fsdp"`` or DeepSpeed.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, (cb,) = InferenceCost.example()
        >>> _ = fit_tiny([cb], module=module, datamodule=datamodule, max_steps=2)
        >>> cb.cost_model is not None and cb.cost_model.per_token > 0
        True
        >>> sorted(cb.metrics())[0]
        'inference_cost/per_token_s'
    """

    default_log_prefix: ClassVar[str] = "inference_cost"
    #: State entries that are wall-clock measurements: a resumed run re-profiles and cannot reproduce them
    #: bit for bit (resume-equality checks should compare their presence only).
    measured_state_keys: ClassVar[tuple[str, ...]] = ("cost_model",)

    def __init__(
        self,
        prompt_lengths: list[int] | None = None,
        output_lengths: list[int] | None = None,
        repeats: int = 3,
        prompt_knots: list[int] | None = None,
        vocab_size: int = 2,
        context_limit: int = 0,
        reference_query: list[int] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        owner = type(self).__name__
        prompt_lengths = (
            [8, 32, 64, 128] if prompt_lengths is None else _int_list(owner, "prompt_lengths", prompt_lengths)
        )
        output_lengths = [1, 4, 8, 16] if output_lengths is None else _int_list(owner, "output_lengths", output_lengths)
        if len(set(output_lengths)) < 2:
            raise ValueError(f"{owner}(output_lengths={output_lengths}): need >= 2 distinct output lengths to fit g")
        if len(set(prompt_lengths)) < 2:
            raise ValueError(
                f"{owner}(prompt_lengths={prompt_lengths}): need >= 2 distinct prompt lengths to fit the prompt cost"
            )
        check_int(owner, "repeats", repeats, low=1)
        prompt_knots = [] if prompt_knots is None else _int_list(owner, "prompt_knots", prompt_knots, low=0, empty=True)
        points = len(set(prompt_lengths)) * len(set(output_lengths))
        if points < 3 + len(prompt_knots):
            raise ValueError(
                f"{owner}(prompt_knots={prompt_knots}): {len(prompt_knots)} knots need >= {3 + len(prompt_knots)} "
                f"distinct (prompt, output) grid points, the grid has {points}"
            )
        check_int(owner, "vocab_size", vocab_size, low=1)
        check_int(owner, "context_limit", context_limit, low=0)
        if reference_query is None:
            reference_query = [max(prompt_lengths), max(output_lengths)]
        else:
            reference_query = _int_list(owner, "reference_query", reference_query)
            if len(reference_query) != 2:
                raise ValueError(
                    f"{owner}(reference_query={reference_query}): reference_query must be [p, o] with p, o >= 1"
                )
        self.prompt_lengths: list[int] = [int(v) for v in prompt_lengths]
        self.output_lengths: list[int] = [int(v) for v in output_lengths]
        self.repeats = int(repeats)
        self.prompt_knots: list[int] = [int(v) for v in prompt_knots]
        self.vocab_size = int(vocab_size)
        self.context_limit = int(context_limit)
        self.reference_query: list[int] = [int(v) for v in reference_query]
        self.cost_model: CostModel | None = None
        self._prompt_pool: Tensor | None = None
        self._pool_checked = False

    @classmethod
    def example(cls) -> Example:
        """A 2x2 grid, one repeat, on :class:`litmix.testing.TinyTokenLM` and ``TinyDataModule``."""
        from litmix.testing import TinyDataModule, TinyTokenLM

        return Example(
            TinyTokenLM(),
            TinyDataModule(),
            [cls(prompt_lengths=[2, 6], output_lengths=[1, 3], repeats=1, vocab_size=8)],
        )

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check state keys; refuse sharded strategies (rank 0 profiles the whole model alone)."""
        super().setup(trainer, pl_module, stage)
        refuse_sharded_strategy(
            type(self).__name__,
            trainer.strategy,
            "rank 0 profiles generation alone, which needs whole (unsharded) parameters",
        )

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Keep rank 0's first batch of token ids as the prompt pool (broadcast: equal on every rank)."""
        if self._pool_checked or self._prompt_pool is not None:
            return
        self._pool_checked = True
        x, _, _ = split_batch(batch)
        pool = None
        if isinstance(x, Tensor) and not x.is_floating_point() and x.dim() == 2:
            pool = x.detach().flatten().cpu().clone()
        if trainer.world_size > 1:
            pool = trainer.strategy.broadcast(pool, src=0)
        self._prompt_pool = pool

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Profile on rank 0, broadcast the fit, log it to every logger."""
        fitted = self.profile(pl_module) if trainer.is_global_zero else None
        self.cost_model = trainer.strategy.broadcast(fitted, src=0)
        if self.cost_model is not None:
            metrics = self.metrics()
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    # ------------------------------------------------------------------ API
    def metrics(self) -> dict[str, float]:
        """The fitted costs under ``<log_prefix>/*`` keys (empty before a fit)."""
        m = self.cost_model
        if m is None:
            return {}
        prefix = self.log_prefix
        return {
            f"{prefix}/per_token_s": m.per_token,
            f"{prefix}/prompt_intercept_s": m.intercept,
            f"{prefix}/prompt_slope_s": m.prompt_slope,
            f"{prefix}/r2": m.r2,
            f"{prefix}/reference_runtime_s": m.runtime(*self.reference_query),
        }

    def _prompt(self, p: int, device: torch.device) -> Tensor:
        pool = self._prompt_pool
        if pool is None or len(pool) == 0:
            gen = torch.Generator().manual_seed(p)
            return torch.randint(0, self.vocab_size, (1, p), generator=gen).to(device)
        reps = -(-p // len(pool))
        return pool.repeat(reps)[:p].unsqueeze(0).to(device)

    def _generate(self, module: nn.Module, idx: Tensor, o: int) -> Tensor:
        gen_fn = getattr(module, "generate", None)
        if callable(gen_fn):
            return gen_fn(idx, max_new_tokens=o)
        for _ in range(o):
            ctx = idx[:, -self.context_limit :] if self.context_limit else idx
            logits = module(ctx)
            logits = logits[:, -1] if logits.dim() == 3 else logits
            idx = torch.cat([idx, logits.argmax(-1, keepdim=True).to(idx.dtype)], dim=1)
        return idx

    def profile(self, pl_module: nn.Module) -> CostModel:
        """Time greedy generation over the grid and fit the cost model (does not change the module).

        Returns:
            The fitted :class:`~litmix.functional.inference_cost.CostModel`, also stored in :attr:`cost_model`.
        """
        device = next(pl_module.parameters()).device if any(True for _ in pl_module.parameters()) else None
        device = device or torch.device("cpu")
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                p, o, t = profile_grid(
                    lambda p_, o_: self._generate(pl_module, self._prompt(p_, device), o_),
                    self.prompt_lengths,
                    self.output_lengths,
                    repeats=self.repeats,
                )
        finally:
            pl_module.train(was_training)
        self.cost_model = fit_cost_model(p, o, t, knots=self.prompt_knots)
        return self.cost_model

    def state_dict(self) -> dict[str, Any]:
        """The fitted cost model (so a resumed run still reports it) and the prompt pool (same prompts)."""
        m = self.cost_model
        return {
            **super().state_dict(),
            "cost_model": None if m is None else m.__dict__.copy(),
            "prompt_pool": self._prompt_pool,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state_dict)
        m = state_dict.get("cost_model")
        self.cost_model = None if m is None else CostModel(**m)
        pool = state_dict.get("prompt_pool")
        self._prompt_pool = None if pool is None else pool.detach().cpu().clone()
