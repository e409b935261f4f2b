"""ProxylessNAS on a layer-wise MLP space: binarised paths, two optimizers, expected-latency loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example, LitmixModule
from litmix.data import split_batch
from litmix.nas.proxyless import binarized_alpha_grad, expected_latency, sample_two_paths
from litmix.nas.sampling import make_generator, sample_path
from litmix.registry import register
from litmix.validation import check_float, check_int, check_type

DEFAULT_OPS = ("skip", "mlp1", "mlp2", "mlp4")
DEFAULT_LATENCY = (0.0, 1.0, 2.0, 4.0)


def _make_mlp_op(name: str, width: int) -> nn.Module:
    """``skip`` (identity) or ``mlp<e>``: residual ``Linear(w, e*w) -> ReLU -> Linear(e*w, w)`` with expansion e."""
    if name == "skip":
        return nn.Identity()
    if name.startswith("mlp") and name[3:].isdigit() and int(name[3:]) > 0:
        e = int(name[3:])
        return nn.Sequential(nn.Linear(width, e * width), nn.ReLU(), nn.Linear(e * width, width))
    raise ValueError(f"unknown ProxylessNAS op {name!r}: use 'skip' or 'mlp<expansion>' (e.g. 'mlp2')")


class _MixedLayer(nn.Module):
    """Candidates of one layer; the output is ``x + sum_j gate_j * op_j(x)`` over the given (op, gate) pairs."""

    def __init__(self, ops: tuple[str, ...], width: int) -> None:
        super().__init__()
        self.candidates = nn.ModuleList(_make_mlp_op(o, width) for o in ops)
        self.is_skip = [o == "skip" for o in ops]

    def forward_gated(self, x: Tensor, ops: list[int], gates: Tensor | None = None) -> Tensor:
        out = torch.zeros_like(x)
        for j, op in enumerate(ops):
            y = x if self.is_skip[op] else x + self.candidates[op](x)
            out = out + (y if gates is None else gates[j] * y)
        return out


@register(
    "plugin",
    "nas",
    paper="ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware (https://arxiv.org/abs/1812.00332)",
)
class ProxylessNASModule(LitmixModule):
    """Latency-aware ProxylessNAS with binarised path sampling on a stack of MLP choice layers.

    Cai, Zhu & Han, https://arxiv.org/abs/1812.00332. ``num_layers`` layers of width ``width`` between a stem
    ``Linear(in_features, width)`` and a linear head; each layer chooses one of ``ops`` (``"skip"`` or residual
    ``"mlp<e>"`` blocks with expansion ``e``); architecture logits ``alpha`` ``[layers, ops]``, ``p = softmax``.
    Manual optimization with two optimizers, per training batch (split in two halves):

    1. **weight step** (first half): one op per layer sampled from ``p`` (one path in memory), cross-entropy,
       SGD step on the weights (weight decay = ``lambda_1 ||w||^2``);
    2. **architecture step** (second half, after ``warmup_steps`` batches): two ops per layer sampled without
       replacement, the active one drawn between them with renormalised ``p`` (binary gates ``g``); the
       forward pass uses ``sum_j g_j o_j(x)``, back-propagation gives ``dL/dg_j`` and the BinaryConnect-style
       estimate ``dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i)`` over the two candidates; the loss adds
       ``latency_weight * E[LAT]``, ``E[LAT] = sum_l sum_o p_lo F(o)`` from the ``latency`` table, whose gradient
       is exact. Adam step on ``alpha``.

    Samples come from generators seeded by ``(seed, batch)``: identical on DDP ranks and after a resume
    (``alpha`` is a parameter, so it is checkpointed). Under DDP the architecture gradient is averaged over
    ranks explicitly; only one path's weights are used per step, so pass
    ``DDPStrategy(find_unused_parameters=True)``. Logs ``proxyless/loss``, ``proxyless/arch_loss`` and
    ``proxyless/expected_latency``; :meth:`derived_code` is the argmax architecture.

    Args:
        in_features: input features (> 0); images are flattened.
        num_classes: classes.
        width: layer width (> 0).
        num_layers: choice layers (> 0).
        ops: candidate op names.
        latency: latency table entry per op (same length as ``ops``, >= 0); a fake table in tests.
        latency_weight: ``lambda_2`` (>= 0).
        lr: weight learning rate (> 0).
        arch_lr: architecture learning rate (> 0).
        weight_decay: ``lambda_1`` on the weights (>= 0).
        warmup_steps: batches with weight steps only (>= 0).
        seed: base seed of the path samples (>= 0).

    Sharded strategies (FSDP, DeepSpeed) are refused in ``setup``: the hand-made architecture gradient and the
    single-path weight steps need whole parameters.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for an unknown op, a latency table of the wrong length, or out-of-range numbers.
        MisconfigurationException: in ``setup`` under a sharded strategy (FSDP, DeepSpeed).

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> from litmix.testing import make_trainer
        >>> module, dm, _ = ProxylessNASModule.example()
        >>> make_trainer(max_steps=4).fit(module, datamodule=dm)
        >>> len(module.derived_code()), float(module.expected_latency().detach()) > 0
        (2, True)
    """

    def __init__(
        self,
        in_features: int = 64,
        num_classes: int = 10,
        width: int = 32,
        num_layers: int = 3,
        ops: list[str] | None = None,
        latency: list[float] | None = None,
        latency_weight: float = 0.0,
        lr: float = 0.05,
        arch_lr: float = 0.01,
        weight_decay: float = 1e-4,
        warmup_steps: int = 0,
        seed: int = 0,
    ) -> None:
        name = type(self).__name__
        for arg, value in (("in_features", in_features), ("num_classes", num_classes), ("width", width)):
            check_int(name, arg, value, low=1)
        check_int(name, "num_layers", num_layers, low=1)
        check_type(name, "ops", ops, (list, tuple), allow_none=True)
        check_type(name, "latency", latency, (list, tuple), allow_none=True)
        op_names = tuple(ops) if ops is not None else DEFAULT_OPS
        if not op_names:
            raise ValueError(f"{name}(ops={ops!r}): ops must list at least one candidate")
        for op in op_names:
            if not isinstance(op, str):
                raise TypeError(f"{name}(ops={ops!r}): every op must be a str, got {type(op).__name__}")
            if op != "skip" and not (op.startswith("mlp") and op[3:].isdigit() and int(op[3:]) > 0):
                raise ValueError(
                    f"{name}(ops={ops!r}): unknown op {op!r}; use 'skip' or 'mlp<expansion>' (e.g. 'mlp2')"
                )
        for v in latency or []:
            check_float(name, "latency", v, low=0.0)
        table = tuple(float(v) for v in latency) if latency is not None else DEFAULT_LATENCY[: len(op_names)]
        if len(table) != len(op_names):
            raise ValueError(f"{name}(latency={latency}): need {len(op_names)} non-negative entries, one per op")
        check_float(name, "latency_weight", latency_weight, low=0.0)
        check_float(name, "lr", lr, low=0.0, low_open=True)
        check_float(name, "arch_lr", arch_lr, low=0.0, low_open=True)
        check_float(name, "weight_decay", weight_decay, low=0.0)
        check_int(name, "warmup_steps", warmup_steps, low=0)
        check_int(name, "seed", seed, low=0)
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.stem = nn.Linear(in_features, width)
        self.layers = nn.ModuleList(_MixedLayer(op_names, width) for _ in range(num_layers))
        self.head = nn.Linear(width, num_classes)
        self.alpha = nn.Parameter(torch.zeros(num_layers, len(op_names)))
        self.register_buffer("latency_table", torch.tensor(table))
        self.latency_table: Tensor
        self.op_names = op_names
        self.latency_weight, self.lr, self.arch_lr = latency_weight, lr, arch_lr
        self.weight_decay, self.warmup_steps, self.seed = weight_decay, warmup_steps, seed

    @classmethod
    def example(cls) -> Example:
        """Two choice layers of width 16 on 64 flattened digits, with a latency penalty."""
        from litmix.datamodules.digits import DigitsDataModule

        module = cls(width=16, num_layers=2, latency_weight=0.1)
        return Example(module, DigitsDataModule(batch_size=16, train_size=64), [])

    def setup(self, stage: str) -> None:
        """Refuse sharded strategies: the architecture gradient is computed by hand on whole parameters."""
        refuse_sharded_strategy(
            type(self).__name__,
            self.trainer.strategy,
            "the binarised architecture gradient and the single-path weight steps need whole parameters",
            "DDPStrategy(find_unused_parameters=True)",
        )

    # ------------------------------------------------------------------------------------------ architecture
    def probs(self) -> Tensor:
        """``softmax(alpha)`` per layer."""
        return torch.softmax(self.alpha.detach(), dim=-1)

    def expected_latency(self) -> Tensor:
        """``E[LAT]`` under the current architecture distribution (differentiable in ``alpha``)."""
        return expected_latency(self.alpha, self.latency_table)

    def derived_code(self) -> tuple[int, ...]:
        """The most likely op per layer."""
        return tuple(int(i) for i in self.alpha.detach().argmax(-1))

    def forward(self, x: Tensor, code: tuple[int, ...] | None = None) -> Tensor:
        """Logits of one path (the derived architecture when ``code`` is None)."""
        h = torch.relu(self.stem(x.flatten(1)))
        for layer, op in zip(self.layers, code or self.derived_code(), strict=True):
            assert isinstance(layer, _MixedLayer)
            h = torch.relu(layer.forward_gated(h, [op]))
        return self.head(h)

    def _weight_params(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n != "alpha"]

    # ------------------------------------------------------------------------------------------ training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        """Weight step on one sampled path, then (after warm-up) a binarised architecture step."""
        w_opt, a_opt = self.optimizers()  # type: ignore[misc, attr-defined]
        x, y, _ = split_batch(batch)
        assert y is not None, f"{type(self).__name__} needs (x, y) batches"
        half = max(1, len(y) // 2)
        step = int(self.trainer.fit_loop.epoch_loop.batch_progress.total.ready)  # batches seen, resumable
        code = sample_path(self.probs(), make_generator(self.seed, step, 0))
        loss = nn.functional.cross_entropy(self(x[:half], code), y[:half])
        w_opt.zero_grad()
        self.manual_backward(loss)
        self.alpha.grad = None
        w_opt.step()
        self.log("proxyless/loss", loss, prog_bar=True)
        if step < self.warmup_steps or len(y) - half < 1:
            return
        xa, ya = x[half:], y[half:]
        first, second, active = sample_two_paths(self.probs(), make_generator(self.seed, step, 1))
        h = torch.relu(self.stem(xa.flatten(1)))
        gates, pairs = [], []
        for layer, a, b, act in zip(self.layers, first, second, active, strict=True):
            assert isinstance(layer, _MixedLayer)
            pair = [a, b] if a != b else [a]
            g = torch.tensor([1.0 if op == act else 0.0 for op in pair], device=h.device, requires_grad=True)
            h = torch.relu(layer.forward_gated(h, pair, g))
            gates.append(g)
            pairs.append(pair)
        ce = nn.functional.cross_entropy(self.head(h), ya)
        gate_grads = torch.autograd.grad(ce, gates)
        lat = self.expected_latency()
        a_opt.zero_grad()
        grad = torch.stack(
            [binarized_alpha_grad(self.alpha[l], pairs[l], gate_grads[l]) for l in range(len(pairs))]  # noqa: E741
        )
        if self.trainer.world_size > 1:  # the gate gradients bypass DDP's reducer: average them by hand
            grad = self.trainer.strategy.reduce(grad, reduce_op="mean")
        if self.latency_weight > 0:
            grad = grad + torch.autograd.grad(self.latency_weight * lat, self.alpha)[0]
        self.alpha.grad = grad
        a_opt.step()
        self.log("proxyless/arch_loss", ce.detach() + self.latency_weight * lat.detach())
        self.log("proxyless/expected_latency", lat.detach())

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Accuracy of the derived architecture."""
        x, y, _ = split_batch(batch)
        self.log("proxyless/val_acc", (self(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        """SGD (momentum 0.9, weight decay) on the weights; Adam on ``alpha`` (no weight decay)."""
        w_opt = torch.optim.SGD(self._weight_params(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        a_opt = torch.optim.Adam([self.alpha], lr=self.arch_lr, betas=(0.0, 0.999))
        return [w_opt, a_opt]
