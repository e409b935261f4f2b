"""Fast Knowledge Distillation (FKD) helpers: stored random-resized-crop boxes, their replay and top-k soft labels.

Paper: "A Fast Knowledge Distillation Framework for Visual Recognition", Shen and Xing
(https://arxiv.org/abs/2112.01528), as MEAL V2 trains with it ("MEAL V2: Boosting Vanilla ResNet-50 to 80%+ Top-1
Accuracy on ImageNet without Tricks", https://arxiv.org/abs/2009.08453). FKD stores, per image, several crop
boxes and flips together with the teacher's soft label for each crop, and replays exactly those crops for the
student, so the teacher never runs during training. Pure tensors (no torchvision): crops are replayed with one
batched ``grid_sample`` call; soft labels are compressed to the top ``k`` classes (``float16`` value + ``int16``
index) with the residual probability mass spread uniformly over the other classes (FKD's
``marginal_smoothing_k5``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from litmix.registry import register

__all__ = ["expand_soft_labels", "replay_crops", "sample_crop_boxes", "topk_soft_labels"]

#: Probability floor of an expanded soft label (so that its logarithm is finite).
PROB_FLOOR = 1e-8


@register(
    "function",
    "distillation",
    paper="A Fast Knowledge Distillation Framework for Visual Recognition (https://arxiv.org/abs/2112.01528)",
)
def sample_crop_boxes(
    n: int,
    crops: int,
    height: int,
    width: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    flip_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Random-resized-crop boxes and horizontal flips for ``n`` images x ``crops`` crops (vectorised).

    The boxes follow torchvision's ``RandomResizedCrop.get_params``: up to 10 tries of an area fraction drawn
    uniformly from ``scale`` and a log-uniform aspect ratio from ``ratio``; the first box that fits is kept,
    else the central crop clipped to ``ratio``.

    Args:
        n: number of images, >= 0.
        crops: crops per image, >= 1.
        height: image height in pixels, >= 1.
        width: image width in pixels, >= 1.
        scale: range of the crop's area as a fraction of the image, ``0 < low <= high <= 1``.
        ratio: range of the crop's aspect ratio (width / height), ``0 < low <= high``.
        flip_prob: probability of a horizontal flip, in [0, 1].
        generator: the random generator (CPU).

    Returns:
        ``boxes`` (``int16``, ``[n, crops, 4]`` = top, left, box height, box width in pixels) and ``flips``
        (``bool``, ``[n, crops]``).

    Raises:
        ValueError: for a size or range outside the bounds above.

    Example:
        >>> boxes, flips = sample_crop_boxes(3, 2, 28, 28, generator=torch.Generator().manual_seed(0))
        >>> boxes.shape, boxes.dtype, flips.shape
        (torch.Size([3, 2, 4]), torch.int16, torch.Size([3, 2]))
        >>> bool(((boxes[..., 0] + boxes[..., 2] <= 28) & (boxes[..., 1] + boxes[..., 3] <= 28)).all())
        True
    """
    if n < 0 or crops < 1 or height < 1 or width < 1:
        raise ValueError(
            f"sample_crop_boxes: need n >= 0, crops >= 1 and a positive size, got {n}, {crops}, {height}x{width}"
        )
    if not (0.0 < scale[0] <= scale[1] <= 1.0):
        raise ValueError(f"sample_crop_boxes(scale={scale}): need 0 < low <= high <= 1")
    if not (0.0 < ratio[0] <= ratio[1]):
        raise ValueError(f"sample_crop_boxes(ratio={ratio}): need 0 < low <= high")
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"sample_crop_boxes(flip_prob={flip_prob}): need a probability in [0, 1]")
    tries = 10
    shape = (n, crops, tries)
    area = float(height * width)
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(shape, generator=generator, dtype=torch.float64))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(shape, generator=generator, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    u_top = torch.rand(shape, generator=generator, dtype=torch.float64)
    u_left = torch.rand(shape, generator=generator, dtype=torch.float64)
    top = torch.floor(u_top * (height - h + 1).clamp(min=1)).long()
    left = torch.floor(u_left * (width - w + 1).clamp(min=1)).long()
    # fallback: the central crop clipped to the ratio range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fw, fh = width, height
    first = torch.where(ok.any(-1), ok.float().argmax(-1), torch.full(ok.shape[:-1], -1))
    pick = first.clamp(min=0).unsqueeze(-1)
    chosen = torch.stack([t.gather(-1, pick).squeeze(-1) for t in (top, left, h, w)], dim=-1)
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw])
    boxes = torch.where((first >= 0).unsqueeze(-1), chosen, fallback)
    flips = torch.rand((n, crops), generator=generator) < flip_prob
    return boxes.to(torch.int16), flips


