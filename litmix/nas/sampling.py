"""Step-seeded architecture sampling shared by every supernet method (SPOS uniform path sampling).

Single Path One-Shot (Guo et al., "Single Path One-Shot Neural Architecture Search with Uniform Sampling",
https://arxiv.org/abs/1904.00420) trains one path per step, drawn independently per edge. Randomness is always
drawn from a ``torch.Generator`` seeded by :func:`step_seed` (a function of a base seed, the global step and a
sub-index), so that every DDP rank draws the same architecture at the same step without communication, and a
resumed run draws what the uninterrupted run drew (the Once-for-All trick
``random.seed(f"{epoch*nBatch+i}{k:03d}000")``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["make_generator", "sample_path", "step_seed"]


def step_seed(seed: int, step: int, k: int = 0) -> int:
    """A 63-bit seed derived from ``(seed, step, k)``, identical on every rank and after a resume.

    Args:
        seed: the run's base seed (>= 0).
        step: the global step (>= 0).
        k: sub-index (e.g. the k-th subnet of a step), in ``[0, 1000)``.

    Raises:
        ValueError: for negative arguments or ``k >= 1000``.

    Example:
        >>> step_seed(0, 12, 3) == step_seed(0, 12, 3), step_seed(0, 12, 3) != step_seed(0, 13, 3)
        (True, True)
    """
    if seed < 0 or step < 0 or not 0 <= k < 1000:
        raise ValueError(f"step_seed(seed={seed}, step={step}, k={k}): need seed, step >= 0 and 0 <= k < 1000")
    return (int(seed) * 1_000_003 + int(step) * 1000 + int(k) + 12345) % (2**63 - 1)


def make_generator(seed: int, step: int, k: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`step_seed`.

    Example:
        >>> torch.rand(1, generator=make_generator(1, 2)).item() == torch.rand(1, generator=make_generator(1, 2)).item()
        True
    """
    return torch.Generator().manual_seed(step_seed(seed, step, k))


def sample_path(probs: Tensor, generator: torch.Generator | None = None) -> tuple[int, ...]:
    """Sample one operation per edge, independently, from per-edge probabilities.

    Args:
        probs: ``[num_edges, num_ops]`` non-negative rows (normalised here; zero entries are never drawn).
        generator: source of randomness.

    Raises:
        ValueError: for a tensor that is not 2-D, has negative entries or an all-zero row.

    Example:
        >>> p = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
        >>> code = sample_path(p, make_generator(0, 0))
        >>> code[0], code[1] in (0, 1)
        (1, True)
    """
    if probs.dim() != 2 or bool((probs < 0).any()) or bool((probs.sum(-1) <= 0).any()):
        raise ValueError(f"sample_path: probs must be [edges, ops], non-negative, no zero row; got {probs}")
    p = probs.detach().double().cpu()
    return tuple(int(i) for i in torch.multinomial(p / p.sum(-1, keepdim=True), 1, generator=generator).flatten())
