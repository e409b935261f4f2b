"""DiffusionNAG: a denoising diffusion model over NAS-Bench-201 cell encodings, guided by an accuracy predictor.

An, Lee, Jeong, Hwang & Hwang, "DiffusionNAG: Predictor-guided Neural Architecture Generation with Diffusion
Models" (ICLR 2024, https://arxiv.org/abs/2305.16943).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litmix.nas.nb201 import EDGES, OPS, all_codes
from litmix.registry import register
from litmix.validation import check_float, check_int

__all__ = ["DiffusionNAG", "cell_is_connected", "decode_cells", "encode_cells"]

DIFFUSION_NAG_PAPER = (
    "DiffusionNAG: Predictor-guided Neural Architecture Generation with Diffusion Models "
    "(https://arxiv.org/abs/2305.16943)"
)
_E, _O = len(EDGES), len(OPS)
_NONE = OPS.index("none")


def encode_cells(codes: Sequence[Sequence[int]]) -> Tensor:
    """NB201 codes -> ``(n, 6, 5)`` one-hot encodings scaled to {-1, +1} (the diffusion's data space).

    Example:
        >>> encode_cells([(0, 1, 2, 3, 4, 0)])[0, 2].tolist()
        [-1.0, -1.0, 1.0, -1.0, -1.0]
    """
    idx = torch.as_tensor([list(c) for c in codes], dtype=torch.long).view(-1, _E)
    return F.one_hot(idx, _O).float() * 2 - 1


def decode_cells(x: Tensor, allowed: Tensor | None = None) -> tuple[list[tuple[int, ...]], Tensor]:
    """Continuous samples ``(n, 6, 5)`` -> (codes by per-edge argmax over allowed ops, one-hot-valid mask).

    A sample is *one-hot valid* when on every edge exactly one allowed entry is positive (the sample decodes to
    an NB201 cell without an argmax tie-break).

    Example:
        >>> codes, ok = decode_cells(encode_cells([(2, 2, 4, 3, 0, 0)]))
        >>> codes, ok.tolist()
        ([(2, 2, 4, 3, 0, 0)], [True])
    """
    x = x.view(-1, _E, _O)
    if allowed is not None:
        x = x.masked_fill(~allowed.view(1, 1, _O), -math.inf)
    codes = [tuple(int(v) for v in row) for row in x.argmax(-1)]
    valid = ((x > 0).sum(-1) == 1).all(-1)
    return codes, valid


def cell_is_connected(code: Sequence[int]) -> bool:
    """True when the cell's output is reachable from its input through non-``none`` edges.

    Example:
        >>> cell_is_connected((1, 1, 1, 1, 1, 1)), cell_is_connected((1, 1, 0, 1, 1, 1))
        (False, True)
    """
    reach = {1}
    for k, (a, b) in enumerate(EDGES):  # EDGES are in topological order of their source
        if code[k] != _NONE and a in reach:
            reach.add(b)
    return 4 in reach


def _time_embedding(t: Tensor, dim: int = 16) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32) / half)
    ang = t.float().view(-1, 1) * freqs.view(1, -1)
    return torch.cat([ang.sin(), ang.cos()], dim=1)


class _TimeMLP(nn.Module):
    """MLP over a flattened cell encoding and a sinusoidal time embedding."""

    def __init__(self, out: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(_E * _O + 16, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, out),
        )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([x.reshape(x.shape[0], -1), _time_embedding(t)], dim=1))


@register("utility", "nas", paper=DIFFUSION_NAG_PAPER, module="litmix.nas")
class DiffusionNAG:
    """DiffusionNAG: DDPM over NB201 cell encodings, sampled with accuracy-predictor guidance.

    An et al., "DiffusionNAG: Predictor-guided Neural Architecture Generation with Diffusion Models" (ICLR 2024,
    https://arxiv.org/abs/2305.16943). A cell is its ``6 edges x 5 ops`` one-hot matrix scaled to {-1, +1}
    (:func:`encode_cells`; :mod:`litmix.nas.nb201` op order). :meth:`fit` trains a denoiser ``ε_θ(A_t, t)``
    (DDPM, linear β schedule; an MLP instead of the paper's graph transformer, predicting the clean cell's
    per-edge op distribution ``x̂0 = 2 softmax(logits) - 1`` and trained by cross-entropy, from which
    ``ε_θ = (A_t - sqrt(ᾱ_t) x̂0) / sqrt(1 - ᾱ_t)``) on the cell space,
    by default all 15,625 cells: without guidance it generates (approximately) uniform cells.
    :meth:`fit_predictor` trains a *time-dependent* predictor ``f_φ(A_t, t)`` of the standardised accuracy on
    noised encodings of labelled cells (e.g. stored NB201 accuracies, :func:`litmix.nas.nb201.load_nb201`), as the
    paper trains its predictor on noisy architectures. :meth:`sample` follows the reverse process with the guided
    score ``∇ log p_t(A) + λ ∇ log p_φ(y | A)``, where ``∇ log p_t(A_t) = -ε_θ / sqrt(1 - ᾱ_t)`` and
    ``log p_φ(y | A_t) = -(y - f_φ(A_t, t))² / 2`` with ``y`` the target (default: ``target_z`` standard
    deviations above the training mean), i.e. the guided noise estimate
    ``ε̃ = ε_θ - λ sqrt(1 - ᾱ_t) ∇_A log p_φ(y | A_t)``. Samples decode by per-edge argmax over the allowed ops;
    :meth:`sample` also reports the *validity*: one-hot valid (every edge has exactly one positive entry) and
    connected (input reaches output through non-``none`` ops).

    Args:
        ops: allowed operation names (a subset of :data:`litmix.nas.nb201.OPS`); ``None`` = all five. Other ops
            never appear in the training cells nor in decoded samples.
        timesteps: diffusion steps ``T`` (>= 2).
        hidden: width of the denoiser and predictor MLPs (>= 8).
        steps: optimisation steps of :meth:`fit` (>= 1).
        predictor_steps: optimisation steps of :meth:`fit_predictor` (>= 1).
        batch_size: training batch size (>= 1).
        lr: Adam learning rate (> 0).
        guidance_scale: default ``λ`` of :meth:`sample` (>= 0; 0 = unguided).
        target_z: guidance target ``y`` in standard deviations of the predictor's training accuracies.
        seed: seed of the initialisations, the training batches and the sampling noise (>= 0).

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for unknown op names in ``ops`` or an empty ``ops`` (naming ``ops``), out-of-range sizes or
            rates; in :meth:`fit` / :meth:`fit_predictor`, for no cells, codes outside the space or mismatched
            accuracies; in :meth:`sample`, ``n < 1``, or guidance before :meth:`fit_predictor`.

    Example:
        >>> nag = DiffusionNAG(timesteps=10, hidden=16, steps=20, predictor_steps=20, seed=0)
        >>> codes = all_codes()[:200]
        >>> _ = nag.fit(codes).fit_predictor(codes, [float(c.count(2)) for c in codes])
        >>> out = nag.sample(8, guidance_scale=1.0)
        >>> len(out["codes"]), 0.0 <= out["valid_fraction"] <= 1.0
        (8, True)
    """

    def __init__(
        self,
        ops: list[str] | None = None,
        timesteps: int = 100,
        hidden: int = 128,
        steps: int = 1500,
        predictor_steps: int = 1000,
        batch_size: int = 256,
        lr: float = 2e-3,
        guidance_scale: float = 1.0,
        target_z: float = 3.0,
        seed: int = 0,
    ) -> None:
        owner = "DiffusionNAG"
        if ops is None:
            ops = list(OPS)
        if isinstance(ops, str) or not isinstance(ops, Sequence):
            raise TypeError(f"{owner}(ops={ops!r}): ops must be a list of NB201 op names {OPS}")
        if not ops:
            raise ValueError(f"{owner}(ops={ops!r}): ops (the search space) is empty; give names from {OPS}")
        unknown = [o for o in ops if not isinstance(o, str) or o not in OPS]
        if unknown:
            raise ValueError(f"{owner}(ops={ops!r}): unknown op names {unknown} in ops; NB201 ops are {OPS}")
        self.ops = [o for o in OPS if o in ops]
        self.timesteps = check_int(owner, "timesteps", timesteps, low=2, high=10_000)
        self.hidden = check_int(owner, "hidden", hidden, low=8, high=4096)
        self.steps = check_int(owner, "steps", steps, low=1)
        self.predictor_steps = check_int(owner, "predictor_steps", predictor_steps, low=1)
        self.batch_size = check_int(owner, "batch_size", batch_size, low=1)
        self.lr = check_float(owner, "lr", lr, low=0.0, low_open=True)
        self.guidance_scale = check_float(owner, "guidance_scale", guidance_scale, low=0.0)
        self.target_z = check_float(owner, "target_z", target_z)
        self.seed = check_int(owner, "seed", seed, low=0, high=2**31 - 1)
        self.allowed = torch.tensor([o in self.ops for o in OPS])
        betas = torch.linspace(1e-4, 0.02 * 1000 / self.timesteps, self.timesteps).clamp(max=0.5)
        self.betas = betas
        self.alpha_bar = torch.cumprod(1 - betas, 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.denoiser = _TimeMLP(_E * _O, self.hidden)
            self.predictor = _TimeMLP(1, self.hidden)
        self.y_mean, self.y_std = 0.0, 1.0
        self.fitted, self.predictor_fitted = False, False

    @classmethod
    def example(cls) -> DiffusionNAG:
        """A tiny model (10 diffusion steps, width 16), for the class example.

        Example:
            >>> DiffusionNAG.example().timesteps
            10
        """
        return cls(timesteps=10, hidden=16, steps=20, predictor_steps=20, seed=0)

    # --------------------------------------------------------------------------------------------- helpers
    def _cells(self, codes: Any, where: str) -> Tensor:
        if codes is None:
            codes = all_codes()
        try:
            rows = [tuple(int(v) for v in c) for c in codes]
        except (TypeError, ValueError) as err:
            raise ValueError(f"DiffusionNAG.{where}(codes=...): codes must be NB201 codes of 6 ints") from err
        if not rows:
            raise ValueError(f"DiffusionNAG.{where}(codes=[]): codes is empty")
        if any(len(r) != _E or any(not 0 <= v < _O for v in r) for r in rows):
            raise ValueError(f"DiffusionNAG.{where}(codes=...): every code must be {_E} ints in [0, {_O})")
        return encode_cells(rows)

    def _noised(self, x0: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        t = torch.randint(0, self.timesteps, (x0.shape[0],), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        ab = self.alpha_bar[t].view(-1, 1, 1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t, eps

    def _logits(self, xt: Tensor, t: Tensor) -> Tensor:
        logits = self.denoiser(xt, t).view(-1, _E, _O)
        return logits.masked_fill(~self.allowed.view(1, 1, _O), -1e4)

    def _eps(self, xt: Tensor, t: Tensor) -> Tensor:
        """Noise estimate implied by the predicted clean cell ``x̂0 = 2 softmax(logits) - 1``."""
        ab = self.alpha_bar[t].view(-1, 1, 1)
        x0 = 2 * torch.softmax(self._logits(xt, t), -1) - 1
        return (xt - ab.sqrt() * x0) / (1 - ab).sqrt()

    # --------------------------------------------------------------------------------------------- training
    def fit(self, codes: Sequence[Sequence[int]] | None = None) -> DiffusionNAG:
        """Train the denoiser on the cell space (default: every NB201 cell made of allowed ops).

        Raises:
            ValueError: for no cells or codes outside the space.
        """
        x = self._cells(codes, "fit")
        x = x[self.allowed[x.argmax(-1)].all(-1)]
        if x.shape[0] == 0:
            raise ValueError(f"DiffusionNAG.fit(codes=...): no cell uses only the allowed ops {self.ops}")
        gen = torch.Generator().manual_seed(self.seed + 1)
        opt = torch.optim.Adam(self.denoiser.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.steps)
        self.denoiser.train()
        for _ in range(self.steps):
            batch = x[torch.randint(0, x.shape[0], (self.batch_size,), generator=gen)]
            xt, t, _ = self._noised(batch, gen)
            logits = self._logits(xt, t)
            loss = F.cross_entropy(logits.reshape(-1, _O), batch.argmax(-1).reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        self.denoiser.eval()
        self.fitted = True
        return self

    def fit_predictor(self, codes: Sequence[Sequence[int]], accuracies: Sequence[float]) -> DiffusionNAG:
        """Train the time-dependent accuracy predictor ``f_φ(A_t, t)`` on noised encodings of labelled cells.

        Raises:
            ValueError: for no cells, codes outside the space, or ``accuracies`` of another length / not finite.
        """
        x = self._cells(codes, "fit_predictor")
        y = torch.as_tensor([float(a) for a in accuracies], dtype=torch.float32)
        if y.shape[0] != x.shape[0] or not torch.isfinite(y).all():
            raise ValueError(
                f"DiffusionNAG.fit_predictor(accuracies=...): need {x.shape[0]} finite accuracies, one per code"
            )
        self.y_mean, self.y_std = float(y.mean()), float(y.std()) if y.numel() > 1 else 1.0
        self.y_std = self.y_std if self.y_std > 0 else 1.0
        z = (y - self.y_mean) / self.y_std
        gen = torch.Generator().manual_seed(self.seed + 2)
        opt = torch.optim.Adam(self.predictor.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.predictor_steps)
        self.predictor.train()
        for _ in range(self.predictor_steps):
            i = torch.randint(0, x.shape[0], (self.batch_size,), generator=gen)
            xt, t, _ = self._noised(x[i], gen)
            loss = F.mse_loss(self.predictor(xt, t).squeeze(-1), z[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        self.predictor.eval()
        self.predictor_fitted = True
        return self

    def predict(self, codes: Sequence[Sequence[int]]) -> Tensor:
        """Predicted accuracy (in the units of the training accuracies) of clean cells (``t = 0``).

        Raises:
            ValueError: before :meth:`fit_predictor`, or for codes outside the space.
        """
        if not self.predictor_fitted:
            raise ValueError("DiffusionNAG.predict: call fit_predictor(codes, accuracies) first")
        x = self._cells(codes, "predict")
        with torch.no_grad():
            z = self.predictor(x, torch.zeros(x.shape[0], dtype=torch.long)).squeeze(-1)
        return z * self.y_std + self.y_mean

    # --------------------------------------------------------------------------------------------- sampling
    def _guidance(self, x: Tensor, t: Tensor, target: float) -> Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            f = self.predictor(x, t).squeeze(-1)
            log_p = -0.5 * (target - f).pow(2).sum()
            (grad,) = torch.autograd.grad(log_p, x)
        return grad

    def sample(self, n: int, guidance_scale: float | None = None, seed: int | None = None) -> dict[str, Any]:
        """Generate ``n`` cells by ancestral DDPM sampling, guided by the predictor when ``λ > 0``.

        Args:
            n: number of cells (>= 1).
            guidance_scale: ``λ`` (>= 0); default the constructor's once :meth:`fit_predictor` ran, else 0.
                0 = unguided.
            seed: seed of the sampling noise; default the constructor's ``seed``.

        Returns:
            ``{"codes": [...], "valid": bool tensor (one-hot valid and connected), "onehot_valid_fraction",
            "connected_fraction", "valid_fraction", "unique_fraction"}``.

        Raises:
            ValueError: for ``n < 1``, a negative ``guidance_scale``, sampling before :meth:`fit`, or guidance
                before :meth:`fit_predictor`.
        """
        n = check_int("DiffusionNAG.sample", "n", n, low=1)
        if guidance_scale is None:  # the default guides only once a predictor exists
            guidance_scale = self.guidance_scale if self.predictor_fitted else 0.0
        scale = guidance_scale
        scale = check_float("DiffusionNAG.sample", "guidance_scale", scale, low=0.0)
        if not self.fitted:
            raise ValueError("DiffusionNAG.sample: call fit() first (the denoiser is untrained)")
        if scale > 0 and not self.predictor_fitted:
            raise ValueError(
                f"DiffusionNAG.sample(guidance_scale={scale}): guidance needs fit_predictor(codes, accuracies) first"
            )
        gen = torch.Generator().manual_seed(self.seed + 3 if seed is None else int(seed))
        x = torch.randn((n, _E, _O), generator=gen)
        alphas = 1 - self.betas
        for step in reversed(range(self.timesteps)):
            t = torch.full((n,), step, dtype=torch.long)
            with torch.no_grad():
                eps = self._eps(x, t)
            ab = self.alpha_bar[step]
            ab_prev = self.alpha_bar[step - 1] if step > 0 else torch.tensor(1.0)
            if scale > 0:
                eps = eps - scale * (1 - ab).sqrt() * self._guidance(x, t, self.target_z)
            # posterior mean through the clipped clean-cell estimate (the data lie in [-1, 1])
            x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1.0, 1.0)
            beta = self.betas[step]
            mean = (ab_prev.sqrt() * beta * x0 + alphas[step].sqrt() * (1 - ab_prev) * x) / (1 - ab)
            if step > 0:
                var = beta * (1 - ab_prev) / (1 - ab)
                x = mean + var.sqrt() * torch.randn(x.shape, generator=gen)
            else:
                x = mean
        codes, onehot = decode_cells(x, self.allowed)
        connected = torch.tensor([cell_is_connected(c) for c in codes])
        valid = onehot & connected
        return {
            "codes": codes,
            "valid": valid,
            "onehot_valid_fraction": float(onehot.float().mean()),
            "connected_fraction": float(connected.float().mean()),
            "valid_fraction": float(valid.float().mean()),
            "unique_fraction": len(set(codes)) / n,
        }

    # --------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Weights of the denoiser and predictor, the accuracy standardisation and the fitted flags."""
        return {
            "version": 1,
            "denoiser": self.denoiser.state_dict(),
            "predictor": self.predictor.state_dict(),
            "y": (self.y_mean, self.y_std),
            "fitted": (self.fitted, self.predictor_fitted),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (same ``hidden``).

        Raises:
            ValueError: for a newer state version.
        """
        if int(state.get("version", 0)) > 1:
            raise ValueError(f"DiffusionNAG.load_state_dict: state version {state['version']} is newer than 1")
        self.denoiser.load_state_dict(state["denoiser"])
        self.predictor.load_state_dict(state["predictor"])
        self.y_mean, self.y_std = state["y"]
        self.fitted, self.predictor_fitted = state["fitted"]