@register(
    "function",
    "distillation",
    paper="A Fast Knowledge Distillation Framework for Visual Recognition (https://arxiv.org/abs/2112.01528)",
)
def replay_crops(images: Tensor, boxes: Tensor, flips: Tensor, size: int | tuple[int, int] | None = None) -> Tensor:
    """Cut each image's box, optionally flip it horizontally and resize it to ``size`` (bilinear), in one call.

    A batched ``grid_sample`` (``align_corners=False``, border padding): output pixel centres are spread evenly
    over the box, as ``F.interpolate(crop, size, mode="bilinear", align_corners=False)`` samples a crop (equal
    when downscaling; when upscaling, samples within half a pixel of the box edge blend in the pixel beyond it).
    The same stored box always gives the same pixels, so the student sees exactly the view the teacher labelled.

    Args:
        images: ``[B, C, H, W]`` floating images.
        boxes: ``[B, 4]`` integer boxes (top, left, box height, box width), as from :func:`sample_crop_boxes`.
        flips: ``[B]`` booleans: flip the crop horizontally.
        size: output ``(height, width)`` or one int for both; ``None`` keeps ``(H, W)``.

    Returns:
        ``[B, C, size_h, size_w]`` crops in the images' dtype.

    Raises:
        ValueError: for images that are not ``[B, C, H, W]`` floats or boxes/flips of another batch size.

    Example:
        >>> img = torch.arange(16.0).view(1, 1, 4, 4)
        >>> full = torch.tensor([[0, 0, 4, 4]])
        >>> torch.allclose(replay_crops(img, full, torch.tensor([False])), img, atol=1e-5)
        True
        >>> torch.allclose(replay_crops(img, full, torch.tensor([True])), img.flip(-1), atol=1e-5)
        True
        >>> replay_crops(img, torch.tensor([[1, 1, 2, 2]]), torch.tensor([False]), size=2)[0, 0].tolist()
        [[5.0, 6.0], [9.0, 10.0]]
    """
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"replay_crops: images must be [B, C, H, W] floats, got {tuple(images.shape)} {images.dtype}")
    b, c, height, width = images.shape
    if boxes.shape != (b, 4) or flips.shape != (b,):
        raise ValueError(
            f"replay_crops: boxes must be [{b}, 4] and flips [{b}], got {tuple(boxes.shape)} and {tuple(flips.shape)}"
        )
    if size is None:
        out_h, out_w = height, width
    elif isinstance(size, int):
        out_h = out_w = size
    else:
        out_h, out_w = size
    compute = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
    box = boxes.to(device=images.device, dtype=compute)
    top, left, bh, bw = box.unbind(-1)
    sx = bw / width
    sy = bh / height
    cx = (2 * left + bw) / width - 1
    cy = (2 * top + bh) / height - 1
    sx = torch.where(flips.to(images.device), -sx, sx)
    zero = torch.zeros_like(sx)
    theta = torch.stack([torch.stack([sx, zero, cx], -1), torch.stack([zero, sy, cy], -1)], 1)
    grid = F.affine_grid(theta, [b, c, out_h, out_w], align_corners=False)
    out = F.grid_sample(images.to(compute), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.to(images.dtype)


@register(
    "function",
    "distillation",
    paper="A Fast Knowledge Distillation Framework for Visual Recognition (https://arxiv.org/abs/2112.01528)",
)
def topk_soft_labels(probs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest probabilities (``float16``) and their classes (``int16``, ``int32`` past 32,767 classes).

    Args:
        probs: ``[..., C]`` probabilities.
        k: classes kept, ``1 <= k <= C``.

    Returns:
        ``(values, indices)``, both ``[..., k]``, largest first.

    Raises:
        ValueError: for ``k`` outside ``[1, C]``.

    Example:
        >>> v, i = topk_soft_labels(torch.tensor([[0.1, 0.6, 0.3]]), 2)
        >>> v.dtype, i.dtype, i.tolist()
        (torch.float16, torch.int16, [[1, 2]])
    """
    classes = probs.shape[-1]
    if not 1 <= k <= classes:
        raise ValueError(f"topk_soft_labels(k={k}): k must be in [1, {classes}] (the number of classes)")
    values, indices = probs.float().topk(k, dim=-1)
    index_dtype = torch.int16 if classes <= torch.iinfo(torch.int16).max else torch.int32
    return values.to(torch.float16), indices.to(index_dtype)


@register(
    "function",
    "distillation",
    paper="A Fast Knowledge Distillation Framework for Visual Recognition (https://arxiv.org/abs/2112.01528)",
)
def expand_soft_labels(values: Tensor, indices: Tensor, num_classes: int) -> Tensor:
    """Full ``float32`` soft labels from top-k ones: the residual mass spread uniformly over the other classes.

    Each row is ``values`` at ``indices`` and ``(1 - sum(values)) / (C - k)`` elsewhere (FKD's marginal
    smoothing; capped at the smallest kept value, so that float16 rounding never ranks a dropped class above a
    kept one), floored at ``1e-8`` so that its logarithm is finite, and renormalised to sum to 1.

    Args:
        values: ``[..., k]`` kept probabilities.
        indices: ``[..., k]`` their classes.
        num_classes: ``C``, at least ``k``.

    Returns:
        ``[..., C]`` probabilities whose rows sum to 1.

    Raises:
        ValueError: for ``num_classes`` below ``k``.

    Example:
        >>> p = expand_soft_labels(torch.tensor([[0.6, 0.2]]).half(), torch.tensor([[1, 3]]), 4)
        >>> [round(v, 3) for v in p[0].tolist()], round(float(p.sum()), 5)
        ([0.1, 0.6, 0.1, 0.2], 1.0)
    """
    k = values.shape[-1]
    if num_classes < k:
        raise ValueError(f"expand_soft_labels(num_classes={num_classes}): fewer classes than the {k} kept ones")
    kept = values.float()
    residual = (1.0 - kept.sum(-1, keepdim=True)).clamp(min=0.0)
    other = residual / (num_classes - k) if num_classes > k else residual * 0.0
    # float16 rounding of a value near 1 can leave more residual than the smallest kept class: cap the spread there
    other = torch.minimum(other, kept.amin(-1, keepdim=True))
    full = other.expand(*kept.shape[:-1], num_classes).clone()
    full.scatter_(-1, indices.long(), kept)
    full = full.clamp(min=PROB_FLOOR)
    return full / full.sum(-1, keepdim=True)
