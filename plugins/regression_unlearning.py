"""Deep Regression Unlearning: blindspot unlearning and the Gaussian amnesiac baseline as one LightningModule."""

from __future__ import annotations

import copy
from typing import Any, Literal, cast

import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.data import DataLoader

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example, LitmixModule
from litmix.data import split_batch
from litmix.functional.regression_unlearning import blindspot_loss, gaussian_amnesiac_targets, regression_loss
from litmix.metrics.indexed_mean import IndexedMean
from litmix.registry import register
from litmix.unlearning_oracle import reinitialise
from litmix.validation import check_choice, check_float, check_int, check_type

METHODS = ("blindspot", "amnesiac")
SPLITS = ("forget", "retain", "test", "holdout")
_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def default_activation_layers(model: nn.Module) -> list[str]:
    """Names of the hidden ``Linear``/``Conv`` layers of ``model`` (all but the last one, the output head).

    Example:
        >>> default_activation_layers(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 1)))
        ['0', '2']
    """
    names = [n for n, m in model.named_modules() if n and isinstance(m, _LAYER_TYPES)]
    return names[:-1]


def _xy(batch: Any, part: str) -> tuple[Tensor, Tensor]:
    """``(x, y)`` of a regression batch; items without targets are an error naming the part."""
    x, y, _ = split_batch(batch)
    if y is None:
        raise ValueError(f"RegressionUnlearningModule: {part} items must be (x, y[, index]) with float targets y")
    return x, y


