"""Quantization-aware training (AQT-style fake quantization with straight-through gradients) as a callback."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example, LitmixCallback
from litmix.functional.quantization import (
    activation_bound,
    bit_operations,
    bound_scale,
    fake_quantize,
    fake_quantize_per_channel,
    layer_macs,
    pack_int4,
    per_channel_scale,
    quantize,
    unpack_int4,
)
from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int, check_str, check_str_list, check_type

__all__ = ["QuantizationAwareTraining"]

PAPER = "Pareto-Optimal Quantized ResNet Is Mostly 4-bit (https://arxiv.org/abs/2105.03536)"

#: torch layer types whose weight (and input) are quantized; subclasses (timm's ``Linear``, ``StdConv2d``, ...) too.
QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: layers recognised by qualified class name anywhere in the MRO (nothing is imported) -> output-channel axis
QUANTIZABLE_CLASS_NAMES: dict[str, int] = {
    "transformers.pytorch_utils.Conv1D": 1,  # GPT-2 style: weight (in, out)
    "torch_geometric.nn.dense.linear.Linear": 0,
}
MIN_BITS, MAX_BITS = 2, 16


def _output_axis(module: nn.Module) -> int | None:
    """The weight's output-channel axis when ``module`` is quantizable, else ``None``."""
    weight = module._parameters.get("weight")
    if not isinstance(weight, nn.Parameter) or isinstance(weight, nn.parameter.UninitializedParameter):
        return None
    if weight.dim() < 2:
        return None
    if isinstance(module, QUANTIZABLE_TYPES):
        return 0
    for c in type(module).__mro__:
        axis = QUANTIZABLE_CLASS_NAMES.get(f"{c.__module__}.{c.__qualname__}")
        if axis is not None:
            return axis
    return None


def quantizable_layers(module: nn.Module) -> dict[str, int]:
    """Names of the quantizable layers of ``module`` (registration order) -> their weight's output-channel axis."""
    return {n: a for n, m in module.named_modules() if (a := _output_axis(m)) is not None}


@dataclass
class _Layer:
    """One quantized layer: its bits, the calibrated input bound and the per-step observations."""

    name: str
    module: nn.Module
    axis: int
    bits_w: int
    bits_a: int | None
    bound: Tensor = field(default_factory=lambda: torch.zeros(()))  # EMA of the batch bounds
    low: Tensor = field(default_factory=lambda: torch.full((), float("inf")))  # smallest input seen (calibration)
    batch_bound: Tensor = field(default_factory=lambda: torch.full((), float("-inf")))  # this step's observation
    batch_low: Tensor = field(default_factory=lambda: torch.full((), float("inf")))
    signed: bool | None = None  # decided when calibration ends: unsigned when no negative input was seen
    macs: int | None = None  # per sample
    scale: Tensor | None = None  # cached activation scale (None: recompute from bound and signed)
    handles: list[RemovableHandle] = field(default_factory=list)


