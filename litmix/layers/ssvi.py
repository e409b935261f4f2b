"""Sparse variational (Bayesian) linear layer for SSVI and :func:`to_sparse_variational`, which converts a model.

Paper: "Training Bayesian Neural Networks with Sparse Subspace Variational Inference", Li, Miao, Qiu and Zhang,
ICLR 2024 (https://arxiv.org/abs/2402.11025). The maths lives in :mod:`litmix.functional.ssvi`; the training
loop (support updates, KL term) in :class:`litmix.callbacks.SSVI`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litmix.functional.ssvi import PAPER, gaussian_kl, inverse_softplus
from litmix.layers._shells import _ConvShell
from litmix.registry import register
from litmix.validation import check_bool, check_float, check_int, check_str_list, check_type

__all__ = [
    "SparseVariationalConv2d",
    "SparseVariationalLinear",
    "SparseVariationalMixin",
    "mc_predict",
    "sampling",
    "to_sparse_variational",
]


def _check_sigmas(owner: str, prior_std: Any, init_sigma: Any) -> tuple[float, float]:
    prior_std = check_float(owner, "prior_std", prior_std, low=0.0, low_open=True)
    init_sigma = check_float(owner, "init_sigma", init_sigma, low=0.0, low_open=True)
    return float(prior_std), float(init_sigma)


class SparseVariationalMixin(nn.Module):
    """What the SSVI layers share: ``weight_rho``, the support ``weight_mask``, ``sigma``, KL, sampling, state."""

    weight: Tensor
    weight_mask: Tensor

    def _init_variational(self, prior_std: float, init_sigma: float) -> None:
        self.prior_std = prior_std
        self.init_sigma = init_sigma
        self.weight_rho = nn.Parameter(torch.empty_like(self.weight))
        self.register_buffer("weight_mask", torch.ones_like(self.weight, dtype=torch.bool), persistent=False)
        self.reset_sigma()
        #: ``None``: sample in training mode only; ``True`` / ``False``: always / never sample
        self.sample: bool | None = None
        #: keep ``weight_rho`` in the state_dict (the SSVI callback sets ``False`` and checkpoints it itself)
        self.persistent_rho: bool = True
        #: source of the noise (``None``: torch's global generator)
        self.generator: torch.Generator | None = None

    def _sampling(self) -> bool:
        return self.training if self.sample is None else self.sample

    def _add_noise(self, out: Tensor, var: Tensor) -> Tensor:
        noise = torch.randn(out.shape, generator=self.generator, device=out.device, dtype=out.dtype)
        return out + var.clamp_min(torch.finfo(var.dtype).tiny).sqrt() * noise

    @torch.no_grad()
    def reset_sigma(self, sigma: float | None = None) -> None:
        """Set every ``sigma`` to ``sigma`` (default ``init_sigma``)."""
        value = float(inverse_softplus(self.init_sigma if sigma is None else sigma))
        self.weight_rho.fill_(value)

    @torch.no_grad()
    def set_support(self, mask: Tensor) -> None:
        """Set the support (bool, the weight's shape) and zero the means outside it.

        Raises:
            ValueError: for a mask of another shape.
        """
        if tuple(mask.shape) != tuple(self.weight.shape):
            raise ValueError(
                f"{type(self).__name__}.set_support: mask shape {tuple(mask.shape)} differs from the weight's "
                f"{tuple(self.weight.shape)}"
            )
        self.weight_mask.copy_(mask.to(self.weight_mask.device, torch.bool))
        self.weight.mul_(self.weight_mask)

    def sigma(self) -> Tensor:
        """Posterior standard deviations, 0 outside the support."""
        return F.softplus(self.weight_rho) * self.weight_mask

    def kl(self) -> Tensor:
        """``KL(q || prior)`` summed over the support (a scalar with gradients to ``weight`` and ``weight_rho``)."""
        return gaussian_kl(self.weight, F.softplus(self.weight_rho), self.prior_std, self.weight_mask)

    def extra_repr(self) -> str:
        """Sizes, prior and support density."""
        density = float(self.weight_mask.float().mean())
        return f"{super().extra_repr()}, prior_std={self.prior_std}, density={density:.3f}"

    def _save_to_state_dict(self, destination: Any, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if not self.persistent_rho:
            destination.pop(prefix + "weight_rho", None)

    def _load_from_state_dict(
        self,
        state_dict: Any,
        prefix: str,
        local_metadata: Any,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        key = prefix + "weight_rho"
        if not self.persistent_rho and key in missing_keys:
            missing_keys.remove(key)


@register("layer", "sparsity", paper=PAPER, module="litmix.layers")
class SparseVariationalLinear(SparseVariationalMixin, nn.Linear):
    """A mean-field Gaussian Bayesian ``nn.Linear`` whose weights live on a sparse support (SSVI's layer).

    Paper: "Training Bayesian Neural Networks with Sparse Subspace Variational Inference", Li et al., ICLR 2024
    (https://arxiv.org/abs/2402.11025).

    The weight posterior is ``N(mu, sigma^2)`` per coordinate with ``mu = weight`` (the ``nn.Linear`` parameter, so
    the state_dict keys stay ``weight``/``bias``) and ``sigma = softplus(weight_rho) * weight_mask``. The bool buffer
    ``weight_mask`` (non-persistent, all ``True`` = dense VI by default) is the support: inactive coordinates have
    ``mu = 0`` and ``sigma = 0`` (use :meth:`set_support`, or :class:`litmix.callbacks.SSVI`, whose
    :class:`~litmix.sparsity.MaskEngine` keeps the means at 0 there). The bias is a point estimate.

    Forward (local reparameterisation trick, Kingma et al. 2015): the pre-activation of each example is sampled
    from its exact Gaussian ``N(x mu^T + b, x^2 sigma^2T)``: one extra matmul and one normal draw per output,
    independent across examples. It samples in training mode and returns the mean network ``x mu^T + b`` in eval
    mode; :func:`sampling` forces either (:func:`mc_predict` averages sampled predictions). Noise comes from
    :attr:`generator` when set (the SSVI callback sets a per-step seeded one, so resumed runs are exact), else
    from torch's global generator.

    :meth:`kl` is ``KL(q || N(0, prior_std^2))`` over the support only
    (:func:`~litmix.functional.ssvi.gaussian_kl`).

    ``persistent_rho`` (default ``True``) keeps ``weight_rho`` in the state_dict; the SSVI callback sets it to
    ``False`` and checkpoints ``rho`` in its own state, so a Lightning checkpoint holds the posterior means under the
    user's own keys and loads strictly into the user's unconverted module (the mean network).

    Args:
        in_features: input size.
        out_features: output size.
        bias: whether to learn an additive bias.
        prior_std: standard deviation of the zero-mean Gaussian prior, > 0.
        init_sigma: initial posterior standard deviation, > 0.
        device: factory device.
        dtype: factory dtype.

    Raises:
        ValueError: for ``prior_std <= 0``, ``init_sigma <= 0`` or non-positive sizes.
        TypeError: for arguments of the wrong type.

    Example:
        >>> torch.manual_seed(0) and None
        >>> layer = SparseVariationalLinear(4, 3, prior_std=0.1, init_sigma=0.05)
        >>> mask = torch.zeros(3, 4, dtype=torch.bool); mask[:, :2] = True
        >>> layer.set_support(mask)
        >>> x = torch.randn(5, 4)
        >>> _ = layer.train(); a, b = layer(x), layer(x)
        >>> bool((a != b).any())  # sampled
        True
        >>> _ = layer.eval(); torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
        True
        >>> int((layer.weight != 0).sum()), int((layer.sigma() != 0).sum())
        (6, 6)
        >>> layer.kl().shape, sorted(layer.state_dict())
        (torch.Size([]), ['bias', 'weight', 'weight_rho'])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        prior_std: float = 0.1,
        init_sigma: float = 1e-3,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        owner = type(self).__name__
        in_features = check_int(owner, "in_features", in_features, low=1)
        out_features = check_int(owner, "out_features", out_features, low=1)
        check_bool(owner, "bias", bias)
        prior_std, init_sigma = _check_sigmas(owner, prior_std, init_sigma)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_variational(prior_std, init_sigma)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, prior_std: float = 0.1, init_sigma: float = 1e-3
    ) -> SparseVariationalLinear:
        """A layer that takes over ``linear``'s ``weight`` (as ``mu``) and ``bias`` parameters (the same objects).

        Raises:
            TypeError: if ``linear`` is not an ``nn.Linear``.
            ValueError: for ``prior_std <= 0`` or ``init_sigma <= 0``.
        """
        owner = f"{cls.__name__}.from_linear"
        check_type(owner, "linear", linear, nn.Linear)
        prior_std, init_sigma = _check_sigmas(owner, prior_std, init_sigma)
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, prior_std=prior_std,
                    init_sigma=init_sigma, device=w.device, dtype=w.dtype)  # fmt: skip
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer.train(linear.training)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        """Sampled pre-activations in training mode (local reparameterisation), the mean network in eval mode."""
        out = F.linear(x, self.weight, self.bias)
        if not self._sampling():
            return out
        return self._add_noise(out, F.linear(x * x, self.sigma().square()))


@register("layer", "sparsity", paper=PAPER, module="litmix.layers")
class SparseVariationalConv2d(SparseVariationalMixin, nn.Conv2d):
    """A mean-field Gaussian Bayesian ``nn.Conv2d`` on a sparse support (SSVI's convolution).

    Paper: "Training Bayesian Neural Networks with Sparse Subspace Variational Inference", Li et al., ICLR 2024
    (https://arxiv.org/abs/2402.11025).

    As :class:`SparseVariationalLinear` (``weight`` = ``mu``, ``sigma = softplus(weight_rho) * weight_mask``,
    KL over the support, ``persistent_rho``, ``sample``, ``generator``), with the local reparameterisation trick
    applied to the convolution: each output element is drawn from ``N(conv(x, mu) + b, conv(x^2, sigma^2))`` (the
    exact marginal under independent weights; the noise is independent across output positions, as in the
    reference implementations of local reparameterisation for convolutions).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: kernel size (int).
        stride: stride (int).
        padding: padding (int).
        dilation: dilation (int).
        groups: groups (int).
        bias: whether to learn an additive bias.
        prior_std: standard deviation of the zero-mean Gaussian prior, > 0.
        init_sigma: initial posterior standard deviation, > 0.
        device: factory device.
        dtype: factory dtype.

    Raises:
        ValueError: for ``prior_std <= 0``, ``init_sigma <= 0`` or sizes that ``nn.Conv2d`` refuses.
        TypeError: for arguments of the wrong type.

    Example:
        >>> conv = SparseVariationalConv2d(2, 3, 3, padding=1, init_sigma=0.05)
        >>> x = torch.randn(4, 2, 5, 5)
        >>> _ = conv.train(); bool((conv(x) != conv(x)).any()), tuple(conv(x).shape)
        (True, (4, 3, 5, 5))
        >>> _ = conv.eval(); torch.equal(conv(x), torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=1))
        True
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        prior_std: float = 0.1,
        init_sigma: float = 1e-3,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        owner = type(self).__name__
        sizes = _ConvShell._check_sizes(owner, in_channels, out_channels, kernel_size, stride, padding, dilation)
        in_channels, out_channels, kernel_size, stride, padding, dilation = sizes
        groups = check_int(owner, "groups", groups, low=1)
        check_bool(owner, "bias", bias)
        prior_std, init_sigma = _check_sigmas(owner, prior_std, init_sigma)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{owner}(groups={groups}): in_channels={in_channels} and out_channels={out_channels} must be "
                "divisible by groups"
            )
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, device=device, dtype=dtype
        )
        self._init_variational(prior_std, init_sigma)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, prior_std: float = 0.1, init_sigma: float = 1e-3) -> SparseVariationalConv2d:
        """A layer that takes over ``conv``'s ``weight`` (as ``mu``) and ``bias`` parameters (the same objects).

        Raises:
            TypeError: if ``conv`` is not an ``nn.Conv2d``.
            ValueError: for ``prior_std <= 0`` or ``init_sigma <= 0``.
        """
        owner = f"{cls.__name__}.from_conv"
        check_type(owner, "conv", conv, nn.Conv2d)
        prior_std, init_sigma = _check_sigmas(owner, prior_std, init_sigma)
        w = conv.weight
        layer = cls.__new__(cls)
        nn.Conv2d.__init__(
            layer,
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            conv.stride,  # type: ignore[arg-type]
            conv.padding,  # type: ignore[arg-type]
            conv.dilation,  # type: ignore[arg-type]
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device=w.device,
            dtype=w.dtype,
        )
        layer.weight = conv.weight
        layer.bias = conv.bias
        layer._init_variational(prior_std, init_sigma)
        layer.train(conv.training)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        """Sampled outputs in training mode (local reparameterisation), the mean network in eval mode."""
        out = self._conv_forward(x, self.weight, self.bias)
        if not self._sampling():
            return out
        return self._add_noise(out, self._conv_forward(x * x, self.sigma().square(), None))


@register("function", "sparsity", paper=PAPER, module="litmix.layers")
def to_sparse_variational(
    model: nn.Module,
    prior_std: float = 0.1,
    init_sigma: float = 1e-3,
    layer_names: list[str] | None = None,
) -> list[str]:
    """Replace ``model``'s ``nn.Linear``/``nn.Conv2d`` layers in place by SSVI layers (same parameter objects).

    ``nn.Linear`` becomes :class:`SparseVariationalLinear`, ``nn.Conv2d`` :class:`SparseVariationalConv2d`; the new
    layers take over the ``weight`` (the posterior means) and ``bias`` parameter objects; layers that are already
    variational are kept as they are.

    Args:
        model: the model to convert.
        prior_std: prior standard deviation, > 0.
        init_sigma: initial posterior standard deviation, > 0.
        layer_names: ``named_modules`` names of the ``nn.Linear``/``nn.Conv2d`` layers to convert (default: all).

    Returns:
        The names of all variational layers of ``model`` (converted now or before), in module order.

    Raises:
        ValueError: for ``prior_std``/``init_sigma`` <= 0, a model without ``nn.Linear``/``nn.Conv2d`` layers, or a
            name in ``layer_names`` that is not such a layer of ``model`` (listing the ones there are), or an empty
            ``layer_names``.
        TypeError: for a ``model`` that is not an ``nn.Module`` or ``layer_names`` that is not a list of strings.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> w = net[0].weight
        >>> to_sparse_variational(net, prior_std=0.2)
        ['0', '2']
        >>> type(net[0]).__name__, net[0].weight is w
        ('SparseVariationalLinear', True)
    """
    owner = "to_sparse_variational"
    check_type(owner, "model", model, nn.Module)
    prior_std, init_sigma = _check_sigmas(owner, prior_std, init_sigma)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if not linears:
        raise ValueError(
            f"{owner}(model={type(model).__name__}): the model has no nn.Linear or nn.Conv2d layer to make variational"
        )
    layer_names = check_str_list(owner, "layer_names", layer_names, what="layer names")
    if layer_names is not None:
        unknown = [n for n in layer_names if n not in linears]
        if unknown:
            raise ValueError(
                f"{owner}(layer_names={list(layer_names)}): not nn.Linear/nn.Conv2d layers of the model: {unknown}; "
                f"available: {linears}"
            )
    if "" in linears:
        raise ValueError(f"{owner}: the model itself is a {type(model).__name__}; wrap it in a container to convert it")
    chosen = set(linears if layer_names is None else layer_names)
    for name in linears:
        module = model.get_submodule(name)
        if name not in chosen or isinstance(module, SparseVariationalMixin):
            continue
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(module, nn.Linear):
            new: nn.Module = SparseVariationalLinear.from_linear(module, prior_std, init_sigma)
        else:
            assert isinstance(module, nn.Conv2d)
            new = SparseVariationalConv2d.from_conv(module, prior_std, init_sigma)
        setattr(parent, leaf, new)
    return [n for n, m in model.named_modules() if isinstance(m, SparseVariationalMixin)]


def variational_layers(model: nn.Module) -> Iterator[tuple[str, SparseVariationalMixin]]:
    """``(name, layer)`` of every SSVI layer in ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, SparseVariationalMixin):
            yield name, module