@register("plugin", "unlearning", paper="Deep Regression Unlearning (https://arxiv.org/abs/2210.08196)")
class RegressionUnlearningModule(LitmixModule):
    """Unlearn a forget set from a trained regressor: blindspot unlearning or the Gaussian amnesiac baseline.

    Deep Regression Unlearning (Tarun et al., ICML 2023, https://arxiv.org/abs/2210.08196; reference code
    ayushkumartarun/deep-regression-unlearning):

    - ``method="blindspot"``: in ``on_fit_start`` a *blindspot* model (a copy of ``model`` re-initialised under
      ``seed``) is trained on the retain data only for ``blindspot_epochs`` epochs (Adam, ``blindspot_lr``); it
      never saw the forget set. The model is then trained with
      :func:`~litmix.functional.regression_unlearning.blindspot_loss`: on forget inputs, the L1 distance to the
      blindspot model's outputs plus ``beta`` times the attention-map distance of the ``activation_layers``; on
      retain inputs, the L1 loss to the labels; weighted by the forget share of the training data.
    - ``method="amnesiac"``: forget targets are replaced by Gaussian draws with the mean and standard deviation
      of all training targets (:func:`~litmix.functional.regression_unlearning.gaussian_amnesiac_targets`, fixed
      per item), and the model is fine-tuned on retain plus noisy forget data with the same weighting.

    Data: :class:`~litmix.datamodules.ForgetRetainDataModule` over a regression dataset (items ``(x, y)``, ``y``
    a float); training batches pair every forget item with a retain item (one epoch = one pass over the forget
    set). The blindspot model, the forget share and the target statistics are computed once, stored in the
    checkpoint (``checkpoint["litmix"]``, not the state_dict) and restored on resume. Under DDP every rank trains
    the blindspot model on the whole retain set and then takes rank 0's weights.

    Logged: ``train/loss``, ``train/forget_loss`` (the forget term before weighting), ``train/retain_loss``;
    ``val/<split>_mae`` and ``test/<split>_mae`` (mean absolute error, de-duplicated by item index, so the value
    does not depend on the number of ranks) for every evaluation loader of the datamodule.

    Args:
        model: the trained regressor (returns ``[B]`` or ``[B, 1]``).
        method: ``"blindspot"`` or ``"amnesiac"``.
        beta: weight of the activation attraction (the reference code's ``AT_beta``, 50), finite and >= 0.
        lr: learning rate of the unlearning (Adam; the paper: 1e-3), finite and > 0.
        loss: ``"l1"`` (the paper) or ``"mse"``.
        forget_share: weight of the forget term in ``[0, 1]``; None = ``|D_f| / (|D_f| + |D_r|)`` (the expected
            forget share of the paper's mixed batches).
        blindspot_epochs: epochs of blindspot training on the retain set (the paper: 2), >= 1.
        blindspot_lr: its Adam learning rate (the paper: 0.01), finite and > 0.
        activation_layers: names of submodules (``model.named_modules()``) whose outputs are attracted; None = the
            hidden ``Linear``/``Conv`` layers (:func:`default_activation_layers`); ``[]`` = outputs only.
        seed: seed of the blindspot initialisation and shuffling, and of the amnesiac draws (>= 0).

    Raises:
        TypeError: an argument of the wrong type (e.g. ``model="net"``, ``beta="50"``), naming it.
        ValueError: an unknown ``method`` or ``loss``; ``beta``/``forget_share`` out of range, ``lr`` or
            ``blindspot_lr`` <= 0, NaN or infinite numbers; ``blindspot_epochs < 1``; an activation layer the model
            does not have; ``activation_layers`` with ``method="amnesiac"``.
        MisconfigurationException: in ``on_fit_start``, a datamodule without ``forget_dataset`` and
            ``retain_dataset`` (use :class:`~litmix.datamodules.ForgetRetainDataModule`); in ``setup``, FSDP or
            DeepSpeed (the blindspot model is a whole copy of the model).

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> module, datamodule, callbacks = RegressionUnlearningModule.example()
        >>> from litmix.testing import make_trainer
        >>> trainer = make_trainer(max_epochs=2, limit_val_batches=1.0)
        >>> trainer.fit(module, datamodule=datamodule)
        >>> sorted(k for k in trainer.callback_metrics if k.startswith("val/"))
        ['val/forget_mae', 'val/retain_mae', 'val/test_mae']
        >>> module.blindspot_model is not None and 0.0 < module.forget_share < 1.0
        True
    """

    def __init__(
        self,
        model: nn.Module,
        method: Literal["blindspot", "amnesiac"] = "blindspot",
        beta: float = 50.0,
        lr: float = 1e-3,
        loss: Literal["l1", "mse"] = "l1",
        forget_share: float | None = None,
        blindspot_epochs: int = 2,
        blindspot_lr: float = 0.01,
        activation_layers: list[str] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_type(name, "model", model, nn.Module)
        check_choice(name, "method", method, METHODS)
        check_float(name, "beta", beta, low=0.0)
        check_float(name, "lr", lr, low=0.0, low_open=True)
        check_choice(name, "loss", loss, ("l1", "mse"))
        check_float(name, "forget_share", forget_share, low=0.0, high=1.0, allow_none=True)
        check_int(name, "blindspot_epochs", blindspot_epochs, low=1)
        check_float(name, "blindspot_lr", blindspot_lr, low=0.0, low_open=True)
        check_type(name, "activation_layers", activation_layers, list, allow_none=True)
        check_int(name, "seed", seed, low=0)
        layers = dict(model.named_modules())
        for layer in activation_layers or []:
            if not isinstance(layer, str):
                raise TypeError(f"{name}(activation_layers={activation_layers!r}): layer names must be str")
            if layer == "" or layer not in layers:
                shown = [k for k in layers if k][:12]
                raise ValueError(
                    f"{name}(activation_layers=[..., {layer!r}, ...]): the model has no such submodule; some: {shown}"
                )
        if activation_layers is not None and method == "amnesiac":
            raise ValueError(
                f"{name}(method='amnesiac', activation_layers={activation_layers!r}): activation "
                "attraction belongs to method='blindspot'"
            )
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.method, self.beta, self.lr = method, float(beta), float(lr)
        self.loss_name: Literal["l1", "mse"] = loss
        self.blindspot_epochs, self.blindspot_lr, self.seed = blindspot_epochs, float(blindspot_lr), seed
        self.activation_layers: list[str] = (
            list(activation_layers) if activation_layers is not None else default_activation_layers(model)
        )
        #: Weight of the forget term (given, or set from the datamodule in ``on_fit_start``).
        self.forget_share: float | None = None if forget_share is None else float(forget_share)
        self._given_share = forget_share is not None
        #: Mean and standard deviation of the training targets (amnesiac), set in ``on_fit_start``.
        self.target_stats: tuple[float, float] | None = None
        self.mae = nn.ModuleDict({s: IndexedMean() for s in SPLITS})
        object.__setattr__(self, "_blindspot", None)  # outside the state_dict, DDP and the optimizer

    @classmethod
    def example(cls) -> Example:
        """Blindspot unlearning of a 4-8-1 MLP on a tiny synthetic regression (16 of 64 items forgotten)."""
        from litmix.datamodules.forget_retain import ForgetRetainDataModule

        gen = torch.Generator().manual_seed(0)
        x = torch.randn(96, 4, generator=gen)
        y = x.sum(1) + 0.1 * torch.randn(96, generator=gen)
        train, test = torch.utils.data.TensorDataset(x[:64], y[:64]), torch.utils.data.TensorDataset(x[64:], y[64:])
        net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        order = torch.argsort(y[:64])[:16].tolist()  # the lowest targets: a label-range forget set
        dm = ForgetRetainDataModule.from_dataset(train, test, forget_indices=order, batch_size=4, eval_batch_size=32)
        return Example(cls(net, method="blindspot", blindspot_epochs=1), dm, [])

    @property
    def blindspot_model(self) -> nn.Module | None:
        """The frozen blindspot model (None before ``on_fit_start`` and for ``method="amnesiac"``)."""
        blind: nn.Module | None = self.__dict__.get("_blindspot")
        return blind

    # ------------------------------------------------------------------ forward helpers
    def forward(self, x: Tensor) -> Tensor:
        """Predictions of the wrapped model, flattened to ``[B]``."""
        return cast(Tensor, self.model(x)).reshape(x.shape[0], -1)[:, 0]

    def _with_activations(self, model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        captured: dict[str, Tensor] = {}
        handles = [
            model.get_submodule(layer).register_forward_hook(
                lambda _m, _i, out, layer=layer: captured.__setitem__(layer, out[0] if isinstance(out, tuple) else out)
            )
            for layer in self.activation_layers
        ]
        try:
            preds = cast(Tensor, model(x)).reshape(x.shape[0], -1)[:, 0]
        finally:
            for handle in handles:
                handle.remove()
        return preds, [captured[layer] for layer in self.activation_layers]

    # ------------------------------------------------------------------ lifecycle
    def setup(self, stage: str) -> None:
        """Refuse sharded strategies (the blindspot model is a whole copy of the model)."""
        if stage == "fit":
            refuse_sharded_strategy(type(self).__name__, self.trainer.strategy, "the blindspot model is a whole copy")

    def _datasets(self) -> tuple[Any, Any, int]:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "forget_dataset") or not hasattr(dm, "retain_dataset"):
            raise MisconfigurationException(
                f"{type(self).__name__} needs a datamodule with forget_dataset and retain_dataset "
                "(ForgetRetainDataModule)"
            )
        return dm.forget_dataset, dm.retain_dataset, int(getattr(dm, "batch_size", 32))

    def on_fit_start(self) -> None:
        """Forget share, target statistics and the blindspot model, once (restored from a checkpoint on resume)."""
        forget, retain, batch_size = self._datasets()
        if self.forget_share is None:
            self.forget_share = len(forget) / (len(forget) + len(retain))
        if self.method == "amnesiac" and self.target_stats is None:
            ys = torch.cat(
                [_xy(b, "forget")[1].reshape(-1).double() for b in DataLoader(forget, batch_size=512)]
                + [_xy(b, "retain")[1].reshape(-1).double() for b in DataLoader(retain, batch_size=512)]
            )
            self.target_stats = (float(ys.mean()), float(ys.std()) if ys.numel() > 1 else 0.0)
        if self.method == "blindspot":
            if self.blindspot_model is None:
                object.__setattr__(self, "_blindspot", self._train_blindspot(retain, batch_size))
            blind = self.blindspot_model
            assert blind is not None
            blind.to(self.device).eval().requires_grad_(False)
            self._broadcast_blindspot()

    def _train_blindspot(self, retain: Any, batch_size: int) -> nn.Module:
        blind = reinitialise(self.model, self.seed).to(self.device).train()
        blind.requires_grad_(True)
        optimizer = torch.optim.Adam(blind.parameters(), lr=self.blindspot_lr)
        gen = torch.Generator().manual_seed(self.seed)
        loader = DataLoader(retain, batch_size=batch_size, shuffle=True, generator=gen)
        with torch.enable_grad():
            for _ in range(self.blindspot_epochs):
                for batch in loader:
                    x, y = _xy(batch, "retain")
                    preds = cast(Tensor, blind(x.to(self.device))).reshape(x.shape[0], -1)[:, 0]
                    loss = regression_loss(preds, y.to(self.device), self.loss_name)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
        return blind

    def _broadcast_blindspot(self) -> None:
        blind = self.blindspot_model
        if blind is None or self.trainer.world_size < 2:
            return
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            with torch.no_grad():
                for tensor in [*blind.parameters(), *blind.buffers()]:
                    dist.broadcast(tensor.data, src=0)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the blindspot weights, forget share and target statistics in ``checkpoint["litmix"]``."""
        super().on_save_checkpoint(checkpoint)
        entry = checkpoint["litmix"]
        entry["forget_share"] = self.forget_share
        entry["target_stats"] = self.target_stats
        blind = self.blindspot_model
        if blind is not None:
            entry["blindspot"] = {k: v.detach().cpu().clone() for k, v in blind.state_dict().items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore them (a resumed run trains no second blindspot model)."""
        super().on_load_checkpoint(checkpoint)
        entry = checkpoint.get("litmix", {})
        if entry.get("forget_share") is not None and not self._given_share:
            self.forget_share = float(entry["forget_share"])
        if entry.get("target_stats") is not None:
            self.target_stats = (float(entry["target_stats"][0]), float(entry["target_stats"][1]))
        if entry.get("blindspot") is not None:
            blind = copy.deepcopy(self.model)
            blind.load_state_dict(entry["blindspot"])
            object.__setattr__(self, "_blindspot", blind)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Blindspot or amnesiac loss on a forget-anchored pair batch."""
        x_f, y_f = _xy(batch["forget"], "forget")
        x_r, y_r = _xy(batch["retain"], "retain")
        share = float(self.forget_share if self.forget_share is not None else 0.5)
        retain_preds = self(x_r)
        retain_term = regression_loss(retain_preds, y_r, self.loss_name)
        if self.method == "blindspot":
            blind = self.blindspot_model
            if blind is None:
                raise RuntimeError(f"{type(self).__name__}: the blindspot model is missing (on_fit_start not run)")
            preds, acts = self._with_activations(self.model, x_f)
            with torch.no_grad():
                blind_preds, blind_acts = self._with_activations(blind, x_f)
            forget_term = blindspot_loss(
                preds, blind_preds, acts, blind_acts, forget_share=1.0, beta=self.beta, loss=self.loss_name
            )
        else:
            assert self.target_stats is not None
            noisy = gaussian_amnesiac_targets(batch["index"], *self.target_stats, seed=self.seed)
            forget_term = regression_loss(self(x_f), noisy.to(y_f.device), self.loss_name)
        loss = share * forget_term + (1.0 - share) * retain_term
        self.log("train/forget_loss", forget_term.detach(), on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/retain_loss", retain_term.detach(), on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, sync_dist=True, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the trainable parameters of the wrapped model (as the reference code)."""
        return torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=self.lr)

    # ------------------------------------------------------------------ evaluation
    def _split_names(self) -> list[str]:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        names = getattr(dm, "val_loader_names", None)
        return list(names) if names else list(SPLITS)

    def _eval_step(self, batch: Any, dataloader_idx: int) -> None:
        split = self._split_names()[dataloader_idx]
        x, y, index = split_batch(batch)
        if index is None or y is None:
            raise ValueError(f"{type(self).__name__}: {split} evaluation items must be (x, y, index)")
        if split not in self.mae:
            self.mae[split] = IndexedMean().to(self.device)
        cast(IndexedMean, self.mae[split]).update((self(x) - y.reshape(-1)).abs(), index)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Update the mean absolute error of this loader's split."""
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        """As :meth:`validation_step`."""
        self._eval_step(batch, dataloader_idx)

    def _log_eval(self, stage: str) -> None:
        for split, metric in self.mae.items():
            mae = cast(IndexedMean, metric)
            if mae.update_count > 0:
                self.log(f"{stage}/{split}_mae", mae.compute(), sync_dist=True, add_dataloader_idx=False)
            mae.reset()

    def on_validation_epoch_end(self) -> None:
        """Log ``val/<split>_mae``."""
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        """Log ``test/<split>_mae``."""
        self._log_eval("test")
