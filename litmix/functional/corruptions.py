"""Deterministic heavy image corruptions: a shifted "web" copy of a clean image set.

Noise, blur, inversion, rotation and block shuffling, reproducible per sample from ``(seed, sample index)`` alone.
Used to build the web-collected transfer set of KD³ ("Distribution Shift Matters for Knowledge Distillation with
Webly Collected Images", https://arxiv.org/abs/2307.11469) from real data: every sample gets its own random
corruption parameters from a counter-based random stream keyed by the seed and its index, so a sample is
corrupted the same way whatever the batch, the order, the DDP rank or the process (and fast: no per-sample
generator).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CORRUPTION_PARAMS", "corruption_params", "web_corrupt"]

#: Columns of :func:`corruption_params`.
CORRUPTION_PARAMS = ("angle", "blur", "invert", "noise", "shuffle")
_M32 = 0xFFFFFFFF
_BLOCK = 7
# slots of the per-sample random stream: 5 parameters, then block-order keys, then the noise field and shift
_ORDER_SLOT, _NOISE_SLOT = 8, 64
_NOISE_BANK = 257


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (in int64, no overflow)."""
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & _M32
    return (x >> 16) ^ x


def _uniforms(index: Tensor, seed: int, slots: Tensor) -> Tensor:
    """``[N, S]`` uniforms in (0, 1), a pure function of ``(seed, index, slot)`` (a counter-based generator)."""
    key = _mix32(_mix32(index.long() & _M32) ^ ((int(seed) * 0x9E3779B9) & _M32))
    bits = _mix32((key[:, None] + (slots.long()[None, :] * 0x632BE5AB)) & _M32)
    return (bits.double() + 0.5) / 2.0**32


