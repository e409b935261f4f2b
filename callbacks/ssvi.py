"""Sparse Subspace Variational Inference (SSVI) as a Lightning callback: a sparse Bayesian net in any module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from litmix.base import Example
from litmix.functional.sparsity import erk_densities, random_masks
from litmix.functional.ssvi import ADDITION_CRITERIA, PAPER, REMOVAL_CRITERIA, inverse_softplus, ssvi_support_update
from litmix.layers.ssvi import SparseVariationalMixin, to_sparse_variational
from litmix.loss_terms import LossTermCallback
from litmix.registry import register
from litmix.sparsity._callback import sync_generator
from litmix.sparsity._dynamic import DynamicMaskCallback
from litmix.validation import check_choice, check_float, check_int, check_str_list

__all__ = ["SSVI"]

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant (golden ratio) for the per-step noise seed


def _noise_seed(*parts: int) -> int:
    h = 0
    for part in parts:
        h = (h * _MIX + int(part) + 1) % (2**63 - 1)
    return h


@register("callback", "sparsity", paper=PAPER)
class SSVI(DynamicMaskCallback, LossTermCallback):
    """Train any LightningModule's ``nn.Linear``/``nn.Conv2d`` layers as a sparse Bayesian net by SSVI.

    Paper: "Training Bayesian Neural Networks with Sparse Subspace Variational Inference", Li, Miao, Qiu and Zhang,
    ICLR 2024 (https://arxiv.org/abs/2402.11025).

    * **Conversion** (``setup``): the module's ``nn.Linear`` and ``nn.Conv2d`` layers (or ``layer_names``) become
      :class:`~litmix.layers.SparseVariationalLinear` / :class:`~litmix.layers.SparseVariationalConv2d`: mean-field
      Gaussian weights ``N(mu, softplus(rho)^2)``
      with ``mu`` the layer's own ``weight`` parameter, sampled by the local reparameterisation trick in training
      mode; eval mode runs the mean network (:func:`litmix.layers.mc_predict` averages sampled predictions).
    * **ELBO**: the loss becomes ``task_loss + kl_weight * KL(q || N(0, prior_std^2)) / N`` with ``N`` the number
      of training samples (``num_samples`` or the train dataset's length) and the KL over the support only,
      through :class:`~litmix.loss_terms.LossTermCallback` (so it composes with other loss terms).
    * **Sparse subspace**: at fit start every layer gets a uniformly random support at density ``1 - sparsity``
      (``distribution="uniform"``, the paper's default, or ``"erk"``), the same mask on ``mu`` and ``rho``, held by
      the shared :class:`~litmix.sparsity.MaskEngine` (gradients masked before the step, optimizer state masked,
      fresh state at added coordinates). Every ``update_every`` optimizer steps until ``end_fraction`` of the run,
      while the gradient of ``mu`` is still dense, each layer removes the fraction
      ``zeta / 2 * (1 + cos(pi t / T_end))`` of its support with the lowest removal score (``removal``:
      ``"snr_abs"``, the signal-to-noise ratio of ``|theta|``, the paper's default; ``"snr"``, ``"mean"``,
      ``"abs_mean"``) and adds as many inactive coordinates (``addition``: ``"gradient"``, largest ``|dL/dmu|``,
      or ``"random"``), which start at ``mu = 0`` and ``sigma = init_sigma`` (``regrow_sigma="init"``) or the
      mean ``sigma`` of the layer's support (``"mean"``). The support size is exactly the budget after every update.
      ``sparsity=0`` is dense mean-field VI (no updates). The masks live in the shared pruner shell
      (:class:`~litmix.callbacks.GradualPruning` and the other litmix pruners: strategy checks, gradient and
      optimizer-state masking, re-masking, checkpointed masks).
    * **DDP**: support decisions on rank 0, broadcast; the noise of each step is seeded from
      ``(seed, epoch, batch, rank)``, so every rank draws its own noise and a resumed run draws the same.
    * **Checkpoints**: the module's state_dict holds the posterior means under the module's own keys (loads
      strictly into the unconverted module: the mean network); ``rho``, the supports (one bit per weight), the
      update count and the random generator are in this callback's state, so resuming is exact.

    Logs ``<prefix>/loss_step``/``loss_epoch``/``loss`` (the KL term ``KL / N``), like every litmix pruner the
    sparsity per layer (``<prefix>/sparsity/<layer>.weight``) and overall, to every logger with a per-layer image
    when it changes (the initial supports; updates keep it), ``<prefix>/sparsity`` and ``<prefix>/churn`` (fraction
    of the support replaced) at every support update, ``<prefix>/sigma_mean`` (mean ``sigma`` on the support) at
    epoch end, and the final values (``final_sparsity``, ``final_sigma_mean``, ``updates``) to every logger.
    ``<prefix>`` is ``name`` when given, else ``ssvi``.

    Args:
        sparsity: fraction of inactive weights in every converted layer (overall with ``"erk"``), in [0, 1).
        prior_std: standard deviation of the zero-mean Gaussian prior, > 0.
        init_sigma: initial posterior standard deviation (and that of added coordinates), > 0.
        kl_weight: factor of the KL term (1 = the ELBO; < 1 tempers it), >= 0.
        num_samples: ``N`` in ``KL / N`` (default: the length of the train dataloader's dataset).
        removal: removal criterion: ``"snr_abs"``, ``"snr"``, ``"mean"`` or ``"abs_mean"``.
        addition: addition criterion: ``"gradient"`` or ``"random"``.
        update_every: optimizer steps between support updates, >= 1.
        zeta: initial fraction of the support replaced per update, in (0, 1].
        end_fraction: last update at this fraction of ``trainer.estimated_stepping_batches``, in (0, 1].
        end_step: absolute last-update step (overrides ``end_fraction``), >= 1.
        distribution: per-layer densities, ``"uniform"`` or ``"erk"``.
        regrow_sigma: ``sigma`` of added coordinates: ``"init"`` (``init_sigma``) or ``"mean"`` (the layer's mean).
        layer_names: ``named_modules`` names of the ``nn.Linear``/``nn.Conv2d`` layers to convert (default: all).
        seed: seed of the initial supports, random additions and the sampling noise, >= 0.
        name: optional instance name (checkpoint key and logging prefix).

    Raises:
        ValueError: for arguments out of range (in ``__init__``); when fit starts: a module without ``nn.Linear``
            or ``nn.Conv2d`` layers, unknown ``layer_names``, an unknown run length without ``end_step``, or a
            train set without length and no ``num_samples``.
        TypeError: for arguments of the wrong type.
        MisconfigurationException: under manual optimization (without ``collects_loss_terms``) or a sharded
            strategy (FSDP, DeepSpeed).

    Example:
        >>> from litmix.testing import fit_tiny, TinyClassifier
        >>> model = TinyClassifier()
        >>> cb = SSVI(sparsity=0.5, update_every=2, init_sigma=0.01)
        >>> _ = fit_tiny([cb], module=model, max_steps=8)
        >>> type(model.net[0]).__name__, cb.engine.sparsity_report()["global"], cb.n_updates
        ('SparseVariationalLinear', 0.5, 2)
        >>> sorted(model.state_dict())  # the user's own keys: the mean network loads into a plain TinyClassifier
        ['net.0.bias', 'net.0.weight', 'net.2.bias', 'net.2.weight']
    """

    default_log_prefix: ClassVar[str] = "ssvi"
    state_version: ClassVar[int] = 1
    sharded_reason: ClassVar[str] = "it ranks whole weight tensors and adds by dense gradients"

    def __init__(
        self,
        sparsity: float = 0.9,
        prior_std: float = 0.1,
        init_sigma: float = 1e-3,
        kl_weight: float = 1.0,
        num_samples: int | None = None,
        removal: Literal["snr_abs", "snr", "mean", "abs_mean"] = "snr_abs",
        addition: Literal["gradient", "random"] = "gradient",
        update_every: int = 100,
        zeta: float = 0.5,
        end_fraction: float = 0.75,
        end_step: int | None = None,
        distribution: Literal["uniform", "erk"] = "uniform",
        regrow_sigma: Literal["init", "mean"] = "init",
        layer_names: list[str] | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        cls = type(self).__name__
        sparsity = check_float(cls, "sparsity", sparsity, low=0.0, high=1.0, high_open=True)
        prior_std = check_float(cls, "prior_std", prior_std, low=0.0, low_open=True)
        init_sigma = check_float(cls, "init_sigma", init_sigma, low=0.0, low_open=True)
        kl_weight = check_float(cls, "kl_weight", kl_weight, low=0.0)
        num_samples = check_int(cls, "num_samples", num_samples, low=1, allow_none=True)
        removal = check_choice(cls, "removal", removal, REMOVAL_CRITERIA)
        addition = check_choice(cls, "addition", addition, ADDITION_CRITERIA)
        update_every = check_int(cls, "update_every", update_every, low=1)
        zeta = check_float(cls, "zeta", zeta, low=0.0, high=1.0, low_open=True)
        end_fraction = check_float(cls, "end_fraction", end_fraction, low=0.0, high=1.0, low_open=True)
        end_step = check_int(cls, "end_step", end_step, low=1, allow_none=True)
        distribution = check_choice(cls, "distribution", distribution, ("uniform", "erk"))
        regrow_sigma = check_choice(cls, "regrow_sigma", regrow_sigma, ("init", "mean"))
        layer_names = check_str_list(cls, "layer_names", layer_names, what="layer names")
        seed = check_int(cls, "seed", seed, low=0, high=2**63 - 1)
        super().__init__(
            update_every=update_every, zeta=zeta, end_fraction=end_fraction, end_step=end_step, seed=seed, name=name
        )
        self.sparsity: float = float(sparsity)
        self.prior_std: float = float(prior_std)
        self.init_sigma: float = float(init_sigma)
        self.kl_weight: float = float(kl_weight)
        self.loss_term_weight = self.kl_weight
        self.num_samples: int | None = num_samples
        self.removal: Literal["snr_abs", "snr", "mean", "abs_mean"] = removal
        self.addition: Literal["gradient", "random"] = addition
        self.distribution: Literal["uniform", "erk"] = distribution
        self.regrow_sigma: Literal["init", "mean"] = regrow_sigma
        self.layer_names: list[str] | None = layer_names
        self._rho: dict[str, Tensor] = {}  # checkpointed rho of every layer (pending until attached)
        # resolved at setup / fit start
        self._layers: dict[str, SparseVariationalMixin] = {}
        self._densities: dict[str, float] = {}
        self._n: int = 1
        self._noise: torch.Generator | None = None
        self._rank: int = 0
        self._resumed: bool = False

    @classmethod
    def example(cls) -> Example:
        """SSVI on ``TinyClassifier`` at 50 % sparsity, updating every step."""
        from litmix.testing import TinyClassifier, TinyDataModule

        return Example(TinyClassifier(), TinyDataModule(), [cls(sparsity=0.5, update_every=1, end_fraction=1.0)])

    def _state_key_fields(self) -> dict[str, Any]:
        return {} if self.layer_names is None else {"layer_names": list(self.layer_names)}

    @property
    def layers(self) -> dict[str, SparseVariationalMixin]:
        """The variational layers of the fitted module, by name."""
        return dict(self._layers)

    # ------------------------------------------------------------------ hooks
    def _select(self, pl_module: pl.LightningModule) -> tuple[list[str], dict[str, str]]:
        """Convert the layers (in ``setup``, before a checkpoint's state loads); mask ``weight`` and ``weight_rho``."""
        already = {n for n, m in pl_module.named_modules() if isinstance(m, SparseVariationalMixin)}
        try:
            names = to_sparse_variational(pl_module, self.prior_std, self.init_sigma, self.layer_names)
        except ValueError as err:
            raise ValueError(f"{type(self).__name__}(layer_names={self.layer_names}): {err}") from err
        if self.layer_names is not None:
            names = [n for n in names if n in self.layer_names]
        self._layers = {n: pl_module.get_submodule(n) for n in names}  # type: ignore[misc]
        for layer in self._layers.values():
            layer.persistent_rho = False
        density = 1.0 - self.sparsity
        shapes = {n: tuple(layer.weight.shape) for n, layer in self._layers.items()}
        self._densities = (
            erk_densities(shapes, density) if self.distribution == "erk" else dict.fromkeys(names, density)
        )
        # a module whose supports an earlier fit already set keeps them and its posterior; others start afresh
        self._resumed = bool(names) and all(
            n in already and int(layer.weight_mask.sum()) == round(self._densities[n] * layer.weight_mask.numel())
            for n, layer in self._layers.items()
        )
        return [f"{n}.{p}" for n in names for p in ("weight", "weight_rho")], {}

    def _initial_masks(self, names: list[str]) -> Mapping[str, Tensor | None] | list[str]:
        """The supports of an earlier fit (kept), else all ones."""
        if not self._resumed:
            return names
        return {
            f"{n}.{p}": getattr(layer, f"{p}_mask")
            for n, layer in self._layers.items()
            for p in ("weight", "weight_rho")
        }

    def _on_setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, names: list[str]) -> None:
        if self._resumed:  # an earlier fit's supports: its update count and generator go on
            self.initialized, self.last_update_step, self.last_churn = True, -1, 0.0
        else:
            self._reset_updates()
        self._rho = {}

    def _selection_detail(self) -> str:
        return f"; {len(self._layers)} variational layers at densities {self._densities}"

    def _target_sparsity(self) -> float:
        return self.sparsity

    def _refresh_layer_sparsity(self) -> None:
        """Per layer: the ``weight`` masks (``weight_rho`` carries the same support)."""
        report = self._engine.sparsity_report()
        self.layer_sparsity = {n: v for n, v in report.items() if not n.endswith(".weight_rho")}

    @property
    def updates_enabled(self) -> bool:
        """``sparsity=0`` (dense mean-field VI) never updates, so it needs no run length."""
        return self.sparsity > 0

    def _resolve_num_samples(self, trainer: pl.Trainer) -> int:
        if self.num_samples is not None:
            return self.num_samples
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        try:
            return max(1, len(dataset))  # type: ignore[arg-type]
        except TypeError as err:
            raise ValueError(
                f"{type(self).__name__}(num_samples=None): the train dataset has no length; pass num_samples (the "
                "number of training samples N in KL / N)"
            ) from err

    def _prepare_masks(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Initial random supports on rank 0 (unless restored), broadcast; checkpointed ``rho`` restored."""
        self._layers = {n: pl_module.get_submodule(n) for n in self._layers}  # type: ignore[misc]
        self._n = self._resolve_num_samples(trainer)
        self._rank = trainer.global_rank
        if not self.initialized:
            if self.sparsity > 0:
                shapes = {n: tuple(layer.weight.shape) for n, layer in self._layers.items()}
                masks = random_masks(shapes, self._densities, self._generator) if trainer.is_global_zero else {}
                pairs = {f"{n}.{p}": m for n, m in masks.items() for p in ("weight", "weight_rho")}
                self._engine.update(pairs, trainer.optimizers, strategy=trainer.strategy)
                sync_generator(trainer, self._generator)
            for layer in self._layers.values():
                layer.reset_sigma()
            self.initialized = True
        self._restore_rho()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Supports applied by the shell (:meth:`_prepare_masks`); one sampling-noise generator for all layers."""
        super().on_train_start(trainer, pl_module)
        self._noise = torch.Generator(device=pl_module.device)
        for layer in self._layers.values():
            layer.generator = self._noise

    @torch.no_grad()
    def _restore_rho(self) -> None:
        for n, rho in self._rho.items():
            layer = self._layers.get(n)
            if layer is not None:
                layer.weight_rho.copy_(rho.to(layer.weight_rho.device, layer.weight_rho.dtype))
        self._rho = {}

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Seed this step's sampling noise from ``(seed, epoch, batch, rank)``."""
        if self._noise is not None:
            self._noise.manual_seed(_noise_seed(self.seed, trainer.current_epoch, batch_idx, self._rank))

    def loss_term(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, outputs: Any
    ) -> Tensor | None:
        """``KL(q || prior) / N`` over the supports of all variational layers."""
        if not self._layers:
            return None
        kl = torch.stack([layer.kl() for layer in self._layers.values()]).sum()
        return kl / self._n

    def _update_masks(self, trainer: pl.Trainer, step: int) -> None:
        """Remove by ``removal`` and add by ``addition`` (rank 0, dense gradients); added coordinates get ``sigma``."""
        fraction = self._update_fraction(step)
        new: dict[str, Tensor] = {}
        if trainer.is_global_zero:
            for n, layer in self._layers.items():
                mask = self._engine.masks[f"{n}.weight"]
                grad = layer.weight.grad
                if self.addition == "gradient" and grad is None:
                    grad = torch.zeros_like(layer.weight)
                support = ssvi_support_update(
                    layer.weight, layer.weight_rho, mask, fraction, self.removal, grad, self.addition, self._generator
                ).cpu()  # type: ignore[arg-type]
                new[f"{n}.weight"], new[f"{n}.weight_rho"] = support, support
        kept = sum(int(self._engine.masks[f"{n}.weight"].sum()) for n in self._layers)
        # sigma of the layer's support before the update (for regrow_sigma="mean")
        means = {n: float(F.softplus(layer.weight_rho)[layer.weight_mask].mean()) for n, layer in self._layers.items()}
        regrown = self._engine.update(new, trainer.optimizers, strategy=trainer.strategy)
        added = 0
        for n, layer in self._layers.items():
            coords = regrown.get(f"{n}.weight")
            if coords is None or not bool(coords.any()):
                continue
            sigma = self.init_sigma if self.regrow_sigma == "init" else means[n]
            layer.weight_rho.masked_fill_(coords, float(inverse_softplus(sigma)))
            added += int(coords.sum())
        self._finish_update(trainer, step, added, kept)

    def _final_metrics(self) -> dict[str, float]:
        return {"final_sigma_mean": self.sigma_mean(), **super()._final_metrics()}

    @torch.no_grad()
    def sigma_mean(self) -> float:
        """Mean posterior ``sigma`` over the supports of all layers."""
        total, count = 0.0, 0
        for layer in self._layers.values():
            total += float(F.softplus(layer.weight_rho)[layer.weight_mask].sum())
            count += int(layer.weight_mask.sum())
        return total / max(count, 1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the KL epoch mean, per-layer sparsity (the shell) and the mean ``sigma``."""
        super().on_train_epoch_end(trainer, pl_module)
        pl_module.log(f"{self.log_prefix}/sigma_mean", self.sigma_mean(), on_epoch=True, sync_dist=True)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the loss wrapper; keep ``rho`` for :meth:`state_dict`; drop generator and parameter references."""
        if stage == "fit":
            self._rho = {n: layer.weight_rho.detach().cpu().clone() for n, layer in self._layers.items()}
            for layer in self._layers.values():
                layer.generator = None
            self._noise = None
        super().teardown(trainer, pl_module, stage)

    # ------------------------------------------------------------------ state
    def _rho_state(self) -> dict[str, Tensor]:
        if self._engine.attached and not self._rho:
            return {n: layer.weight_rho.detach().cpu().clone() for n, layer in self._layers.items()}
        return {n: r.clone() for n, r in self._rho.items()}

    def _extra_state(self) -> dict[str, Any]:
        """The shared update state plus ``rho`` of every layer (the supports follow, one bit per weight)."""
        return {**super()._extra_state(), "rho": self._rho_state()}

    def _load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        """``rho`` is copied into the layers when training starts."""
        super()._load_extra_state(state_dict)
        self._rho = {n: r.detach().cpu().clone() for n, r in state_dict.get("rho", {}).items()}
