"""DenseShift: low-bit power-of-two weights without zero, on plain tensors.

Paper: "DenseShift: Towards Accurate and Efficient Low-Bit Power-of-Two Quantization", Li et al., ICCV 2023
(https://arxiv.org/abs/2208.09708).

A ``b``-bit DenseShift weight is ``w = s * 2**p`` with a sign ``s`` in ``{-1, +1}`` (1 bit) and an exponent
``p`` in ``{e_max - L + 1, ..., e_max}`` with ``L = 2**(b - 1)`` levels (``b - 1`` bits). **Zero is not in the
codebook** (the paper's zero-free shifting). ``e_max`` is a per-layer integer (the paper uses ``p <= 0`` on
layers whose weights it rescales; a per-layer offset keeps every weight an exact power of two without a float
scale).

Training uses the paper's **sign-scale decomposition**: two latent tensors, a sign latent ``S`` (the sign of
``S`` is the weight's sign, ``+0.0`` counting as ``+1``) and a scale latent ``P`` (``p = clamp(round(log2|P|), e_min,
e_max)``), each with a straight-through estimator (identity gradient: ``dL/dS = g * 2**p``,
``dL/dP = g * s * sign(P)``). The decomposition lets the sign flip independently of the magnitude; the paper
argues this avoids the "weight freezing" of single-latent shift quantizers (codes stop changing during
training). Measured on the digits MLP (3 bits, Adam, 20 epochs, seeds 0-2) codes keep changing with either:
~1900-2300 code changes and ~300-360 sign flips in each of the last 3 epochs, and a single shared latent
(``S = P``) gave the same picture and accuracy, so this small task does not show the freezing the paper reports.

Code layout (:func:`denseshift_codes`): ``code = sign_bit << (b - 1) | (e_max - p)``, ``sign_bit = 1`` for a
negative weight; :func:`pack_codes` stores ``b``-bit codes densely (3-bit codes take 3/8 byte each).

The low-variance initialisation (:func:`low_variance_init`) is our reading of the paper's strategy (the exact
recipe is not verified against the released code): latent signs random, every magnitude at the smallest
level ``2**e_min``, so the initial effective weights have the lowest variance the codebook allows.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from litmix.registry import register
from litmix.validation import check_int

__all__ = [
    "denseshift_codes",
    "denseshift_exponent_max",
    "denseshift_from_codes",
    "denseshift_weight",
    "low_variance_init",
    "pack_codes",
    "unpack_codes",
]

PAPER = (
    "DenseShift: Towards Accurate and Efficient Low-Bit Power-of-Two Quantization (https://arxiv.org/abs/2208.09708)"
)


def _check_bits(owner: str, bits: Any) -> int:
    return int(check_int(owner, "bits", bits, low=2, high=8))


def _check_tensor(owner: str, name: str, value: Any) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{owner}({name}=...): {name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{owner}({name}=...): {name} must be a floating-point tensor, got {value.dtype}")
    return value


class _DenseShiftSTE(torch.autograd.Function):
    """``sign(S) * 2**clamp(round(log2|P|))`` forward; straight-through (identity) gradients to ``S`` and ``P``.

    The sign is ``S``'s sign bit (``copysign``): ``+0.0`` gives ``+1``. Elementwise work is kept to a few
    in-place kernels (``torch.where`` with scalars was 10x slower on the CPU).
    """

    @staticmethod
    def forward(ctx: Any, sign_latent: Tensor, scale_latent: Tensor, e_min: int, e_max: int) -> Tensor:
        magnitude = scale_latent.detach().abs().log2_().round_().clamp_(e_min, e_max).exp2_()
        out = torch.copysign(magnitude, sign_latent.detach())
        ctx.save_for_backward(magnitude, out, scale_latent)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        magnitude, out, scale_latent = ctx.saved_tensors
        grad_sign = grad * magnitude if ctx.needs_input_grad[0] else None
        grad_scale = None
        if ctx.needs_input_grad[1]:
            # sign(S) * sign(P) = sign(out * P); at P == 0, 0 is a subgradient of |P|
            grad_scale = (out * scale_latent).sign_().mul_(grad)
        return grad_sign, grad_scale, None, None


@register("function", "quantization", paper=PAPER, module="litmix.functional.denseshift")
def denseshift_weight(sign_latent: Tensor, scale_latent: Tensor, bits: int, exponent_max: int) -> Tensor:
    """Effective DenseShift weight ``sign(S) * 2**p`` from the sign and scale latents (straight-through).

    ``p = clamp(round(log2|P|), exponent_max - 2**(bits-1) + 1, exponent_max)``; the sign is ``S``'s sign bit
    (``sign(+0.0) = +1``), so no weight is ever zero. Gradients pass straight through: ``dL/dS = g * 2**p``,
    ``dL/dP = g * sign(S) * sign(P)``.

    Args:
        sign_latent: latent sign tensor ``S``.
        scale_latent: latent scale tensor ``P`` of the same shape.
        bits: total bits per weight, in [2, 8] (1 sign bit, ``bits - 1`` exponent bits).
        exponent_max: the largest exponent ``e_max`` (an int, e.g. from :func:`denseshift_exponent_max`).

    Returns:
        A tensor of the latents' shape whose every entry is ``+-2**p`` exactly.

    Raises:
        TypeError: if a latent is not a floating-point tensor or ``bits``/``exponent_max`` is not an int.
        ValueError: if ``bits`` is outside [2, 8] or the latents' shapes differ.

    Example:
        >>> s = torch.tensor([0.3, -0.2, 0.0, -1.0], requires_grad=True)
        >>> p = torch.tensor([0.24, 0.01, 1.0, 0.6], requires_grad=True)
        >>> w = denseshift_weight(s, p, bits=3, exponent_max=0)
        >>> w.tolist()
        [0.25, -0.125, 1.0, -0.5]
        >>> w.sum().backward(); s.grad.tolist(), p.grad.tolist()
        ([0.25, 0.125, 1.0, 0.5], [1.0, -1.0, 1.0, -1.0])
    """
    owner = "denseshift_weight"
    _check_tensor(owner, "sign_latent", sign_latent)
    _check_tensor(owner, "scale_latent", scale_latent)
    if sign_latent.shape != scale_latent.shape:
        raise ValueError(
            f"{owner}(scale_latent=...): scale_latent shape {tuple(scale_latent.shape)} differs from sign_latent "
            f"shape {tuple(sign_latent.shape)}"
        )
    levels = 2 ** (_check_bits(owner, bits) - 1)
    e_max = int(check_int(owner, "exponent_max", exponent_max, low=-120, high=120))
    out: Tensor = _DenseShiftSTE.apply(sign_latent, scale_latent, e_max - levels + 1, e_max)
    return out


@register("function", "quantization", paper=PAPER, module="litmix.functional.denseshift")
def denseshift_exponent_max(weight: Tensor) -> int:
    """The per-layer largest exponent ``ceil(log2(max|weight|))`` (0 for an all-zero tensor).

    Raises:
        TypeError: if ``weight`` is not a floating-point tensor.
        ValueError: if ``weight`` is empty or holds NaN/inf.

    Example:
        >>> denseshift_exponent_max(torch.tensor([0.1, -0.3])), denseshift_exponent_max(torch.tensor([2.0]))
        (-1, 1)
    """
    _check_tensor("denseshift_exponent_max", "weight", weight)
    if weight.numel() == 0:
        raise ValueError("denseshift_exponent_max(weight=...): weight is empty")
    top = float(weight.detach().abs().max())
    if not math.isfinite(top):
        raise ValueError("denseshift_exponent_max(weight=...): weight holds NaN or inf")
    return 0 if top == 0.0 else math.ceil(math.log2(top))


@register("function", "quantization", paper=PAPER, module="litmix.functional.denseshift")
def low_variance_init(
    shape: tuple[int, ...] | list[int] | torch.Size,
    bits: int,
    exponent_max: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Latents ``(S, P)`` whose effective weights have random signs and the smallest magnitude ``2**e_min``.

    Our reading of DenseShift's low-variance random initialisation (unverified against the released code):
    the initial effective weights have variance ``4**e_min``, the lowest the codebook allows, while every
    latent sign is random (``S ~ U(-1, 1) * 2**e_max``).

    Raises:
        ValueError: if ``bits`` is outside [2, 8] or ``shape`` has a non-positive size.

    Example:
        >>> s, p = low_variance_init((2, 3), bits=3, exponent_max=0, generator=torch.Generator().manual_seed(0))
        >>> denseshift_weight(s, p, 3, 0).abs().unique().tolist()
        [0.125]
    """
    owner = "low_variance_init"
    levels = 2 ** (_check_bits(owner, bits) - 1)
    e_max = int(check_int(owner, "exponent_max", exponent_max, low=-120, high=120))
    size = tuple(int(s) for s in shape)
    if not size or min(size) < 1:
        raise ValueError(f"{owner}(shape={size}): shape must hold positive sizes")
    sign = (torch.rand(size, generator=generator) * 2 - 1) * 2.0**e_max
    scale = torch.full(size, 2.0 ** (e_max - levels + 1))
    return sign, scale


