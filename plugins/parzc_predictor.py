"""ParZC: a Bayesian MLP or MABN mixer over per-layer zero-cost proxy statistics, trained with ranking losses."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics.regression import KendallRankCorrCoef, SpearmanCorrCoef

from litmix.base import Example, LitmixModule
from litmix.data import split_batch
from litmix.nas.rank_losses import DiffKendallLoss, pairwise_rank_loss
from litmix.nas.schedules import cosine_lr_scheduler
from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_float, check_int, check_type

__all__ = ["ParZCPredictor"]

LOSSES = ("diffkendall", "mse", "pairwise")
MODELS = ("mlp", "mabn")


class _BayesianLinear(nn.Module):
    """Linear layer with weights ``μ + softplus(ρ)·ε`` (ε ~ N(0, 1) resampled every forward; biases likewise)."""

    def __init__(self, in_features: int, out_features: int, rho_init: float = -3.0) -> None:
        super().__init__()
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_rho = nn.Parameter(torch.full((out_features, in_features), rho_init))
        self.bias_mu = nn.Parameter(torch.zeros(out_features))
        self.bias_rho = nn.Parameter(torch.full((out_features,), rho_init))
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One stochastic forward; ε comes from ``generator`` (the global RNG when ``None``)."""
        mu, b_mu = self.weight_mu, self.bias_mu
        eps_w = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        eps_b = torch.randn(b_mu.shape, generator=generator, device=b_mu.device, dtype=b_mu.dtype)
        w = mu + nn.functional.softplus(self.weight_rho) * eps_w
        b = b_mu + nn.functional.softplus(self.bias_rho) * eps_b
        return nn.functional.linear(x, w, b)


class _MixerBlock(nn.Module):
    """Pre-norm residual MLP-Mixer block: a token MLP across patches, then a channel MLP (x 4) per patch."""

    def __init__(self, patches: int, width: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)
        hidden = max(1, patches // 2)
        self.tokens = nn.Sequential(nn.Linear(patches, hidden), nn.GELU(), nn.Linear(hidden, patches))
        self.channels = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(batch, patches, width)``."""
        x = x + self.tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channels(self.norm2(x))


class _MABN(nn.Module):
    """ParZC's mixer architecture with Bayesian network over a flat per-layer feature vector.

    ``Linear(F -> patches * patch_dim)`` -> ``(patches, patch_dim)`` tokens -> Bayesian ``patch_dim -> width`` ->
    ``depth`` :class:`_MixerBlock` -> LayerNorm -> mean over patches -> Bayesian ``width -> width`` -> ReLU ->
    ``Linear(width -> 1)``.
    """

    def __init__(self, in_features: int, patches: int, patch_dim: int, width: int, depth: int, rho_init: float) -> None:
        super().__init__()
        self.patches, self.patch_dim = patches, patch_dim
        self.embed = nn.Linear(in_features, patches * patch_dim)
        self.lift = _BayesianLinear(patch_dim, width, rho_init)
        self.blocks = nn.ModuleList(_MixerBlock(patches, width) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = _BayesianLinear(width, width, rho_init)
        self.out = nn.Linear(width, 1)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Scores ``(batch, 1)``; Bayesian noise from ``generator``."""
        h = self.embed(x).reshape(x.shape[0], self.patches, self.patch_dim)
        h = self.lift(h, generator)
        for block in self.blocks:
            h = block(h)
        h = self.norm(h).mean(1)
        return self.out(nn.functional.relu(self.head(h, generator)))


def _noise_seed(seed: int, step: int, micro: int) -> int:
    """A 63-bit seed that depends only on ``(seed, step, micro)`` (splitmix64-style mixing).

    Example:
        >>> _noise_seed(0, 5, 1) == _noise_seed(0, 5, 1), _noise_seed(0, 5, 1) != _noise_seed(0, 6, 1)
        (True, True)
    """
    z = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + micro * 0x94D049BB133111EB) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return (z ^ (z >> 31)) & (2**63 - 1)


