"""FlagAggregation / flag_aggregate (Almasi et al., ICLR 2024): the Gram-space IRLS against an explicit n-space
reference, robustness on 3 DDP CPU ranks with one rank sending corrupted gradients (digits), equal replicas,
strategy refusals, validation, and the ZeRO++ DeepSpeed config."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from litmix.callbacks.flag_aggregation import FlagAggregation
from litmix.functional.flag_aggregator import flag_aggregate
from litmix.testing import AssertRanksAgree, StubTrainer, TinyClassifier, run_ddp, sharded_strategy

ROOT = Path(__file__).resolve().parents[1]
ZEROPP_CONFIG = ROOT / "examples" / "configs" / "zeropp_deepspeed.yaml"


# ----------------------------------------------------------------------------------------------- functional core


def _reference(g: torch.Tensor, m: int, iterations: int, lam: float, eps: float = 1e-8) -> torch.Tensor:
    """Flag-median IRLS written in n-space (SVD of the weighted n x K matrix of unit gradients and differences)."""
    p = g.shape[0]
    x = g / g.norm(dim=1, keepdim=True)
    pairs = [(i, j) for i in range(p) for j in range(p) if i != j]
    d = torch.stack([x[i] - x[j] for i, j in pairs]) if lam > 0 else x[:0]

    def flag_mean(w: torch.Tensor, wd: torch.Tensor) -> torch.Tensor:
        a = torch.cat([x * w.sqrt()[:, None], d * wd.sqrt()[:, None]]).T
        return torch.linalg.svd(a, full_matrices=False)[0][:, :m]

    w = torch.ones(p, dtype=g.dtype)
    wd = torch.full((len(d),), lam / (p * (p - 1)), dtype=g.dtype)
    y = flag_mean(w, wd)
    for _ in range(iterations):
        w = (1 - ((x @ y) ** 2).sum(1)).clamp_min(0).add(eps).rsqrt()
        if lam > 0:
            wd = ((d * d).sum(1) - ((d @ y) ** 2).sum(1)).clamp_min(0).add(eps).rsqrt() * lam / (p * (p - 1))
        y = flag_mean(w, wd)
    return (y @ (y.T @ x.T)).sum(1) / p * g.norm(dim=1).median()


@pytest.mark.parametrize(("m", "iterations", "lam"), [(1, 0, 0.0), (1, 4, 0.0), (2, 3, 0.0), (1, 3, 0.5), (2, 2, 1.0)])
def test_gram_space_irls_equals_the_n_space_reference(m: int, iterations: int, lam: float) -> None:
    gen = torch.Generator().manual_seed(m * 10 + iterations)
    g = torch.randn(5, 300, generator=gen, dtype=torch.float64) + 2 * torch.randn(300, generator=gen, dtype=torch.float64)
    ours = flag_aggregate(g, subspace_dim=m, iterations=iterations, lam=lam)
    torch.testing.assert_close(ours, _reference(g, m, iterations, lam), rtol=1e-8, atol=1e-8)


def test_outliers_are_suppressed_and_consensus_is_kept() -> None:
    gen = torch.Generator().manual_seed(0)
    honest = torch.randn(1000, generator=gen)
    g = honest + 0.3 * torch.randn(6, 1000, generator=gen)
    g[5] = 100 * torch.randn(1000, generator=gen)  # one worker sends large noise
    cos_mean = torch.nn.functional.cosine_similarity(g.mean(0), honest, dim=0)
    cos_flag = torch.nn.functional.cosine_similarity(flag_aggregate(g), honest, dim=0)
    assert cos_mean < 0.1 < 0.9 < cos_flag, (cos_mean, cos_flag)
    g[5] = -50 * g[0]  # one worker sends a scaled, negated gradient
    assert torch.dot(g.mean(0), honest) < 0 < torch.dot(flag_aggregate(g), honest)
    torch.testing.assert_close(flag_aggregate(honest.expand(3, -1).clone()), honest)
    assert flag_aggregate(torch.zeros(3, 10)).abs().sum() == 0  # all-zero gradients: zero, no NaN


@pytest.mark.parametrize(
    ("kwargs", "error", "arg"),
    [
        ({"gradients": [[1.0]]}, TypeError, "gradients"),
        ({"gradients": torch.ones(2, 3, dtype=torch.long)}, TypeError, "gradients"),
        ({"gradients": torch.ones(3)}, ValueError, "gradients"),
        ({"gradients": torch.tensor([[1.0, float("nan")]])}, ValueError, "gradients"),
        ({"subspace_dim": 0}, ValueError, "subspace_dim"),
        ({"iterations": 1.5}, TypeError, "iterations"),
        ({"lam": -1.0}, ValueError, "lam"),
        ({"eps": 0.0}, ValueError, "eps"),
        ({"rescale": 1}, TypeError, "rescale"),
    ],
)
def test_flag_aggregate_refuses_bad_arguments(kwargs: dict[str, Any], error: type, arg: str) -> None:
    kwargs = {"gradients": torch.ones(2, 3), **kwargs}
    with pytest.raises(error, match=arg):
        flag_aggregate(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "arg"),
    [
        ({"subspace_dim": 0}, ValueError, "subspace_dim"),
        ({"subspace_dim": "1"}, TypeError, "subspace_dim"),
        ({"iterations": -1}, ValueError, "iterations"),
        ({"lam": float("inf")}, ValueError, "lam"),
        ({"eps": -1e-3}, ValueError, "eps"),
        ({"name": ""}, ValueError, "name"),
    ],
)
def test_callback_refuses_bad_arguments(kwargs: dict[str, Any], error: type, arg: str) -> None:
    with pytest.raises(error, match=arg):
        FlagAggregation(**kwargs)


def test_callback_refuses_non_ddp_strategies() -> None:
    cb = FlagAggregation()
    for strategy in (sharded_strategy(FSDPStrategy), sharded_strategy(DeepSpeedStrategy), sharded_strategy(ModelParallelStrategy)):
        trainer = StubTrainer(strategy=strategy, callbacks=[cb])
        with pytest.raises(MisconfigurationException, match=type(strategy).__name__):
            cb.setup(trainer, TinyClassifier(), "fit")  # type: ignore[arg-type]
