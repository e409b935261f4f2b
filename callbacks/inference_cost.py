"""Idealised inference runtime of an autoregressive model, fitted from a profiled (prompt, output) grid."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from litmix.base import LitmixCallback
from litmix.data import split_batch
from litmix.functional.inference_cost import CostModel, fit_cost_model, profile_grid
from litmix.registry import register

_PAPER = (
    "Cheaply Evaluating Inference Efficiency Metrics for Autoregressive Transformer APIs "
    "(https://arxiv.org/abs/2305.02440)"
)


@register("callback", "proxy", paper=_PAPER)
class InferenceCostCallback(LitmixCallback):
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
    when its inputs are token ids, else drawn uniformly from ``range(vocab_size)``. Rank 0 profiles and
    broadcasts the fit. Logged through ``trainer.logger.log_metrics``: ``inference_cost/per_token_s``
    (``g``), ``inference_cost/prompt_intercept_s``, ``inference_cost/prompt_slope_s`` (seconds per prompt
    token), ``inference_cost/r2`` and ``inference_cost/reference_runtime_s`` (idealised runtime of
    ``reference_query``). The fit is kept in :attr:`cost_model` and in the checkpoint, with the prompt pool (a
    resumed run profiles with the prompts of the original first batch).

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
        ValueError: for empty grids, lengths below 1, ``repeats < 1``, ``vocab_size < 1``, a negative
            ``context_limit`` or a ``reference_query`` that is not two integers >= 1.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> cb = InferenceCostCallback.example()
        >>> _ = fit_tiny([cb], module=InferenceCostCallback.example_module(), max_steps=2)
        >>> cb.cost_model is not None and cb.cost_model.per_token > 0
        True
    """

    family = "proxy"

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
        prompt_lengths = [8, 32, 64, 128] if prompt_lengths is None else list(prompt_lengths)
        output_lengths = [1, 4, 8, 16] if output_lengths is None else list(output_lengths)
        for arg, grid in (("prompt_lengths", prompt_lengths), ("output_lengths", output_lengths)):
            if not grid or any(int(v) < 1 for v in grid):
                raise ValueError(f"InferenceCostCallback({arg}={grid}): {arg} must be a non-empty list of ints >= 1")
        if len(set(output_lengths)) < 2:
            raise ValueError(
                f"InferenceCostCallback(output_lengths={output_lengths}): need >= 2 distinct output lengths to fit g"
            )
        if repeats < 1:
            raise ValueError(f"InferenceCostCallback(repeats={repeats}): repeats must be >= 1")
        if vocab_size < 1:
            raise ValueError(f"InferenceCostCallback(vocab_size={vocab_size}): vocab_size must be >= 1")
        if context_limit < 0:
            raise ValueError(f"InferenceCostCallback(context_limit={context_limit}): context_limit must be >= 0")
        reference_query = [max(prompt_lengths), max(output_lengths)] if reference_query is None else reference_query
        if len(reference_query) != 2 or any(int(v) < 1 for v in reference_query):
            raise ValueError(f"InferenceCostCallback(reference_query={reference_query}): must be [p, o] with p, o >= 1")
        self.prompt_lengths: list[int] = [int(v) for v in prompt_lengths]
        self.output_lengths: list[int] = [int(v) for v in output_lengths]
        self.repeats = int(repeats)
        self.prompt_knots: list[int] = [int(v) for v in (prompt_knots or [])]
        self.vocab_size = int(vocab_size)
        self.context_limit = int(context_limit)
        self.reference_query: list[int] = [int(v) for v in reference_query]
        self.cost_model: CostModel | None = None
        self._prompt_pool: Tensor | None = None

    @classmethod
    def example(cls) -> InferenceCostCallback:
        """A 2x2 grid, one repeat, on the tiny token model of :meth:`example_module`."""
        return cls(prompt_lengths=[2, 6], output_lengths=[1, 3], repeats=1, vocab_size=8)

    @classmethod
    def example_module(cls) -> pl.LightningModule:
        """A tiny GRU next-token model that trains on :class:`litmix.testing.TinyDataModule` batches."""
        return _TinyTokenLM()

    # ------------------------------------------------------------------ hooks
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Keep the first batch's token ids as the prompt pool."""
        if self._prompt_pool is None:
            x, _, _ = split_batch(batch)
            if isinstance(x, Tensor) and not x.is_floating_point() and x.dim() == 2:
                self._prompt_pool = x.detach().flatten().cpu().clone()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Profile on rank 0, broadcast the fit, log it."""
        fitted = self.profile(pl_module) if trainer.is_global_zero else None
        self.cost_model = trainer.strategy.broadcast(fitted, src=0)
        if trainer.logger is not None and self.cost_model is not None:
            trainer.logger.log_metrics(self.metrics(), step=trainer.global_step)

    # ------------------------------------------------------------------ API
    def metrics(self) -> dict[str, float]:
        """The fitted costs under ``inference_cost/*`` keys (empty before a fit)."""
        m = self.cost_model
        if m is None:
            return {}
        return {
            "inference_cost/per_token_s": m.per_token,
            "inference_cost/prompt_intercept_s": m.intercept,
            "inference_cost/prompt_slope_s": m.prompt_slope,
            "inference_cost/r2": m.r2,
            "inference_cost/reference_runtime_s": m.runtime(*self.reference_query),
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
        m = state_dict.get("cost_model")
        self.cost_model = None if m is None else CostModel(**m)
        pool = state_dict.get("prompt_pool")
        self._prompt_pool = None if pool is None else pool.detach().cpu().clone()


class _TinyTokenLM(pl.LightningModule):
    """GRU next-token model on TinyDataModule features quantised to 8 tokens (for the contract tests)."""

    def __init__(self, vocab_size: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.emb = nn.Embedding(vocab_size, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, idx: Tensor) -> Tensor:
        """Logits ``(B, T, V)``."""
        out, _ = self.rnn(self.emb(idx))
        return self.head(out)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Next-token cross-entropy on quantised features."""
        x, _, _ = split_batch(batch)
        tokens = x.long() if not x.is_floating_point() else (x.clamp(-3.99, 3.99) + 4).long()
        logits = self(tokens[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, self.vocab_size), tokens[:, 1:].reshape(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam."""
        return torch.optim.Adam(self.parameters(), lr=0.01)
