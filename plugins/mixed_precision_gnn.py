"""LPGNAS: differentiable search of GNN layer types, widths and per-layer weight/activation bits, then retraining."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example, LitmixModule
from litmix.data import split_batch
from litmix.functional.lpgnas import (
    FULL_PRECISION,
    LAYER_OPS,
    expected_layer_bits,
    gat_aggregate,
    graph_operators,
    layer_bits,
    mixed_activation_quant,
    mixed_weight_quant,
    quantize_activation,
)
from litmix.nas.sampling import make_generator
from litmix.registry import register
from litmix.validation import check_float, check_int, check_type

DEFAULT_OPS = ("gcn", "sage", "gat", "linear")
DEFAULT_WIDTHS = (16, 32, 64)
DEFAULT_BITS = (2, 4, 8, 32)
MAX_WIDTH = 4096
#: Columns of the ``arch`` buffer: indices into ops, weight_bits, act_bits, widths.
ARCH_FIELDS = ("op", "weight_bits", "act_bits", "width")


def _check_list(owner: str, name: str, value: Any, default: tuple[Any, ...], item: type) -> tuple[Any, ...]:
    check_type(owner, name, value, (list, tuple), allow_none=True)
    items = tuple(value) if value is not None else default
    if not items:
        raise ValueError(f"{owner}({name}={value!r}): {name} must list at least one choice")
    if len(set(items)) != len(items):
        raise ValueError(f"{owner}({name}={value!r}): {name} must not repeat a choice")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, item):
            raise TypeError(f"{owner}({name}={value!r}): every entry of {name} must be a {item.__name__}")
    return items


def _check_bits(owner: str, name: str, value: Any) -> tuple[int, ...]:
    bits = _check_list(owner, name, value, DEFAULT_BITS, int)
    for b in bits:
        if not (2 <= b <= 16 or b == FULL_PRECISION):
            raise ValueError(
                f"{owner}({name}={value!r}): every bit width must be an int in [2, 16] (fake-quantized) or "
                f"{FULL_PRECISION} (float32), got {b}"
            )
    return tuple(int(b) for b in bits)


class _SearchLayer(nn.Module):
    """One GNN layer holding the weights of every candidate type (``[matrices, in, out]``), one bias per type."""

    def __init__(self, ops: tuple[str, ...], in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.ops, self.in_dim, self.out_dim = ops, in_dim, out_dim
        self.mats: list[list[int]] = []
        for op in ops:
            start = sum(len(m) for m in self.mats)
            self.mats.append(list(range(start, start + LAYER_OPS[op])))
        self.weight = nn.Parameter(torch.empty(sum(len(m) for m in self.mats), in_dim, out_dim))
        self.att = nn.Parameter(torch.empty(2, out_dim)) if "gat" in ops else None
        self.bias = nn.Parameter(torch.zeros(len(ops), out_dim))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Glorot-uniform weights and attention vectors, zero biases (``generator``: deterministic)."""
        bound = math.sqrt(6.0 / (self.in_dim + self.out_dim))
        with torch.no_grad():
            w = torch.rand(self.weight.shape, generator=generator) * 2 * bound - bound
            self.weight.copy_(w)
            if self.att is not None:
                a = math.sqrt(6.0 / (1 + self.out_dim))
                self.att.copy_(torch.rand(self.att.shape, generator=generator) * 2 * a - a)
            self.bias.zero_()

    def forward(
        self,
        inputs: list[tuple[Tensor | None, Tensor]],
        graph: dict[str, Tensor],
        op_choice: list[tuple[int, Tensor | None]],
        bits: tuple[int, ...],
        bit_probs: Tensor | None,
        in_w: int,
        out_w: int,
    ) -> Tensor:
        """``sum_o p_o op_o(sum_i p_i x_i)``: ``op_choice = [(op, p_o or None)]``, ``inputs = [(p_i or None, x_i)]``."""
        mats = [m for o, _ in op_choice for m in self.mats[o]]
        w = self.weight[mats, :in_w, :out_w]
        wq = torch.stack([mixed_weight_quant(w[i], bits, bit_probs, axis=-1) for i in range(len(mats))])
        flat = wq.permute(1, 0, 2).reshape(in_w, len(mats) * out_w)
        z: Tensor | None = None
        for p_in, h in inputs:  # sum_b p_b (q_b(x) @ W) = (sum_b p_b q_b(x)) @ W, without a gradient for sparse x
            zb = torch.sparse.mm(h, flat) if h.is_sparse else h @ flat
            zb = zb if p_in is None else p_in * zb
            z = zb if z is None else z + zb
        assert z is not None
        z = z.view(z.shape[0], len(mats), out_w)
        out: Tensor | None = None
        k = 0
        for o, p in op_choice:
            op, first = self.ops[o], z[:, k].contiguous()
            k += LAYER_OPS[op]
            if op == "gcn":
                y = torch.sparse.mm(graph["gcn"], first)
            elif op == "sage":
                y = first + torch.sparse.mm(graph["mean"], z[:, k - 1].contiguous())
            elif op == "gat":
                assert self.att is not None
                att = mixed_weight_quant(self.att[:, :out_w], bits, bit_probs, axis=0)
                y = gat_aggregate(first, att, graph["loops"])
            else:
                y = first
            y = y + self.bias[o, :out_w]
            term = y if p is None else p * y
            out = term if out is None else out + term
        assert out is not None
        return out


