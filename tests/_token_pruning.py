"""Shared MNIST ViT fixture for the token-pruning test and benchmark (small HF ViT, patch 4 -> 49 tokens + CLS)."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn


def load_mnist(root: str | Path, n_train: int, n_test: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The first ``n_train`` training and ``n_test`` test images as ``[n, 1, 28, 28]`` floats in [0, 1]."""
    from litmix.datamodules.mnist import find_mnist_root, read_idx

    base = find_mnist_root(root)

    def images(name: str, n: int) -> Tensor:
        return (read_idx(base / name)[:n].float() / 255.0 - 0.1307).div(0.3081).unsqueeze(1)

    return (
        images("train-images-idx3-ubyte.gz", n_train),
        read_idx(base / "train-labels-idx1-ubyte.gz")[:n_train].long(),
        images("t10k-images-idx3-ubyte.gz", n_test),
        read_idx(base / "t10k-labels-idx1-ubyte.gz")[:n_test].long(),
    )


class MnistViT(nn.Module):
    """``ViTForImageClassification``: 28x28, patch 4 (49 tokens + CLS), width 64, 4 layers, 4 heads."""

    def __init__(self, width: int = 64, depth: int = 4, patch: int = 4) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        cfg = ViTConfig(
            image_size=28,
            patch_size=patch,
            num_channels=1,
            hidden_size=width,
            num_hidden_layers=depth,
            num_attention_heads=4,
            intermediate_size=2 * width,
            num_labels=10,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.vit = ViTForImageClassification(cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.vit(pixel_values=x).logits


@functools.cache
def trained_vit(
    root: str, seed: int, n_train: int = 6000, epochs: int = 2, patch: int = 7
) -> tuple[MnistViT, Tensor, Tensor]:
    """A ViT (patch 7: 16 tokens + CLS) trained briefly on MNIST (Adam 2e-3, batch 64) + 2000 test images (cached)."""
    x, y, xt, yt = load_mnist(root, n_train, 2000)
    torch.manual_seed(seed)
    model = MnistViT(patch=patch)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval(), xt, yt


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int = 500) -> float:
    """Top-1 accuracy in eval mode."""
    model.eval()
    hits = sum(int((model(xb).argmax(-1) == yb).sum()) for xb, yb in zip(x.split(batch), y.split(batch), strict=True))
    return hits / len(y)


@torch.no_grad()
def time_ratios(fns: dict[str, Callable[[], object]], rounds: int = 7) -> dict[str, list[float]]:
    """Per-round wall time of each fn (interleaved, same process); one warm-up call each first."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return times


def median(v: list[float]) -> float:
    return statistics.median(v)