@register("callback", "quantization", paper=PAPER)
class QuantizationAwareTraining(LitmixCallback):
    """Quantization-aware training: fake-quantized weights and activations with straight-through gradients.

    Implements the quantizers of Abdolrashidi et al., "Pareto-Optimal Quantized ResNet Is Mostly 4-bit" (AQT,
    https://arxiv.org/abs/2105.03536). In every forward of every quantized layer:

    * the **weight** is fake-quantized with symmetric per-output-channel scales ``max|w_c| / (2^(b-1) - 1)``
      (:func:`~litmix.functional.quantization.fake_quantize_per_channel`; the straight-through gradient is the
      identity because nothing clips);
    * the **input activation** is fake-quantized per tensor with a calibrated bound (an exponential moving average
      of the per-step maximum of ``|x|``, or of a percentile), unsigned (``[0, 2^b - 1]``) when no negative input
      was seen during calibration (inputs after a ReLU), else symmetric signed; gradients pass straight through
      inside the clip range and are zero outside.

    The first ``calibration_steps`` training steps run with float activations while the bounds are observed; the
    bounds keep following the EMA afterwards (training steps only, never in validation). Under DDP the per-step
    observations are reduced with ``max`` over ranks before the EMA, so every rank holds the same bounds.

    **Layers**: ``nn.Linear``, ``nn.Conv1d/2d/3d`` and their subclasses (timm's layers), Hugging Face ``Conv1D``
    (GPT-2 blocks; weight ``(in, out)``) and PyG ``Linear``; ``layer_names`` restricts the choice. The first and
    the last of them (in registration order) use ``first_last_bits`` (8 by default) for weights and inputs;
    ``layer_bits`` overrides any layer.

    **Implementation**: a forward pre-hook puts the fake-quantized weight in the layer's instance ``__dict__`` (so
    ``self.weight`` inside the layer's own ``forward`` reads it) and a forward hook removes it (also when the
    forward raises). The parameters, the module's ``state_dict`` keys and the optimizer are untouched: a checkpoint
    loads with strict loading into the user's own class; the bounds are in this callback's state. The hooks are
    installed at ``setup`` of every stage (fit, validate, test, predict) and removed at ``teardown``;
    :meth:`attach` / :meth:`detach` do it by hand (e.g. to evaluate the quantized model outside a Trainer). The forward
    allocates one weight-sized tensor per layer (the quantized weight) plus the quantized input.

    **Cost**: logs ``<prefix>/bit_operations`` = ``sum over layers of MACs x b_w x b_a`` per sample (MACs
    measured in the first training forward; float layers count 32 bits) and ``<prefix>/bit_operations_ratio``
    (vs. all-fp32). ``<prefix>`` is ``name`` when given, else ``qat``.

    **Export**: :meth:`export` returns integer weight codes (4-bit and smaller packed two per byte) with their
    per-channel scales and the activation scales; :meth:`save_export` writes them with ``torch.save`` and returns
    the file size; :meth:`load_export` rebuilds a float ``state_dict`` whose weights equal the fake-quantized ones.

    Args:
        bits_w: weight bits of the inner layers, in [2, 16].
        bits_a: input-activation bits of the inner layers, in [2, 16]; ``None`` keeps activations in float.
        first_last_bits: bits (weights and inputs) of the first and last quantized layer, in [2, 16]; ``None``
            treats them like the others.
        layer_bits: ``{layer name: bits}`` for weights and inputs of named layers (overrides the rest).
        layer_names: the layers to quantize (names from ``named_modules``); default: every supported layer.
        calibration: ``"max"`` (EMA of the per-step maximum) or ``"percentile"`` (EMA of the per-step
            ``percentile`` of ``|x|``).
        percentile: the percentile used by ``calibration="percentile"``, in (0, 100].
        momentum: EMA momentum of the bounds, in [0, 1) (0: the last step's bound).
        calibration_steps: training steps with float activations before the activations are quantized (>= 1).
        name: optional instance name (checkpoint key and logging prefix).

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for bits outside [2, 16] or other arguments out of range (in ``__init__``); at ``setup``, for
            layer names the module lacks (listing the quantizable ones) or a module with no quantizable layer.
        MisconfigurationException: under FSDP or DeepSpeed (per-channel scales need whole weights).

    Example:
        >>> from litmix.testing import fit_tiny, TinyClassifier
        >>> model = TinyClassifier()
        >>> qat = QuantizationAwareTraining(bits_w=4, bits_a=4, first_last_bits=8)
        >>> _ = fit_tiny([qat], module=model, max_steps=3)
        >>> qat.layer_bits_used()
        {'net.0': (8, 8), 'net.2': (8, 8)}
        >>> sorted(model.state_dict())  # the user's keys only
        ['net.0.bias', 'net.0.weight', 'net.2.bias', 'net.2.weight']
        >>> exported = qat.export(model)
        >>> exported["layers"]["net.0"]["codes"].dtype
        torch.int8
    """

    default_log_prefix: ClassVar[str] = "qat"
    state_version: ClassVar[int] = 1

    def __init__(
        self,
        bits_w: int = 4,
        bits_a: int | None = 4,
        first_last_bits: int | None = 8,
        layer_bits: dict[str, int] | None = None,
        layer_names: list[str] | None = None,
        calibration: Literal["max", "percentile"] = "max",
        percentile: float = 99.99,
        momentum: float = 0.9,
        calibration_steps: int = 1,
        name: str | None = None,
    ) -> None:
        cls = type(self).__name__
        bits_w = check_int(cls, "bits_w", bits_w, low=MIN_BITS, high=MAX_BITS)
        bits_a = check_int(cls, "bits_a", bits_a, low=MIN_BITS, high=MAX_BITS, allow_none=True)
        first_last_bits = check_int(
            cls, "first_last_bits", first_last_bits, low=MIN_BITS, high=MAX_BITS, allow_none=True
        )
        if layer_bits is not None:
            check_type(cls, "layer_bits", layer_bits, dict)
            for key, value in layer_bits.items():
                check_str(cls, "layer_bits", key, allow_empty=False)
                check_int(cls, "layer_bits", value, low=MIN_BITS, high=MAX_BITS)
        layer_names = check_str_list(cls, "layer_names", layer_names, what="layer names")
        calibration = check_choice(cls, "calibration", calibration, ("max", "percentile"))
        percentile = check_float(cls, "percentile", percentile, low=0.0, high=100.0, low_open=True)
        momentum = check_float(cls, "momentum", momentum, low=0.0, high=1.0, high_open=True)
        calibration_steps = check_int(cls, "calibration_steps", calibration_steps, low=1)
        super().__init__(name=name)
        self.bits_w: int = bits_w
        self.bits_a: int | None = bits_a
        self.first_last_bits: int | None = first_last_bits
        self.layer_bits: dict[str, int] | None = dict(layer_bits) if layer_bits is not None else None
        self.layer_names: list[str] | None = layer_names
        self.calibration: Literal["max", "percentile"] = calibration
        self.percentile: float = percentile
        self.momentum: float = momentum
        self.calibration_steps: int = calibration_steps
        # state (checkpointed)
        self.observed_steps: int = 0
        self._layers: dict[str, _Layer] = {}
        self._pending: dict[str, Any] | None = None  # state loaded before setup
        self._log_pending: bool = True
        self._calibrating: bool = False

    @classmethod
    def example(cls) -> Example:
        """4-bit inner layers (the tiny MLP has none: both its layers are first/last, so they are 4-bit too here)."""
        from litmix.testing import TinyClassifier, TinyDataModule

        return Example(TinyClassifier(), TinyDataModule(), [cls(bits_w=4, bits_a=4, first_last_bits=None)])

    def _state_key_fields(self) -> dict[str, Any]:
        return {} if self.layer_names is None else {"layer_names": list(self.layer_names)}

    # ------------------------------------------------------------------ set-up
    def _resolve(self, module: nn.Module) -> dict[str, tuple[int, int, int | None]]:
        """``{layer: (axis, bits_w, bits_a)}`` for this module; unknown names and empty selections are errors."""
        cls = type(self).__name__
        available = quantizable_layers(module)
        if self.layer_names is None:
            names = list(available)
            if not names:
                raise ValueError(
                    f"{cls}(layer_names=None): {type(module).__name__} has no quantizable layer (nn.Linear, "
                    "nn.Conv1d/2d/3d and subclasses, HF Conv1D, PyG Linear with an initialised weight)"
                )
        else:
            unknown = [n for n in self.layer_names if n not in available]
            if unknown:
                raise ValueError(
                    f"{cls}(layer_names={self.layer_names}): {unknown} are not quantizable layers of "
                    f"{type(module).__name__}; quantizable layers: {list(available) or 'none'}"
                )
            names = [n for n in available if n in set(self.layer_names)]  # registration order
        if self.layer_bits:
            unknown = [n for n in self.layer_bits if n not in names]
            if unknown:
                raise ValueError(
                    f"{cls}(layer_bits={self.layer_bits}): {unknown} are not among the quantized layers {names}"
                )
        out: dict[str, tuple[int, int, int | None]] = {}
        for i, n in enumerate(names):
            bw, ba = self.bits_w, self.bits_a
            if self.first_last_bits is not None and (i == 0 or i == len(names) - 1):
                bw = ba = self.first_last_bits
            if self.layer_bits and n in self.layer_bits:
                bw = ba = self.layer_bits[n]
            out[n] = (available[n], bw, ba)
        return out

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse sharded strategies, resolve the layers and install the hooks (every stage)."""
        super().setup(trainer, pl_module, stage)
        refuse_sharded_strategy(
            type(self).__name__,
            trainer.strategy,
            "per-output-channel weight scales need whole weights and the activation bounds are per layer",
        )
        self.attach(pl_module)

    def attach(self, module: nn.Module) -> None:
        """Install the fake-quantization hooks on ``module`` (done by ``setup``; usable outside a Trainer).

        Raises:
            ValueError: for unknown ``layer_names``/``layer_bits`` names or a module with no quantizable layer.
        """
        resolved = self._resolve(module)
        self.detach()
        modules = dict(module.named_modules())
        old = self._layers
        self._layers = {}
        for n, (axis, bw, ba) in resolved.items():
            layer = _Layer(n, modules[n], axis, bw, ba)
            if n in old:  # a second fit of the same callback: keep the calibration
                layer.bound, layer.low, layer.signed, layer.macs = old[n].bound, old[n].low, old[n].signed, old[n].macs
            layer.handles = [
                layer.module.register_forward_pre_hook(self._make_pre_hook(layer)),
                layer.module.register_forward_hook(self._make_post_hook(layer), always_call=True),
            ]
            self._layers[n] = layer
        if self._pending is not None:
            self._apply_state(self._pending)
            self._pending = None
        shown = ", ".join(f"{n} (w{bw}/a{ba if ba is not None else 32})" for n, (_, bw, ba) in resolved.items())
        rank_zero_info(f"{type(self).__name__}: quantizing {len(resolved)} layers: {shown}")

    def detach(self) -> None:
        """Remove the hooks (the calibration state stays)."""
        for layer in self._layers.values():
            for h in layer.handles:
                h.remove()
            layer.handles = []
            layer.module.__dict__.pop("weight", None)

    def _quantizing_activations(self) -> bool:
        return self.observed_steps >= self.calibration_steps

    def _make_pre_hook(self, layer: _Layer) -> Any:
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            weight = module._parameters["weight"]
            assert weight is not None
            module.__dict__["weight"] = fake_quantize_per_channel(weight, layer.bits_w, layer.axis)
            if layer.bits_a is None or not args or not isinstance(args[0], Tensor) or not args[0].is_floating_point():
                return None
            x = args[0]
            if self._calibrating or (module.training and torch.is_grad_enabled()):
                self._observe(layer, x)
            if layer.signed is None or not self._quantizing_activations():
                return None
            scale = layer.scale
            if scale is None or scale.device != x.device:
                scale = layer.scale = bound_scale(layer.bound.to(x.device), layer.bits_a, layer.signed)
            return (fake_quantize(x, scale, layer.bits_a, layer.signed), *args[1:])

        return pre_hook

    def _make_post_hook(self, layer: _Layer) -> Any:
        def post_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            module.__dict__.pop("weight", None)
            if layer.macs is None and isinstance(output, Tensor) and output.dim() >= 1:
                layer.macs = layer_macs(module._parameters["weight"], output, layer.axis)  # type: ignore[arg-type]
                self._log_pending = True

        return post_hook

    def _observe(self, layer: _Layer, x: Tensor) -> None:
        """Fold this forward's input bound (and, while calibrating, its minimum) into the step's observation."""
        with torch.no_grad():
            pct = self.percentile if self.calibration == "percentile" else None
            b = activation_bound(x, signed=layer.signed is not False, percentile=pct)
            if layer.batch_bound.device != b.device:
                layer.batch_bound = layer.batch_bound.to(b.device)
                layer.batch_low = layer.batch_low.to(b.device)
            layer.batch_bound = torch.maximum(layer.batch_bound, b)
            if layer.signed is None:
                layer.batch_low = torch.minimum(layer.batch_low, x.detach().min().float())

    # ------------------------------------------------------------------ training hooks
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Reduce this step's observations over ranks (max), update the EMA bounds; log the bit-operations."""
        layers = [layer for layer in self._layers.values() if layer.bits_a is not None]
        if layers:
            self._update_bounds(trainer, layers)
        step = trainer.global_step
        every = int(getattr(trainer, "log_every_n_steps", 50) or 0)
        if self._log_pending or (every > 0 and step % every == 0):
            cost = self.bit_operations()
            if cost is not None:
                fp32 = self.bit_operations(fp32=True) or 1.0
                pl_module.log(f"{self.log_prefix}/bit_operations", cost, on_step=True, on_epoch=False, batch_size=1)
                pl_module.log(
                    f"{self.log_prefix}/bit_operations_ratio", cost / fp32, on_step=True, on_epoch=False, batch_size=1
                )
                self._log_pending = False

    def _update_bounds(self, trainer: pl.Trainer | None, layers: list[_Layer]) -> None:
        """One all-reduce (max) of every layer's (bound, -min) observation, then the EMA; no host sync."""
        device = layers[0].module._parameters["weight"].device  # type: ignore[union-attr]
        obs = torch.stack([torch.stack([lay.batch_bound.to(device), -lay.batch_low.to(device)]) for lay in layers])
        if trainer is not None and trainer.world_size > 1:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(obs, op=torch.distributed.ReduceOp.MAX)
            else:
                obs = trainer.strategy.reduce(obs, reduce_op="max")
        m = self.momentum
        first = self.observed_steps == 0
        for lay, row in zip(layers, obs, strict=True):
            b = row[0]
            seen = torch.isfinite(b)
            bound = lay.bound.to(device)
            lay.bound = torch.where(seen, b if first else m * bound + (1 - m) * b, bound)
            lay.scale = None
            if lay.signed is None:
                lay.low = torch.minimum(lay.low.to(device), -row[1])
            lay.batch_bound = torch.full((), float("-inf"), device=device)
            lay.batch_low = torch.full((), float("inf"), device=device)
        self.observed_steps += 1
        if self.observed_steps == self.calibration_steps:
            self._finish_calibration()

    def _finish_calibration(self) -> None:
        """Calibration ends (one host sync): unsigned where no negative input was seen."""
        for lay in self._layers.values():
            if lay.bits_a is not None and lay.signed is None:
                low = float(lay.low)
                lay.signed = not (low >= 0.0) or low == float("inf")
                lay.scale = None
        self._log_pending = True

    def calibrate(self, module: nn.Module, inputs: Any) -> None:
        """Post-training calibration: run ``module`` on each input of ``inputs`` (no gradients) to set the bounds.

        Attaches the hooks to ``module`` when they are not attached to it; ends the calibration period (activations
        are quantized from then on, e.g. for post-training quantization without training).

        Args:
            module: the model.
            inputs: an iterable of input tensors (or of tuples whose first element is the input).
        """
        modules = dict(module.named_modules())
        attached = bool(self._layers) and all(
            modules.get(n) is lay.module and lay.handles for n, lay in self._layers.items()
        )
        if not attached:
            self.attach(module)
        layers = [layer for layer in self._layers.values() if layer.bits_a is not None]
        self._calibrating = True
        try:
            with torch.no_grad():
                for item in inputs:
                    module(item[0] if isinstance(item, tuple | list) else item)
                    if layers:
                        self._update_bounds(None, layers)
        finally:
            self._calibrating = False
        self.observed_steps = max(self.observed_steps, self.calibration_steps)
        self._finish_calibration()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the hooks: after ``fit`` the module is a plain float module again (:meth:`attach` re-installs)."""
        self.detach()

    # ------------------------------------------------------------------ reports
    def layer_bits_used(self) -> dict[str, tuple[int, int]]:
        """``{layer: (weight bits, activation bits)}`` (32 for float activations)."""
        return {n: (lay.bits_w, lay.bits_a if lay.bits_a is not None else 32) for n, lay in self._layers.items()}

    def bit_operations(self, fp32: bool = False) -> float | None:
        """``sum MACs x b_w x b_a`` per sample over the quantized layers (``None`` before the first forward).

        With ``fp32=True`` the same layers at 32 x 32 bits.
        """
        if not self._layers or any(lay.macs is None for lay in self._layers.values()):
            return None
        total = 0.0
        for lay in self._layers.values():
            bw, ba = (32, 32) if fp32 else (lay.bits_w, lay.bits_a if lay.bits_a is not None else 32)
            total += bit_operations(lay.macs or 0, bw, ba)
        return total

    def macs(self) -> dict[str, int | None]:
        """Multiply-accumulates per sample of each quantized layer (``None`` before its first training forward)."""
        return {n: lay.macs for n, lay in self._layers.items()}

    def activation_bounds(self) -> dict[str, tuple[float, bool | None]]:
        """``{layer: (calibrated bound, signed)}`` (``signed`` is ``None`` while calibrating)."""
        return {n: (float(lay.bound), lay.signed) for n, lay in self._layers.items()}

    # ------------------------------------------------------------------ export
    def export(self, module: nn.Module) -> dict[str, Any]:
        """Integer weights + scales of every quantized layer of ``module`` and its other tensors in float.

        Returns:
            ``{"layers": {layer: {"codes", "packed", "shape", "bits", "axis", "scale", "act_bits", "act_scale",
            "act_signed"}}, "float": {other state_dict entries}}``; weights of <= 4 bits are packed two per byte
            (``packed=True``, a flat ``uint8`` tensor), wider ones are ``int8``/``int16`` codes.

        Raises:
            ValueError: if the callback has not been attached to a module with these layers.
        """
        if not self._layers:
            raise ValueError(f"{type(self).__name__}.export: nothing to export; fit (or attach) first")
        modules = dict(module.named_modules())
        missing = [n for n in self._layers if n not in modules]
        if missing:
            raise ValueError(f"{type(self).__name__}.export(module): the module lacks the quantized layers {missing}")
        layers: dict[str, Any] = {}
        skip: set[str] = set()
        for n, lay in self._layers.items():
            weight = modules[n]._parameters["weight"]
            assert weight is not None
            w = weight.detach().cpu()
            scale = per_channel_scale(w, lay.bits_w, lay.axis)
            codes = quantize(w, scale, lay.bits_w)
            packed = lay.bits_w <= 4
            act_scale = None
            if lay.bits_a is not None and lay.signed is not None:
                act_scale = bound_scale(lay.bound.cpu(), lay.bits_a, lay.signed)
            entry: dict[str, Any] = {
                "codes": pack_int4(codes) if packed else codes,
                "packed": packed,
                "shape": list(w.shape),
                "bits": lay.bits_w,
                "axis": lay.axis,
                "scale": scale.flatten().clone(),
                "act_bits": lay.bits_a,
                "act_signed": lay.signed,
                "act_scale": act_scale,
            }
            layers[n] = entry
            skip.add(f"{n}.weight" if n else "weight")
        floats = {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if k not in skip}
        return {"version": 1, "layers": layers, "float": floats}

    def save_export(self, module: nn.Module, path: str | os.PathLike[str]) -> int:
        """Write :meth:`export` with ``torch.save``; returns the file size in bytes."""
        torch.save(self.export(module), path)
        return os.path.getsize(path)

    def to_torchao(self, module: nn.Module) -> nn.Module:
        """Deploy ``module`` with torchao: every quantized ``nn.Linear`` gets a torchao integer weight tensor.

        Each Linear weight becomes a ``torchao.quantization.IntxUnpackedToInt8Tensor`` (``int2`` .. ``int8``
        codes, this callback's per-output-channel scales passed as torchao's custom scales, zero points 0), so
        torchao runs the layer and its dequantized weight equals this callback's fake-quantized weight exactly.
        Other quantized layers (convolutions, wider than 8 bits) get their fake-quantized float weights. The
        module is changed in place (and returned); activations are left in float (weight-only deployment).

        Raises:
            ImportError: when torchao is not installed, naming the ``quantization`` extra.
            ValueError: if the callback has not been attached to a module with these layers.
        """
        try:
            from torchao.quantization import IntxUnpackedToInt8Tensor
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"{type(self).__name__}.to_torchao needs torchao: pip install 'litmix[quantization]'"
            ) from err
        if not self._layers:
            raise ValueError(f"{type(self).__name__}.to_torchao: nothing to deploy; fit (or attach) first")
        modules = dict(module.named_modules())
        missing = [n for n in self._layers if n not in modules]
        if missing:
            raise ValueError(
                f"{type(self).__name__}.to_torchao(module): the module lacks the quantized layers {missing}"
            )
        self.detach()
        for n, lay in self._layers.items():
            layer = modules[n]
            weight = layer._parameters["weight"]
            assert weight is not None
            w = weight.detach()
            scale = per_channel_scale(w, lay.bits_w, lay.axis)
            if type(layer) is nn.Linear and lay.bits_w <= 8 and lay.axis == 0:
                quantized = IntxUnpackedToInt8Tensor.from_hp(
                    w,
                    (1, w.shape[1]),
                    getattr(torch, f"int{lay.bits_w}"),
                    intx_choose_qparams_algorithm=None,
                    custom_scale=scale.reshape(-1, 1).to(w.dtype),
                    custom_zero_point=torch.zeros(w.shape[0], 1, dtype=torch.int8, device=w.device),
                )
                layer.weight = nn.Parameter(quantized, requires_grad=False)
            else:
                with torch.no_grad():
                    weight.copy_(fake_quantize_per_channel(w, lay.bits_w, lay.axis))
        return module

    @staticmethod
    def load_export(exported: dict[str, Any] | str | os.PathLike[str]) -> dict[str, Tensor]:
        """A float ``state_dict`` from :meth:`export` (or its file): weights = codes x scales (the quantized model).

        Raises:
            ValueError: for an export of a newer version.
        """
        data = exported if isinstance(exported, dict) else torch.load(exported, map_location="cpu", weights_only=True)
        if int(data.get("version", 1)) > 1:
            raise ValueError(f"QuantizationAwareTraining.load_export: export version {data['version']} is newer than 1")
        state = dict(data["float"])
        for n, entry in data["layers"].items():
            shape = entry["shape"]
            codes = unpack_int4(entry["codes"], shape) if entry["packed"] else entry["codes"]
            view = [1] * len(shape)
            view[entry["axis"]] = shape[entry["axis"]]
            state[f"{n}.weight" if n else "weight"] = codes.float() * entry["scale"].reshape(view)
        return state

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Calibration progress and every layer's bound, smallest input and signedness (CPU tensors)."""
        return {
            **super().state_dict(),
            "observed_steps": self.observed_steps,
            "layers": {
                n: {
                    "bound": lay.bound.detach().cpu().clone(),
                    "low": lay.low.detach().cpu().clone(),
                    "signed": lay.signed,
                    "macs": lay.macs,
                }
                for n, lay in self._layers.items()
            }
            if self._layers
            else dict((self._pending or {}).get("layers", {})),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (applied at ``setup`` when loaded before it).

        Raises:
            ValueError: for a newer state version or a layer this fit does not quantize.
        """
        super().load_state_dict(state_dict)
        self.observed_steps = int(state_dict.get("observed_steps", 0))
        if self._layers:
            self._apply_state(state_dict)
        else:
            self._pending = {"layers": dict(state_dict.get("layers", {}))}

    def _apply_state(self, state: dict[str, Any]) -> None:
        for n, entry in state.get("layers", {}).items():
            lay = self._layers.get(n)
            if lay is None:
                raise ValueError(
                    f"{type(self).__name__}: the checkpoint holds a bound for {n!r}, which is not quantized"
                )
            device = lay.module._parameters["weight"].device  # type: ignore[union-attr]
            lay.bound = torch.as_tensor(entry["bound"]).clone().to(device)
            lay.low = torch.as_tensor(entry["low"]).clone()
            lay.signed = entry["signed"]
            lay.macs = entry["macs"]
            lay.scale = None
        self._log_pending = True
