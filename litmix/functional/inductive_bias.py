"""Inductive bias required by a task, from the test-error distribution of random hypotheses (kernel version).

Boopathy et al., "Towards Exact Computation of Inductive Bias" (IJCAI 2024, https://arxiv.org/abs/2406.15941);
reference code FieteLab/Exact-Inductive-Bias (``kernel_inductive_bias.py``, ``utils.py``).

The required inductive bias is ``I = -log P_h(e(h) <= eps)``: the information needed to pick a hypothesis
with test error at most ``eps`` out of a hypothesis space. Hypotheses are Gaussian-process functions with an
RBF kernel *conditioned on fitting the training data* (posterior mean ``K_tX K^-1 Y`` plus a sample of the
posterior covariance ``K_tt - K_tX K^-1 K_Xt``); their test MSE against one-hot labels is a quadratic form in
Gaussian variables, modelled as a scaled non-central chi-squared distribution fitted to sampled errors
(``scipy.stats.ncx2.fit`` with ``floc=0``). ``eps`` usually lies far in the lower tail, so the probability
is read from the fitted distribution rather than counted. Differences from the reference: the linear
systems are solved exactly (``torch.linalg``) instead of by 10,000 Adam epochs on the same least-squares
objectives, a small ``jitter`` is added to ``K``, and results are reported in **bits** (the reference returns
nats from ``ncx2.logcdf``; ``I_bits = I_nats / ln 2``).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import Tensor

from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int

__all__ = [
    "gp_hypothesis_errors",
    "inductive_bias_from_errors",
    "kernel_inductive_bias",
    "mlp_hypothesis_errors",
    "neural_inductive_bias",
    "rbf_kernel",
]


def rbf_kernel(a: Tensor, b: Tensor, sigma: float = 1.0) -> Tensor:
    """``exp(-||a_i - b_j||^2 / (2 sigma^2))``.

    Example:
        >>> rbf_kernel(torch.zeros(1, 2), torch.tensor([[0.0, 0.0], [1.0, 1.0]])).tolist()
        [[1.0, 0.3678794503211975]]
    """
    return torch.exp(-torch.cdist(a, b).pow(2) / (2 * sigma**2))


def gp_hypothesis_errors(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    num_classes: int,
    num_samples: int = 2000,
    sigma: float = 1.0,
    jitter: float = 1e-6,
    seed: int = 0,
) -> Tensor:
    """Test MSEs (against one-hot labels) of ``num_samples`` GP hypotheses that interpolate the training data.

    Args:
        x_train: ``(n, d)`` training inputs.
        y_train: ``(n,)`` integer labels.
        x_test: ``(m, d)`` test inputs.
        y_test: ``(m,)`` integer labels.
        num_classes: output dimension ``k``.
        num_samples: hypotheses drawn.
        sigma: RBF bandwidth.
        jitter: added to the diagonal of the training kernel.
        seed: sampling seed.

    Returns:
        ``(num_samples,)`` float64 test MSEs (mean over test points and the ``k`` outputs, as the reference).

    Example:
        >>> x = torch.randn(20, 3)
        >>> y = (x[:, 0] > 0).long()
        >>> errs = gp_hypothesis_errors(x[:10], y[:10], x[10:], y[10:], 2, num_samples=50)
        >>> errs.shape, bool((errs > 0).all())
        (torch.Size([50]), True)
    """
    xtr, xte = x_train.double(), x_test.double()
    ytr = torch.nn.functional.one_hot(y_train.long(), num_classes).double()
    yte = torch.nn.functional.one_hot(y_test.long(), num_classes).double()
    k_xx = rbf_kernel(xtr, xtr, sigma) + jitter * torch.eye(len(xtr), dtype=torch.float64)
    k_tx = rbf_kernel(xte, xtr, sigma)
    chol = torch.linalg.cholesky(k_xx)
    alpha = torch.cholesky_solve(ytr, chol)  # K^-1 Y  (reference: alpha)
    a_x = torch.cholesky_solve(k_tx.T, chol)  # K^-1 K_Xt  (reference: a_x)
    mean = k_tx @ alpha
    cov = rbf_kernel(xte, xte, sigma) - k_tx @ a_x
    evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)
    root = evecs * evals.clamp_min(0).sqrt()  # a square root of the posterior covariance
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(len(xte), num_classes * num_samples, generator=gen, dtype=torch.float64)
    f = mean.unsqueeze(-1) + (root @ z).view(len(xte), num_classes, num_samples)
    return ((f - yte.unsqueeze(-1)) ** 2).mean(dim=(0, 1))


def _ncx2_moments(e: np.ndarray) -> tuple[float, float, float, float]:
    """Scaled ncx2 ``(df, nc, loc=0, scale)`` matching the mean, variance and third central moment."""
    m, v = float(e.mean()), float(e.var())
    s3 = float(((e - m) ** 3).mean())
    disc = max(64 * v**2 - 32 * m * s3, 0.0)
    best = None
    for c in ((8 * v + math.sqrt(disc)) / (16 * m), (8 * v - math.sqrt(disc)) / (16 * m)):
        if c <= 0:
            continue
        lam = v / (2 * c**2) - m / c
        k = m / c - lam
        if k > 0 and lam >= 0:
            best = (k, lam, 0.0, c)
            break
    if best is None:  # no valid third-moment match: central chi-squared on mean and variance
        c = v / (2 * m)
        best = (m / c, 0.0, 0.0, c)
    return best


def inductive_bias_from_errors(errors: Tensor, target_error: float, fit: str = "mle") -> float:
    """``-log2 P(e <= target_error)`` under a scaled non-central chi-squared fitted to ``errors``.

    Follows the reference ``utils.compute_inductive_bias``: ``ncx2.fit(errors, floc=0)`` (``fit="mle"``),
    ``-logcdf`` at the target, with the Sankaran normal approximation when the log-CDF underflows to ``-inf``.
    ``fit="moments"`` matches the first three moments instead (closed form; much more stable than the MLE,
    whose three free parameters are poorly identified from a few thousand samples; our addition).

    Raises:
        ValueError: for fewer than 10 errors, a non-positive target or an unknown ``fit``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> errs = 1.0 + 0.1 * torch.randn(500, generator=g, dtype=torch.float64).pow(2)
        >>> inductive_bias_from_errors(errs, 1.05) < inductive_bias_from_errors(errs, 1.01)
        True
    """
    from scipy.stats import ncx2

    e = np.asarray(errors, dtype=np.float64).ravel()
    if e.size < 10:
        raise ValueError(f"inductive_bias_from_errors: need >= 10 errors, got {e.size}")
    if target_error <= 0:
        raise ValueError(f"inductive_bias_from_errors(target_error={target_error}): must be > 0")
    if fit == "mle":
        df, nc, loc, scale = ncx2.fit(e, floc=0)
    elif fit == "moments":
        df, nc, loc, scale = _ncx2_moments(e)
    else:
        raise ValueError(f"inductive_bias_from_errors(fit={fit!r}): fit must be 'mle' or 'moments'")
    nats = -float(ncx2.logcdf(target_error, df, nc, loc=loc, scale=scale))
    if math.isinf(nats):
        t = (target_error - loc) / scale
        h = 1 - 2 / 3 * (df + nc) * (df + 3 * nc) / (df + 2 * nc) ** 2
        p = (df + 2 * nc) / (df + nc) ** 2
        m = (h - 1) * (1 - 3 * h)
        z = ((t / (df + nc)) ** h - (1 + h * p * (h - 1 - 0.5 * (2 - h) * m * p))) / (
            h * math.sqrt(2 * p) * (1 + 0.5 * m * p)
        )
        nats = z**2 / 2
    return float(nats) / math.log(2)


@register(
    "function",
    "proxy",
    paper="Towards Exact Computation of Inductive Bias (https://arxiv.org/abs/2406.15941)",
    module="litmix.functional.inductive_bias",
)
def kernel_inductive_bias(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    num_classes: int,
    target_error: float,
    num_samples: int = 2000,
    sigma: float = 1.0,
    seed: int = 0,
    fit: str = "mle",
) -> float:
    """Bits of inductive bias needed to reach test MSE ``target_error`` with GP hypotheses fitting the data.

    Args:
        x_train: ``(n, d)`` training inputs.
        y_train: ``(n,)`` integer labels.
        x_test: ``(m, d)`` test inputs.
        y_test: ``(m,)`` integer labels.
        num_classes: number of classes ``k``.
        target_error: desired test MSE against one-hot labels (> 0).
        num_samples: hypotheses sampled to fit the error distribution.
        sigma: RBF bandwidth.
        seed: sampling seed.
        fit: ``"mle"`` (reference) or ``"moments"`` (see :func:`inductive_bias_from_errors`).

    Raises:
        TypeError: for scalar arguments of the wrong type (e.g. ``num_samples=2.5``), naming them.
        ValueError: for a non-positive or non-finite ``target_error`` or ``sigma``, ``num_classes < 1``,
            ``num_samples < 10``, a negative ``seed`` or an unknown ``fit``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(60, 2, generator=g)
        >>> y = (x[:, 0] > 0).long()
        >>> bits = kernel_inductive_bias(x[:40], y[:40], x[40:], y[40:], 2, target_error=0.05, num_samples=300)
        >>> bits > 0
        True
    """
    owner = "kernel_inductive_bias"
    check_int(owner, "num_classes", num_classes, low=1)
    check_float(owner, "target_error", target_error, low=0.0, low_open=True)
    check_int(owner, "num_samples", num_samples, low=10)
    check_float(owner, "sigma", sigma, low=0.0, low_open=True)
    check_int(owner, "seed", seed, low=0)
    check_choice(owner, "fit", fit, ("mle", "moments"))
    errs = gp_hypothesis_errors(x_train, y_train, x_test, y_test, num_classes, num_samples, sigma, seed=seed)
    return inductive_bias_from_errors(errs, target_error, fit=fit)


# --------------------------------------------------------------------------------------------- neural networks
def mlp_hypothesis_errors(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    num_classes: int,
    width: int = 64,
    depth: int = 1,
    epochs: int = 20,
    num_samples: int = 100,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
) -> Tensor:
    """Test MSEs (against one-hot labels) of ``num_samples`` ReLU MLPs, each from its own random init, trained.

    The neural-network hypothesis space of the paper (reference ``nn_inductive_bias.py``): an MLP with ``depth``
    hidden ``width x width`` layers after the input layer (``depth + 2`` linear layers, as the reference
    ``Net``), PyTorch's default ``nn.Linear`` initialisation, trained for ``epochs`` epochs with Adam
    (``lr``) on the MSE to one-hot targets, in shuffled mini-batches of ``batch_size`` (a different order per
    network). ``epochs=0`` samples untrained networks at initialisation. All networks train at once as one
    batched ensemble (``torch.bmm``; each network's loss, gradients and Adam state are its own), which is
    mathematically the same as the reference's sequential loop.

    Args:
        x_train: ``(n, d)`` training inputs.
        y_train: ``(n,)`` integer labels.
        x_test: ``(m, d)`` test inputs.
        y_test: ``(m,)`` integer labels.
        num_classes: output dimension ``k``.
        width: hidden width.
        depth: hidden ``width x width`` layers (the reference's ``depth``).
        epochs: training epochs per network (0: untrained).
        num_samples: networks sampled.
        batch_size: mini-batch size.
        lr: Adam learning rate (reference 1e-3).
        seed: seed of the inits and the batch orders.

    Returns:
        ``(num_samples,)`` float64 test MSEs (mean over test points and the ``k`` outputs).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(80, 4, generator=g)
        >>> y = (x[:, 0] > 0).long()
        >>> trained = mlp_hypothesis_errors(x[:60], y[:60], x[60:], y[60:], 2, width=16, epochs=20, num_samples=8)
        >>> untrained = mlp_hypothesis_errors(x[:60], y[:60], x[60:], y[60:], 2, width=16, epochs=0, num_samples=8)
        >>> trained.shape, bool(trained.mean() < untrained.mean())
        (torch.Size([8]), True)
    """
    gen = torch.Generator().manual_seed(seed)
    s = num_samples
    sizes = [x_train.shape[1], width, *([width] * depth), num_classes]
    params: list[Tensor] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default init (kaiming_uniform a=sqrt(5); bias same bound)
        params.append(((torch.rand(s, fan_in, fan_out, generator=gen) * 2 - 1) * bound).requires_grad_())
        params.append(((torch.rand(s, 1, fan_out, generator=gen) * 2 - 1) * bound).requires_grad_())

    def forward(x: Tensor) -> Tensor:  # x: (s, b, d)
        h = x
        for i in range(0, len(params), 2):
            h = torch.baddbmm(params[i + 1], h, params[i])
            if i + 2 < len(params):
                h = torch.relu(h)
        return h

    xtr, xte = x_train.float(), x_test.float()
    ytr = torch.nn.functional.one_hot(y_train.long(), num_classes).float()
    yte = torch.nn.functional.one_hot(y_test.long(), num_classes).float()
    n = len(xtr)
    if epochs > 0:
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(epochs):
            order = torch.argsort(torch.rand(s, n, generator=gen), dim=1)
            for start in range(0, n, batch_size):
                idx = order[:, start : start + batch_size]
                out = forward(xtr[idx])
                # sum over networks of each network's mean MSE: independent gradients per network
                loss = ((out - ytr[idx]) ** 2).mean(dim=(1, 2)).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
    with torch.no_grad():
        out = forward(xte.expand(s, -1, -1))
        return ((out - yte) ** 2).mean(dim=(1, 2)).double()


@register(
    "function",
    "proxy",
    paper="Towards Exact Computation of Inductive Bias (https://arxiv.org/abs/2406.15941)",
    module="litmix.functional.inductive_bias",
)
def neural_inductive_bias(
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    num_classes: int,
    target_error: float,
    width: int = 64,
    depth: int = 1,
    epochs: int = 20,
    num_samples: int = 100,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    fit: str = "mle",
) -> float:
    """Bits of inductive bias needed to reach test MSE ``target_error`` within a neural-network hypothesis space.

    ``-log2 P(e(h) <= target_error)`` where ``h`` is an MLP of the given architecture drawn at a random init and
    trained for ``epochs`` epochs (:func:`mlp_hypothesis_errors`); the probability is read from a scaled
    non-central chi-squared fitted to the sampled test errors (:func:`inductive_bias_from_errors`), as the
    paper does for neural networks. Compare with :func:`kernel_inductive_bias` at the same data and target: the
    fewer bits a hypothesis space needs, the more inductive bias it already encodes.

    Args:
        x_train: ``(n, d)`` training inputs.
        y_train: ``(n,)`` integer labels.
        x_test: ``(m, d)`` test inputs.
        y_test: ``(m,)`` integer labels.
        num_classes: number of classes ``k``.
        target_error: desired test MSE against one-hot labels (> 0).
        width: hidden width.
        depth: hidden ``width x width`` layers.
        epochs: training epochs per sampled network (0: networks at initialisation).
        num_samples: networks sampled (>= 10).
        batch_size: mini-batch size.
        lr: Adam learning rate.
        seed: seed of the inits and batch orders.
        fit: ``"mle"`` (reference) or ``"moments"``.

    Raises:
        TypeError: for scalar arguments of the wrong type (e.g. ``width=2.5``), naming them.
        ValueError: for a non-positive or non-finite ``target_error`` or ``lr``, ``num_classes``, ``width`` or
            ``batch_size`` below 1, negative ``depth``, ``epochs`` or ``seed``, ``num_samples < 10``, an unknown
            ``fit``, or inputs whose shapes disagree (naming the argument).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(80, 2, generator=g)
        >>> y = (x[:, 0] > 0).long()
        >>> bits = neural_inductive_bias(x[:60], y[:60], x[60:], y[60:], 2, 0.05, width=8, epochs=5, num_samples=20)
        >>> bits >= 0
        True
    """
    owner = "neural_inductive_bias"
    check_int(owner, "num_classes", num_classes, low=1)
    check_float(owner, "target_error", target_error, low=0.0, low_open=True)
    check_int(owner, "width", width, low=1)
    check_int(owner, "depth", depth, low=0)
    check_int(owner, "epochs", epochs, low=0)
    check_int(owner, "num_samples", num_samples, low=10)
    check_int(owner, "batch_size", batch_size, low=1)
    check_float(owner, "lr", lr, low=0.0, low_open=True)
    check_int(owner, "seed", seed, low=0)
    check_choice(owner, "fit", fit, ("mle", "moments"))
    for name, xs, ys in (("x_train", x_train, y_train), ("x_test", x_test, y_test)):
        if not isinstance(xs, Tensor) or xs.dim() != 2 or not isinstance(ys, Tensor) or ys.shape != (len(xs),):
            raise ValueError(f"{owner}({name}=...): needs an (n, d) tensor and n integer labels")
        if len(ys) and (int(ys.min()) < 0 or int(ys.max()) >= num_classes):
            raise ValueError(f"{owner}(num_classes={num_classes}): labels of {name} lie outside [0, {num_classes})")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"{owner}(x_test=...): {x_test.shape[1]} features, x_train has {x_train.shape[1]}")
    errs = mlp_hypothesis_errors(
        x_train, y_train, x_test, y_test, num_classes, width, depth, epochs, num_samples, batch_size, lr, seed
    )
    return inductive_bias_from_errors(errs, target_error, fit=fit)