@contextmanager
def sampling(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Force every variational layer of ``model`` to sample (or not) inside the block, whatever the mode.

    Example:
        >>> net = nn.Sequential(SparseVariationalLinear(3, 2, init_sigma=0.5)).eval()
        >>> x = torch.ones(1, 3)
        >>> with sampling(net):
        ...     bool((net(x) != net(x)).any())
        True
    """
    layers = [layer for _, layer in variational_layers(model)]
    before = [layer.sample for layer in layers]
    for layer in layers:
        layer.sample = enabled
    try:
        yield model
    finally:
        for layer, value in zip(layers, before, strict=True):
            layer.sample = value


@torch.no_grad()
def mc_predict(model: nn.Module, x: Tensor, num_samples: int = 16) -> Tensor:
    """The Monte Carlo predictive ``mean_s softmax(model(x; theta_s))`` over ``num_samples`` sampled forwards.

    Runs ``model`` in eval mode (dropout, batch norm) with its variational layers sampling; ``num_samples=0``
    returns the mean network's softmax.

    Raises:
        ValueError: for ``num_samples < 0``.

    Example:
        >>> net = nn.Sequential(SparseVariationalLinear(3, 4, init_sigma=0.1))
        >>> p = mc_predict(net, torch.ones(2, 3), num_samples=8)
        >>> p.shape, bool(torch.allclose(p.sum(-1), torch.ones(2)))
        (torch.Size([2, 4]), True)
    """
    num_samples = check_int("mc_predict", "num_samples", num_samples, low=0)
    was_training = model.training
    model.eval()
    try:
        if num_samples == 0:
            return torch.softmax(model(x).float(), dim=-1)
        with sampling(model, True):
            total = torch.zeros((), device=x.device)
            for _ in range(num_samples):
                total = total + torch.softmax(model(x).float(), dim=-1)
        return total / num_samples
    finally:
        model.train(was_training)