@register(
    "plugin",
    "quantization",
    paper="Learned Low Precision Graph Neural Networks (https://arxiv.org/abs/2009.09232)",
)
class MixedPrecisionGNN(LitmixModule):
    """LPGNAS: search GNN layer types, hidden widths and per-layer weight/activation bits, then retrain the argmax.

    Zhao et al., "Learned Low Precision Graph Neural Networks", https://arxiv.org/abs/2009.09232. A stack of
    ``num_layers`` message-passing layers for node classification on one graph (batches of
    :class:`~litmix.datamodules.GraphDataModule`: ``(graph, y, index)``). Per layer ``l`` four choices are relaxed
    with softmaxes of architecture logits (DARTS): the layer type (``ops``: ``"gcn"``, ``"sage"`` (mean),
    ``"gat"`` (single head), ``"linear"``), the output width (``widths``; hidden layers only, by channel masks),
    the weight bits and the input-activation bits (``weight_bits``, ``act_bits``; 2..16 fake-quantized with the
    straight-through quantizers of :mod:`litmix.functional.quantization`, weights per output channel, activations
    per tensor; 32 = float32). A layer computes ``sum_o p_o op_o(sum_b p_b q_b(x); sum_b p_b q_b(W_o))``.

    **Bi-level search** (manual optimization, two optimizers), one training batch at a time, for the first
    ``search_epochs`` epochs. Each step runs one forward pass of the relaxed network (the graph is full-batch, so
    it yields the logits of every node): a weight step (Adam, weight decay) on the cross-entropy of the batch's
    *training* nodes, and after ``warmup_epochs`` an architecture step (Adam on the logits; first-order DARTS,
    the gradient taken at the same weights) on ``CE_val + size_weight * E[model bits] / B_ref`` over the
    *validation* nodes (``E`` the expected weight bits, biases at 32, of
    :func:`~litmix.functional.lpgnas.expected_layer_bits`; ``B_ref`` the float32 size of the largest candidate).
    At the start of epoch ``search_epochs`` the argmax architecture is **derived** (stored in the ``arch``
    buffer), the weights are re-initialised (seeded by ``seed``) with a fresh optimizer state, and the remaining
    epochs **retrain** the discrete model (weight steps only). Dropout masks come from generators seeded by
    ``(seed, batch)``.

    Checkpoints hold the logits (parameters ``alpha_*``) and the derived architecture (buffer ``arch``), so a
    resumed run continues exactly. Under DDP (graph replicated, training nodes sharded by ``GraphDataModule``) the
    weight gradients are averaged by DDP and the architecture gradient is summed over ranks' validation shards by
    hand, so weights and logits stay equal on every rank; pass ``DDPStrategy(find_unused_parameters=True)`` (the
    retraining uses one type per layer). FSDP and DeepSpeed are refused.

    Logs ``lpgnas/loss``, ``lpgnas/arch_loss``, ``lpgnas/expected_bits`` (E[model weight bits]),
    ``lpgnas/model_bits`` and ``lpgnas/compression`` (bits of the argmax architecture, and their fraction of the
    same architecture in float32), per layer ``lpgnas/layer<l>/{op,weight_bits,act_bits,width}`` (argmax choice;
    ``op`` as an index into ``ops``) at every epoch end, every probability as
    ``lpgnas/p/layer<l>/<choice>=<value>`` (the architecture table) at the last search epoch and every
    ``log_every_n_steps`` epochs; at derivation, under a ``WandbLogger``, the table ``lpgnas/architecture``
    (:meth:`architecture_table`) and the heat maps ``lpgnas/probabilities`` (:meth:`architecture_figure`); and
    ``lpgnas/val_acc`` / ``lpgnas/test_acc``.

    Args:
        in_features: node features of the graph (> 0).
        num_classes: classes (> 1).
        num_layers: GNN layers (>= 1).
        ops: candidate layer types, a subset of ``gcn``, ``sage``, ``gat``, ``linear``.
        widths: candidate hidden widths (1..4096).
        weight_bits: candidate weight bits (each 2..16, or 32 for float32).
        act_bits: candidate activation bits (each 2..16, or 32).
        size_weight: weight of the normalised size penalty (>= 0).
        search_epochs: epochs of search before deriving (>= 0; 0 derives at once).
        warmup_epochs: search epochs with weight steps only (>= 0).
        dropout: dropout on every layer input, in [0, 1).
        lr: weight learning rate (> 0).
        weight_decay: L2 weight decay (>= 0).
        arch_lr: architecture learning rate (> 0).
        seed: seed of the dropout masks and of the re-initialisation (>= 0).

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for an empty or repeated choice list, an unknown op name, bits outside 2..16 and 32 (e.g.
            ``bits < 1``), or numbers out of range, naming the argument; at ``setup``, ``in_features`` or
            ``num_classes`` that do not match the data module's graph; in a step, a graph without node features.
        MisconfigurationException: at ``setup``, under FSDP/DeepSpeed, or for a search without a data module that
            exposes validation nodes (``val_index`` and ``targets``, as ``GraphDataModule``).

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> from litmix.testing import make_trainer
        >>> module, dm, _ = MixedPrecisionGNN.example()
        >>> make_trainer(max_epochs=3).fit(module, datamodule=dm)
        >>> module.is_derived, sorted(module.architecture()[0])
        (True, ['act_bits', 'op', 'weight_bits', 'width'])
        >>> 0 < module.compression() <= 1
        True
    """

    def __init__(
        self,
        in_features: int = 1433,
        num_classes: int = 7,
        num_layers: int = 2,
        ops: list[str] | None = None,
        widths: list[int] | None = None,
        weight_bits: list[int] | None = None,
        act_bits: list[int] | None = None,
        size_weight: float = 0.1,
        search_epochs: int = 100,
        warmup_epochs: int = 10,
        dropout: float = 0.5,
        lr: float = 0.01,
        weight_decay: float = 5e-4,
        arch_lr: float = 0.01,
        seed: int = 0,
    ) -> None:
        name = type(self).__name__
        check_int(name, "in_features", in_features, low=1)
        check_int(name, "num_classes", num_classes, low=2)
        check_int(name, "num_layers", num_layers, low=1, high=16)
        op_names = _check_list(name, "ops", ops, DEFAULT_OPS, str)
        for op in op_names:
            if op not in LAYER_OPS:
                raise ValueError(f"{name}(ops={ops!r}): unknown layer type {op!r}; choose from {sorted(LAYER_OPS)}")
        width_list = _check_list(name, "widths", widths, DEFAULT_WIDTHS, int)
        for w in width_list:
            check_int(name, "widths", w, low=1, high=MAX_WIDTH)
        wbits, abits = _check_bits(name, "weight_bits", weight_bits), _check_bits(name, "act_bits", act_bits)
        check_float(name, "size_weight", size_weight, low=0.0)
        check_int(name, "search_epochs", search_epochs, low=0)
        check_int(name, "warmup_epochs", warmup_epochs, low=0)
        check_float(name, "dropout", dropout, low=0.0, high=1.0, high_open=True)
        check_float(name, "lr", lr, low=0.0, low_open=True)
        check_float(name, "weight_decay", weight_decay, low=0.0)
        check_float(name, "arch_lr", arch_lr, low=0.0, low_open=True)
        check_int(name, "seed", seed, low=0)
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.ops, self.widths, self.weight_bits, self.act_bits = op_names, tuple(width_list), wbits, abits
        self.in_features, self.num_classes, self.num_layers = in_features, num_classes, num_layers
        self.size_weight, self.search_epochs, self.warmup_epochs = float(size_weight), search_epochs, warmup_epochs
        self.dropout, self.lr, self.weight_decay, self.arch_lr, self.seed = dropout, lr, weight_decay, arch_lr, seed
        hidden = max(self.widths)
        dims = [in_features] + [hidden] * (num_layers - 1) + [num_classes]
        self.layers = nn.ModuleList(_SearchLayer(op_names, dims[i], dims[i + 1]) for i in range(num_layers))
        self.alpha_op = nn.Parameter(torch.zeros(num_layers, len(op_names)))
        self.alpha_weight_bits = nn.Parameter(torch.zeros(num_layers, len(wbits)))
        self.alpha_act_bits = nn.Parameter(torch.zeros(num_layers, len(abits)))
        self.alpha_width = nn.Parameter(torch.zeros(num_layers - 1, len(self.widths)))
        self.register_buffer("arch", torch.full((num_layers, len(ARCH_FIELDS)), -1, dtype=torch.long))
        self.arch: Tensor
        self._cache: dict[str, Any] = {}
        self._val: tuple[Tensor, Tensor, int] | None = None

    @classmethod
    def example(cls) -> Example:
        """One search epoch, then retraining, on a generated 48-node, 8-feature, 3-class graph."""
        from litmix.datamodules.graph import GraphDataModule, _tiny_graph

        module = cls(
            in_features=8, num_classes=3, widths=[4, 8], weight_bits=[2, 8, 32], act_bits=[4, 32],
            search_epochs=1, warmup_epochs=0, lr=0.05, arch_lr=0.05,
        )  # fmt: skip
        return Example(module, GraphDataModule(None, data=_tiny_graph()), [])

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the cached graph operators."""
        state = super().__getstate__()
        state["_cache"] = {}
        return state

    # -------------------------------------------------------------------------------------------- architecture
    def _alphas(self) -> list[nn.Parameter]:
        return [self.alpha_op, self.alpha_weight_bits, self.alpha_act_bits, self.alpha_width]

    def _searchable(self) -> bool:
        return any(a.shape[-1] > 1 and a.numel() > 0 for a in self._alphas())

    @property
    def is_derived(self) -> bool:
        """Whether the discrete architecture has been derived (then forward uses it)."""
        return bool(self.arch[0, 0] >= 0)

    def probabilities(self) -> dict[str, Tensor]:
        """``softmax`` of each logit table: ``op``, ``weight_bits``, ``act_bits`` ``[L, k]``; ``width`` ``[L-1, k]``."""
        return {f: torch.softmax(a.detach(), -1) for f, a in zip(ARCH_FIELDS, self._alphas(), strict=True)}

    def _argmax_arch(self) -> Tensor:
        arch = torch.zeros_like(self.arch)
        for j, a in enumerate(self._alphas()):
            arch[: a.shape[0], j] = a.detach().argmax(-1)
        return arch

    def _current_arch(self) -> Tensor:
        return self.arch if self.is_derived else self._argmax_arch()

    def architecture(self) -> list[dict[str, Any]]:
        """Per layer ``{"op", "weight_bits", "act_bits", "width"}``: the derived choices, else the current argmax."""
        arch = self._current_arch().tolist()
        out = []
        for i, (o, wb, ab, w) in enumerate(arch):
            width = self.widths[w] if i < self.num_layers - 1 else self.num_classes
            out.append({"op": self.ops[o], "weight_bits": self.weight_bits[wb], "act_bits": self.act_bits[ab],
                        "width": width})  # fmt: skip
        return out

    def model_bits(self, full_precision: bool = False) -> float:
        """Weight bits (biases at 32) of :meth:`architecture`; ``full_precision``: the same layers in float32."""
        total, in_w = 0.0, self.in_features
        for layer in self.architecture():
            bits = FULL_PRECISION if full_precision else layer["weight_bits"]
            total += float(layer_bits(layer["op"], in_w, layer["width"], bits))
            in_w = layer["width"]
        return total

    def compression(self) -> float:
        """:meth:`model_bits` as a fraction of the same architecture in float32."""
        return self.model_bits() / self.model_bits(full_precision=True)

    def expected_bits(self) -> Tensor:
        """``E[model weight bits]`` under the architecture distribution (differentiable in the logits)."""
        widths = torch.tensor([float(w) for w in self.widths], device=self.alpha_op.device)
        total, in_w = self.alpha_op.new_zeros(()), torch.tensor(float(self.in_features), device=widths.device)
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            out_w = (
                widths.new_tensor(float(self.num_classes)) if last else (self.alpha_width[i].softmax(-1) * widths).sum()
            )
            total = total + expected_layer_bits(
                self.ops,
                self.alpha_op[i].softmax(-1),
                in_w,
                out_w,
                self.weight_bits,
                self.alpha_weight_bits[i].softmax(-1),
            )
            in_w = out_w
        return total

    def reference_bits(self) -> float:
        """Float32 bits of the largest candidate (widest hidden layers, largest layer type): the penalty's unit."""
        total, in_w = 0.0, self.in_features
        for i in range(self.num_layers):
            out_w = self.num_classes if i == self.num_layers - 1 else max(self.widths)
            total += max(float(layer_bits(o, in_w, out_w, FULL_PRECISION)) for o in self.ops)
            in_w = out_w
        return total

    @torch.no_grad()
    def derive(self) -> list[dict[str, Any]]:
        """Fix the argmax architecture, re-initialise the weights (seeded) and reset the weight optimizer state."""
        self.arch.copy_(self._argmax_arch())
        generator = make_generator(self.seed, 0, 999)
        for layer in self.layers:
            assert isinstance(layer, _SearchLayer)
            layer.reset_parameters(generator)
        if self._trainer is not None and self.trainer.optimizers:
            self.trainer.optimizers[0].state.clear()
        return self.architecture()

    # ------------------------------------------------------------------------------------------------ forward
    def _graph(self, graph: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        x = graph.get("x") if isinstance(graph, dict) else None
        if not isinstance(x, Tensor) or x.dim() != 2 or not x.is_floating_point():
            raise ValueError(
                f"{type(self).__name__}: the graph has no node features: graph['x'] must be a float (N, "
                f"in_features={self.in_features}) tensor, got {None if x is None else type(x).__name__}"
            )
        if x.shape[1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}(in_features={self.in_features}): graph['x'] has {x.shape[1]} features"
            )
        edge_index = graph.get("edge_index")
        if not isinstance(edge_index, Tensor):
            raise ValueError(f"{type(self).__name__}: the graph has no edge_index")
        cache = self._cache
        if cache.get("x") is not x or cache.get("edge_index") is not edge_index:
            dense = (x != 0).float().mean() > 0.1
            cache.clear()
            cache.update(x=x, edge_index=edge_index, ops=graph_operators(edge_index, x.shape[0]))
            cache["input"] = x if dense else x.to_sparse().coalesce()
        return cache["input"], cache["ops"]

    def _dropout(self, h: Tensor, generator: torch.Generator | None) -> Tensor:
        if generator is None or self.dropout == 0:
            return h
        if h.is_sparse:
            keep = (torch.rand(h.values().shape, generator=generator) >= self.dropout).to(h.device)
            values = h.values() * keep / (1 - self.dropout)
            return torch.sparse_coo_tensor(h.indices(), values, h.shape, is_coalesced=True, check_invariants=False)
        keep = (torch.rand(h.shape, generator=generator) >= self.dropout).to(h.device)
        return h * keep / (1 - self.dropout)

    def _act_quant(self, h: Tensor, probs: Tensor | None, bits: tuple[int, ...]) -> list[tuple[Tensor | None, Tensor]]:
        """The mixture ``[(p_b, q_b(h))]``; a dense ``h`` is mixed at once, a sparse one per distinct ``q_b(h)``."""
        if not h.is_sparse:
            return [(None, mixed_activation_quant(h, bits, probs))]
        groups: list[tuple[list[int], Tensor]] = []
        with torch.no_grad():
            for j, b in enumerate(bits):
                values = quantize_activation(h.values(), b)
                same = next((g for g in groups if torch.equal(g[1], values)), None)
                if same is None:
                    groups.append(([j], values))
                else:
                    same[0].append(j)
        out: list[tuple[Tensor | None, Tensor]] = []
        for js, values in groups:
            x = torch.sparse_coo_tensor(h.indices(), values, h.shape, is_coalesced=True, check_invariants=False)
            out.append((None if probs is None else probs[js].sum(), x))
        return out

    def _logits(self, graph: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        h, ops = self._graph(graph)
        derived, arch = self.is_derived, self.arch.tolist()
        in_w = self.in_features
        for i, layer in enumerate(self.layers):
            assert isinstance(layer, _SearchLayer)
            last = i == self.num_layers - 1
            h = self._dropout(h, generator)
            if derived:
                o, wb, ab, w = arch[i]
                out_w = self.num_classes if last else self.widths[w]
                inputs = self._act_quant(h, None, (self.act_bits[ab],))
                h = layer(inputs, ops, [(o, None)], (self.weight_bits[wb],), None, in_w, out_w)
                in_w = out_w
            else:
                inputs = self._act_quant(h, self.alpha_act_bits[i].softmax(-1), self.act_bits)
                choice = list(zip(range(len(self.ops)), self.alpha_op[i].softmax(-1), strict=True))
                bits, probs = self.weight_bits, self.alpha_weight_bits[i].softmax(-1)
                h = layer(inputs, ops, choice, bits, probs, layer.in_dim, layer.out_dim)
            if not last:
                h = torch.relu(h)
                if not derived:
                    masks = torch.stack(
                        [(torch.arange(layer.out_dim, device=h.device) < w).float() for w in self.widths]
                    )
                    h = h * (self.alpha_width[i].softmax(-1) @ masks)
        return h

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Node logits ``(N, num_classes)`` of the derived architecture (of the relaxed supernet before deriving)."""
        return self._logits({"x": x, "edge_index": edge_index})

    # ----------------------------------------------------------------------------------------------- training
    def setup(self, stage: str) -> None:
        """Refuse sharded strategies; check the graph's sizes and find the validation nodes for the search."""
        name = type(self).__name__
        refuse_sharded_strategy(
            name, self.trainer.strategy, "the architecture gradient is reduced by hand on whole logits",
            "DDPStrategy(find_unused_parameters=True)",
        )  # fmt: skip
        dm = getattr(self.trainer, "datamodule", None)
        features, classes = getattr(dm, "num_features", None), getattr(dm, "num_classes", None)
        if features is not None and features != self.in_features:
            raise ValueError(f"{name}(in_features={self.in_features}): the data module's graph has {features} features")
        if classes is not None and classes > self.num_classes:
            raise ValueError(f"{name}(num_classes={self.num_classes}): the data module's graph has {classes} classes")
        if stage == "fit" and self.search_epochs > self.warmup_epochs and self._searchable():
            from lightning.pytorch.utilities.exceptions import MisconfigurationException

            index, targets = getattr(dm, "val_index", None), getattr(dm, "targets", None)
            if not isinstance(index, Tensor) or not isinstance(targets, Tensor):
                raise MisconfigurationException(
                    f"{name} searches the architecture on validation nodes: pass a data module with `val_index` and "
                    "`targets` (litmix.datamodules.GraphDataModule)"
                )
            world, rank = self.trainer.world_size, self.trainer.global_rank
            self._val = (index[rank::world], targets[index[rank::world]], int(index.numel()))

    def _step(self) -> int:
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.total.ready)

    def on_train_epoch_start(self) -> None:
        """Derive the architecture when the search ends (at the start of epoch ``search_epochs``)."""
        if self.current_epoch >= self.search_epochs and not self.is_derived:
            self.derive()
            if self.trainer.is_global_zero:
                self._log_wandb(self.logger)

    def architecture_table(self) -> tuple[list[str], list[list[Any]]]:
        """``(columns, rows)``: one row per layer, choice and value with its probability and whether it is chosen."""
        chosen = self._current_arch().tolist()
        choices = {"op": self.ops, "weight_bits": self.weight_bits, "act_bits": self.act_bits, "width": self.widths}
        rows: list[list[Any]] = []
        for j, (field, probs) in enumerate(self.probabilities().items()):
            for i, row in enumerate(probs.tolist()):
                for k, (value, p) in enumerate(zip(choices[field], row, strict=True)):
                    rows.append([i, field, value, round(float(p), 4), chosen[i][j] == k])
        return ["layer", "choice", "value", "probability", "chosen"], rows

    def architecture_figure(self) -> Any:
        """Heat maps of the probabilities per layer (one panel per choice); ``None`` without matplotlib."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        probs = self.probabilities()
        choices = {"op": self.ops, "weight_bits": self.weight_bits, "act_bits": self.act_bits, "width": self.widths}
        fig, axes = plt.subplots(1, len(probs), figsize=(3.2 * len(probs), 0.6 * self.num_layers + 1.6))
        for ax, (field, p) in zip(axes, probs.items(), strict=True):
            ax.imshow(p.cpu().numpy() if p.numel() else [[0.0] * p.shape[1]], vmin=0, vmax=1, cmap="viridis")
            ax.set_title(field, fontsize=9)
            for i, row in enumerate(p.tolist()):
                for k, v in enumerate(row):
                    ax.text(k, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w")
            ax.set_xticks(range(len(choices[field])), [str(c) for c in choices[field]], fontsize=7)
            ax.set_yticks(range(max(1, p.shape[0])), [f"layer {i}" for i in range(max(1, p.shape[0]))], fontsize=7)
        fig.tight_layout()
        return fig

    def _log_wandb(self, logger: Any) -> None:
        """The architecture table and the probability heat maps, under a ``WandbLogger`` only."""
        from lightning.pytorch.loggers import WandbLogger

        if not isinstance(logger, WandbLogger):
            return
        columns, rows = self.architecture_table()
        logger.log_table(key="lpgnas/architecture", columns=columns, data=rows)
        fig = self.architecture_figure()
        if fig is not None:
            import matplotlib.pyplot as plt

            logger.log_image(key="lpgnas/probabilities", images=[fig])
            plt.close(fig)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One forward pass; the weight step on the training nodes and (searching) the logits step on validation."""
        w_opt, a_opt = self.optimizers()  # type: ignore[misc, attr-defined]
        graph, y, index = split_batch(batch)
        assert y is not None, f"{type(self).__name__} needs (graph, y, index) batches"
        assert index is not None
        search = not self.is_derived and self.current_epoch >= self.warmup_epochs and self._searchable()
        logits = self._logits(graph, make_generator(self.seed, self._step(), 0))
        loss = nn.functional.cross_entropy(logits[index], y)
        alphas = [a for a in self._alphas() if a.numel()]
        if search:  # d CE_val / d alpha at the current weights (first-order DARTS), before the weight step
            assert self._val is not None
            val_index, val_y, total = self._val
            val_logits = logits[val_index.to(logits.device)]
            ce_sum = nn.functional.cross_entropy(val_logits, val_y.to(logits.device), reduction="sum")
            grads = torch.autograd.grad(ce_sum / total, alphas, retain_graph=True, allow_unused=True)
        w_opt.zero_grad()
        self.manual_backward(loss)
        for a in self._alphas():
            a.grad = None
        w_opt.step()
        self.log("lpgnas/loss", loss.detach(), prog_bar=True)
        if not search:
            return
        parts = [(g if g is not None else torch.zeros_like(a)).flatten() for g, a in zip(grads, alphas, strict=True)]
        flat = torch.cat(parts)
        if self.trainer.world_size > 1:  # the architecture gradient bypasses DDP's reducer: sum the shards
            flat = self.trainer.strategy.reduce(flat, reduce_op="sum")
        size = self.expected_bits() / self.reference_bits()
        penalty = torch.autograd.grad(self.size_weight * size, alphas, allow_unused=True)
        a_opt.zero_grad()
        offset = 0
        for a, g in zip(alphas, penalty, strict=True):
            a.grad = flat[offset : offset + a.numel()].view_as(a) + (g if g is not None else 0.0)
            offset += a.numel()
        a_opt.step()
        self.log("lpgnas/arch_loss", ce_sum.detach() / total + self.size_weight * size.detach())

    def on_train_epoch_end(self) -> None:
        """Log the expected and argmax model bits and the per-layer argmax choices; the probabilities less often.

        Every probability is logged at the last search epoch and every ``Trainer(log_every_n_steps)`` epochs
        (Lightning's ``self.log`` costs grow with the number of keys logged per epoch).
        """
        self.log("lpgnas/expected_bits", float(self.expected_bits().detach()))
        self.log("lpgnas/model_bits", self.model_bits())
        self.log("lpgnas/compression", self.compression(), prog_bar=True)
        for i, layer in enumerate(self.architecture()):
            self.log(f"lpgnas/layer{i}/op", float(self.ops.index(layer["op"])))
            for key in ("weight_bits", "act_bits", "width"):
                self.log(f"lpgnas/layer{i}/{key}", float(layer[key]))
        epoch = self.current_epoch
        if not (
            epoch == self.search_epochs - 1
            or (epoch + 1) % max(1, int(getattr(self.trainer, "log_every_n_steps", 50))) == 0
        ):
            return  # the probability table every log_every_n_steps epochs and at the end of the search
        choices = {"op": self.ops, "weight_bits": self.weight_bits, "act_bits": self.act_bits, "width": self.widths}
        for field, probs in self.probabilities().items():
            for i, row in enumerate(probs.tolist()):
                for value, p in zip(choices[field], row, strict=True):
                    self.log(f"lpgnas/p/layer{i}/{field}={value}", p)

    def _accuracy(self, batch: Any) -> tuple[Tensor, int]:
        graph, y, index = split_batch(batch)
        assert y is not None
        assert index is not None
        acc = (self._logits(graph)[index].argmax(-1) == y).float().mean()
        return acc, int(index.numel())

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Accuracy on the batch's validation nodes (``lpgnas/val_acc``)."""
        acc, n = self._accuracy(batch)
        self.log("lpgnas/val_acc", acc, batch_size=n, sync_dist=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """Accuracy on the batch's test nodes (``lpgnas/test_acc``)."""
        acc, n = self._accuracy(batch)
        self.log("lpgnas/test_acc", acc, batch_size=n, sync_dist=True)

    def configure_optimizers(self) -> Any:
        """Adam with weight decay on the weights; Adam (betas 0.5, 0.999, as DARTS) on the architecture logits."""
        weights = [p for n, p in self.named_parameters() if not n.startswith("alpha_")]
        w_opt = torch.optim.Adam(weights, lr=self.lr, weight_decay=self.weight_decay)
        a_opt = torch.optim.Adam([a for a in self._alphas() if a.numel()], lr=self.arch_lr, betas=(0.5, 0.999))
        return [w_opt, a_opt]
