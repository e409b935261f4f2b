"""Analytic (closed-form) class-incremental learning: G-ACIL's ridge-regression head on frozen features.

Zhuang et al., "G-ACIL: Analytic Learning for Exemplar-Free Generalized Class Incremental Learning",
https://arxiv.org/abs/2403.15706 (reference code: ZHUANGHP/Analytic-continual-learning, ``analytic/AnalyticLinear.py``
and ``analytic/Buffer.py``). A frozen feature extractor, an optional frozen random expansion ``ReLU(x W_b)``
("buffer layer") and a linear head solved in closed form. After any sequence of phases the head equals the joint
ridge-regression solution ``W = (X^T X + gamma I)^-1 X^T Y`` over the multiset of samples seen so far (one-hot
``Y``; classes met for the first time add zero columns), whatever the phase split: the method forgets nothing.

Two equivalent ways to reach it:

* the paper's recursive update (:func:`woodbury_update`): keep ``R = (X^T X + gamma I)^-1`` and update ``R`` and
  ``W`` batch by batch with the Woodbury identity (one ``b x b`` inverse per batch of ``b`` samples);
* additive statistics (:func:`ridge_statistics` + :func:`ridge_solve`): sum ``X^T X`` and ``X^T Y`` (over
  batches, phases and DDP ranks) and solve once; this is what :class:`litmix.plugins.AnalyticCILModule` does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int

__all__ = [
    "AnalyticClassifier",
    "expand_features",
    "random_expansion",
    "ridge_solve",
    "ridge_statistics",
    "woodbury_update",
]

_PAPER = (
    "G-ACIL: Analytic Learning for Exemplar-Free Generalized Class Incremental Learning "
    "(https://arxiv.org/abs/2403.15706)"
)
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def random_expansion(in_features: int, buffer_size: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """The frozen random projection ``W_b`` (``in_features x buffer_size``) of G-ACIL's buffer layer.

    Entries are drawn uniformly from ``[-1/sqrt(in_features), 1/sqrt(in_features)]`` (``nn.Linear``'s default
    range, as in the reference ``RandomBuffer``) from a generator seeded with ``seed``, so every rank and every
    resumed run builds the same matrix.

    Example:
        >>> w = random_expansion(4, 6, seed=0)
        >>> tuple(w.shape), w.dtype, bool(w.abs().max() <= 0.5)
        ((4, 6), torch.float64, True)
        >>> torch.equal(w, random_expansion(4, 6, seed=0))
        True
    """
    gen = torch.Generator().manual_seed(seed)
    bound = in_features**-0.5
    return (torch.rand(in_features, buffer_size, generator=gen, dtype=torch.float64) * 2 - 1).mul_(bound).to(dtype)


def expand_features(x: Tensor, expansion: Tensor | None) -> Tensor:
    """``ReLU(x @ expansion)`` in ``expansion``'s dtype, or ``x`` unchanged when ``expansion`` is ``None``.

    Example:
        >>> expand_features(torch.tensor([[1.0, -1.0]]), torch.eye(2, dtype=torch.float64))
        tensor([[1., 0.]], dtype=torch.float64)
    """
    if expansion is None:
        return x
    return torch.relu(x.to(expansion.dtype) @ expansion)


def ridge_statistics(x: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """The additive statistics ``(X^T X, X^T Y)`` of a batch, ``Y`` the one-hot labels (``num_classes`` columns).

    Sums of these over batches, phases and ranks give the joint statistics of everything seen.

    Example:
        >>> xtx, xty = ridge_statistics(torch.ones(3, 2, dtype=torch.float64), torch.tensor([0, 1, 1]), 3)
        >>> xtx.tolist(), xty.tolist()
        ([[3.0, 3.0], [3.0, 3.0]], [[1.0, 2.0, 0.0], [1.0, 2.0, 0.0]])
    """
    onehot = nn.functional.one_hot(y.long(), num_classes).to(x.dtype)
    return x.T @ x, x.T @ onehot


def ridge_solve(xtx: Tensor, xty: Tensor, gamma: float) -> Tensor:
    """``(X^T X + gamma I)^-1 X^T Y`` by a Cholesky solve (``gamma > 0`` makes the matrix positive definite).

    Raises:
        ValueError: if ``gamma <= 0`` or the shapes disagree.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> xtx, xty = ridge_statistics(x, torch.tensor([0, 1]), 2)
        >>> ridge_solve(xtx, xty, gamma=1.0)
        tensor([[0.5000, 0.0000],
                [0.0000, 0.4000]], dtype=torch.float64)
    """
    gamma = check_float("ridge_solve", "gamma", gamma, low=0.0, low_open=True)
    d = xtx.shape[0]
    if xtx.shape != (d, d) or xty.shape[0] != d:
        raise ValueError(
            f"ridge_solve: X^T X must be d x d and X^T Y d x C, got {tuple(xtx.shape)}, {tuple(xty.shape)}"
        )
    a = xtx + gamma * torch.eye(d, dtype=xtx.dtype, device=xtx.device)
    return torch.cholesky_solve(xty, torch.linalg.cholesky(a))


def woodbury_update(r: Tensor, w: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """One recursive least-squares step of G-ACIL on a batch ``x`` with one-hot (or soft) targets ``y``.

    ``K = (I + X R X^T)^-1``, ``R <- R - R X^T K X R``, ``W <- W + R X^T (Y - X W)``: starting from
    ``R = I / gamma`` and ``W = 0``, ``W`` equals the ridge solution over every batch seen.

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> x = torch.randn(10, 3, generator=gen, dtype=torch.float64)
        >>> y = nn.functional.one_hot(torch.arange(10) % 2, 2).double()
        >>> r, w = torch.eye(3, dtype=torch.float64) / 0.1, torch.zeros(3, 2, dtype=torch.float64)
        >>> for part in (slice(0, 4), slice(4, 10)):
        ...     r, w = woodbury_update(r, w, x[part], y[part])
        >>> joint = ridge_solve(x.T @ x, x.T @ y, gamma=0.1)
        >>> bool(torch.allclose(w, joint, atol=1e-12))
        True
    """
    x = x.to(r.dtype)
    y = y.to(r.dtype)
    eye = torch.eye(x.shape[0], dtype=r.dtype, device=r.device)
    rxt = r @ x.T
    k = torch.linalg.inv(eye + x @ rxt)
    r = r - rxt @ k @ rxt.T
    w = w + r @ x.T @ (y - x @ w)
    return r, w


@register("utility", "distillation", paper=_PAPER, module="litmix.functional.analytic_cil")
class AnalyticClassifier(nn.Module):
    """G-ACIL's analytic head: optional frozen random expansion + ridge regression updated in closed form.

    Zhuang et al., "G-ACIL: Analytic Learning for Exemplar-Free Generalized Class Incremental Learning",
    https://arxiv.org/abs/2403.15706. Feed it features of a frozen extractor: :meth:`update` runs the paper's
    recursive update (:func:`woodbury_update`) on each batch, keeping the inverse autocorrelation matrix
    ``R = (X^T X + gamma I)^-1`` (buffer ``R``) and the head ``weight`` (``d x C``); labels of classes not seen
    before widen ``weight`` with zero columns. After any phase split, ``weight`` equals the joint ridge solution
    over all samples seen (exact up to float64 rounding). :meth:`forward` returns logits over the classes seen so
    far. Memory: ``R`` is ``d x d`` in ``dtype`` (``d`` = ``buffer_size`` or ``in_features``; 512 MB at
    ``d = 8192`` in float64).

    Args:
        in_features: size of the extractor's features, >= 1.
        buffer_size: width of the random ``ReLU`` expansion, >= 0 (0: no expansion, the head reads the features).
        gamma: ridge regularisation, > 0 (paper: 0.1).
        seed: seed of the random expansion, >= 0.
        dtype: ``"float64"`` (exact; default) or ``"float32"``.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value out of range (``gamma <= 0``, ...), naming it; in :meth:`update` and
            :meth:`forward`, features whose size is not ``in_features``, or labels and features of different
            lengths, before any compute.

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(40, 5, generator=gen), torch.arange(40) % 4
        >>> phased = AnalyticClassifier(5, buffer_size=16, gamma=0.1)
        >>> phased.update(x[y < 2], y[y < 2]).num_classes          # phase 1: classes 0, 1
        2
        >>> phased.update(x[y >= 2], y[y >= 2]).num_classes        # phase 2: classes 2, 3 widen the head
        4
        >>> joint = AnalyticClassifier(5, buffer_size=16, gamma=0.1).update(x, y)
        >>> bool(torch.allclose(phased.weight, joint.weight, atol=1e-10)), tuple(phased(x).shape)
        (True, (40, 4))
    """

    R: Tensor
    weight: Tensor

    def __init__(
        self, in_features: int, buffer_size: int = 0, gamma: float = 0.1, seed: int = 0, dtype: str = "float64"
    ) -> None:
        owner = type(self).__name__
        in_features = check_int(owner, "in_features", in_features, low=1)
        buffer_size = check_int(owner, "buffer_size", buffer_size, low=0)
        gamma = check_float(owner, "gamma", gamma, low=0.0, low_open=True)
        seed = check_int(owner, "seed", seed, low=0)
        check_choice(owner, "dtype", dtype, tuple(DTYPES))
        super().__init__()
        self.in_features, self.buffer_size, self.gamma, self.seed = in_features, buffer_size, gamma, seed
        self.dtype = DTYPES[dtype]
        d = buffer_size or in_features
        self.expansion: Tensor | None
        if buffer_size:
            self.register_buffer("expansion", random_expansion(in_features, buffer_size, seed, self.dtype))
        else:
            self.expansion = None
        self.register_buffer("R", torch.eye(d, dtype=self.dtype) / gamma)
        self.register_buffer("weight", torch.zeros(d, 0, dtype=self.dtype))

    @property
    def num_classes(self) -> int:
        """Classes the head knows (the largest label seen + 1)."""
        return int(self.weight.shape[1])

    def _check_features(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__}(in_features={self.in_features}): got features of shape {tuple(x.shape)}; "
                f"expected (batch, {self.in_features})"
            )

    def features(self, x: Tensor) -> Tensor:
        """The (expanded) features the head reads, in the classifier's dtype."""
        self._check_features(x)
        return expand_features(x.to(self.dtype), self.expansion)

    @torch.no_grad()
    def update(self, x: Tensor, y: Tensor) -> AnalyticClassifier:
        """Absorb a batch of features ``x`` and integer labels ``y`` (recursive update); returns ``self``."""
        self._check_features(x)
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(
                f"{type(self).__name__}.update: labels of shape {tuple(y.shape)} do not match {x.shape[0]} features"
            )
        if y.numel() and int(y.min()) < 0:
            raise ValueError(f"{type(self).__name__}.update: labels must be >= 0, got {int(y.min())}")
        classes = max(self.num_classes, int(y.max()) + 1) if y.numel() else self.num_classes
        if classes > self.num_classes:
            self.weight = nn.functional.pad(self.weight, (0, classes - self.num_classes))
        onehot = nn.functional.one_hot(y.long(), classes).to(self.dtype)
        self.R, self.weight = woodbury_update(self.R, self.weight, self.features(x), onehot)
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(batch, num_classes)`` in the input's floating dtype."""
        out_dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        return (self.features(x) @ self.weight).to(out_dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Take the checkpoint's head width (the number of classes grows with the data)."""
        key = prefix + "weight"
        if key in state_dict:
            self.weight = torch.empty_like(state_dict[key])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
