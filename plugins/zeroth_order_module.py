"""Train any classifier with forward passes only: DeepZero's sparse zeroth-order training (Chen et al. 2024)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example, LitmixModule
from litmix.data import split_batch
from litmix.functional.zeroth_order import cge_gradient, rge_gradient, sample_coordinates, zo_grasp_ratios
from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int, check_type

_PAPER = "DeepZero: Scaling up Zeroth-Order Optimization for Deep Model Training (https://arxiv.org/abs/2310.02025)"
ESTIMATORS = ("cge", "rge")
LAYER_RATIOS = ("uniform", "zo_grasp")


@register("plugin", "optimization", paper=_PAPER)
class ZerothOrderModule(LitmixModule):
    """Train a classifier without a single backward pass: DeepZero's sparse zeroth-order SGD.

    Chen et al., "DeepZero: Scaling up Zeroth-Order Optimization for Deep Model Training", ICLR 2024,
    https://arxiv.org/abs/2310.02025. Every step draws a random ``density`` fraction of each tensor's
    coordinates (per-tensor fractions ``uniform`` or from ZO-GraSP at the first step), estimates the gradient on
    them from forward passes only (:func:`~litmix.functional.zeroth_order.cge_gradient`, ``d_active + 1``
    forwards, or :func:`~litmix.functional.zeroth_order.rge_gradient` with ``q`` directions restricted to the
    same coordinates, ``q + 1`` forwards), writes it into ``.grad`` and steps SGD. Forwards are batched with
    ``torch.func.vmap`` (``chunk`` perturbations at a time); no graph is kept for a backward pass, but the
    batched forwards hold ``chunk`` perturbed parameter copies and ``chunk`` forwards' activations at once
    (``benchmarks/bench_zeroth_order.py``: 20–213x the transient memory of a backprop step on small MLPs at
    ``chunk`` 64–256): lower ``chunk`` to trade time for memory. Manual optimization; ``training_step`` runs under
    ``torch.no_grad``.

    DDP: the coordinates are drawn from a generator seeded by ``(seed, global_step)``, the same on every rank;
    each rank estimates on its shard of the batch and the estimates are averaged with one all-reduce per
    tensor, so the replicas stay equal. The ZO-GraSP ratios are computed on rank 0 and broadcast, and
    checkpointed. Sharded strategies are refused (the estimate perturbs whole tensors). Models with BatchNorm in
    training mode are refused at ``setup`` (vmapped forwards cannot update running statistics).

    Logs ``zo/loss`` (the unperturbed training loss), ``zo/forwards`` (forward passes in the step) and, with
    validation data, ``val/loss`` and ``val/acc``.

    Args:
        model: the classifier (any ``nn.Module`` mapping inputs to logits).
        lr: SGD learning rate, > 0.
        momentum: SGD momentum, in [0, 1).
        density: fraction of coordinates estimated per step, in (0, 1].
        mu: finite-difference step, > 0.
        estimator: ``"cge"`` (coordinate-wise, the paper's choice) or ``"rge"`` (randomized).
        q: RGE directions per step, >= 1.
        layer_ratios: ``"uniform"`` (every tensor at ``density``) or ``"zo_grasp"``.
        chunk: perturbed forwards per vmapped call, >= 1 (memory: ``chunk`` copies of the parameters).
        seed: seed of the coordinate draws, >= 0.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value outside its range, naming the argument; at ``setup``, a model with BatchNorm in
            training mode or without trainable parameters.
        MisconfigurationException: at ``setup`` under FSDP or DeepSpeed.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, _ = ZerothOrderModule.example()
        >>> trainer = fit_tiny(module=module, datamodule=datamodule, max_steps=2)
        >>> int(trainer.callback_metrics["zo/forwards"])  # half of each tensor (160 weights) + 1
        81
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.1,
        momentum: float = 0.0,
        density: float = 0.5,
        mu: float = 1e-3,
        estimator: str = "cge",
        q: int = 20,
        layer_ratios: str = "uniform",
        chunk: int = 256,
        seed: int = 0,
    ) -> None:
        owner = type(self).__name__
        check_type(owner, "model", model, nn.Module)
        lr = check_float(owner, "lr", lr, low=0.0, low_open=True)
        momentum = check_float(owner, "momentum", momentum, low=0.0, high=1.0, high_open=True)
        density = check_float(owner, "density", density, low=0.0, high=1.0, low_open=True)
        mu = check_float(owner, "mu", mu, low=0.0, low_open=True)
        check_choice(owner, "estimator", estimator, ESTIMATORS)
        q = check_int(owner, "q", q, low=1)
        check_choice(owner, "layer_ratios", layer_ratios, LAYER_RATIOS)
        chunk = check_int(owner, "chunk", chunk, low=1)
        seed = check_int(owner, "seed", seed, low=0)
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.automatic_optimization = False
        self.lr, self.momentum, self.density, self.mu = lr, momentum, density, mu
        self.estimator, self.q, self.layer_ratios, self.chunk, self.seed = estimator, q, layer_ratios, chunk, seed
        self.ratios: dict[str, float] | None = None

    @classmethod
    def example(cls) -> Example:
        """A tiny MLP (8-12-4, 160 weights) on :class:`litmix.testing.TinyDataModule`."""
        from litmix.testing import TinyDataModule

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 12), nn.Tanh(), nn.Linear(12, 4))
        return Example(cls(model, lr=0.1, density=0.5, chunk=64), TinyDataModule(), [])

    def forward(self, x: Tensor) -> Tensor:
        """The model's logits."""
        return self.model(x)  # type: ignore[no-any-return]

    def setup(self, stage: str) -> None:
        """Refuse sharded strategies, BatchNorm in training mode and models with nothing to train."""
        refuse_sharded_strategy(
            type(self).__name__, self.trainer.strategy, "zeroth-order estimates perturb whole parameter tensors"
        )
        owner = type(self).__name__
        for name, m in self.model.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                raise ValueError(
                    f"{owner}(model=...): module {name!r} is a {type(m).__name__} that tracks running statistics; "
                    "vmapped zeroth-order forwards cannot update them (use track_running_stats=False, GroupNorm or "
                    "LayerNorm)"
                )
        if not any(p.requires_grad for p in self.model.parameters()):
            raise ValueError(f"{owner}(model=...): the model has no trainable parameter")

    def _params(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in self.model.named_parameters() if p.requires_grad}

    def _loss_fn(self, x: Tensor, y: Tensor) -> Any:
        def loss(params: Any) -> Tensor:
            logits = torch.func.functional_call(self.model, dict(params), (x,))
            return nn.functional.cross_entropy(logits, y)

        return loss

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.global_step * 7_919) % 2**63)

    @torch.no_grad()
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """One zeroth-order SGD step on ``batch`` (no backward pass)."""
        x, y, _ = split_batch(batch)
        assert y is not None, "ZerothOrderModule trains a classifier: batches need targets"
        params = self._params()
        loss_fn = self._loss_fn(x, y)
        if self.ratios is None:
            if self.layer_ratios == "zo_grasp":
                ratios = zo_grasp_ratios(loss_fn, params, self.density, generator=self._generator())
            else:
                ratios = dict.fromkeys(params, self.density)
            self.ratios = self.trainer.strategy.broadcast(ratios, src=0)
        gen = self._generator()
        coords = sample_coordinates({n: p.shape for n, p in params.items()}, self.ratios, gen)
        if self.estimator == "cge":
            grads, loss, forwards = cge_gradient(loss_fn, params, coords, mu=self.mu, chunk=self.chunk)
        else:
            masks = {}
            for n, p in params.items():
                m = torch.zeros(p.numel(), dtype=torch.bool, device=p.device)
                if n in coords:
                    m[coords[n].to(p.device)] = True
                masks[n] = m.view_as(p)
            grads, loss, forwards = rge_gradient(
                loss_fn, params, q=self.q, mu=self.mu, masks=masks, generator=gen, chunk=self.chunk
            )
        world = self.trainer.world_size
        for name, p in self.model.named_parameters():
            if name in grads:
                g = grads[name]
                if world > 1:
                    g = self.trainer.strategy.reduce(g, reduce_op="mean")
                p.grad = g
        opt = self.optimizers()
        opt.step()  # type: ignore[union-attr]
        opt.zero_grad()  # type: ignore[union-attr]
        self.log("zo/loss", loss, prog_bar=True)
        self.log("zo/forwards", float(forwards))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Validation loss and accuracy."""
        x, y, _ = split_batch(batch)
        assert y is not None, "ZerothOrderModule validates a classifier: batches need targets"
        logits = self(x)
        self.log("val/loss", nn.functional.cross_entropy(logits, y), sync_dist=True)
        self.log("val/acc", (logits.argmax(-1) == y).float().mean(), sync_dist=True, prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """SGD with the module's ``lr`` and ``momentum``."""
        return torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=self.momentum)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the per-tensor coordinate fractions (ZO-GraSP's are computed once)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint["litmix"]["ratios"] = self.ratios

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the per-tensor coordinate fractions."""
        super().on_load_checkpoint(checkpoint)
        self.ratios = checkpoint.get("litmix", {}).get("ratios")
