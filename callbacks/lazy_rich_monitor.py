"""Lazy-to-rich training monitor: weight norm and movement, kernel alignment and movement, train-test gap."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn
from torch.utils.data import default_collate

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example, LitmixCallback
from litmix.data import split_batch
from litmix.functional.lazy_rich import (
    feature_gram,
    kernel_alignment,
    kernel_distance,
    label_kernel,
    weight_movement,
    weight_norm,
)
from litmix.registry import register
from litmix.validation import check_bool, check_int, check_str

_PAPER = "Grokking as the transition from lazy to rich training dynamics (https://arxiv.org/abs/2310.06110)"
MAX_SEED = 2**32 - 1


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Evaluation mode and no gradients; every submodule's own ``training`` flag is restored afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.train(flag)


def _dataset_of(loader: Any) -> Any:
    """The map-style dataset behind a DataLoader (or the first of a collection), else ``None``."""
    if isinstance(loader, list | tuple) and loader:
        loader = loader[0]
    if isinstance(loader, dict) and loader:
        loader = next(iter(loader.values()))
    dataset = getattr(loader, "dataset", None)
    return dataset if dataset is not None and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__") else None


@register("callback", "optimization", paper=_PAPER)
class LazyRichMonitor(LitmixCallback):
    """Log how lazy (kernel-like) or rich (feature-learning) training is, every ``interval`` optimizer steps.

    Kumar, Bordelon, Gershman and Pehlevan, "Grokking as the transition from lazy to rich training dynamics",
    ICLR 2024 (https://arxiv.org/abs/2310.06110): a network first fits its training data with its initial
    (lazy) kernel, which generalises poorly, and grokks when its features move to align with the task. The
    larger the initialisation scale, the lazier (and later) the transition. On a fixed probe batch this callback
    logs, under ``<name or "lazy_rich">/``:

    * ``weight_norm``: ``||W||`` over the trainable parameters;
    * ``weight_movement``: ``||W - W0|| / ||W0||`` from the weights at the start of the first fit;
    * ``kernel_alignment``: the (centred, with ``centered=True``) alignment between the Gram matrix ``F F^T`` of
      the probe's last hidden features and the label kernel ``Y Y^T`` (one-hot ``Y``; ``y y^T`` for two classes);
    * ``kernel_movement``: ``1 - alignment(K_t, K_0)``, the kernel distance from the initial feature kernel;
    * ``train_acc``, ``test_acc``, ``train_test_gap``: read from the module's logged metrics ``train_acc_key``
      and ``val_acc_key`` when both are given and present, else measured on the probe batches (a training probe
      and, when the DataModule has a ``val_dataloader``, a validation probe of the same size).

    The features are the input of the module's last ``nn.Linear`` (in ``modules()`` order), or the output of the
    submodule ``feature_layer``; sequence features are flattened per sample, and for ``(B, T, V)`` logits the last
    position is scored. Probes are ``probe_size`` samples drawn with ``seed`` from the training and validation
    data sets (the same on every DDP rank), evaluated in eval mode without gradients (the training state is
    untouched). ``W0`` (a CPU copy of the trainable parameters, taken in ``on_fit_start`` after DDP has synced
    the ranks), ``K0``, the probe indices and the history of measurements are checkpointed, so a resumed run
    measures against the original initialisation and logs what an uninterrupted run logs.

    Sharded strategies (FSDP, DeepSpeed) are refused in ``setup``: ``W0`` is a copy of whole parameters.

    Args:
        interval: measure every ``interval`` optimizer steps (>= 1).
        probe_size: samples per probe batch (>= 2; fewer when the data set is smaller).
        feature_layer: name of the submodule whose output are the features (``module.get_submodule``), or
            ``None`` for the input of the last ``nn.Linear``.
        centered: centre the kernels before the label alignment (centred kernel alignment).
        train_acc_key: logged metric holding the training accuracy (e.g. ``"train/acc"``), or ``None``.
        val_acc_key: logged metric holding the validation accuracy (e.g. ``"val/acc"``), or ``None``.
        seed: seed of the probe indices, in [0, 2**32 - 1].
        name: optional instance name (checkpoint key and log prefix).

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for ``interval < 1``, ``probe_size < 2``, an empty key or layer name or a seed out of range;
            at ``setup``, for a ``feature_layer`` the module does not have or a module without ``nn.Linear``.
        MisconfigurationException: in ``setup`` under ``strategy="fsdp"`` or DeepSpeed.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, (monitor,) = LazyRichMonitor.example()
        >>> _ = fit_tiny([monitor], module=module, datamodule=datamodule, max_steps=2)
        >>> [round(h["weight_movement"], 2) > 0 for h in monitor.history], sorted(monitor.history[0])[:3]
        ([True, True], ['kernel_alignment', 'kernel_movement', 'step'])
    """

    default_log_prefix: ClassVar[str] = "lazy_rich"

    def __init__(
        self,
        interval: int = 50,
        probe_size: int = 256,
        feature_layer: str | None = None,
        centered: bool = True,
        train_acc_key: str | None = None,
        val_acc_key: str | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        owner = type(self).__name__
        interval = check_int(owner, "interval", interval, low=1)
        probe_size = check_int(owner, "probe_size", probe_size, low=2)
        feature_layer = check_str(owner, "feature_layer", feature_layer, allow_none=True, allow_empty=False)
        centered = check_bool(owner, "centered", centered)
        train_acc_key = check_str(owner, "train_acc_key", train_acc_key, allow_none=True, allow_empty=False)
        val_acc_key = check_str(owner, "val_acc_key", val_acc_key, allow_none=True, allow_empty=False)
        seed = check_int(owner, "seed", seed, low=0, high=MAX_SEED)
        super().__init__(name=name)
        self.interval, self.probe_size, self.feature_layer = interval, probe_size, feature_layer
        self.centered, self.train_acc_key, self.val_acc_key, self.seed = centered, train_acc_key, val_acc_key, seed
        self.init_weights: dict[str, Tensor] | None = None
        self.init_kernel: Tensor | None = None
        self.train_probe: Tensor | None = None
        self.val_probe: Tensor | None = None
        self.history: list[dict[str, float]] = []
        self._last_step = -1
        self._datasets: tuple[Any, Any] = (None, None)  # not state: re-read at every fit
        self._batches: dict[str, Any] = {}  # collated probe batches (CPU), built once per fit

    @classmethod
    def example(cls) -> Example:
        """Measured every step on :class:`litmix.testing.TinyClassifier` and ``TinyDataModule``."""
        from litmix.testing import TinyClassifier, TinyDataModule

        return Example(TinyClassifier(), TinyDataModule(), [cls(interval=1, probe_size=32)])

    def __getstate__(self) -> dict[str, Any]:
        """Data sets are re-read at every fit."""
        return {**self.__dict__, "_datasets": (None, None), "_batches": {}}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check state keys; refuse sharded strategies (W0 is a copy of whole parameters); check the feature layer."""
        super().setup(trainer, pl_module, stage)
        refuse_sharded_strategy(
            type(self).__name__, trainer.strategy, "W0 is a copy of whole parameters, which it shards"
        )
        self._feature_module(pl_module)

    def _feature_module(self, pl_module: pl.LightningModule) -> tuple[nn.Module, bool]:
        """The module whose output (``True``) or input (``False``) are the features."""
        owner = type(self).__name__
        if self.feature_layer is not None:
            try:
                return pl_module.get_submodule(self.feature_layer), True
            except AttributeError as err:
                raise ValueError(
                    f"{owner}(feature_layer={self.feature_layer!r}): the module has no submodule of that name"
                ) from err
        linears = [m for m in pl_module.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(
                f"{owner}(feature_layer=None): {type(pl_module).__name__} has no nn.Linear; name the feature layer"
            )
        return linears[-1], False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Copy W0 (after DDP's broadcast) unless it was restored from a checkpoint."""
        if self.init_weights is None:
            self.init_weights = {
                k: p.detach().cpu().clone() for k, p in pl_module.named_parameters() if p.requires_grad
            }

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Find the data sets, draw the probes and take K0 (unless restored)."""
        train_set = _dataset_of(trainer.train_dataloader)
        val_set = None
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and type(datamodule).val_dataloader is not pl.LightningDataModule.val_dataloader:
            try:
                val_set = _dataset_of(datamodule.val_dataloader())
            except Exception:  # a DataModule whose validation data is not ready: measure without it
                val_set = None
        self._datasets = (train_set, val_set)
        self._batches = {}
        gen = torch.Generator().manual_seed(self.seed)
        if self.train_probe is None and train_set is not None:
            self.train_probe = torch.randperm(len(train_set), generator=gen)[: self.probe_size].sort().values
            if val_set is not None:
                self.val_probe = torch.randperm(len(val_set), generator=gen)[: self.probe_size].sort().values
        if self.init_kernel is None and self.train_probe is not None:
            features, _, _ = self._probe(pl_module, train_set, self.train_probe, "train")
            self.init_kernel = feature_gram(features).cpu()

    def _probe(
        self, pl_module: pl.LightningModule, dataset: Any, indices: Tensor, key: str
    ) -> tuple[Tensor, Tensor, Any]:
        """Features, outputs and targets of the probe samples ``key`` (eval mode, no gradients)."""
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = default_collate([dataset[i] for i in indices.tolist()])
        x, y, _ = split_batch(move_data_to_device(batch, pl_module.device))
        module, use_output = self._feature_module(pl_module)
        captured: list[Tensor] = []

        def grab(_m: nn.Module, args: tuple[Any, ...], output: Any = None) -> None:
            captured.append(output if use_output else args[0])

        handle = module.register_forward_hook(grab) if use_output else module.register_forward_pre_hook(grab)
        try:
            with _eval_mode(pl_module):
                out = pl_module(x)
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"{type(self).__name__}: the feature layer was not called in the module's forward")
        features = captured[-1].detach().float().reshape(len(indices), -1)
        return features, out, y

    @staticmethod
    def _accuracy(out: Any, y: Any) -> float | None:
        if not isinstance(out, Tensor) or not isinstance(y, Tensor) or y.is_floating_point():
            return None
        logits = out[:, -1] if out.dim() == 3 else out
        if logits.dim() != 2 or len(logits) != len(y):
            return None
        return float((logits.argmax(-1) == y.flatten()).double().mean())

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Take one measurement (see the class docstring) and return it."""
        assert self.init_weights is not None, "LazyRichMonitor.on_fit_start() copies W0"
        params = {k: p for k, p in pl_module.named_parameters() if k in self.init_weights}
        result = {
            "step": float(trainer.global_step),
            "weight_norm": weight_norm(params),
            "weight_movement": weight_movement(params, self.init_weights),
        }
        train_set, val_set = self._datasets
        accuracies: dict[str, float | None] = {"train_acc": None, "test_acc": None}
        if train_set is not None and self.train_probe is not None:
            features, out, y = self._probe(pl_module, train_set, self.train_probe, "train")
            gram = feature_gram(features).cpu()
            if isinstance(y, Tensor):
                classes = out.shape[-1] if isinstance(out, Tensor) and not y.is_floating_point() else None
                result["kernel_alignment"] = kernel_alignment(
                    gram, label_kernel(y.cpu(), classes if classes and classes > int(y.max()) else None), self.centered
                )
            if self.init_kernel is not None:
                result["kernel_movement"] = kernel_distance(self.init_kernel, gram, centered=self.centered)
            accuracies["train_acc"] = self._accuracy(out, y)
            if val_set is not None and self.val_probe is not None:
                _, out_val, y_val = self._probe(pl_module, val_set, self.val_probe, "val")
                accuracies["test_acc"] = self._accuracy(out_val, y_val)
        metrics = trainer.callback_metrics
        if self.train_acc_key in metrics and self.val_acc_key in metrics:
            accuracies = {"train_acc": float(metrics[self.train_acc_key]), "test_acc": float(metrics[self.val_acc_key])}
        for key, value in accuracies.items():
            if value is not None:
                result[key] = value
        if accuracies["train_acc"] is not None and accuracies["test_acc"] is not None:
            result["train_test_gap"] = accuracies["train_acc"] - accuracies["test_acc"]
        return result

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Measure and log after every ``interval``-th optimizer step."""
        step = trainer.global_step
        if step <= self._last_step or step % self.interval != 0:
            return
        self._last_step = step
        result = self.measure(trainer, pl_module)
        self.history.append(result)
        for key, value in result.items():
            if key != "step":
                pl_module.log(f"{self.log_prefix}/{key}", value, on_step=True, on_epoch=False, batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        """W0, K0, the probe indices, the measurements so far and the last measured step."""
        return {
            **super().state_dict(),
            "init_weights": self.init_weights,
            "init_kernel": self.init_kernel,
            "train_probe": self.train_probe,
            "val_probe": self.val_probe,
            "history": [dict(h) for h in self.history],
            "last_step": self._last_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore W0, K0, the probes and the history."""
        super().load_state_dict(state_dict)
        self.init_weights = state_dict.get("init_weights")
        self.init_kernel = state_dict.get("init_kernel")
        self.train_probe = state_dict.get("train_probe")
        self.val_probe = state_dict.get("val_probe")
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self._last_step = int(state_dict.get("last_step", -1))