@register("function", "quantization", paper=PAPER, module="litmix.functional.denseshift")
def denseshift_codes(sign_latent: Tensor, scale_latent: Tensor, bits: int, exponent_max: int) -> Tensor:
    """Integer codes (uint8) ``sign_bit << (bits - 1) | (exponent_max - p)`` of the effective weights.

    Raises:
        TypeError: if a latent is not a floating-point tensor.
        ValueError: if ``bits`` is outside [2, 8] or the latents' shapes differ.

    Example:
        >>> s, p = torch.tensor([0.3, -0.2]), torch.tensor([0.24, 0.01])
        >>> denseshift_codes(s, p, 3, 0).tolist()  # +2**-2 -> 0b010, -2**-3 -> 0b111
        [2, 7]
        >>> denseshift_from_codes(denseshift_codes(s, p, 3, 0), 3, 0).tolist()
        [0.25, -0.125]
    """
    with torch.no_grad():
        weight = denseshift_weight(sign_latent, scale_latent, bits, exponent_max)
        exponent = torch.log2(weight.abs()).round().to(torch.int64)
        sign_bit = (weight < 0).to(torch.int64)
        return ((sign_bit << (bits - 1)) | (exponent_max - exponent)).to(torch.uint8)


@register("function", "quantization", paper=PAPER, module="litmix.functional.denseshift")
def denseshift_from_codes(codes: Tensor, bits: int, exponent_max: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Effective weights from :func:`denseshift_codes` (exact inverse).

    Raises:
        TypeError: if ``codes`` is not an integer tensor.
        ValueError: if ``bits`` is outside [2, 8] or a code does not fit in ``bits`` bits.

    Example:
        >>> denseshift_from_codes(torch.tensor([0, 3, 4, 7], dtype=torch.uint8), 3, -1).tolist()
        [0.5, 0.0625, -0.5, -0.0625]
    """
    owner = "denseshift_from_codes"
    bits = _check_bits(owner, bits)
    if not isinstance(codes, Tensor) or codes.is_floating_point() or codes.dtype == torch.bool:
        raise TypeError(f"{owner}(codes=...): codes must be an integer tensor")
    codes = codes.to(torch.int64)
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 2**bits):
        raise ValueError(f"{owner}(codes=...): codes must lie in [0, {2**bits - 1}] for bits={bits}")
    index = codes & (2 ** (bits - 1) - 1)
    sign = 1.0 - 2.0 * (codes >> (bits - 1)).to(dtype)
    return sign * torch.exp2((exponent_max - index).to(dtype))


@register("function", "quantization", paper=PAPER, module="litmix.functional.denseshift")
def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Pack ``bits``-bit codes densely into a uint8 tensor of ``ceil(numel * bits / 8)`` bytes (MSB first).

    ``bits=1`` stores one bit per element (binary weights), ``bits=3`` three (DenseShift 3-bit codes).

    Raises:
        TypeError: if ``codes`` is not an integer or bool tensor.
        ValueError: if ``bits`` is outside [1, 8] or a code does not fit in ``bits`` bits.

    Example:
        >>> codes = torch.tensor([5, 0, 7, 2, 1, 6, 3, 4, 7], dtype=torch.uint8)
        >>> packed = pack_codes(codes, 3)
        >>> packed.numel(), torch.equal(unpack_codes(packed, 3, codes.numel()), codes)
        (4, True)
    """
    owner = "pack_codes"
    bits = int(check_int(owner, "bits", bits, low=1, high=8))
    if not isinstance(codes, Tensor) or codes.is_floating_point():
        raise TypeError(f"{owner}(codes=...): codes must be an integer or bool tensor")
    flat = codes.detach().reshape(-1).to("cpu", torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"{owner}(codes=...): codes must lie in [0, {2**bits - 1}] for bits={bits}")
    shifts = torch.arange(bits - 1, -1, -1)
    stream = ((flat[:, None] >> shifts) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    stream = torch.cat([stream, stream.new_zeros(pad)]).view(-1, 8)
    return (stream << torch.arange(7, -1, -1)).sum(1).to(torch.uint8)


@register("function", "quantization", paper=PAPER, module="litmix.functional.denseshift")
def unpack_codes(packed: Tensor, bits: int, numel: int) -> Tensor:
    """Inverse of :func:`pack_codes`: the first ``numel`` codes as a flat uint8 tensor.

    Raises:
        TypeError: if ``packed`` is not a uint8 tensor.
        ValueError: if ``bits`` is outside [1, 8] or ``packed`` is too short for ``numel`` codes.

    Example:
        >>> unpack_codes(pack_codes(torch.tensor([1, 0, 1], dtype=torch.uint8), 1), 1, 3).tolist()
        [1, 0, 1]
    """
    owner = "unpack_codes"
    bits = int(check_int(owner, "bits", bits, low=1, high=8))
    numel = int(check_int(owner, "numel", numel, low=0))
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8:
        raise TypeError(f"{owner}(packed=...): packed must be a uint8 tensor")
    if packed.numel() * 8 < numel * bits:
        raise ValueError(f"{owner}(packed=...): {packed.numel()} bytes cannot hold {numel} codes of {bits} bits")
    stream = ((packed.to(torch.int64)[:, None] >> torch.arange(7, -1, -1)) & 1).reshape(-1)[: numel * bits]
    return (stream.view(numel, bits) << torch.arange(bits - 1, -1, -1)).sum(1).to(torch.uint8)