def corruption_params(index: Tensor, seed: int, severity: float, side: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample corruption parameters, block orders and noise fields, from ``(seed, index)`` alone.

    Each sample reads its own counter-based random stream (a hash of seed, index and position; no generator
    state): rotation angle uniform in ``±severity·120°``, blur strength uniform in ``[0, severity]``, inversion
    with probability ``0.4·severity``, Gaussian noise level uniform in ``[0, 0.8·severity]`` (in units of the value
    range) and block shuffling (the image cut into 7x7-pixel blocks put in a random order: no digit is left, web
    "junk") with probability ``0.25·severity``. The noise field of a sample is one of 257 standard-normal fields drawn
    from ``seed``, circularly shifted by a per-sample offset.

    Returns:
        ``params [N, 5]`` (columns :data:`CORRUPTION_PARAMS`; ``shuffle`` is 0 or 1), ``order [N, B]`` (the block
        permutation, ``B = (side // 7)²``) and ``noise [N, side²]`` (standard normal).

    Raises:
        ValueError: for a severity outside [0, 1] or a negative index.

    Example:
        >>> p, order, noise = corruption_params(torch.tensor([3, 7]), seed=0, severity=1.0, side=28)
        >>> p.shape, order.shape, noise.shape
        (torch.Size([2, 5]), torch.Size([2, 16]), torch.Size([2, 784]))
        >>> torch.equal(p[1], corruption_params(torch.tensor([7]), 0, 1.0, 28)[0][0])
        True
    """
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"corruption_params(severity={severity}): severity must be in [0, 1]")
    if index.numel() and int(index.min()) < 0:
        raise ValueError("corruption_params: sample indices must be >= 0")
    index = index.reshape(-1)
    u = _uniforms(index, seed, torch.arange(5)).float()
    params = torch.stack(
        [
            (2 * u[:, 0] - 1) * severity * 120.0,
            u[:, 1] * severity,
            (u[:, 2] < 0.4 * severity).float(),
            u[:, 3] * 0.8 * severity,
            (u[:, 4] < 0.25 * severity).float(),
        ],
        1,
    )
    blocks = (side // _BLOCK) ** 2
    order = _uniforms(index, seed, torch.arange(_ORDER_SLOT, _ORDER_SLOT + blocks)).argsort(1)
    pixels = side * side
    # noise: one of a bank of standard-normal fields (from the seed) rolled by a per-sample shift; no per-sample
    # generator and no [N, pixels] hashing
    bank = torch.randn(_NOISE_BANK, pixels, generator=torch.Generator().manual_seed(int(seed) % 2**63))
    pick = _uniforms(index, seed, torch.arange(_NOISE_SLOT, _NOISE_SLOT + 2))
    field = (pick[:, 0] * _NOISE_BANK).long().clamp(max=_NOISE_BANK - 1)
    shift = (pick[:, 1] * pixels).long().clamp(max=pixels - 1)
    columns = (torch.arange(pixels)[None, :] + shift[:, None]) % pixels
    noise = bank[field].gather(1, columns)
    return params, order, noise.float()


def _blur(x: Tensor) -> Tensor:
    """A separable 5x5 binomial blur of ``[N, 1, H, W]`` (replicated borders) by shifted sums (no conv kernel)."""
    weights = (1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16)
    h, w = x.shape[-2], x.shape[-1]
    padded = F.pad(x, (2, 2, 0, 0), mode="replicate")
    rows = torch.stack([c * padded[..., :, k : k + w] for k, c in enumerate(weights)]).sum(0)
    padded = F.pad(rows, (0, 0, 2, 2), mode="replicate")
    return torch.stack([c * padded[..., k : k + h, :] for k, c in enumerate(weights)]).sum(0)


def _rotation_grid(angle_deg: Tensor, side: int) -> Tensor:
    """``F.affine_grid`` of a rotation by ``angle_deg [N]`` (``align_corners=False``), by broadcasting."""
    theta = angle_deg * math.pi / 180.0
    cos, sin = theta.cos()[:, None, None], theta.sin()[:, None, None]
    coords = (2 * torch.arange(side, dtype=torch.float32) + 1) / side - 1
    xs, ys = coords[None, None, :], coords[None, :, None]
    return torch.stack([cos * xs - sin * ys, sin * xs + cos * ys], -1)


def _shuffle_blocks(x: Tensor, order: Tensor) -> Tensor:
    """``x [N, 1, H, H]`` with its 7x7 blocks (the top-left ``n·7`` square) put in ``order [N, n²]``."""
    n_img, side = x.shape[0], x.shape[-1]
    n = side // _BLOCK
    if n < 2:
        return x.flip(-1)
    size = n * _BLOCK
    tiles = x[..., :size, :size].reshape(n_img, n, _BLOCK, n, _BLOCK).transpose(2, 3).reshape(n_img, n * n, -1)
    tiles = tiles.gather(1, order[:, :, None].expand(-1, -1, tiles.shape[-1]))
    out = x.clone()
    out[..., :size, :size] = tiles.reshape(n_img, n, n, _BLOCK, _BLOCK).transpose(2, 3).reshape(n_img, 1, size, size)
    return out


def web_corrupt(
    images: Tensor, index: Tensor, seed: int = 0, severity: float = 1.0, value_range: tuple[float, float] = (0.0, 1.0)
) -> Tensor:
    """Heavily corrupt square single-channel images, deterministically per ``(seed, index)``.

    In order: block shuffling (web junk), rotation (bilinear, border fill with the range's low value), blur (a
    5x5 binomial kernel blended in by the blur strength), inversion (``low + high - x``) and additive Gaussian
    noise, clamped to ``value_range``. Parameters: :func:`corruption_params`. ``severity = 0`` returns the images.

    Args:
        images: ``[N, 1, H, H]``, ``[N, H, H]`` or flat ``[N, H·H]`` images.
        index: ``[N]`` sample indices (>= 0) naming the samples.
        seed: seed of the corruptions.
        severity: in [0, 1].
        value_range: ``(low, high)`` of the pixel values (e.g. those of normalised MNIST).

    Raises:
        ValueError: for images that are not square single-channel, an index that is not ``[N]``, a severity
            outside [0, 1] or an empty value range.

    Example:
        >>> x = torch.rand(4, 784)
        >>> a = web_corrupt(x, torch.arange(4), seed=1)
        >>> b = web_corrupt(x[2:], torch.arange(2, 4), seed=1)
        >>> a.shape, torch.allclose(a[2:], b), torch.equal(web_corrupt(x, torch.arange(4), severity=0.0), x)
        (torch.Size([4, 784]), True, True)
    """
    low, high = float(value_range[0]), float(value_range[1])
    if not high > low:
        raise ValueError(f"web_corrupt(value_range={value_range}): high must exceed low")
    shape = images.shape
    n = shape[0] if images.dim() else 0
    if images.dim() == 2:
        side = math.isqrt(shape[1])
        ok = side * side == shape[1]
    elif images.dim() == 3:
        side, ok = shape[-1], shape[-1] == shape[-2]
    elif images.dim() == 4:
        side, ok = shape[-1], shape[-1] == shape[-2] and shape[1] == 1
    else:
        side, ok = 0, False
    if not ok:
        raise ValueError(
            f"web_corrupt: needs square single-channel images [N, 1, H, H], [N, H, H] or [N, H*H], got {tuple(shape)}"
        )
    if index.shape != (n,):
        raise ValueError(f"web_corrupt: index {tuple(index.shape)} must be [N] = [{n}]")
    if severity == 0.0:
        return images
    params, order, noise = corruption_params(index.cpu(), seed, severity, side)
    x = images.detach().float().reshape(n, 1, side, side).cpu().clone()  # never write into the caller's tensor
    shuffled = params[:, 4] > 0
    if bool(shuffled.any()):
        x[shuffled] = _shuffle_blocks(x[shuffled], order[shuffled])
    grid = _rotation_grid(params[:, 0], side)
    x = F.grid_sample(x - low, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + low
    b = params[:, 1].reshape(n, 1, 1, 1)
    x = (1 - b) * x + b * _blur(x)
    inv = params[:, 2].reshape(n, 1, 1, 1)
    x = inv * (low + high - x) + (1 - inv) * x
    x = x + params[:, 3].reshape(n, 1, 1, 1) * (high - low) * noise.reshape(n, 1, side, side)
    return x.clamp(low, high).reshape(shape).to(images.dtype).to(images.device)