@register(
    "plugin",
    "proxy",
    paper="ParZC: Parametric Zero-Cost Proxies for Efficient NAS (https://arxiv.org/abs/2402.02105)",
)
class ParZCPredictor(LitmixModule):
    """ParZC: a learned zero-cost proxy over per-layer proxy statistics (Bayesian MLP or the MABN mixer).

    Dong et al., "ParZC: Parametric Zero-Cost Proxies for Efficient NAS" (https://arxiv.org/abs/2402.02105;
    reference pprp/PicoNAS ``piconas/predictor/pinat/``). Instead of summing a proxy over layers, the per-layer
    values (e.g. ``grad_norm``, ``snip``, ``synflow`` on NAS-Bench-201's 98 layers, see
    :func:`litmix.datamodules.proxy_features.nb201_layer_features`) feed a predictor with Bayesian linear layers
    (weights ``μ + softplus(ρ)·ε``, ε resampled per forward, ``μ`` Kaiming-uniform, ``ρ`` initialised to
    ``rho_init``). Two models (``model``):

    * ``"mlp"`` (the paper's "simple model", ``bayesian.py``): ``F -> hidden[0] -> ... -> 1`` Bayesian layers
      with ReLUs.
    * ``"mabn"`` (the paper's Mixer Architecture with Bayesian Network): ``Linear(F -> patches * patch_dim)``
      cut into ``mixer_patches`` tokens of ``mixer_patch_dim`` -> Bayesian ``patch_dim -> mixer_width`` ->
      ``mixer_depth`` pre-norm residual MLP-Mixer blocks (a GELU token MLP across the patches, hidden
      ``patches // 2``, then a GELU channel MLP, hidden ``4 * width``) -> LayerNorm -> mean over patches ->
      Bayesian ``width -> width`` -> ReLU -> ``Linear(width -> 1)``. Differences from the reference
      (``ParZCBMM``): the reference's first block MLP (ratio 0.5) acts on the channel dimension, not across the
      patches (no token mixing, despite the name); its MABN embedding is added to the token embeddings of a
      PINAT graph transformer over the cell DAG (not implemented here: this predictor sees only the proxy
      features, which is what the gain test below measures); its size is 16 x 16 patches, width 512, 4 blocks,
      ρ initialised to -5 (here width 64, 2 blocks by default, for CPU-sized training sets).

    The noise ε never touches the global RNG: in training it comes
    from a generator seeded by ``(seed, global_step, batch_idx)``, at evaluation from one seeded by ``seed``
    alone, so a run resumed from a checkpoint draws the same noise as an uninterrupted one, and evaluating the
    same weights twice gives the same scores. Training on a few percent of the architectures uses
    DiffKendall (:class:`~litmix.nas.rank_losses.DiffKendallLoss`), MSE and/or the pairwise logistic loss; the
    prediction is the mean of ``mc_samples`` stochastic forwards.

    Measured on 300 NAS-Bench-201 cells (per-layer grad_norm/snip/synflow of C=8, N=1 networks, train on 100,
    Kendall τ on 200, 8 split seeds x noise seed 0 or = split seed, ``tests/test_parzc.py``): held-out τ minus the
    best single summed proxy (incl. params) is +0.091 to +0.204 for the MLP (100 epochs, lr 1e-3) and +0.131 to
    +0.209 for MABN (width 64, 50 epochs, lr 2e-3).

    Batches are ``(x, y, index)`` (:class:`~litmix.datamodules.proxy_features.ProxyFeatureDataModule`).
    Logs ``parzc/loss`` (and ``parzc/<term>``) in training, ``parzc/kendall`` and ``parzc/spearman`` of the
    held-out architectures in validation (torchmetrics, gathered across ranks) and ``parzc/test_kendall`` /
    ``parzc/test_spearman`` in test. ``predict_step`` returns the MC-averaged scores.

    Args:
        in_features: feature dimension (> 0).
        hidden: hidden widths of the MLP (ParZC: ``[160, 64]``; unused by ``"mabn"``).
        losses: any of ``"diffkendall"``, ``"mse"``, ``"pairwise"`` (summed, weighted by ``loss_weights``).
        loss_weights: one weight per loss (default all 1).
        alpha: DiffKendall steepness (> 0).
        rho_init: initial ρ of the Bayesian layers, in ``[-100, 100]`` (softplus(−3) ≈ 0.049).
        mc_samples: stochastic forwards averaged at evaluation (>= 1).
        lr: Adam learning rate (> 0).
        weight_decay: Adam weight decay (>= 0).
        cosine: per-step cosine learning-rate schedule over ``trainer.estimated_stepping_batches``
            (:func:`litmix.nas.schedules.cosine_lr_scheduler`; per epoch when the step count is unknown).
        seed: seed of the weight noise ε (any int >= 0).
        model: ``"mlp"`` (Bayesian MLP) or ``"mabn"`` (mixer with Bayesian layers).
        mixer_patches: MABN tokens (>= 1; paper 16).
        mixer_patch_dim: MABN token size before the Bayesian lift (>= 1; paper 16).
        mixer_width: MABN channel width (>= 1; paper 512).
        mixer_depth: MABN mixer blocks (>= 0; paper 4).

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for a non-positive ``in_features``/``alpha``/``lr``/``mc_samples``/mixer size, an unknown
            ``model``, negative weight decay,
            an empty or unknown loss list, ``loss_weights`` of the wrong length or a negative ``seed``; in
            ``configure_optimizers``, for ``cosine=True`` in a run of unknown length.

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> from litmix.testing import make_trainer
        >>> module, dm, _ = ParZCPredictor.example()
        >>> trainer = make_trainer(max_epochs=30, limit_val_batches=1.0)
        >>> trainer.fit(module, datamodule=dm)
        >>> float(trainer.callback_metrics["parzc/kendall"]) > 0.5
        True
    """

    def __init__(
        self,
        in_features: int,
        hidden: list[int] | None = None,
        losses: list[str] | None = None,
        loss_weights: list[float] | None = None,
        alpha: float = 1.0,
        rho_init: float = -3.0,
        mc_samples: int = 8,
        lr: float = 1e-3,
        weight_decay: float = 1e-3,
        cosine: bool = True,
        seed: int = 0,
        model: Literal["mlp", "mabn"] = "mlp",
        mixer_patches: int = 16,
        mixer_patch_dim: int = 16,
        mixer_width: int = 64,
        mixer_depth: int = 2,
    ) -> None:
        name = type(self).__name__
        check_int(name, "in_features", in_features, low=1)
        check_choice(name, "model", model, MODELS)
        check_int(name, "mixer_patches", mixer_patches, low=1)
        check_int(name, "mixer_patch_dim", mixer_patch_dim, low=1)
        check_int(name, "mixer_width", mixer_width, low=1)
        check_int(name, "mixer_depth", mixer_depth, low=0)
        for arg, value in (("hidden", hidden), ("losses", losses), ("loss_weights", loss_weights)):
            check_type(name, arg, value, (list, tuple), allow_none=True)
        hidden = [160, 64] if hidden is None else list(hidden)
        losses = ["diffkendall"] if losses is None else list(losses)
        for h in hidden:
            check_int(name, "hidden", h, low=1)
        if not losses or any(not isinstance(loss, str) or loss not in LOSSES for loss in losses):
            raise ValueError(f"{name}(losses={losses!r}): losses must be a non-empty list from {LOSSES}")
        for w in loss_weights or []:
            check_float(name, "loss_weights", w)
        weights = [1.0] * len(losses) if loss_weights is None else [float(w) for w in loss_weights]
        if len(weights) != len(losses):
            raise ValueError(f"{name}(loss_weights={loss_weights!r}): need one weight per loss {losses}")
        check_float(name, "alpha", alpha, low=0.0, low_open=True)
        rho_init = check_float(name, "rho_init", rho_init, low=-100.0, high=100.0)
        check_int(name, "mc_samples", mc_samples, low=1)
        check_float(name, "lr", lr, low=0.0, low_open=True)
        check_float(name, "weight_decay", weight_decay, low=0.0)
        check_bool(name, "cosine", cosine)
        check_int(name, "seed", seed, low=0)
        super().__init__()
        self.save_hyperparameters()
        self.in_features = in_features
        self.hidden = hidden
        self.losses = losses
        self.loss_weights = weights
        self.alpha = float(alpha)
        self.mc_samples = mc_samples
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.cosine = bool(cosine)
        self.seed = seed
        self.model_kind = model
        self.net: nn.Module
        if model == "mabn":
            self.net = _MABN(in_features, mixer_patches, mixer_patch_dim, mixer_width, mixer_depth, rho_init)
        else:
            layers: list[nn.Module] = []
            width = in_features
            for h in hidden:
                layers += [_BayesianLinear(width, h, rho_init), nn.ReLU()]
                width = h
            layers.append(nn.Linear(width, 1))
            self.net = nn.Sequential(*layers)
        self.diff_kendall = DiffKendallLoss(alpha=self.alpha)
        self.val_kendall, self.val_spearman = KendallRankCorrCoef(), SpearmanCorrCoef()
        self.test_kendall, self.test_spearman = KendallRankCorrCoef(), SpearmanCorrCoef()

    @classmethod
    def example(cls) -> Example:
        """A tiny instance and synthetic data (score = a noisy monotone function of 12 features)."""
        from litmix.datamodules.proxy_features import ProxyFeatureDataModule

        gen = torch.Generator().manual_seed(0)
        x = torch.randn(120, 12, generator=gen)
        y = torch.tanh(x[:, :4].sum(1)) + 0.1 * torch.randn(120, generator=gen)
        dm = ProxyFeatureDataModule(features=x, targets=y, train_size=40, batch_size=20)
        return Example(cls(in_features=12, hidden=[16, 8], lr=1e-2, mc_samples=2), dm, [])

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One stochastic forward: scores of shape ``(batch,)`` (noise from ``generator``, else the global RNG)."""
        if isinstance(self.net, _MABN):
            return self.net(x, generator).squeeze(-1)
        for layer in self.net:  # type: ignore[attr-defined]
            x = layer(x, generator) if isinstance(layer, _BayesianLinear) else layer(x)
        return x.squeeze(-1)

    def noise_generator(self, device: torch.device, step: int = -1, micro: int = 0) -> torch.Generator:
        """A generator seeded by ``(seed, step, micro)``: training uses ``(global_step, batch_idx)``, evaluation -1."""
        return torch.Generator(device=device).manual_seed(_noise_seed(self.seed, step + 1, micro))

    def predict_scores(self, x: Tensor) -> Tensor:
        """Mean of ``mc_samples`` stochastic forwards (no gradient; the same noise at every call)."""
        gen = self.noise_generator(x.device)
        with torch.no_grad():
            return torch.stack([self(x, gen) for _ in range(self.mc_samples)]).mean(0)

    def _loss(self, pred: Tensor, y: Tensor) -> Tensor:
        total = pred.new_zeros(())
        for name, weight in zip(self.losses, self.loss_weights, strict=True):
            if name == "diffkendall":
                term = self.diff_kendall(pred, y)
            elif name == "mse":
                term = nn.functional.mse_loss(pred, y)
            else:
                term = pairwise_rank_loss(pred, y)
            if len(self.losses) > 1:
                self.log(f"parzc/{name}", term.detach(), on_step=False, on_epoch=True, sync_dist=True)
            total = total + weight * term
        return total

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Sum of the configured losses on one batch of architectures."""
        x, y, _ = split_batch(batch)
        assert y is not None
        gen = self.noise_generator(x.device, self.global_step, batch_idx)
        loss = self._loss(self(x, gen), y)
        self.log("parzc/loss", loss, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)  # mean over ranks
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Accumulate held-out predictions for Kendall τ / Spearman ρ."""
        x, y, _ = split_batch(batch)
        assert y is not None
        pred = self.predict_scores(x)
        self.val_kendall.update(pred, y)
        self.val_spearman.update(pred, y)
        self.log("parzc/kendall", self.val_kendall, on_step=False, on_epoch=True, prog_bar=True)
        self.log("parzc/spearman", self.val_spearman, on_step=False, on_epoch=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        """As :meth:`validation_step`, logged as ``parzc/test_*``."""
        x, y, _ = split_batch(batch)
        assert y is not None
        pred = self.predict_scores(x)
        self.test_kendall.update(pred, y)
        self.test_spearman.update(pred, y)
        self.log("parzc/test_kendall", self.test_kendall, on_step=False, on_epoch=True)
        self.log("parzc/test_spearman", self.test_spearman, on_step=False, on_epoch=True)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """MC-averaged scores of a batch."""
        x, _, _ = split_batch(batch)
        return self.predict_scores(x)

    def configure_optimizers(self) -> Any:
        """Adam (+ :func:`litmix.nas.schedules.cosine_lr_scheduler` when ``cosine``)."""
        opt = torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if not self.cosine:
            return opt
        return {"optimizer": opt, "lr_scheduler": cosine_lr_scheduler(opt, self.trainer, type(self).__name__)}
